"""The command line ``python -m dtpinn_dist.train``: a thin layer over :func:`dtpinn_dist.fit`."""
