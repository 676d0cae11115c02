"""Peer PINN tools run on the same problems, node sets and test points as dtpinn_dist.

``deepxde_runner``: DeepXDE (PyTorch backend, its defaults) -- error against training time.
The peers are independent of ``dtpinn_dist`` (they only read the authors' ``.mat`` node sets), so
their figures do not move when the library's API does.
"""
