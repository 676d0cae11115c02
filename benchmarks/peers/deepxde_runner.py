"""DeepXDE, the peer baseline: relative L2 error against training time on the paper's problems.

Runs DeepXDE (PyTorch backend) with its own defaults -- fp32, a ``4 x 50`` tanh ``FNN`` (the
paper's network) with "Glorot uniform" weights (the initializer of DeepXDE's examples; ``FNN``
has no default) and zero biases, its mean-squared-error loss per term summed with unit weights,
and its L-BFGS: ``torch.optim.LBFGS`` with the options of
``deepxde.optimizers.set_LBFGS_options()`` (history 100, ``tolerance_change = ftol = 0``,
``tolerance_grad = gtol = 1e-8``, ``maxiter = 15000``, strong-Wolfe line search, ``lr = 1``, at most
1000 iterations and 1250 function evaluations per ``optimizer.step`` call) -- on the problems,
collocation nodes and test points that dtpinn_dist uses (the paper's section 4):

``poisson``            lap u = f on the unit disk, Robin ``n.grad u + u = g`` (alpha = beta = 1);
``nonlinear-poisson``  lap u - exp(u) = f, same boundary condition (paper eq. (1)-(2));
``heat``               u_t = lap u + f on the disk x [0, 1], Robin on every slice, u(x, 0) = u0
                       (eq. (5)-(7)), collocation on the nodes x ``nt + 1`` time slices.

Exact solutions: ``u = 1 + sin(pi x) cos(pi y)`` (eq. (19)), for heat times ``sin(pi t)``
(eq. (20)); ``f`` (an auxiliary variable of the training points) and ``g`` come from them in
fp64 and are rounded to DeepXDE's float type, as DeepXDE rounds the points.

The weights are DeepXDE's initialiser (``xavier_uniform_``, zero biases) drawn from a
``torch.Generator`` seeded with ``seed``; the global torch RNG is left as it was.

The training points are exactly the authors' node set (``DiskPoissonNodes.mat`` /
``DiskPoissonNodesLarge.mat``): ``num_domain = num_boundary = 0``, the nodes are DeepXDE
``anchors`` (the PDE residual), and the Robin condition is a ``PointSetOperatorBC`` on the
boundary nodes that uses the authors' normals (not DeepXDE's geometry). With
``pde_points="all"`` (default) the PDE residual is taken at interior and boundary nodes, as in
DeepXDE's own usage and in the DT-PINN loss (paper eq. (12)); ``"interior"`` takes it at the
interior nodes only, as the vanilla-PINN loss (eq. (4)). The test error is eq. (18) on the
21748-point set (the last entry of ``DiskPoissonNodesLarge.mat``, interior + boundary); for heat,
by default on the collocation nodes at every slice (as the paper), or on the 21748 points at
every slice.

Timing. DeepXDE's own driver (``Model.train`` -> ``_train_pytorch_lbfgs``) calls
``optimizer.step`` in blocks of 1000 iterations, too coarse to see error against time. This runner
replays that driver in shorter timed chunks: it calls DeepXDE's compiled ``model.train_step``
with ``max_iter`` and ``max_eval`` set so that every chunk is a piece of the same DeepXDE call
(same per-call evaluation budget, same line-search limits, same stopping rule: a call that makes
a single iteration ends training). The iterates are therefore DeepXDE's own (the test suite
checks this bitwise against ``Model.train``). A chunk that begins inside a DeepXDE call starts
with one loss+gradient evaluation that the uninterrupted call would not make (torch L-BFGS
re-evaluates at the start of ``step``); it is timed separately and left out of the training time
(``extra_evals``, ``extra_eval_time_s``). The test error and the loss are evaluated between
chunks, outside the timed region. Not counted either: DeepXDE's own driver evaluates the losses
on its test points after every 1000-iteration call (a forward pass with second derivatives).

Usage::

    python -m benchmarks.peers.deepxde_runner --problem poisson --n 1663 --time 60 --json out.json
    python benchmarks/peers/deepxde_runner.py --n 4977 --time 200 --targets 4e-5,1.8e-5

Import ``run(RunConfig(...))`` from a benchmark to get the same result as a dict.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["PROBLEMS", "RunConfig", "PeerInputError", "DeepXDEUnavailable", "run", "train_model",
           "deepxde_settings", "build_model", "import_deepxde",
           "exact_solution", "forcing", "robin_data", "reference_dir", "load_node_set",
           "load_test_points", "main"]

REPO = Path(__file__).resolve().parents[2]
PROBLEMS = ("poisson", "nonlinear-poisson", "heat")
DEFAULT_TARGETS = (1e-3, 1e-4)
NODE_FILES = ("DiskPoissonNodes.mat", "DiskPoissonNodesLarge.mat")
TEST_FILE = "DiskPoissonNodesLarge.mat"  # its last entry, N = 21748, is the paper's test set
DEEPXDE_VERSION_TESTED = "1.15.0"


class PeerInputError(ValueError):
    """Bad input to the runner (settings, files); the message names the fix."""


class DeepXDEUnavailable(ImportError):
    """DeepXDE (with its PyTorch backend) cannot be imported in this process."""


# --------------------------------------------------------------------------- the problem
def _split(X: np.ndarray, problem: str):
    X = np.asarray(X, dtype=np.float64)
    x, y = X[:, 0], X[:, 1]
    t = X[:, 2] if problem == "heat" else None
    return x, y, t


def exact_solution(problem: str, X: np.ndarray) -> np.ndarray:
    """u at the rows of X ((n, 2); (n, 3) with t last for heat): paper eqs. (19), (20)."""
    x, y, t = _split(X, problem)
    s = np.sin(np.pi * x) * np.cos(np.pi * y)
    return 1.0 + (s * np.sin(np.pi * t) if t is not None else s)


def forcing(problem: str, X: np.ndarray) -> np.ndarray:
    """f at the rows of X: lap u (poisson), lap u - exp(u) (eq. (1)), u_t - lap u (eq. (5))."""
    x, y, t = _split(X, problem)
    s = np.sin(np.pi * x) * np.cos(np.pi * y)
    pi2 = np.pi ** 2
    if problem == "poisson":
        return -2.0 * pi2 * s
    if problem == "nonlinear-poisson":
        return -2.0 * pi2 * s - np.exp(1.0 + s)
    return np.pi * s * np.cos(np.pi * t) + 2.0 * pi2 * s * np.sin(np.pi * t)


def robin_data(problem: str, X: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """g = n . grad u + u (alpha = beta = 1, eq. (2)) at boundary rows X with unit normals."""
    x, y, t = _split(X, problem)
    n = np.asarray(normals, dtype=np.float64)
    ux = np.pi * np.cos(np.pi * x) * np.cos(np.pi * y)
    uy = -np.pi * np.sin(np.pi * x) * np.sin(np.pi * y)
    dudn = n[:, 0] * ux + n[:, 1] * uy
    if t is not None:
        dudn = dudn * np.sin(np.pi * t)
    return dudn + exact_solution(problem, X)


# --------------------------------------------------------------------------- node sets
def reference_dir(explicit=None) -> Path:
    """Folder with the authors' .mat node sets.

    ``explicit``, else ``$DTPINN_REFERENCE_DIR``, else ``shared/reference`` in or beside the
    repository (the layout of the project's machines).
    """
    cands = [Path(explicit)] if explicit else []
    if not cands and os.environ.get("DTPINN_REFERENCE_DIR"):
        cands = [Path(os.environ["DTPINN_REFERENCE_DIR"])]
    if not cands:
        cands = [REPO / "shared" / "reference", REPO.parent / "shared" / "reference"]
    for c in cands:
        if all((c / f).is_file() for f in NODE_FILES):
            return c
    raise PeerInputError(f"the authors' node sets {list(NODE_FILES)} are not in "
                         f"{' or '.join(map(str, cands))}; pass --ref-dir or set "
                         "DTPINN_REFERENCE_DIR to the folder that holds them")


def _read_mat(path: Path):
    import scipy.io

    m = scipy.io.loadmat(str(path))
    keys = ("fullintnodes", "bdrynodes", "normals")
    if any(k not in m for k in keys):
        raise PeerInputError(f"{path} lacks one of {keys}: not an authors' node-set file")
    return [[np.asarray(a, dtype=np.float64) for a in np.asarray(m[k], dtype=object).ravel()]
            for k in keys]


def load_node_set(n: int, ref: Path) -> dict:
    """The authors' node set with N = Ni + Nb = n: ``interior``, ``boundary``, ``normals``."""
    sizes = []
    for f in NODE_FILES:
        for a, b, nr in zip(*_read_mat(ref / f)):
            sizes.append(len(a) + len(b))
            if len(a) + len(b) == n:
                return {"interior": a, "boundary": b, "normals": nr, "file": f}
    raise PeerInputError(f"no authors' node set with N = {n}; available: {sorted(set(sizes))}")


def load_test_points(ref: Path) -> np.ndarray:
    """The paper's 21748 test points (interior + boundary of the last Large entry), (n, 2)."""
    ci, cb, _ = _read_mat(ref / TEST_FILE)
    return np.vstack([ci[-1], cb[-1]])


# --------------------------------------------------------------------------- settings
@dataclasses.dataclass
class RunConfig:
    """Settings of one DeepXDE run (defaults: DeepXDE's, the paper's network, one thread).

    Attributes
    ----------
    problem : 'poisson', 'nonlinear-poisson' or 'heat'.
    n : N = Ni + Nb of the authors' node set (582, 828, 1663, 3196, 4975, 2236, 3185, 4977,
        6114, 8767, 19638, 21748); the paper's heat runs use 828.
    time_budget : training seconds (evaluation excluded); the run stops after the chunk that
        crosses it, or earlier when DeepXDE's L-BFGS stops.
    budget_clock : 'wall' (default) or 'cpu': which clock ``time_budget`` (and the chunk
        length) is measured on; 'cpu' gives runs of equal work on a loaded machine.
    targets : errors whose first training time is reported (1e-3 and 1e-4 are always added).
    chunk_seconds : training seconds between two evaluations of the test error (the time
        resolution; costs wall time only).
    eval_ratio : a chunk also trains at least this many times as long as the last evaluation
        took, so that evaluating adds at most about 1/eval_ratio to the wall time (0: off).
    max_iter : DeepXDE's ``maxiter`` (its default 15000); 0 keeps DeepXDE's current setting.
    pde_points : 'all' (interior + boundary nodes, DeepXDE's usage, eq. (12)) or 'interior'
        (eq. (4)).
    heat_test : 'collocation' (the nodes at every slice, the paper) or 'large' (the 21748
        points at every slice).
    dtype : 'float32' (DeepXDE's default) or 'float64'.
    threads : torch intra-op threads during the run (restored afterwards); None leaves them.
    """

    problem: str = "poisson"
    n: int = 1663
    time_budget: float = 60.0
    budget_clock: str = "wall"
    seed: int = 0
    threads: int | None = 1
    targets: tuple = ()
    chunk_seconds: float = 0.25
    eval_ratio: float = 4.0
    max_iter: int = 15000
    pde_points: str = "all"
    heat_test: str = "collocation"
    nt: int = 24
    t_final: float = 1.0
    width: int = 50
    depth: int = 4
    dtype: str = "float32"
    ref_dir: str | None = None
    record_loss: bool = True
    verbose: bool = True

    def validate(self) -> "RunConfig":
        def bad(msg):
            raise PeerInputError(msg)

        if self.problem not in PROBLEMS:
            bad(f"unknown problem {self.problem!r}: use one of {', '.join(PROBLEMS)}")
        if self.pde_points not in ("all", "interior"):
            bad(f"pde_points={self.pde_points!r}: use 'all' or 'interior'")
        if self.heat_test not in ("collocation", "large"):
            bad(f"heat_test={self.heat_test!r}: use 'collocation' or 'large'")
        if self.budget_clock not in ("wall", "cpu"):
            bad(f"budget_clock={self.budget_clock!r}: use 'wall' or 'cpu'")
        if self.dtype not in ("float32", "float64"):
            bad(f"dtype={self.dtype!r}: use 'float32' (DeepXDE's default) or 'float64'")
        if not (isinstance(self.eval_ratio, (int, float)) and self.eval_ratio >= 0):
            bad(f"eval_ratio={self.eval_ratio!r}: give a number >= 0")
        for name in ("time_budget", "chunk_seconds", "t_final"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(f"{name}={v!r}: give a positive number of seconds")
        for name, lo in (("n", 1), ("width", 1), ("depth", 1), ("nt", 1), ("max_iter", 0)):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= lo):
                bad(f"{name}={v!r}: give an integer >= {lo}")
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            bad(f"threads={self.threads!r}: give an integer >= 1 (or None to leave torch's)")
        ts = tuple(float(t) for t in self.targets)
        if any(not (math.isfinite(t) and t > 0) for t in ts):
            bad(f"targets={self.targets!r}: give positive errors, e.g. 4e-5,1.8e-5")
        self.targets = tuple(sorted(set(ts) | set(DEFAULT_TARGETS), reverse=True))
        return self


# --------------------------------------------------------------------------- DeepXDE
def import_deepxde(quiet: bool):
    # DeepXDE's config module raises NotImplementedError at import under Open MPI (it would use
    # Horovod); say so plainly instead.
    if "deepxde" not in sys.modules and "OMPI_COMM_WORLD_SIZE" in os.environ:
        raise PeerInputError("DeepXDE cannot be imported under mpirun (its PyTorch backend "
                             "refuses Open MPI's environment); run the DeepXDE peer in a plain, "
                             "single process")
    global _DDE_DEVICE
    first = "deepxde" not in sys.modules
    if first:
        os.environ.setdefault("DDE_BACKEND", "pytorch")
    import torch

    before = torch.get_default_device()
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink if quiet else sys.stdout), \
                contextlib.redirect_stderr(sink if quiet else sys.stderr):
            import deepxde as dde
    except ImportError as e:
        raise DeepXDEUnavailable(f"DeepXDE is not importable ({e}); install it with "
                                 f"`pip install deepxde=={DEEPXDE_VERSION_TESTED}` (the "
                                 "benchmark extra) next to torch") from e
    if first:
        # DeepXDE's import makes CUDA (or MPS) torch's default device for the whole process;
        # keep its choice for our runs only (deepxde_settings) and give the process its own back
        _DDE_DEVICE = torch.get_default_device()
        if _DDE_DEVICE != before:
            torch.set_default_device(None if before.type == "cpu" else before)
    if dde.backend.backend_name != "pytorch":
        raise PeerInputError(f"DeepXDE runs with backend {dde.backend.backend_name!r}; set "
                             "DDE_BACKEND=pytorch before it is first imported")
    return dde


