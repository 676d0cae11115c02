"""Command line: ``python -m dtpinn_dist.train [flags]`` (see ``--help``), a thin layer over the
library's ``Problem`` -> ``discretize`` -> ``fit``.

With no flags: the paper's linear Poisson problem on the unit disk (the authors' 1663-node cloud
when their node sets are found, else a generated ~1663-node disk cloud; 828 nodes for the heat
equation, as in the paper), RBF-FD order 4, fp64 DT-PINN, L-BFGS with a strong-Wolfe line
search, metrics in ``runs/<timestamp>/metrics.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
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


def _reference_dir() -> Path | None:
    # $DTPINN_REFERENCE_DIR, else shared/reference beside the repository (the project layout)
    cands = [os.environ.get("DTPINN_REFERENCE_DIR"),
             Path(__file__).resolve().parents[3] / "shared" / "reference"]
    for c in cands:
        if c and (Path(c) / AUTHORS_FILE).exists():
            return Path(c)
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dtpinn_dist.train", allow_abbrev=False,
        description="Train a DT-PINN (RBF-FD derivatives by SpMV) or a vanilla PINN (autograd) "
                    "on a declared PDE. Unknown single-dash options go to PETSc (-log_view).")
    a = p.add_argument
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
    g.add_argument("--bc", choices=["robin", "dirichlet", "neumann"], default="robin",
                   help="condition on every boundary part: dn(u) + u, u, or dn(u) = g")
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
                   help="LM step: dense Cholesky, matrix-free CG, CG preconditioned by a lagged Cholesky factor, or auto (cg, then lagged)")
    o.add_argument("--lm-memory-gb", type=float, default=4.0,
                   help="memory budget of the dense LM step")
    o.add_argument("--lm-cg-maxiter", type=int, default=None, help="CG iterations per LM step")
    o.add_argument("--tol", type=float, default=0.0, help="stop when the loss is <= tol")
    o.add_argument("--time-budget", type=float, default=None, help="seconds of training time")
    o.add_argument("--eval-every", type=int, default=10)
    o.add_argument("--width", type=int, default=50)
    o.add_argument("--depth", type=int, default=4)
    o.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("run")
    r.add_argument("--check-lockstep", action="store_true",
                   help="after every evaluation, check that all ranks hold bit-identical "
                        "parameters")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--out", default=None, help="output directory (default runs/<timestamp>)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an existing metrics.json in --out")
    r.add_argument("--quiet", action="store_true")
    return p


def _load_cloud(args, time_dependent: bool):
    """The point cloud (with ghosts, and test points where available) and a description."""
    from ..geometry import load_cloud, load_mat, make_cloud

    if args.nodes is not None:
        try:
            cloud = load_cloud(args.nodes, index=args.index)
        except (OSError, KeyError) as exc:
            raise UserError(f"cannot read point cloud {args.nodes}: {exc}") from None
        return cloud, {"source": str(args.nodes), "index": args.index}
    ref = _reference_dir()
    if args.n_points is None and args.domain == "disk" and ref is not None:
        # the authors' 1663-node cloud; heat: their 828-node set, as in the paper's experiment
        n_auth = HEAT_N if time_dependent else DEFAULT_N
        cloud = load_mat(ref / AUTHORS_FILE, n=n_auth)
        desc = {"source": str(ref / AUTHORS_FILE), "N": n_auth}
        if not time_dependent and (ref / AUTHORS_TEST_FILE).exists():
            t = load_mat(ref / AUTHORS_TEST_FILE, index=-1, ghost=False)
            cloud.test = t.collocation
            desc["test"] = f"{AUTHORS_TEST_FILE}[-1] ({len(cloud.test)} points)"
        return cloud, desc
    n = args.n_points if args.n_points is not None else (HEAT_N if time_dependent else DEFAULT_N)
    if n < 20:
        raise UserError(f"--n-points {n} is too small; use at least 20")
    n_test = None if time_dependent else (args.test_points or min(20000, 4 * n))
    cloud = make_cloud(args.domain, n=n, seed=args.seed, n_test=n_test)
    return cloud, {"source": f"generated {args.domain}", "N": n, "n_test": n_test}


def _problem(args):
    """The declared problem from the flags (the paper's --problem supplies the defaults)."""
    from ..problem import Dirichlet, Neumann, Problem, Robin
    from ..problem.paper import PAPER

    preset = PAPER[args.problem]
    # a user's data replaces the paper's exact solution (then without one: no error metric)
    exact = args.exact if (args.exact is not None or args.f is not None) else preset["exact"]
    bc = {"robin": Robin(1.0, 1.0, args.g), "dirichlet": Dirichlet(args.g),
          "neumann": Neumann(args.g)}[args.bc]
    return Problem(args.pde or preset["pde"], bc=bc, exact=exact, f=args.f, initial=args.u0,
                   time=tuple(args.time) if args.time is not None else preset.get("time"),
                   nt=args.nt if args.nt is not None else preset.get("nt", 24),
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
        return TrainConfig(optimizer=args.optimizer, lr=args.lr, schedule=args.schedule,
                           lm=lm_opts, line_search=args.line_search == "strong-wolfe",
                           history_size=args.history_size, max_iter=args.max_iter,
                           tolerance_grad=args.tolerance_grad,
                           tolerance_change=args.tolerance_change, steps=args.steps,
                           tol=args.tol, time_budget=args.time_budget,
                           eval_every=args.eval_every, seed=args.seed, width=args.width,
                           depth=args.depth, verbose=not args.quiet)
    except ConfigError as exc:
        raise UserError(f"--{exc.param.replace('_', '-')}: {exc}") from None


def _flagged(exc: Exception) -> str:
    """A library message with the flag that set the offending input in front of it."""
    msg = str(exc)
    for phrase, flag in _FLAG_OF.items():
        if phrase in msg:
            return f"{flag}: {msg}"
    return msg


def run(args, log=print) -> dict:
    import torch

    from ..comm import as_comm
    from ..optimizer import TrainConfig, fit
    from ..outputs import default_out_dir, prepare_out_dir, write_metrics
    from ..problem import ExpressionError, discretize

    comm = as_comm(None)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: give at least 1 thread")
        torch.set_num_threads(args.threads)
    if args.test_points is not None and args.test_points < 1:
        raise UserError(f"--test-points {args.test_points}: give at least 1 test point")
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
    except (ExpressionError, ValueError) as exc:
        raise UserError(_flagged(exc)) from None
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

    # inputs are valid: only now claim the output directory
    out = None
    if comm.rank == 0:
        out = prepare_out_dir(args.out or default_out_dir(), overwrite=args.overwrite)
    out = comm.bcast(str(out) if out is not None else None)

    try:
        disc = discretize(problem, cloud, args.order,
                          method="dt" if args.method == "solve" else args.method, comm=comm,
                          backend=args.backend, dtype=args.dtype, device=args.device,
                          partitioner=args.partitioner)
    except ValueError as exc:  # ExpressionError included: bad data, parts, cloud
        raise UserError(_flagged(exc)) from None
    info = disc.info
    if args.method == "solve":
        return _solve(args, disc, problem, cloud, cloud_desc, out, comm, log)
    if comm.rank == 0 and not args.quiet:
        log(f"{args.method} PINN, {problem.pde} = f, {info['dtype']}, p={args.order}, "
            f"Ni={cloud.n_interior} Nb={cloud.n_boundary}, backend {info['backend']}, "
            f"{comm.size} rank(s), setup {info['setup_time_s']:.2f}s -> {out}")
    printer = (lambda s: log(s, flush=True)) if log is print else log
    if args.check_lockstep and comm.size > 1:
        from ..optimizer import Trainer
        trainer = Trainer(disc, cfg, log=printer)
        _check_lockstep_on_evaluate(trainer)
        result = trainer.train()
    else:
        res = fit(disc, cfg, log=printer)
        trainer, result = res.trainer, res.result
    settings = dict(vars(args))
    settings.update({"problem_declared": problem.describe(), "dtype": info["dtype"],
                     "backend": info["backend"], "device": info["device"], "lr": trainer.lr,
                     "lr_by_phase": trainer.lrs, "cloud": cloud_desc,
                     "n_interior": cloud.n_interior, "n_boundary": cloud.n_boundary,
                     "setup_time_s": info["setup_time_s"], "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "out": out})
    if comm.rank == 0:
        path = write_metrics(out, settings, result, ranks=comm.size, overwrite=True)
        if not args.quiet:
            err = result.final_rel_l2
            log(f"final rel_l2 {err if err is None else f'{err:.3e}'}, best "
                f"{result.best_rel_l2 if result.best_rel_l2 is None else f'{result.best_rel_l2:.3e}'}"
                f", {result.steps} steps, train {result.train_time_s:.1f}s -> {path}")
    return {"out": out, "result": result}


def _solve(args, disc, problem, cloud, cloud_desc, out, comm, log) -> dict:
    """``--method solve``: the discrete system solved directly; metrics.json records it."""
    import json
    import os as _os

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
    if comm.rank == 0:
        path = _os.path.join(out, "metrics.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=1, default=str)
        _os.replace(tmp, path)
        if not args.quiet:
            err = sol.rel_l2_nodes
            log(f"direct solve ({sol.solver}): {sol.iterations} Newton step(s), linear "
                f"iterations {sol.linear_iterations}, residual {sol.residual_norm:.2e}, "
                f"{sol.time_s:.2f}s; rel_l2 at the nodes "
                f"{'n/a' if err is None else f'{err:.3e}'} -> {path}")
    return {"out": out, "solution": sol}


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


def main(argv=None) -> int:
    from ..comm import mpi_launched

    parser = build_parser()
    # What our parser does not know goes to PETSc (-log_view, -mat_type aijcusparse, ...), the
    # way PETSc programs take options; anything else unknown is an error.
    args, petsc_options = parser.parse_known_args(argv)
    if petsc_options and (not petsc_options[0].startswith("-")
                          or any(o.startswith("--") for o in petsc_options)):
        parser.error(f"unrecognized arguments: {' '.join(petsc_options)}")
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
        # job, not leave the others waiting in a collective: every exception aborts the job
        # with "rank R: error: <message>".
        from ..comm import abort_on_exception
        with abort_on_exception(code=2):
            run(args)
        return 0
    return _run_reporting(args)


def _run_reporting(args) -> int:
    from ..outputs import OutputExistsError
    try:
        run(args)
    except (ValueError, OutputExistsError) as exc:  # bad input, in the library's words
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ImportError, OSError) as exc:
        # known failure kinds from the library (missing cupy/GPU, files): one line
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
