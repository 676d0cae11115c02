"""Command line: ``python -m dtpinn_dist.train [flags]`` (see ``--help``), a thin layer over the
library's ``Problem`` -> ``discretize`` -> ``fit``.

With no flags: the paper's linear Poisson problem on the unit disk (the authors' 1663-node cloud
when their node sets are found, else a generated ~1663-node disk cloud; 828 nodes for the heat
equation, as in the paper), RBF-FD order 4, fp64 DT-PINN, L-BFGS with a strong-Wolfe line
search; the run folder ``runs/<timestamp>/`` (or ``--out``) gets the resolved ``config.toml``,
``metrics.json``, the model, the solution at the test points (.npz, VTK), PNG plots and
``train.log`` (see docs/outputs.md). ``--config FILE.toml`` reads settings from a file
(docs/config.md); flags override it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

AUTHORS_FILE = "DiskPoissonNodes.mat"
AUTHORS_TEST_FILE = "DiskPoissonNodesLarge.mat"
DEFAULT_N = 1663
HEAT_N = 828  # the paper's heat experiment (Nt = 24: 20700 space-time points)

#: Phrases of library messages -> the flag that set that input.
_FLAG_OF = {"has no data g": "--g", "PDE": "--pde", "exact solution": "--exact", "forcing f": "--f",
            "boundary data g": "--g", "initial value": "--u0", "time interval": "--time",
            "nt (time steps)": "--nt", "order p": "--order", "forcing f (derived": "--exact",
            "(derived from the exact solution)": "--exact"}


class UserError(ValueError):
    """Bad input: reported as one line, exit status 2."""


def _reference_candidates() -> list[tuple[Path, str]]:
    """Where the authors' node sets are looked for, with how that place was chosen:
    ``$DTPINN_REFERENCE_DIR`` alone when it is set, else ``shared/reference`` beside the
    repository (the project's layout)."""
    env = os.environ.get("DTPINN_REFERENCE_DIR")
    if env:
        return [(Path(env), "DTPINN_REFERENCE_DIR")]
    return [(Path(__file__).resolve().parents[3] / "shared" / "reference",
             "shared/reference beside the repository")]


def _reference_dir() -> Path | None:
    # $DTPINN_REFERENCE_DIR, else shared/reference beside the repository (the project layout)
    for c, _ in _reference_candidates():
        if (c / AUTHORS_FILE).exists():
            return c
    return None


def _reference_missing() -> str:
    """Why the default run does not use the authors' cloud (for the banner)."""
    looked = "; ".join(f"{c} ({how})" for c, how in _reference_candidates())
    return (f"the authors' {AUTHORS_FILE} was not found in {looked}; set "
            "DTPINN_REFERENCE_DIR to the folder holding it to train on the authors' cloud")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the full usage is 30 lines: ``--help`` shows it)."""

    def error(self, message):
        if "expected one argument" in message:
            message += " (a value that starts with '-' is written with '=': --pde=-lap(u))"
        self.exit(2, f"error: {message}; {self.prog} --help lists the options\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m dtpinn_dist.train", allow_abbrev=False,
        description="Train a DT-PINN (RBF-FD derivatives by SpMV) or a vanilla PINN (autograd) "
                    "on a declared PDE. Unknown single-dash options go to PETSc (-log_view).")
    g = p.add_argument_group("problem")
    g.add_argument("--problem", choices=["poisson", "nonlinear-poisson", "heat"],
                   default="poisson", help="the paper's problem whose settings are the defaults")
    g.add_argument("--pde", default=None,
                   help="the operator F in F(u) = f, e.g. '-div((1+x**2)*grad(u)) + u**3' "
                        "(default: the --problem's: lap(u), lap(u) - exp(u), dt(u) - lap(u))")
    g.add_argument("--exact", default=None, help="exact solution u(x, y[, z][, t]) (default: "
                   "the paper's); f, g and u0 not given are derived from it")
    g.add_argument("--f", default=None, help="forcing f (default F(exact))")
    g.add_argument("--g", default=None, help="boundary data g, may use nx, ny (default from "
                   "--exact)")
    g.add_argument("--u0", default=None, help="initial value (time-dependent problems)")
    g.add_argument("--bc", choices=["robin", "dirichlet", "dirichlet-exact", "neumann"],
                   default="robin",
                   help="condition on every boundary part: dn(u) + u, u, or dn(u) = g; "
                        "dirichlet-exact: u = g imposed by the network's form u = G + phi N "
                        "(DT, steady; best on smooth domains, see docs/loss.md)")
    g.add_argument("--time", nargs=2, type=float, default=None, metavar=("T0", "T1"),
                   help="time interval of a time-dependent PDE (heat: 0 1)")
    g.add_argument("--nt", type=int, default=None, help="time steps Nt (Nt+1 slices; heat: 24)")
    c = p.add_argument_group("point cloud")
    c.add_argument("--nodes", default=None, help="point-cloud file (.mat authors' format or .npz)")
    c.add_argument("--index", type=int, default=None, help="entry of a .mat file (default: last)")
    c.add_argument("--n-points", type=int, default=None, help="generate a cloud of about N nodes")
    c.add_argument("--domain", default="disk", help="built-in domain for --n-points (disk, star, "
                   "annulus, ellipse, rectangle, ball, box)")
    c.add_argument("--test-points", type=int, default=None,
                   help="size of a generated test set (default: about 4N, at most 20000)")
    d = p.add_argument_group("discretisation")
    d.add_argument("--method", choices=["dt", "vanilla", "solve"], default="dt",
                   help="dt: DT-PINN; vanilla: autograd PINN; solve: no network, the discrete "
                        "system solved directly by Newton + sparse LU / PETSc KSP (the floor a "
                        "DT-PINN on these operators can reach; -solve_ksp_type ... configure it)")
    d.add_argument("--dtype", choices=["fp64", "fp32"], default=None,
                   help="default fp64 for dt, fp32 for vanilla (the paper's pairing)")
    d.add_argument("--order", type=int, default=4, help="RBF-FD order p (2..6, default 4)")
    d.add_argument("--backend", choices=["torch", "cupy", "petsc"], default=None,
                   help="default: petsc when launched on more than one MPI rank, else torch")
    d.add_argument("--partitioner", choices=["auto", "ptscotch", "parmetis", "hilbert",
                                             "morton", "block"], default="auto",
                   help="petsc backend: how nodes are split across ranks (auto: PT-Scotch or "
                        "ParMETIS through PETSc when available, else a Hilbert curve)")
    d.add_argument("--weighting", choices=["auto", "symbol", "count"], default="auto",
                   help="row weights of the loss: symbol (each row divided by its operator's "
                        "size on the domain's smoothest mode, so every row weighs what its "
                        "error costs), count (the paper's eq. (12): 1/sqrt(rows) per block), "
                        "auto (default: symbol when a part is Dirichlet, else count); "
                        "docs/loss.md")
    d.add_argument("--device", default=None, help="torch device (default cpu; cuda for cupy)")
    o = p.add_argument_group("training")
    o.add_argument("--optimizer", choices=["lbfgs", "adam", "lm", "gn"], default="lbfgs",
                   help="lm = Levenberg-Marquardt (DT-PINNs only; reaches the discretisation "
                        "error)")
    o.add_argument("--schedule", default=None,
                   help="optimizer phases, e.g. 'lbfgs:300,lm:100' (overrides --optimizer and "
                        "--steps)")
    o.add_argument("--steps", type=int, default=100)
    o.add_argument("--lr", type=float, default=None,
                   help="default: 1.0 with a line search, else the paper's rate")
    o.add_argument("--line-search", choices=["strong-wolfe", "none"], default="strong-wolfe",
                   help="L-BFGS line search ('none' = the paper's setting)")
    o.add_argument("--history-size", type=int, default=100)
    o.add_argument("--max-iter", type=int, default=20, help="L-BFGS iterations per step")
    o.add_argument("--tolerance-grad", type=float, default=0.0,
                   help="L-BFGS stops at max |gradient| <= this (default 0: never early)")
    o.add_argument("--tolerance-change", type=float, default=0.0,
                   help="L-BFGS stops when its step or loss change falls to this (default 0)")
    o.add_argument("--lm-step", choices=["auto", "dense", "cg", "lagged"], default="auto",
                   help="LM step: dense Cholesky, matrix-free CG, CG preconditioned by a lagged Cholesky factor, or auto (chosen by a cost model: dense where factoring is cheap, else cg, then lagged)")
    o.add_argument("--lm-memory-gb", type=float, default=4.0,
                   help="memory budget of the dense LM step")
    o.add_argument("--lm-cg-maxiter", type=int, default=None, help="CG iterations per solve (--lm-step cg; default 100) or per step before factoring (auto; default: the cost model's)")
    o.add_argument("--tol", type=float, default=0.0, help="stop when the loss is <= tol")
    o.add_argument("--time-budget", type=float, default=None, help="seconds of training time")
    o.add_argument("--eval-every", type=int, default=10,
                   help="metrics every this many steps (0: only at the start and the end)")
    o.add_argument("--width", type=int, default=50)
    o.add_argument("--depth", type=int, default=4)
    o.add_argument("--inputs", choices=["auto", "box", "raw"], default="auto",
                   help="the network's inputs: box (coordinates and time mapped from the "
                        "cloud's bounding box to [-1, 1]), raw (the paper's), auto (default: "
                        "box unless they already lie in [-1, 1] and span half of it)")
    o.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("run")
    r.add_argument("--config", default=None, metavar="FILE.toml",
                   help="read settings from a TOML file (docs/config.md); flags given here "
                        "override it. Every run folder holds its resolved config.toml")
    r.add_argument("--check-lockstep", action="store_true",
                   help="after every evaluation, check that all ranks hold bit-identical "
                        "parameters")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--out", default=None, help="output directory (default runs/<timestamp>; "
                   "with --resume DIR: DIR)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (finished or stopped); its files are set "
                        "aside in OUT/.previous-run/ until this run has results")
    r.add_argument("--quiet", action="store_true",
                   help="no progress on the terminal (RUN/train.log still gets every line)")
    _add_checkpoint_flags(r)
    return p


def _add_checkpoint_flags(group) -> None:
    """--checkpoint-every, --resume (issue 11 section 3)."""
    group.add_argument("--checkpoint-every", type=int, default=50, metavar="K",
                       help="write OUT/checkpoint.pt every K steps (0: only when the run stops; "
                            "it is also written at the end, at the time budget and on Ctrl-C, "
                            "SIGTERM or SIGUSR1)")
    group.add_argument("--resume", default=None, metavar="DIR",
                       help="continue the run in the folder DIR from its checkpoint.pt, with the "
                            "settings of its config.toml (flags given here override them, e.g. "
                            "a larger --steps); its lock, metrics and outputs are DIR's")


def _resume_config(pre) -> str:
    """``--resume DIR``: check that DIR holds a checkpoint, and return the configuration file the
    resumed run reads: ``--config`` when given, else ``DIR/config.toml`` (the resolved settings
    the run wrote when it started)."""
    from ..optimizer.checkpoint import CHECKPOINT_FILE

    run = Path(pre.resume)
    if not (run / CHECKPOINT_FILE).is_file():
        raise UserError(f"--resume: no checkpoint at {run / CHECKPOINT_FILE} (nothing to "
                        "resume); give the folder of a run that wrote one")
    if pre.out is not None and Path(pre.out).resolve() != run.resolve():
        raise UserError(f"--resume {run} continues the run in {run}; drop --out {pre.out} (copy "
                        "the folder first to continue it elsewhere)")
    if pre.method == "solve":
        raise UserError("--resume continues a training run; --method solve has no checkpoint")
    if pre.config is not None:
        return pre.config
    cfg = run / "config.toml"
    if not cfg.is_file():
        raise UserError(f"--resume: {cfg} is missing; give the run's settings with --config "
                        "FILE.toml")
    return str(cfg)


def _load_cloud(args, time_dependent: bool):
    """The point cloud (with ghosts, and test points where available) and its description:
    where it comes from and why, its actual sizes, and the test set (for the banner, metrics.json
    and the resolved config.toml)."""
    from ..geometry import load_cloud, load_mat, make_cloud
    from .config import build_domain

    nodes_n = getattr(args, "nodes_n", None)
    if args.nodes is not None:
        try:
            cloud = load_cloud(args.nodes, index=args.index, n=nodes_n)
        except (OSError, KeyError) as exc:
            raise UserError(f"cannot read point cloud {args.nodes}: {exc}") from None
        except ValueError as exc:  # the loaders' one-line messages name the file
            raise UserError(str(exc)) from None
        desc = {"kind": "file", "path": str(Path(args.nodes).resolve()), "index": args.index,
                "n_select": nodes_n, "text": f"{args.nodes}"
                + (f" (set with N = {nodes_n})" if nodes_n else
                   f" (set {args.index})" if args.index is not None else "")}
    else:
        ref = _reference_dir()
        default_src = args.n_points is None and args.domain == "disk" \
            and not getattr(args, "domain_params", None)
        if default_src and ref is not None:
            # the authors' 1663-node cloud; heat: their 828-node set, as in the paper's experiment
            n_auth = HEAT_N if time_dependent else DEFAULT_N
            cloud = load_mat(ref / AUTHORS_FILE, n=n_auth)
            how = next((h for c, h in _reference_candidates() if c == ref), "")
            desc = {"kind": "authors", "path": str((ref / AUTHORS_FILE).resolve()),
                    "text": f"the authors' {AUTHORS_FILE} (the set with N = {n_auth}) from {ref} "
                            f"({how})"}
        else:
            n = args.n_points if args.n_points is not None else (HEAT_N if time_dependent
                                                                  else DEFAULT_N)
            domain = build_domain(args.domain, getattr(args, "domain_params", None))
            cloud = make_cloud(domain, n=n, seed=args.seed)
            desc = {"kind": "generated", "domain": args.domain, "n_requested": int(n),
                    "seed": args.seed, "text": f"generated {args.domain} (seed {args.seed})"}
            if default_src:
                desc["why"] = _reference_missing()
    desc.update(N=cloud.n_interior + cloud.n_boundary, Ni=cloud.n_interior,
                Nb=cloud.n_boundary, time_dependent=bool(time_dependent))
    cloud.test, desc["test"] = _test_set(args, cloud, desc, time_dependent)
    return cloud, desc


def _test_set(args, cloud, desc, time_dependent):
    """(test points or None, description): a file's nodes, the authors' large set, the cloud's
    own (.npz), or a generated set; none for time-dependent problems (the error is then
    measured at the collocation nodes, every time slice)."""
    from ..geometry import load_cloud, make_test_points
    from .config import build_domain

    test_nodes = getattr(args, "test_nodes", None)
    if test_nodes is not None:
        try:
            t = load_cloud(test_nodes, index=getattr(args, "test_index", None), ghost=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"test nodes: {exc}") from None
        return t.collocation, {"kind": "file", "path": str(Path(test_nodes).resolve()),
                               "index": getattr(args, "test_index", None),
                               "n": len(t.collocation)}
    if desc["kind"] == "authors" and not time_dependent:
        ref = Path(desc["path"]).parent
        if (ref / AUTHORS_TEST_FILE).exists():
            from ..geometry import load_mat
            t = load_mat(ref / AUTHORS_TEST_FILE, index=-1, ghost=False).collocation
            return t, {"kind": "file", "path": str((ref / AUTHORS_TEST_FILE).resolve()),
                       "index": -1, "n": len(t)}
    if cloud.test is not None:
        return cloud.test, {"kind": "cloud", "n": len(cloud.test)}
    if time_dependent or desc["kind"] != "generated":
        return None, {"kind": "none", "n": 0}
    n_test = args.test_points or min(20000, 4 * desc["n_requested"])
    domain = build_domain(args.domain, getattr(args, "domain_params", None))
    t = make_test_points(domain, n_test, seed=args.seed + 7919)  # the seed make_cloud uses
    return t, {"kind": "generated", "n_requested": int(n_test), "n": len(t)}


def cloud_banner(desc: dict) -> list[str]:
    """Two banner lines: the cloud's source (and why), sizes; the test set."""
    asked = f"; asked for {desc['n_requested']}" if desc.get("n_requested") else ""
    lines = [f"cloud: {desc['text']}: N = Ni + Nb = {desc['N']} (Ni = {desc['Ni']}, "
             f"Nb = {desc['Nb']}{asked})"]
    if desc.get("why"):
        lines.append(f"  why generated: {desc['why']}")
    t = desc.get("test") or {}
    kind = t.get("kind")
    if kind == "file":
        which = "" if t.get("index") is None else \
            ", its last set" if t["index"] == -1 else f", set {t['index']}"
        lines.append(f"test set: {t['n']} points, the nodes of {t['path']}{which}")
    elif kind == "generated":
        lines.append(f"test set: {t['n']} points generated independently (asked for "
                     f"{t['n_requested']})")
    elif kind == "cloud":
        lines.append(f"test set: {t['n']} points from the cloud file")
    else:
        lines.append("test set: none; the error is measured at the N collocation nodes"
                     + (" (every time slice)" if desc.get("time_dependent") else ""))
    return lines


