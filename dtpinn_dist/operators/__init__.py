"""Differentiation operators: RBF-FD assembly (:mod:`.rbffd`) and the matrix back-ends.

Imports are lazy so that ``import dtpinn_dist.operators`` pulls in neither torch nor cupy; the
RBF-FD entry points and the operators file IO (:mod:`.io`: ``load_operators``,
``save_operators``) are re-exported on first use.
"""
_RBFFD = ("laplacian_matrix", "boundary_matrix", "gradient_matrix", "biharmonic_matrix",
          "assemble", "rbffd_weights", "stencil_params", "weights_to_csr", "make_operator",
          "Operator")


_IO = ("load_operators", "save_operators")


def __getattr__(name):
    if name in _RBFFD:
        from . import rbffd
        return getattr(rbffd, name)
    if name in _IO:
        from . import io
        return getattr(io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_RBFFD) + list(_IO))
