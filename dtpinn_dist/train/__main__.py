"""Command line: ``python -m dtpinn_dist.train [flags]`` (see ``--help``).

With no flags: linear Poisson on the unit disk (the authors' 1663-node cloud when
``shared/reference`` is present, else a generated ~1663-node disk cloud; 828 nodes for the heat
equation, as in the paper), RBF-FD order 4, fp64 DT-PINN, L-BFGS, metrics in
``runs/<timestamp>/metrics.json``.
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
        prog="python -m dtpinn_dist.train",
        description="Train a DT-PINN (RBF-FD derivatives by SpMV) or a vanilla PINN (autograd).")
    a = p.add_argument
    a("--problem", choices=["poisson", "nonlinear-poisson", "heat"], default="poisson")
    a("--method", choices=["dt", "vanilla"], default="dt")
    a("--dtype", choices=["fp64", "fp32"], default=None,
      help="default fp64 for dt, fp32 for vanilla (the paper's pairing)")
    a("--order", type=int, default=4, help="RBF-FD order p (default 4)")
    a("--n-points", type=int, default=None, help="generate a cloud of about N nodes")
    a("--domain", default="disk", help="built-in domain for --n-points (disk, star, ...)")
    a("--nodes", default=None, help="point-cloud file (.mat authors' format or .npz)")
    a("--nodes-index", type=int, default=None, help="entry of a .mat file (default: last)")
    a("--test-points", type=int, default=None,
      help="size of a generated test set (default: about 4N, at most 20000)")
    a("--exact", default=None, help="exact solution u(x, y[, t]) (default: paper's)")
    a("--f", default=None, help="forcing f directly (then also --g; no exact solution needed)")
    a("--g", default=None, help="boundary data g (may use nx, ny)")
    a("--u0", default=None, help="initial condition (heat, with --f/--g)")
    a("--bc", choices=["robin", "dirichlet", "neumann"], default="robin")
    a("--nt", type=int, default=24, help="heat: time steps Nt (Nt+1 slices)")
    a("--t-final", type=float, default=1.0)
    a("--optimizer", choices=["lbfgs", "adam", "lm"], default="lbfgs",
      help="lm = Levenberg-Marquardt (DT-PINNs only; reaches the discretisation error)")
    a("--schedule", default=None,
      help="optimizer phases, e.g. 'lbfgs:300,lm:100' (overrides --optimizer and --steps)")
    a("--lm-step", choices=["auto", "dense", "cg"], default="auto",
      help="LM step: dense Cholesky, matrix-free Gauss-Newton-CG, or auto (dense when it fits)")
    a("--lm-memory-gb", type=float, default=4.0, help="memory budget of the dense LM step")
    a("--lm-cg-maxiter", type=int, default=None, help="CG iterations per matrix-free LM step")
    a("--lr", type=float, default=None, help="default: paper's rate, 1.0 with a line search")
    a("--line-search", nargs="?", const="strong-wolfe", default="strong-wolfe",
      choices=["strong-wolfe", "none"],
      help="L-BFGS line search (default strong-wolfe; 'none' = the paper's setting)")
    a("--history-size", type=int, default=100)
    a("--max-iter", type=int, default=20, help="L-BFGS iterations per step")
    a("--steps", type=int, default=100)
    a("--tol", type=float, default=0.0)
    a("--time-budget", type=float, default=None, help="seconds of training time")
    a("--eval-every", type=int, default=10)
    a("--width", type=int, default=50)
    a("--depth", type=int, default=4)
    a("--seed", type=int, default=0)
    a("--backend", choices=["torch", "cupy", "petsc"], default=None,
      help="default: petsc when launched on more than one MPI rank, else torch")
    a("--partitioner", choices=["auto", "ptscotch", "parmetis", "hilbert", "morton", "block"],
      default="auto", help="petsc backend: how nodes are split across ranks "
      "(auto: PT-Scotch/ParMETIS through PETSc when available, else a Hilbert curve)")
    a("--check-lockstep", action="store_true",
      help="after every evaluation, check that all ranks hold bit-identical parameters")
    a("--device", default=None, help="torch device (default cpu; cuda for --backend cupy)")
    a("--threads", type=int, default=None, help="torch CPU threads")
    a("--out", default=None, help="output directory (default runs/<timestamp>)")
    a("--overwrite", action="store_true", help="replace an existing metrics.json in --out")
    a("--quiet", action="store_true")
    return p


def _mpi_launched() -> bool:
    """True when an MPI launcher started more than one rank.

    Read from the launchers' environment (OpenMPI's mpirun, MPICH/Hydra, Slurm's srun), so a
    plain serial run never imports mpi4py; under PMIx without a size variable, MPI is asked.
    """
    env = os.environ
    sizes = [env.get("OMPI_COMM_WORLD_SIZE"), env.get("PMI_SIZE")]
    if "SLURM_PROCID" in env:  # inside an srun step (a batch script alone has no PROCID)
        sizes.append(env.get("SLURM_STEP_NUM_TASKS"))
    if any(v and v.isdigit() and int(v) > 1 for v in sizes):
        return True
    if "PMIX_RANK" in env:
        try:
            from mpi4py import MPI
        except ImportError:
            return False
        return MPI.COMM_WORLD.Get_size() > 1
    return False


def _load_cloud(args, kind):
    """The point cloud (with ghosts, and test points where available) and a description."""
    from ..geometry import load_cloud, load_mat, make_cloud

    if args.nodes is not None:
        try:
            cloud = load_cloud(args.nodes, index=args.nodes_index)
        except (OSError, KeyError) as exc:
            raise UserError(f"cannot read point cloud {args.nodes}: {exc}") from None
        return cloud, {"source": str(args.nodes), "index": args.nodes_index}
    ref = _reference_dir()
    if args.n_points is None and args.domain == "disk" and ref is not None:
        # the authors' 1663-node cloud; heat: their 828-node set, as in the paper's experiment
        n_auth = HEAT_N if kind == "heat" else DEFAULT_N
        cloud = load_mat(ref / AUTHORS_FILE, n=n_auth)
        desc = {"source": str(ref / AUTHORS_FILE), "N": n_auth}
        if kind != "heat" and (ref / AUTHORS_TEST_FILE).exists():
            t = load_mat(ref / AUTHORS_TEST_FILE, index=-1, ghost=False)
            cloud.test = t.collocation
            desc["test"] = f"{AUTHORS_TEST_FILE}[-1] ({len(cloud.test)} points)"
        return cloud, desc
    n = args.n_points if args.n_points is not None else (HEAT_N if kind == "heat" else DEFAULT_N)
    if n < 20:
        raise UserError(f"--n-points {n} is too small; use at least 20")
    n_test = None if kind == "heat" else (args.test_points or min(20000, 4 * n))
    cloud = make_cloud(args.domain, n=n, seed=args.seed, n_test=n_test)
    return cloud, {"source": f"generated {args.domain}", "N": n, "n_test": n_test}


def run(args, log=print) -> dict:
    import torch

    from ..distributed.comm import SerialComm, get_comm
    from ..outputs import default_out_dir, prepare_out_dir, write_metrics
    from ..problems import BC_COEFFS, from_forcing, make_problem, manufactured
    from .trainer import TrainConfig, Trainer

    comm = get_comm("mpi") if _mpi_launched() else SerialComm()
    backend = args.backend or ("petsc" if comm.size > 1 else "torch")
    if comm.size > 1 and backend != "petsc":
        raise UserError(f"--backend {backend} is serial; with {comm.size} MPI ranks use petsc")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("fp64" if args.method == "dt" else "fp32")
    dtype = {"fp64": torch.float64, "fp32": torch.float32}[dtype_name]
    device = args.device or ("cuda" if backend == "cupy" else "cpu")
    if backend == "cupy":
        from ..operators.cupy_csr import cupy_available
        ok, why = cupy_available()
        if not ok:
            raise UserError(why)
    if args.order < 1 or args.steps < 0 or args.eval_every < 0 or args.nt < 1:
        raise UserError("--order and --nt must be >= 1, --steps and --eval-every >= 0")

    alpha, beta = BC_COEFFS[args.bc]
    # Rank 0 reads or generates the cloud and every rank gets its bits: ranks never disagree
    # on the nodes (no shared filesystem needed, no last-bit differences between machines).
    cloud, cloud_desc = _load_cloud(args, args.problem) if comm.rank == 0 else (None, None)
    cloud, cloud_desc = comm.bcast((cloud, cloud_desc))
    if (args.f is None) != (args.g is None):
        raise UserError("give both --f and --g (or neither, to derive them from --exact)")
    if args.f is not None:
        data = from_forcing(args.problem, args.f, args.g, u0=args.u0, dim=cloud.dim,
                            alpha=alpha, beta=beta, exact=args.exact)
    else:
        data = manufactured(args.problem, args.exact, dim=cloud.dim, alpha=alpha, beta=beta)

    # inputs are valid: only now claim the output directory
    out = None
    if comm.rank == 0:
        out = prepare_out_dir(args.out or default_out_dir(), overwrite=args.overwrite)
    out = comm.bcast(str(out) if out is not None else None)

    t0 = time.perf_counter()
    if backend == "petsc":
        from ..distributed.assembly import distributed_system
        system = distributed_system(cloud, args.order, comm, alpha=alpha, beta=beta, dtype=dtype,
                                    partitioner=args.partitioner, device=device)
    else:
        from ..operators.torch_csr import serial_system
        system = serial_system(cloud, args.order, alpha=alpha, beta=beta, dtype=dtype,
                               device=device, backend=backend)
    setup_s = time.perf_counter() - t0
    problem = make_problem(data, args.method, nt=args.nt, t_final=args.t_final)
    lm_opts = {"step": args.lm_step, "memory_budget": args.lm_memory_gb * 1e9}
    if args.lm_cg_maxiter is not None:
        lm_opts["cg_maxiter"] = args.lm_cg_maxiter
    if args.schedule is not None:
        from ..optim.lm import parse_schedule
        try:
            parse_schedule(args.schedule)
        except ValueError as exc:
            raise UserError(f"--schedule: {exc}") from None
    if args.method != "dt" and ("lm" in (args.schedule or "") or args.optimizer == "lm"):
        raise UserError("Levenberg-Marquardt needs --method dt (its Jacobian is [L; B] times the "
                        "network's); use --optimizer lbfgs or adam for vanilla PINNs")
    cfg = TrainConfig(optimizer=args.optimizer, lr=args.lr, schedule=args.schedule, lm=lm_opts,
                      line_search=args.line_search == "strong-wolfe",
                      history_size=args.history_size, max_iter=args.max_iter, steps=args.steps,
                      tol=args.tol, time_budget=args.time_budget, eval_every=args.eval_every,
                      seed=args.seed, width=args.width, depth=args.depth,
                      verbose=not args.quiet)
    if comm.rank == 0 and not args.quiet:
        log(f"{args.method} PINN, {args.problem}, {dtype_name}, p={args.order}, "
            f"Ni={cloud.n_interior} Nb={cloud.n_boundary}, backend {backend}, {comm.size} rank(s), "
            f"setup {setup_s:.2f}s -> {out}")
    trainer = Trainer(problem, system, cfg, log=lambda s: log(s, flush=True) if log is print else log(s))
    if args.check_lockstep and comm.size > 1:
        _check_lockstep_on_evaluate(trainer)
    result = trainer.train()
    settings = dict(vars(args))
    settings.update({"dtype": dtype_name, "backend": backend, "device": device,
                     "lr": trainer.lr, "lr_by_phase": trainer.lrs, "alpha": alpha, "beta": beta, "cloud": cloud_desc,
                     "n_interior": cloud.n_interior, "n_boundary": cloud.n_boundary,
                     "exprs": data.exprs, "setup_time_s": setup_s, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "out": out})
    if comm.rank == 0:
        path = write_metrics(out, settings, result, ranks=comm.size, overwrite=True)
        if not args.quiet:
            err = result.final_rel_l2
            log(f"final rel_l2 {err if err is None else f'{err:.3e}'}, best "
                f"{result.best_rel_l2 if result.best_rel_l2 is None else f'{result.best_rel_l2:.3e}'}"
                f", {result.steps} steps, train {result.train_time_s:.1f}s -> {path}")
    return {"out": out, "result": result}


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
    parser = build_parser()
    # What our parser does not know goes to PETSc (-log_view, -mat_type aijcusparse, ...), the
    # way PETSc programs take options; anything else unknown is an error.
    args, petsc_options = parser.parse_known_args(argv)
    if petsc_options and (not petsc_options[0].startswith("-")
                          or any(o.startswith("--") for o in petsc_options)):
        parser.error(f"unrecognized arguments: {' '.join(petsc_options)}")
    if petsc_options:
        # PETSc reads these at initialisation (-log_view, -mat_type aijcusparse, ...)
        os.environ["PETSC_OPTIONS"] = " ".join(
            [os.environ.get("PETSC_OPTIONS", "")] + petsc_options).strip()
        if args.backend not in (None, "petsc"):
            print(f"error: PETSc options {' '.join(petsc_options)} need --backend petsc",
                  file=sys.stderr)
            return 2
    if _mpi_launched():
        # An error on one rank (rank 0 alone claims --out, reads files, ...) must end the whole
        # job, not leave the others waiting in a collective: every exception aborts the job
        # with "rank R: error: <message>".
        from ..distributed.errors import abort_on_exception
        with abort_on_exception(code=2):
            run(args)
        return 0
    return _run_reporting(args)


def _run_reporting(args) -> int:
    from ..outputs import OutputExistsError
    from ..problems import ExpressionError
    try:
        run(args)
    except (UserError, ExpressionError, OutputExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, ImportError, OSError) as exc:
        # known failure kinds from the library (bad shapes, missing cupy/GPU, files): one line
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