def _problem(args):
    """The declared problem from the flags and the config file (the paper's --problem supplies
    the defaults)."""
    from ..problem import Problem
    from ..problem.paper import PAPER
    from .config import bc_conditions

    preset = PAPER[args.problem]
    # a user's data replaces the paper's exact solution (then without one: no error metric)
    exact = args.exact if (args.exact is not None or args.f is not None) else preset["exact"]
    return Problem(args.pde or preset["pde"], bc=bc_conditions(args), exact=exact, f=args.f,
                   initial=args.u0,
                   time=tuple(args.time) if args.time is not None else preset.get("time"),
                   nt=args.nt if args.nt is not None else preset.get("nt", 24),
                   params=getattr(args, "params", None),
                   name=args.problem if args.pde is None else None)


def _train_config(args):
    """The training settings, checked at once (one message naming the flag)."""
    from ..optimizer.trainer import ConfigError, TrainConfig

    lm_opts = {"step": args.lm_step, "memory_budget": args.lm_memory_gb * 1e9}
    if args.lm_cg_maxiter is not None:
        lm_opts["cg_maxiter"] = args.lm_cg_maxiter
    if not (args.lm_memory_gb > 0 and args.lm_memory_gb < float("inf")):
        raise UserError(f"--lm-memory-gb {args.lm_memory_gb}: give a positive number of GB")
    try:
        # verbose always: the lines go to train.log; --quiet only silences the terminal
        return TrainConfig(optimizer=args.optimizer, lr=args.lr, schedule=args.schedule,
                           lm=lm_opts, line_search=args.line_search == "strong-wolfe",
                           history_size=args.history_size, max_iter=args.max_iter,
                           tolerance_grad=args.tolerance_grad,
                           tolerance_change=args.tolerance_change, steps=args.steps,
                           tol=args.tol, time_budget=args.time_budget,
                           eval_every=args.eval_every, seed=args.seed, width=args.width,
                           depth=args.depth, activation=getattr(args, "activation", "tanh"),
                           inputs=args.inputs,
                           verbose=True, checkpoint_every=args.checkpoint_every)
    except ConfigError as exc:
        raise UserError(f"--{exc.param.replace('_', '-')}: {exc}") from None


