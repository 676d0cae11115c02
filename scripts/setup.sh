#!/usr/bin/env bash
# Sets up everything dtpinn_dist needs, idempotently, on a Debian/Ubuntu machine:
#   system packages (MPI, BLAS, PT-Scotch), a virtual environment .venv/ in the repository root,
#   PETSc + petsc4py with MPI (built from PyPI unless PETSC_DIR points at your own PETSc),
#   mpi4py, torch, and this package installed editable with its extras.
# Quick when already done: a stamp file records what was installed; a .venv/ without the stamp
# (an interrupted earlier run) is removed and rebuilt, never trusted.
#
# Environment knobs:
#   PETSC_DIR / PETSC_ARCH  use an existing PETSc (module, Spack, conda-forge): only petsc4py is built
#   TORCH_SPEC              torch requirement (default torch==2.13.0)
#   TORCH_PIP_ARGS          extra pip arguments for torch (e.g. --index-url of a CPU-only build)
#   DTPINN_SKIP_APT=1       do not touch system packages (you provide MPI compilers yourself)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
stamp="$venv/.dtpinn-ready"

die() { echo "setup: error: $*" >&2; exit 1; }
say() { echo "setup: $*" >&2; }

# One setup at a time per checkout (parallel test runs, job arrays): later ones wait, then find
# the stamp in place and return at once.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$root/.venv.lock"
  flock 9
fi

PETSC_VERSION=3.26.1
# Bump when the build steps below change, so existing environments are rebuilt.
RECIPE=1
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

# ---- 1. Python ------------------------------------------------------------------------------
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || die "no '$PY' on PATH: install Python >= 3.11 (apt-get install python3 python3-venv python3-dev) or set PYTHON=/path/to/python3.11"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "$("$PY" -V 2>&1) is too old: dtpinn_dist needs Python >= 3.11; set PYTHON=/path/to/python3.11"

# Two stamps: the base (Python, PETSc, torch, this recipe) -> rebuild .venv/ from scratch when it
# changes; the package's own metadata -> only reinstall the package (seconds).
want="recipe=$RECIPE petsc=${PETSC_DIR:-pypi-$PETSC_VERSION} torch=$TORCH_SPEC py=$("$PY" -V 2>&1)"
want_pkg="$(sha256sum < pyproject.toml | cut -c1-16)"
pkg_stamp="$venv/.dtpinn-package"
install_package() {
  "$venv/bin/python" -m pip install -q --no-build-isolation -e ".[mpi,io,test]"
  echo "$want_pkg" > "$pkg_stamp"
}
# A stamped environment must still import (an apt upgrade of MPI can break petsc4py).
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && ! "$venv/bin/python" -c "import petsc4py.PETSc, mpi4py.MPI, torch" >/dev/null 2>&1; then
  say "the existing .venv/ no longer imports petsc4py/mpi4py/torch: rebuilding it"
  rm -f "$stamp"
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  if [ ! -f "$pkg_stamp" ] || [ "$(cat "$pkg_stamp")" != "$want_pkg" ]; then
    say "pyproject.toml changed: reinstalling dtpinn_dist"
    install_package
  fi
  exit 0
fi

