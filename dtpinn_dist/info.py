"""What this installation can do: versions and capabilities of PETSc, MPI, torch and CuPy.

Imports every optional piece defensively: the report is most useful exactly when something
is missing.
"""
from __future__ import annotations

import importlib
import platform

from . import __version__


def _petsc_report() -> list[str]:
    try:
        import petsc4py
        from petsc4py import PETSc
    except Exception as exc:  # ImportError, or a broken binary build
        return [f"PETSc         : not available ({type(exc).__name__}: {exc}); "
                "install with scripts/setup.sh or pip install 'dtpinn-dist[mpi]'"]
    major, minor, sub = PETSc.Sys.getVersion()
    has = PETSc.Sys.hasExternalPackage
    partitioners = [p for p in ("ptscotch", "parmetis") if has(p)]
    cfg = petsc4py.get_config()
    return [
        f"PETSc         : {major}.{minor}.{sub} (petsc4py {petsc4py.__version__}) "
        f"at {cfg.get('PETSC_DIR', '?')} {cfg.get('PETSC_ARCH', '')}".rstrip(),
        f"  MPI         : {'yes' if has('mpi') else 'no (MPIUNI: one process only)'}",
        f"  CUDA        : {'yes' if has('cuda') else 'no'} (GPU matrices: -mat_type aijcusparse -vec_type cuda)",
        f"  partitioner : {', '.join(partitioners) if partitioners else 'none (space-filling curve fallback)'}",
        f"  scalar      : {PETSc.ScalarType.__name__}, index {PETSc.IntType.__name__}",
    ]


def _mpi_report() -> list[str]:
    try:
        from mpi4py import MPI
    except Exception as exc:
        return [f"mpi4py        : not available ({type(exc).__name__}); serial runs only"]
    lib = MPI.Get_library_version().strip().splitlines()[0]
    import mpi4py

    return [f"mpi4py        : {mpi4py.__version__}, {lib}",
            f"  world       : {MPI.COMM_WORLD.Get_size()} rank(s)"]


def _torch_report() -> list[str]:
    import torch

    cuda = torch.cuda.is_available()
    dev = f", {torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}" if cuda else ""
    return [f"torch         : {torch.__version__}, CUDA {'visible' if cuda else 'not visible'}{dev}",
            f"  threads     : {torch.get_num_threads()}"]


def _cupy_report() -> list[str]:
    try:
        cupy = importlib.import_module("cupy")
        n = cupy.cuda.runtime.getDeviceCount()
        return [f"CuPy          : {cupy.__version__}, {n} GPU(s)"]
    except Exception as exc:
        return [f"CuPy          : not available ({type(exc).__name__}); backend 'cupy' disabled"]


def _io_report() -> list[str]:
    """The optional output packages: VTK files (meshio), plots (matplotlib), the progress bar."""
    found = []
    for name, what in (("meshio", "VTK files"), ("matplotlib", "PNG plots"),
                       ("tqdm", "progress bar")):
        try:
            mod = importlib.import_module(name)
            found.append(f"{name} {getattr(mod, '__version__', '?')}")
        except Exception:
            found.append(f"{name} missing (no {what})")
    return [f"outputs       : {', '.join(found)}"]


def report() -> str:
    """The capability report printed by ``python -m dtpinn_dist``."""
    import numpy
    import scipy

    lines = [f"dtpinn_dist   : {__version__} (Python {platform.python_version()}, {platform.machine()})",
             f"numpy / scipy : {numpy.__version__} / {scipy.__version__}"]
    lines += (_torch_report() + _petsc_report() + _mpi_report() + _cupy_report()
              + _io_report())
    return "\n".join(lines)