def _flagged(exc: Exception) -> str:
    """A library message with the flag that set the offending input in front of it."""
    msg = str(exc)
    for phrase, flag in _FLAG_OF.items():
        if phrase in msg:
            return f"{flag}: {msg}"
    return msg


def run(args, log=None) -> dict:
    import torch

    from ..comm import as_comm
    from ..outputs import RunLog
    from ..problem import ExpressionError, discretize

    comm = as_comm(None)
    # rank 0 reports; the others keep their (never attached) log quiet
    log = log if log is not None else RunLog(quiet=args.quiet or comm.rank != 0)
    if args.threads is not None:  # its range is checked with the arguments (config.py)
        torch.set_num_threads(args.threads)
    cfg = _train_config(args)
    uses_lm = args.optimizer in ("lm", "gn") or any(
        part.split(":")[0].strip().lower() in ("lm", "gn")
        for part in (args.schedule or "").split(","))
    if args.method != "dt" and uses_lm:
        raise UserError("Levenberg-Marquardt needs --method dt (its Jacobian is the sparse "
                        "operators times the network's); use --optimizer lbfgs or adam for "
                        "vanilla PINNs")
    try:
        problem = _problem(args)
        problem.check_well_posed()  # before the cloud is read
    except (ExpressionError, ValueError) as exc:
        raise UserError(_flagged(exc)) from None
    # the output folder is checked before any work (writable, not finished, not in use)
    out = _check_out(args, comm)
    # Rank 0 reads or generates the cloud and every rank gets its bits: ranks never disagree
    # on the nodes (no shared filesystem needed, no last-bit differences between machines).
    cloud, cloud_desc = _load_cloud(args, problem.time_dependent) if comm.rank == 0 \
        else (None, None)
    cloud, cloud_desc = comm.bcast((cloud, cloud_desc))
    if args.backend == "cupy":
        from ..operators.cupy_csr import cupy_available
        ok, why = cupy_available()
        if not ok:
            raise UserError(f"--backend cupy: {why}")
    try:
        disc = discretize(problem, cloud, args.order,
                          method="dt" if args.method == "solve" else args.method, comm=comm,
                          backend=args.backend, dtype=args.dtype, device=args.device,
                          partitioner=args.partitioner, weighting=args.weighting)
    except ValueError as exc:  # ExpressionError included: bad data, parts, cloud
        raise UserError(_flagged(exc)) from None
    info = disc.info
    if comm.rank == 0:
        for line in cloud_banner(cloud_desc):
            log(line)
    if args.method == "solve":
        return _solve(args, disc, problem, cloud_desc, out, comm, log)
    if comm.rank == 0:
        log(f"{args.method} PINN, {problem.pde} = f, {info['dtype']}, p={args.order}, "
            f"backend {info['backend']}, {comm.size} rank(s), setup "
            f"{info['setup_time_s']:.2f}s")
    # inputs are valid and set up: only now claim the output folder (rank 0)
    rundir = _claim_out(args, comm, out, log)
    settings = None
    try:
        trainer = _trainer(args, disc, cfg, rundir, log)
        settings = _settings(args, problem, info, trainer, cloud_desc, rundir, torch)
        if comm.rank == 0:
            _write_config(rundir, args, cloud_desc, problem, trainer)
    except BaseException:
        if rundir is not None:
            if hasattr(log, "close"):
                log.close()
            rundir.abandon()  # failed before training: leave nothing behind
        raise
    try:
        if args.check_lockstep and comm.size > 1:
            _check_lockstep_on_evaluate(trainer)
        _progress_on_evaluate(trainer, log)
        if comm.rank == 0 and hasattr(log, "start"):
            log.start(sum(n for _, n in trainer.phases))
        result = _train(trainer)
        if hasattr(log, "close_bar"):
            log.close_bar()  # the lines after training print plainly
        result.error_split = _error_split(disc, trainer.model, log)  # collective
        paths = {}
        if comm.rank == 0:
            paths = _write_results(rundir, settings, result, trainer, disc, cloud, comm, log)
            _report_stop(result, rundir.path)
    finally:
        if rundir is not None:
            rundir.release()
        if comm.rank == 0 and hasattr(log, "close"):
            log.close()
    # rank 0 knows the folder; the other ranks return at once (no collective after training)
    return {"out": str(rundir.path) if rundir is not None else None, "result": result,
            "paths": paths}