# ---- 2. System packages -----------------------------------------------------------------------
need_pkgs=()
command -v mpicc >/dev/null 2>&1 || need_pkgs+=(libopenmpi-dev openmpi-bin)
command -v mpirun >/dev/null 2>&1 || need_pkgs+=(openmpi-bin)
if [ -z "${PETSC_DIR:-}" ]; then
  [ -e /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] || [ -e /usr/include/openblas/cblas.h ] \
    || ls /usr/lib/*/libopenblas.so >/dev/null 2>&1 || need_pkgs+=(libopenblas-dev)
  [ -e /usr/include/scotch/ptscotch.h ] || need_pkgs+=(libptscotch-dev)
fi
{ command -v cc && command -v c++; } >/dev/null 2>&1 || need_pkgs+=(build-essential)
command -v make >/dev/null 2>&1 || need_pkgs+=(make)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
# PETSc's pip build fixes its library paths with patchelf
[ -z "${PETSC_DIR:-}" ] && ! command -v patchelf >/dev/null 2>&1 && need_pkgs+=(patchelf)
"$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
"$PY" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
  || need_pkgs+=(python3-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  [ "${DTPINN_SKIP_APT:-0}" = 1 ] && die "missing system packages (${need_pkgs[*]}) and DTPINN_SKIP_APT=1: install them yourself"
  command -v apt-get >/dev/null 2>&1 || die "missing system packages (${need_pkgs[*]}) and no apt-get: install an MPI (mpicc, mpirun), BLAS/LAPACK and a C compiler, then rerun with DTPINN_SKIP_APT=1"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root to apt-get install ${need_pkgs[*]}: run as root or install sudo"
    sudo="sudo"
  fi
  say "installing system packages: ${need_pkgs[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
command -v mpicc >/dev/null 2>&1 || die "mpicc still not on PATH after installing packages"
command -v cc >/dev/null 2>&1 || die "no C compiler (cc): apt-get install build-essential"

# ---- 3. Virtual environment (rebuilt from scratch if an earlier run did not finish) ----------
if [ -d "$venv" ]; then
  say "removing an unfinished or outdated .venv/"
  rm -rf "$venv"
fi
say "creating .venv/ with $("$PY" -V 2>&1)"
"$PY" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip wheel setuptools
# TORCH_PIP_ARGS: e.g. an --index-url for a CPU-only or a specific CUDA build of torch
$pip install -q "numpy>=1.26" "scipy>=1.11" cython
$pip install -q ${TORCH_PIP_ARGS:-} "$TORCH_SPEC"

# ---- 4. PETSc + petsc4py with MPI ---------------------------------------------------------------
export CC=mpicc CXX=mpicxx
if [ -n "${PETSC_DIR:-}" ]; then
  say "building petsc4py against PETSC_DIR=$PETSC_DIR PETSC_ARCH=${PETSC_ARCH:-}"
  CFLAGS="-O0 -g0" $pip install -q --no-build-isolation --no-cache-dir "petsc4py==$("$PY" - <<PYEOF
import re, os
h = open(os.path.join(os.environ["PETSC_DIR"], "include", "petscversion.h")).read()
v = [re.search(r"#define PETSC_VERSION_%s\s+(\d+)" % k, h).group(1) for k in ("MAJOR", "MINOR")]
print(".".join(v) + ".*")
PYEOF
)"
else
  arch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
  libdir=/usr/lib/$arch
  scotch=""
  if [ -e /usr/include/scotch/ptscotch.h ]; then
    libs=""
    for l in ptesmumps ptscotchparmetisv3 ptscotch ptscotcherr esmumps scotch scotcherr; do
      [ -e "$libdir/lib$l.so" ] && libs="$libs${libs:+,}$libdir/lib$l.so"
    done
    scotch="--with-ptscotch-include=/usr/include/scotch --with-ptscotch-lib=[$libs]"
  fi
  blas="$libdir/libopenblas.so"
  [ -e "$blas" ] || die "no $blas: apt-get install libopenblas-dev"
  export PETSC_CONFIGURE_OPTIONS="--with-fc=0 --with-debugging=0 --with-cuda=0 --with-x=0 --with-blaslapack-lib=$blas $scotch"
  say "building PETSc $PETSC_VERSION with MPI (about 4 min the first time, seconds from pip's cache)"
  $pip install -q --no-build-isolation "petsc==$PETSC_VERSION"
  say "building petsc4py $PETSC_VERSION (about 1 min the first time)"
  CFLAGS="-O0 -g0" $pip install -q --no-build-isolation "petsc4py==$PETSC_VERSION"
fi
say "installing mpi4py and dtpinn_dist (editable)"
$pip install -q --no-build-isolation mpi4py
install_package

# ---- 5. Check it really works before stamping -----------------------------------------------------
"$venv/bin/python" -c "from petsc4py import PETSc; from mpi4py import MPI; import torch, dtpinn_dist" \
  || die "the new environment does not import petsc4py/mpi4py/torch/dtpinn_dist (see above)"
echo "$want" > "$stamp"
say "ready: $venv"
