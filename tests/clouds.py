"""Clouds several test files share."""
import numpy as np

import dtpinn_dist as dt


def tagged_square(n: int, seed: int, n_test: int | None = None):
    """The unit square with hand-set boundary parts: the side x = 0 tagged 3 ("left"), the other
    sides 0 ("walls") -- a user's own tags, not the rectangle's built-in ones."""
    kw = {} if n_test is None else {"n_test": n_test}
    cloud = dt.make_cloud(dt.Rectangle((0, 0), (1, 1)), n=n, seed=seed, **kw)
    left = np.abs(cloud.boundary[:, 0]) < 1e-12  # classifies exact x = 0 nodes: not a tolerance
    cloud.boundary_tags = np.where(left, 3, 0).astype(np.int64)
    cloud.tag_names = {"walls": 0, "left": 3}
    return cloud