def _check_out(args, comm):
    """Rank 0: the folder this run will write (``--out`` or ``runs/<timestamp>``; ``--resume
    DIR``: DIR), checked now, before the cloud is read
    (:func:`~dtpinn_dist.outputs.check_run_dir`); created later."""
    from ..outputs import check_run_dir, default_out_dir

    if comm.rank != 0:
        return None
    out = Path(args.out) if args.out is not None else default_out_dir()
    check_run_dir(out, overwrite=args.overwrite, resume=args.resume is not None)
    return out


def _claim_out(args, comm, out, log):
    """Rank 0: create the folder and its lock (exclusively), attach ``train.log``."""
    from ..outputs import OutputExistsError, RunDir, default_out_dir

    if comm.rank != 0:
        return None
    for _ in range(5):
        try:
            rundir = RunDir(out, overwrite=args.overwrite, resume=args.resume is not None).claim()
            break
        except OutputExistsError:
            if args.out is not None:
                raise
            out = default_out_dir()  # another run took this timestamp meanwhile
    else:  # pragma: no cover - five collisions in a row
        raise UserError("could not claim a fresh runs/<timestamp> folder; give --out")
    if hasattr(log, "attach"):
        log.attach(rundir.file("train.log"))
    return rundir


def _trainer(args, disc, cfg, rundir, log):
    """The trainer, checkpointing to ``RUN/checkpoint.pt`` (rank 0 writes it, every rank knows
    the path) and continuing from it with ``--resume``. Ctrl-C, SIGTERM and SIGUSR1 stop it
    cleanly after the step in progress."""
    from ..optimizer import CheckpointError, Trainer
    from ..outputs.checkpoint import checkpoint_path

    comm = disc.comm
    path = comm.bcast(str(checkpoint_path(rundir.path)) if rundir is not None else None)
    trainer = Trainer(disc, cfg, log=log, checkpoint=path, catch_signals=True)
    if args.resume is not None:
        try:
            trainer.resume(args.resume)
        except CheckpointError as exc:
            raise UserError(f"--resume: {exc}") from None
        if comm.rank == 0:
            log(f"resumed from {args.resume} at step {trainer.step_count}")
    return trainer


