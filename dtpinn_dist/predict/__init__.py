"""The command line ``python -m dtpinn_dist.predict``: a saved run's network at given points
(the library side is :func:`dtpinn_dist.outputs.load_run`)."""