_DDE_DEVICE = None  # the default device DeepXDE chose at import (cuda when available)


def _space_time(X: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Slice-major (x, t) rows: all of X at times[0], then at times[1], ..."""
    return np.vstack([np.column_stack([X, np.full(len(X), t)]) for t in times])


def _build(dde, cfg: RunConfig, nodes: dict, test_X: np.ndarray):
    """DeepXDE data, network and compiled model on exactly these nodes; checks that it is so."""
    import torch

    prob = cfg.problem
    heat = prob == "heat"
    interior, boundary, normals = nodes["interior"], nodes["boundary"], nodes["normals"]
    allnodes = np.vstack([interior, boundary])
    pde_space = allnodes if cfg.pde_points == "all" else interior
    if heat:
        times = np.linspace(0.0, cfg.t_final, cfg.nt + 1)
        pde_pts = _space_time(pde_space, times)
        bc_pts = _space_time(boundary, times)
        bc_normals = np.tile(normals, (len(times), 1))
        ic_pts = _space_time(allnodes, times[:1])
    else:
        pde_pts, bc_pts, bc_normals, ic_pts = pde_space, boundary, normals, None

    real = dde.config.real(torch)
    real_np = dde.config.real(np)
    m = len(bc_pts)
    normals_t = torch.as_tensor(bc_normals, dtype=real)

    def robin(inputs, outputs, X):
        # the Robin BC is bcs[0], so its rows are the first m rows of the network input
        grad = dde.grad.jacobian(outputs, inputs, i=0)
        return (grad[:m, :2] * normals_t.to(grad.device)).sum(1, keepdim=True) + outputs[:m]

    bcs = [dde.icbc.PointSetOperatorBC(bc_pts, robin_data(prob, bc_pts, bc_normals)[:, None],
                                       robin)]
    if heat:
        bcs.append(dde.icbc.PointSetBC(ic_pts, exact_solution(prob, ic_pts)[:, None]))

    def pde(x, y, f):
        lap = dde.grad.hessian(y, x, i=0, j=0) + dde.grad.hessian(y, x, i=1, j=1)
        if prob == "poisson":
            return lap - f
        if prob == "nonlinear-poisson":
            return lap - torch.exp(y) - f
        return dde.grad.jacobian(y, x, i=0, j=2) - lap - f

    def aux(X):  # f at the training rows, in fp64 from the (already rounded) points
        return forcing(prob, X)[:, None]

    geom = dde.geometry.Disk([0.0, 0.0], 1.0)
    if heat:
        geom = dde.geometry.GeometryXTime(geom, dde.geometry.TimeDomain(0.0, cfg.t_final))
        data = dde.data.TimePDE(geom, pde, bcs, num_domain=0, num_boundary=0, num_initial=0,
                                anchors=pde_pts, auxiliary_var_function=aux)
    else:
        data = dde.data.PDE(geom, pde, bcs, num_domain=0, num_boundary=0, anchors=pde_pts,
                            auxiliary_var_function=aux)

    # DeepXDE trains on exactly these rows: [Robin rows, (IC rows), PDE rows], nothing sampled
    expect = [bc_pts] + ([ic_pts] if heat else []) + [pde_pts]
    expect = np.vstack(expect).astype(real_np)
    if data.train_x.shape != expect.shape or not np.array_equal(data.train_x, expect):
        raise RuntimeError("DeepXDE's training points are not the node set (layout changed in "
                           f"DeepXDE {dde.__version__}?)")
    if list(data.num_bcs) != [m] + ([len(ic_pts)] if heat else []):
        raise RuntimeError(f"DeepXDE's BC row counts {data.num_bcs} differ from the node set")

    d_in = 3 if heat else 2
    with torch.random.fork_rng(devices=[]):  # FNN's own draw must not move the global RNG
        net = dde.nn.FNN([d_in] + [cfg.width] * cfg.depth + [1], "tanh", "Glorot uniform")
    # DeepXDE's initialiser (xavier_uniform_ weights, zero biases), from our seeded generator
    gen = torch.Generator().manual_seed(int(cfg.seed))
    with torch.no_grad():
        for lin in net.linears:
            w = torch.empty(lin.weight.shape, dtype=lin.weight.dtype)
            torch.nn.init.xavier_uniform_(w, generator=gen)
            lin.weight.copy_(w)
            lin.bias.zero_()
    model = dde.Model(data, net)
    model.compile("L-BFGS", verbose=0)

    if heat:
        space = allnodes if cfg.heat_test == "collocation" else test_X
        test_pts = _space_time(space, np.linspace(0.0, cfg.t_final, cfg.nt + 1))
    else:
        test_pts = test_X
    counts = {"n_interior": len(interior), "n_boundary": len(boundary),
              "n_pde_rows": len(pde_pts), "n_bc_rows": m,
              "n_ic_rows": 0 if ic_pts is None else len(ic_pts), "n_test": len(test_pts),
              "n_params": sum(p.numel() for p in net.parameters())}
    return model, test_pts, counts


def _versions(dde) -> dict:
    import scipy
    import torch

    return {"deepxde": dde.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}


def _first_time_below(history, target, key="train_time_s"):
    for h in history:
        if h["rel_l2"] is not None and h["rel_l2"] <= target:
            return h[key]
    return None


@contextlib.contextmanager
def deepxde_settings(dde, cfg: RunConfig):
    """Threads, DeepXDE's device and float type and L-BFGS options for one run; restored on exit.

    Yields the L-BFGS options in force (DeepXDE's ``LBFGS_options``: ``maxcor``, ``ftol``,
    ``gtol``, ``maxiter``, ``maxfun``, ``maxls`` and the per-call ``iter_per_step``,
    ``fun_per_step``). Models compiled inside the block use them.
    """
    import torch

    prev_threads, prev_dtype = torch.get_num_threads(), torch.get_default_dtype()
    prev_device = torch.get_default_device()
    prev_float = dde.config.default_float()
    options = dde.optimizers.config.LBFGS_options
    prev_options = dict(options)
    sink = io.StringIO()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        if _DDE_DEVICE is not None and _DDE_DEVICE != prev_device:
            torch.set_default_device(_DDE_DEVICE)
        with contextlib.redirect_stdout(sink):
            dde.config.set_default_float(cfg.dtype)
        if cfg.max_iter:
            dde.optimizers.set_LBFGS_options(maxiter=cfg.max_iter)
            # the per-call limits, as deepxde/optimizers/config.py derives them at import
            options["iter_per_step"] = min(1000, options["maxiter"])
            options["fun_per_step"] = (options["maxfun"] * options["iter_per_step"]
                                       // options["maxiter"])
        yield dict(options)
    finally:  # leave DeepXDE's and torch's process-wide settings as they were
        options.clear()
        options.update(prev_options)
        with contextlib.redirect_stdout(sink):
            dde.config.set_default_float(prev_float)
        torch.set_default_dtype(prev_dtype)
        torch.set_num_threads(prev_threads)
        if torch.get_default_device() != prev_device:
            torch.set_default_device(None if prev_device.type == "cpu" else prev_device)


def build_model(dde, cfg: RunConfig):
    """DeepXDE model on ``cfg``'s node set (call inside :func:`deepxde_settings`).

    Returns ``(model, test_points, counts, info)``; ``info`` names the files used.
    """
    ref = reference_dir(cfg.ref_dir)
    nodes = load_node_set(cfg.n, ref)
    model, test_pts, counts = _build(dde, cfg, nodes, load_test_points(ref))
    return model, test_pts, counts, {"ref_dir": str(ref), "node_file": nodes["file"]}


def train_model(cfg: RunConfig):
    """:func:`run`, also returning the trained DeepXDE ``Model``: ``(result, model)``."""
    cfg = dataclasses.replace(cfg)
    cfg.validate()
    load_node_set(cfg.n, reference_dir(cfg.ref_dir))  # bad data or N: before importing DeepXDE
    dde = import_deepxde(quiet=not cfg.verbose)
    say = print if cfg.verbose else (lambda *a, **k: None)
    load_start = list(os.getloadavg())
    with deepxde_settings(dde, cfg) as opts:
        model, test_pts, counts, info = build_model(dde, cfg)
        result = _train(model, cfg, opts, test_pts, say)
    result["machine"]["loadavg_start"] = load_start

    group = model.opt.param_groups[0]
    result.update({
        "tool": "deepxde",
        "settings": {**dataclasses.asdict(cfg), "targets": list(cfg.targets), **info},
        "versions": _versions(dde),
        "counts": counts,
        "lbfgs": {"optimizer": type(model.opt).__module__ + "." + type(model.opt).__name__,
                  "lr": group["lr"], "history_size": group["history_size"],
                  "tolerance_grad": group["tolerance_grad"],
                  "tolerance_change": group["tolerance_change"],
                  "line_search_fn": group["line_search_fn"],
                  "maxiter": opts["maxiter"], "iter_per_call": opts["iter_per_step"],
                  "evals_per_call": opts["fun_per_step"],
                  "source": "deepxde.optimizers.config.LBFGS_options (set_LBFGS_options "
                            "defaults, maxiter from the settings unless 0)"},
    })
    best = result["best_rel_l2"]
    say(f"[deepxde {cfg.problem} N={cfg.n}] best rel L2 "
        f"{'n/a' if best is None else format(best, '.3e')} at "
        f"{result['time_to_best_s']:.1f} s (cpu {result['cpu_to_best_s']:.1f} s, iteration "
        f"{result['iteration_at_best']}); {result['iterations']} iterations in "
        f"{result['train_time_s']:.1f} s training (cpu {result['train_cpu_s']:.1f} s); "
        f"stop: {result['stop_reason']}", flush=True)
    for t, sec in result["time_to_error_s"].items():
        cpu = result["time_to_error_cpu_s"][t]
        say(f"    time to {float(t):.1e}: " + ("not reached" if sec is None else
                                              f"{sec:.1f} s (cpu {cpu:.1f} s)"), flush=True)
    return result, model


def run(cfg: RunConfig) -> dict:
    """Train DeepXDE on ``cfg``; return settings, versions, errors against training time.

    Keys of the result: ``tool``, ``settings``, ``versions``, ``machine``, ``lbfgs``, ``counts``,
    ``best_rel_l2``, ``time_to_best_s``, ``cpu_to_best_s``, ``iteration_at_best``,
    ``final_rel_l2``, ``time_to_error_s`` (target as str -> first training second at or below
    it, or None), ``time_to_error_cpu_s`` (the same in process CPU seconds), ``train_time_s``,
    ``train_cpu_s``, ``eval_time_s``, ``iterations``, ``func_evals``, ``extra_evals``,
    ``extra_eval_time_s``, ``stop_reason``, ``history`` (one record per chunk, the first at
    iteration 0: ``iteration``, ``func_evals``, ``extra_evals``, ``train_time_s``,
    ``train_cpu_s``, ``rel_l2`` and, with ``record_loss``, ``loss``, ``loss_terms``).

    Times are wall-clock seconds of training; ``*_cpu_s`` are the process's CPU seconds in the
    same timed regions: with one thread, the load-independent figure on a shared machine.
    """
    return train_model(cfg)[0]


class _FirstEvalTimer:
    """Times the first closure call of ``opt.step`` when ``skip_first`` is set (in ``last``).

    A chunk that starts inside a DeepXDE call begins with torch L-BFGS re-evaluating the loss
    and gradient at the current point, which the uninterrupted call already holds (bitwise the
    same values); its time is measured here and left out of the training time.
    """

    def __init__(self, opt):
        self.opt, self.skip_first, self.last, self.last_cpu = opt, False, 0.0, 0.0
        step = type(opt).step

        def timed_step(closure):
            self.last = self.last_cpu = 0.0
            if not self.skip_first:
                return step(opt, closure)
            first = [True]

            def wrapped():
                if not first[0]:
                    return closure()
                first[0] = False
                t0, c0 = time.perf_counter(), time.process_time()
                out = closure()
                float(out.detach())  # wait for the device (torch L-BFGS does so next)
                self.last = time.perf_counter() - t0
                self.last_cpu = time.process_time() - c0
                return out

            return step(opt, wrapped)

        opt.step = timed_step  # instance attribute: DeepXDE's train_step calls self.opt.step

    def remove(self):
        self.opt.__dict__.pop("step", None)


def _train(model, cfg: RunConfig, opts: dict, test_pts: np.ndarray, say) -> dict:
    """Replay DeepXDE's ``_train_pytorch_lbfgs`` in timed chunks (see the module docstring)."""
    import torch

    net, opt = model.net, model.opt
    group = opt.param_groups[0]
    X, y, aux = model.data.train_next_batch()
    param0 = next(net.parameters())
    Xt = torch.as_tensor(test_pts, dtype=param0.dtype, device=param0.device)
    u_exact = exact_solution(cfg.problem, test_pts)
    u_norm = float(np.linalg.norm(u_exact))

    def evaluate(it, evals, extra, train_t, train_c):
        t0 = time.perf_counter()
        with torch.no_grad():
            up = net(Xt).reshape(-1).to(torch.float64).cpu().numpy()
        err = float(np.linalg.norm(up - u_exact) / u_norm)
        rec = {"iteration": it, "func_evals": evals, "extra_evals": extra,
               "train_time_s": train_t, "train_cpu_s": train_c,
               "rel_l2": err if math.isfinite(err) else None}
        if cfg.record_loss:
            losses = model.outputs_losses_train(X, y, aux)[1].detach()
            terms = [float(v) for v in losses.to(torch.float64).cpu()]
            rec["loss"] = float(sum(terms))
            names = ["pde", "bc"] + (["ic"] if cfg.problem == "heat" else [])
            rec["loss_terms"] = dict(zip(names, terms))
        return rec, time.perf_counter() - t0

    iter_per_call, evals_per_call = opts["iter_per_step"], opts["fun_per_step"]
    maxiter = opts["maxiter"]
    state = opt.state[group["params"][0]]
    history = []
    rec, eval_time = evaluate(0, 0, 0, 0.0, 0.0)
    history.append(rec)

    total_it = extra = 0
    extra_time = 0.0
    timer = _FirstEvalTimer(opt)
    call_open, call_it, call_ev = False, 0, 0
    train_time = train_cpu = 0.0
    k_next = 10  # the first chunk measures the cost of an iteration
    stop = None
    last_print = 0.0
    try:
        while stop is None:
            if not call_open:  # DeepXDE: `while prev_n_iter < maxiter:` one optimizer.step call
                if total_it >= maxiter:
                    stop = f"max_iter: DeepXDE's maxiter ({maxiter}) reached"
                    break
                call_open, call_it, call_ev, mid = True, 0, 0, False
            else:
                mid = True
            k = min(k_next, iter_per_call - call_it)
            group["max_iter"] = k
            # a chunk that starts inside a call re-evaluates f and grad once (current_evals = 1):
            # give it one evaluation more so the line search sees the call's remaining budget
            group["max_eval"] = evals_per_call - call_ev + (1 if mid else 0)
            n0, e0 = state.get("n_iter", 0), state.get("func_evals", 0)
            timer.skip_first = mid
            t0, c0 = time.perf_counter(), time.process_time()
            model.train_step(X, y, aux)
            dt = time.perf_counter() - t0
            # the redundant first evaluation of a mid-call chunk is not DeepXDE's work: not counted
            train_time += dt - timer.last
            dc = time.process_time() - c0
            train_cpu += dc - timer.last_cpu
            extra_time += timer.last
            di, de = state["n_iter"] - n0, state["func_evals"] - e0
            total_it += di
            call_it += di
            if mid:
                extra += 1
                call_ev += de - 1
            else:
                call_ev += de
            stopped_early = di < k and call_ev < evals_per_call  # a tolerance ended the call
            if di == 0:
                stop = "gtol: gradient max-norm below tolerance_grad at the start of a call"
            elif call_it >= iter_per_call or call_ev >= evals_per_call or stopped_early:
                call_open = False
                if call_it == 1:  # DeepXDE's `if prev_n_iter == n_iter - 1: break  # Converged`
                    stop = "converged: an L-BFGS call made a single iteration (DeepXDE's rule)"
            rec, et = evaluate(total_it, state["func_evals"], extra, train_time, train_cpu)
            eval_time += et
            history.append(rec)
            if rec["rel_l2"] is None or (cfg.record_loss and not math.isfinite(rec["loss"])):
                stop = stop or "non-finite loss or network output"
            spent = train_time if cfg.budget_clock == "wall" else train_cpu
            if stop is None and spent >= cfg.time_budget:
                stop = f"time budget ({cfg.time_budget:g} s {cfg.budget_clock}) reached"
            if train_time - last_print >= 10.0 or stop:
                last_print = train_time
                e = rec["rel_l2"]
                say(f"  t={train_time:7.1f}s it={total_it:6d} rel_l2="
                    + ("nan" if e is None else f"{e:.3e}")
                    + (f" loss={rec['loss']:.3e}" if cfg.record_loss else ""), flush=True)
            sec_it = max(dc if cfg.budget_clock == "cpu" else dt, 1e-9) / max(di, 1)
            left = cfg.time_budget - spent
            # at least chunk_seconds, and 4x the last evaluation: wall time stays <~ 1.25x
            chunk = max(cfg.chunk_seconds, cfg.eval_ratio * et)
            k_next = int(max(1, min(iter_per_call, round(chunk / sec_it),
                                    math.ceil(left / sec_it) if left > 0 else 1)))

    finally:  # the model leaves with DeepXDE's own per-call limits
        timer.remove()
        group["max_iter"], group["max_eval"] = iter_per_call, evals_per_call
    errs = [(h["rel_l2"], i) for i, h in enumerate(history) if h["rel_l2"] is not None]
    best, ib = min(errs) if errs else (None, 0)
    return {"best_rel_l2": best, "time_to_best_s": history[ib]["train_time_s"],
            "iteration_at_best": history[ib]["iteration"],
            "cpu_to_best_s": history[ib]["train_cpu_s"],
            "final_rel_l2": history[-1]["rel_l2"],
            "time_to_error_s": {repr(t): _first_time_below(history, t) for t in cfg.targets},
            "time_to_error_cpu_s": {repr(t): _first_time_below(history, t, "train_cpu_s")
                                    for t in cfg.targets},
            "train_time_s": train_time, "train_cpu_s": train_cpu, "eval_time_s": eval_time,
            "iterations": total_it,
            "func_evals": state.get("func_evals", 0), "extra_evals": extra,
            "extra_eval_time_s": extra_time,
            "stop_reason": stop, "history": history,
            "machine": {"threads": torch.get_num_threads(), "device": str(param0.device),
                        "loadavg_end": list(os.getloadavg())}}


# --------------------------------------------------------------------------- CLI
def _floats(text: str):
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="deepxde_runner",
                                 description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = RunConfig()
    ap.add_argument("--problem", default=d.problem, choices=PROBLEMS)
    ap.add_argument("--n", type=int, default=d.n, help="N of the authors' node set")
    ap.add_argument("--time", type=float, default=d.time_budget, dest="time_budget",
                    help="training-time budget (s), evaluation excluded")
    ap.add_argument("--budget-clock", default=d.budget_clock, choices=("wall", "cpu"),
                    help="clock of --time: wall seconds, or process CPU seconds (loaded machine)")
    ap.add_argument("--targets", type=_floats, default=(),
                    help="errors to time, comma separated (1e-3 and 1e-4 are always timed)")
    ap.add_argument("--seed", type=int, default=d.seed, help="seed of the Glorot weights")
    ap.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    ap.add_argument("--chunk-seconds", type=float, default=d.chunk_seconds,
                    help="training seconds between test-error evaluations")
    ap.add_argument("--eval-ratio", type=float, default=d.eval_ratio,
                    help="a chunk trains at least this many times as long as an evaluation takes")
    ap.add_argument("--max-iter", type=int, default=d.max_iter,
                    help="DeepXDE's L-BFGS maxiter (its default 15000); 0: DeepXDE's setting")
    ap.add_argument("--pde-points", default=d.pde_points, choices=("all", "interior"),
                    help="PDE residual at all nodes (DeepXDE's usage, eq. (12)) or interior only")
    ap.add_argument("--heat-test", default=d.heat_test, choices=("collocation", "large"),
                    help="heat test points: the nodes or the 21748-point set, every slice")
    ap.add_argument("--dtype", default=d.dtype, choices=("float32", "float64"),
                    help="DeepXDE's float type (its default float32)")
    ap.add_argument("--ref-dir", default=None, help="folder of the authors' .mat node sets")
    ap.add_argument("--no-loss", action="store_true", help="do not record the training loss")
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    a = ap.parse_args(argv)
    try:
        if a.json and Path(a.json).exists() and not a.overwrite:
            raise PeerInputError(f"{a.json} exists; give another --json path or --overwrite")
        cfg = RunConfig(problem=a.problem, n=a.n, time_budget=a.time_budget,
                        budget_clock=a.budget_clock, seed=a.seed,
                        threads=a.threads, targets=a.targets, chunk_seconds=a.chunk_seconds,
                        eval_ratio=a.eval_ratio,
                        max_iter=a.max_iter, pde_points=a.pde_points, heat_test=a.heat_test,
                        dtype=a.dtype, ref_dir=a.ref_dir, record_loss=not a.no_loss,
                        verbose=not a.quiet)
        res = run(cfg)
    except (PeerInputError, DeepXDEUnavailable) as e:
        print(f"deepxde_runner: error: {e}", file=sys.stderr)
        return 2
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
        if not a.quiet:
            print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