def _train(trainer):
    """``trainer.train()``; a checkpoint that cannot be written (full disk) is one line saying
    which checkpoint is kept and how to continue (every rank raises it)."""
    from ..optimizer import CheckpointError
    from ..outputs.checkpoint import write_failed_message

    try:
        return trainer.train()
    except CheckpointError as exc:
        raise UserError(write_failed_message(exc, trainer.checkpoint_step,
                                             trainer.checkpoint.parent)) from None


def _report_stop(result, run_dir) -> None:
    """Rank 0: one line on stderr when a signal stopped the run (and how to continue it)."""
    from ..outputs.checkpoint import stop_message

    msg = stop_message(result, run_dir)
    if msg:
        print(msg, file=sys.stderr, flush=True)


def _settings(args, problem, info, trainer, cloud_desc, rundir, torch) -> dict:
    settings = dict(vars(args))
    settings.update({"problem_declared": problem.describe(), "dtype": info["dtype"],
                     "backend": info["backend"], "device": info["device"], "lr": trainer.lr,
                     "lr_by_phase": trainer.lrs, "cloud": cloud_desc,
                     "n_interior": cloud_desc["Ni"], "n_boundary": cloud_desc["Nb"],
                     "n_collocation": cloud_desc["N"],
                     "n_test": (cloud_desc.get("test") or {}).get("n"),
                     "setup_time_s": info["setup_time_s"], "torch": torch.__version__,
                     "threads": torch.get_num_threads(),
                     "out": str(rundir.path) if rundir is not None else None})
    return settings


def _write_config(rundir, args, cloud_desc, problem, trainer) -> None:
    """``config.toml``: the resolved configuration (re-runnable as is)."""
    from ..atomic import atomic_write
    from .config import resolved_config
    from .toml_writer import dumps

    doc, comments = resolved_config(args, cloud_desc, problem, trainer.lrs)
    header = (f"dtpinn_dist {_version()}: resolved configuration of the run in {rundir.path}\n"
              f"re-run it: python -m dtpinn_dist.train --config {rundir.path / 'config.toml'} "
              "[--out NEW_FOLDER]\n"
              "(format: docs/config.md; the cloud is pinned to the one this run used)")
    text = dumps(doc, header=header, comments=comments)
    with atomic_write(rundir.file("config.toml"), "w", what="config") as fh:
        fh.write(text)


def _version() -> str:
    # the package is imported by now (this module is inside it); no import going up the layers
    top = sys.modules.get((__package__ or "dtpinn_dist").split(".")[0])
    return getattr(top, "__version__", "?")


def _progress_on_evaluate(trainer, log) -> None:
    """Every evaluation record also moves the progress bar (if any)."""
    if not hasattr(log, "record"):
        return
    evaluate = trainer.evaluate

    def recorded():
        rec = evaluate()
        if trainer.comm.rank == 0:
            log.record(rec)
        return rec

    trainer.evaluate = recorded


#: above this many nodes the end-of-run error split (one sparse factorisation) is skipped
ERROR_SPLIT_MAX_NODES = 100_000


def _error_split(disc, model, log):
    """The error split of the trained network (which block limits it) when the direct solve is
    affordable; None otherwise, or the reason it could not be computed. Collective."""
    from ..problem.diagnostics import error_split

    if not disc.has_structure or disc.info["n_nodes"] > ERROR_SPLIT_MAX_NODES:
        return None
    try:
        split = error_split(disc, model)
    except ValueError as exc:  # a singular or unconverged linear solve: say so, keep the run
        return {"skipped": str(exc)}
    floor = split["direct_rel_l2_nodes"]
    log("error split at the nodes against the direct solve (relative L2; the largest block "
        "limits the network): " + ", ".join(f"{k} {v:.2e}" for k, v in split["blocks"].items())
        + ("" if floor is None else f"; the direct solve's own error {floor:.2e}"))
    return split


def _write_results(rundir, settings, result, trainer, disc, cloud, comm, log) -> dict:
    """Rank 0, after training: metrics.json, the model, the solution (.npz, VTK), the plots;
    then metrics.json again with the list of outputs."""
    import time

    from ..outputs import write_metrics, write_outputs

    t0 = time.perf_counter()
    rundir.file("metrics.json")
    path = write_metrics(rundir.path, settings, result, ranks=comm.size, overwrite=True)
    points = cloud.test if cloud.test is not None else cloud.collocation
    out = write_outputs(rundir.path, trainer.model, disc, points, result.history, log=log,
                        created=rundir.file)
    files = out
    settings = dict(settings)
    sizes = {k: Path(v).stat().st_size for k, v in files.items()}
    settings["outputs"] = sizes
    settings["output_time_s"] = time.perf_counter() - t0
    write_metrics(rundir.path, settings, result, ranks=comm.size, overwrite=True)
    err = result.final_rel_l2
    best = result.best_rel_l2
    log(f"final rel_l2 {err if err is None else f'{err:.3e}'}, best "
        f"{best if best is None else f'{best:.3e}'}, {result.steps} steps, train "
        f"{result.train_time_s:.1f}s -> {path}")
    shown = [k for k in files if not k.startswith("vtk/")]
    n_vtk = sum(k.startswith("vtk/") for k in files)
    shown += [f"vtk/ ({n_vtk} files)"] if n_vtk else []
    log(f"wrote {', '.join(['metrics.json', *shown])} in {rundir.path} "
        f"({settings['output_time_s']:.2f}s)")
    return {"metrics.json": path, **files}


def _solve(args, disc, problem, cloud_desc, out, comm, log) -> dict:
    """``--method solve``: the discrete system solved directly; metrics.json records it."""
    from ..outputs.metrics import write_json
    from ..problem import solve_discrete

    if problem.time_dependent:
        raise UserError("--method solve is for steady problems (time-dependent problems have "
                        "no direct discrete solve here)")
    sol = solve_discrete(disc)
    doc = {"settings": {**{k: v for k, v in vars(args).items()},
                        "problem_declared": problem.describe(), "cloud": cloud_desc,
                        "backend": disc.info["backend"]},
           "ranks": comm.size, "method": "solve", **sol.summary(),
           "final_rel_l2": sol.rel_l2_nodes, "best_rel_l2": sol.rel_l2_nodes,
           "error_points": "interior and boundary nodes"}
    rundir = _claim_out(args, comm, out, log)
    path = None
    try:
        if comm.rank == 0:
            path = rundir.file("metrics.json")
            write_json(path, doc)
            err = sol.rel_l2_nodes
            log(f"direct solve ({sol.solver}): {sol.iterations} Newton step(s), linear "
                f"iterations {sol.linear_iterations}, residual {sol.residual_norm:.2e}, "
                f"{sol.time_s:.2f}s; rel_l2 at the nodes "
                f"{'n/a' if err is None else f'{err:.3e}'} -> {path}")
    finally:
        if rundir is not None:
            rundir.release()
        if comm.rank == 0 and hasattr(log, "close"):
            log.close()
    return {"out": str(rundir.path) if rundir is not None else None, "solution": sol}


def _check_lockstep_on_evaluate(trainer) -> None:
    """Wrap the trainer's evaluation: every record also proves all ranks hold the same bits."""
    evaluate = trainer.evaluate

    def checked():
        rec = evaluate()
        if not trainer.comm.same_on_all_ranks(trainer._flat()):
            raise RuntimeError(f"ranks diverged at step {rec['step']}: parameters differ "
                               "(lockstep broken; please report with your settings)")
        rec["lockstep"] = True
        return rec

    trainer.evaluate = checked


def parse_args(argv=None):
    """``(args, petsc_options)`` from the command line and the ``--config`` file (flags win)."""
    from .config import apply_config, check_settings, given_dests, reconcile

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    pre, _ = parser.parse_known_args(argv)
    config = _resume_config(pre) if pre.resume is not None else pre.config
    file_values = apply_config(parser, config) if config else {}
    # What our parser does not know goes to PETSc (-log_view, -mat_type aijcusparse, ...), the
    # way PETSc programs take options; anything else unknown is an error.
    args, petsc_options = parser.parse_known_args(argv)
    if petsc_options and (not petsc_options[0].startswith("-")
                          or any(o.startswith("--") for o in petsc_options)):
        parser.error(f"unrecognized arguments: {' '.join(petsc_options)}")
    reconcile(args, given_dests(parser, argv), file_values)
    check_settings(args, file_values)
    if args.resume is not None:  # the run's own folder: its lock, its checkpoint, its outputs
        args.out = args.resume
    return args, petsc_options


def _parse_once(argv):
    """Parse on rank 0 only (the config file is read there, as the cloud is) and broadcast:
    one message for bad input, never one per rank. Returns ``(args, petsc_options)`` or an
    exit status."""
    from ..comm import as_comm, mpi_launched
    from .config import ConfigFileError

    def parse(catch_exit: bool):
        try:
            return parse_args(argv)
        except SystemExit as exc:  # argparse printed its message (or --help)
            if not catch_exit:
                raise
            return exc.code if isinstance(exc.code, int) else 2
        except (ConfigFileError, UserError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # noqa: BLE001 - rank 0 alone parses: never leave the others
            from ..resources import one_line  # waiting in the broadcast below
            print(f"error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
            return 2

    if not mpi_launched():
        return parse(catch_exit=False)
    comm = as_comm(None)
    res = parse(catch_exit=True) if comm.rank == 0 else None
    return comm.bcast(res)


def main(argv=None) -> int:
    from ..comm import mpi_launched

    if mpi_launched():
        # armed before anything else: an exception on any rank, at any point, ends the job
        from ..comm import abort_on_exception
        with abort_on_exception(code=2):
            return _main(argv)
    return _main(argv)


def _main(argv) -> int:
    from ..comm import mpi_launched

    parsed = _parse_once(argv)
    if not isinstance(parsed, tuple):
        return int(parsed or 0)
    args, petsc_options = parsed
    if petsc_options:
        # PETSc programs take single-dash options; they only mean something to the PETSc backend
        petsc_run = args.backend == "petsc" or (args.backend is None and mpi_launched())
        if not petsc_run:
            print(f"error: PETSc options {' '.join(petsc_options)} need the PETSc backend: add "
                  "--backend petsc (or run under mpirun); trainer flags take two dashes",
                  file=sys.stderr)
            return 2
        if "-options_left" not in petsc_options:  # PETSc warns about options nobody used
            petsc_options = petsc_options + ["-options_left"]
        # PETSc reads these at initialisation (-log_view, -mat_type aijcusparse, ...)
        os.environ["PETSC_OPTIONS"] = " ".join(
            [os.environ.get("PETSC_OPTIONS", "")] + petsc_options).strip()
    if mpi_launched():
        # An error on one rank (rank 0 alone claims --out, reads files, ...) must end the whole
        # job, not leave the others waiting in a collective: main's abort_on_exception ends it
        # with "rank R: error: <message>".
        from ..outputs.checkpoint import exit_status
        return exit_status(run(args).get("result"))
    return _run_reporting(args)


def _run_reporting(args) -> int:
    from ..outputs.checkpoint import exit_status

    try:
        return exit_status(run(args).get("result"))
    except KeyboardInterrupt:
        # Ctrl-C outside the training loop (set-up, writing results): nothing to continue from
        print("error: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # bad input, in the library's words (all its errors subclass it)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ImportError, OSError) as exc:
        # known failure kinds from the library (missing cupy/GPU, files): one line
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
