"""Distributed DT-PINN systems (issues 2 §4 and 5): the PETSc system gives the serial loss and
gradient, L-BFGS runs in lockstep with the serial loss history, uneven partitions, a rank without
boundary nodes, heat, vanilla; and a failure on one rank ends the whole job (launched mpirun).

The ``mpi``-marked tests run unchanged serially and under ``mpirun -n 2`` / ``-n 3``: every rank
builds the serial reference on the whole cloud and compares its own share and the global sums.
"""
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

pytest.importorskip("petsc4py")
pytest.importorskip("mpi4py")

from dtpinn_dist.comm import tensor_hash  # noqa: E402

ORDER = 3
# The strict claim at equal parameters. The distributed SpMV sums each row in another order than
# the serial one (and PETSc splits it into on- and off-process blocks); the stencil weights
# ~1/h^2 cancel, so values (loss, residual, test error) differ by ~1e-14 relative and
# derivatives (gradient, J v, J^T y, J), which cancel further through L^T and the network, by
# ~1e-12 relative to their norm or max. Measured (tests/measure_spread.py; serial at threads 1
# and 2, mpirun -n 2/3/4): values <= 4e-14, derivatives <= 1.5e-12; tolerances 1e-12 and 2e-11
# (>= 13x). test_lm_mpi.py uses the same two.
EQUAL_PARAMS_RTOL = 1e-12
EQUAL_PARAMS_GRAD_RTOL = 2e-11


@pytest.fixture(scope="module")
def cloud():
    """A generated disk cloud the size of the authors' 828-node set (nothing here is about
    that file, so a plain clone runs these tests)."""
    from dtpinn_dist.geometry import make_cloud

    c = make_cloud("disk", n=828, seed=6)
    rng = np.random.default_rng(0)
    # independent test points strictly inside the disk
    r, t = np.sqrt(rng.random(300)) * 0.99, 2 * np.pi * rng.random(300)
    c.test = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    return c


def _problem(kind, nt=4):
    from dtpinn_dist.problem import paper_problem

    return paper_problem(kind, nt=nt if kind == "heat" else None)


_SERIAL = {}


def _serial(cloud, kind, method="dt"):
    """The single-process discretisation of the paper problem ``kind`` (built once)."""
    from dtpinn_dist.comm import SerialComm
    from dtpinn_dist.problem import discretize

    if (kind, method) not in _SERIAL:
        _SERIAL[kind, method] = discretize(_problem(kind), cloud, ORDER, method=method,
                                           dtype="fp64", comm=SerialComm())
    return _SERIAL[kind, method]


def _model(disc, seed=3):
    from dtpinn_dist.model.mlp import MLP

    return MLP(disc.input_dim, 20, 2, dtype=torch.float64, seed=seed)


def _loss_and_grad(disc, model):
    """Global loss and gradient, reduced exactly as the trainer does."""
    model.zero_grad(set_to_none=False)
    r = disc.residual(model)
    local = (r * r).sum()
    local.backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    return float(disc.comm.sum(local.detach())), disc.comm.sum(g.clone())


def _partition(cloud, comm, kind):
    from dtpinn_dist.partition import partition_cloud, sfc_order

    ni, nb = cloud.n_interior, cloud.n_boundary
    if kind == "uneven":
        # 1 : 3 : 6 ... split of the Hilbert order: very different local sizes
        o = sfc_order(cloud.collocation)
        w = np.arange(1, comm.size + 1, dtype=float) ** 1.5
        cuts = np.concatenate([[0], np.floor(np.cumsum(w) / w.sum() * (ni + nb)).astype(int)])
        units = np.empty(ni + nb, np.int64)
        for r in range(comm.size):
            units[o[cuts[r]:cuts[r + 1]]] = r
        return partition_cloud(cloud, comm.size, unit_part=units)
    # 'block': contiguous runs of cloud order, so with >= 2 ranks rank 0 has no boundary node
    return partition_cloud(cloud, comm.size, method=kind, comm=comm)


def _dist(cloud, comm, partition="auto", kind="poisson", method="dt"):
    from dtpinn_dist.problem import discretize

    P = None if partition == "auto" else _partition(cloud, comm, partition)
    return discretize(_problem(kind), cloud, ORDER, method=method, dtype="fp64", comm=comm,
                      backend="petsc", partition=P)


@pytest.mark.mpi
def test_distributed_operators_equal_serial(comm, cloud, spread):
    """Each rank's rows of L and B, mapped back to cloud numbering, are the serial rows."""
    D = _dist(cloud, comm).system
    serial = _serial(cloud, "poisson").system
    P = D.info["partition"]
    r = comm.rank
    Ls, Bs = serial.L.to_scipy(), serial.B.to_scipy()
    for op, rows, S in ((D.L, P.L_rows(r), Ls), (D.B, P.B_rows(r), Bs)):
        loc = op.to_scipy_local().tocoo()
        got = np.zeros((len(rows), cloud.n_nodes))
        got[loc.row, P.perm[loc.col]] = loc.data
        want = S[rows].toarray()
        # each row's weights come from the same stencil solve as the serial row (the same
        # nodes, maybe another batch): measured max |got - want| / (eps max|want|) = 0
        # (1-4 ranks, threads 1 and 2); tolerance 64 eps max|want|.
        err, tol = np.abs(got - want).max(), 64 * np.finfo(float).eps * np.abs(want).max()
        spread("dist.operator_rows", err, tol)
        assert err <= tol
    assert D.n_collocation == serial.n_collocation and D.n_boundary == serial.n_boundary
    assert comm.sum(len(D.nodes)) == cloud.n_nodes
    assert comm.sum(len(D.test_points)) == len(cloud.test)
    np.testing.assert_array_equal(D.nodes[D.boundary_index], cloud.boundary[P.boundary_ids[r]])
    np.testing.assert_array_equal(D.normals, cloud.normals[P.boundary_ids[r]])
    assert D.info["ranks"] == comm.size and len(D.info["halo"]) == comm.size


@pytest.mark.mpi
@pytest.mark.parametrize("kind,method,partition", [
    ("poisson", "dt", "auto"), ("nonlinear-poisson", "dt", "uneven"),
    ("poisson", "dt", "block"), ("heat", "dt", "auto"), ("heat", "dt", "block"),
    ("poisson", "vanilla", "auto"), ("heat", "vanilla", "uneven")])
def test_loss_and_gradient_equal_serial(comm, cloud, kind, method, partition, spread):
    """Loss and gradient of the distributed system equal the single-process ones
    (``EQUAL_PARAMS_RTOL``), also on a rank without boundary nodes and uneven partitions."""
    D = _dist(cloud, comm, partition, kind, method)
    serial = _serial(cloud, kind, method)
    if partition == "block" and comm.size > 1:
        assert D.system.info["partition"].n_boundary[0] == 0  # the rank-without-boundary case
        if comm.rank == 0:
            assert D.system.B.shape[0] == 0 and len(D.system.boundary_index) == 0
    model = _model(D)
    ls, gs = _loss_and_grad(serial, model)
    ld, gd = _loss_and_grad(D, model)
    rel_l, rel_g = abs(ld - ls) / abs(ls), torch.linalg.norm(gd - gs) / torch.linalg.norm(gs)
    spread("dist.loss", rel_l, EQUAL_PARAMS_RTOL)
    spread("dist.grad", rel_g, EQUAL_PARAMS_GRAD_RTOL)
    assert rel_l <= EQUAL_PARAMS_RTOL and rel_g <= EQUAL_PARAMS_GRAD_RTOL
    assert comm.same_on_all_ranks(gd)
    # the test-set error is a global sum too
    es, ed = serial.rel_l2(model), D.rel_l2(model)
    spread("dist.rel_l2", abs(ed - es) / es, EQUAL_PARAMS_RTOL)
    assert abs(ed - es) <= EQUAL_PARAMS_RTOL * es


def _as_model(disc, flat):
    """A fresh network holding the flat parameter vector ``flat``."""
    m = _model(disc)
    torch.nn.utils.vector_to_parameters(flat.clone(), m.parameters())
    return m


def _history(tr, n, after_step=None):
    """The first ``n`` closure losses of ``tr``'s optimizer; ``after_step(tr, evals)`` runs after
    every optimizer step."""
    losses = []
    orig = tr.closure

    def closure():
        loss = orig()
        losses.append(float(loss))
        return loss

    while len(losses) < n:
        tr.optimizer.step(closure)
        if after_step is not None:
            after_step(tr, len(losses))
    return np.array(losses[:n])


@pytest.mark.mpi
@pytest.mark.parametrize("kind,partition,line_search,lr", [
    ("poisson", "auto", True, None), ("poisson", "uneven", True, None),
    ("nonlinear-poisson", "auto", False, 0.01), ("heat", "block", False, 0.4)])
def test_lbfgs_lockstep_matches_serial(comm, cloud, kind, partition, line_search, lr, spread):
    """L-BFGS on the distributed system against the serial one, first 20 closure evaluations.

    Settings: the CLI default (strong-Wolfe line search) and the paper's no-line-search L-BFGS at
    its nonlinear-Poisson rate 0.01 and heat rate 0.4. The Poisson and heat runs pass through
    loss jumps (a line-search trial step, the fixed rate's overshoot), where L-BFGS amplifies
    any difference by ~1e3. Three claims:

    1. exact: the parameters hash identically on every rank after every step (lockstep);
    2. strict, at equal parameters: after every step the distributed loss and gradient at the
       distributed parameters equal the serial loss and gradient at those same parameters
       (``EQUAL_PARAMS_RTOL``, ``EQUAL_PARAMS_GRAD_RTOL``);
    3. the loss histories agree within a bound that grows with the measured amplification: a
       serial run from parameters perturbed by ``delta`` (relative) gives the deviation
       ``p_k`` that such a perturbation has grown to by evaluation k; the distributed run starts
       from a per-evaluation difference eta, the largest relative loss or gradient difference
       measured for claim 2 (at least ``EQUAL_PARAMS_RTOL``), so its deviation must stay below
       ``10 eta max(1, max_{j<=k} p_j / delta)``. Measured: at most 0.03 of that bound (1-4
       ranks, threads 1 and 2); the amplification reaches ~600 at the loss jumps.
       (Issue 9: a fixed 1e-9 failed at a loss jump on another machine.)
    """
    from dtpinn_dist.optimizer import TrainConfig, Trainer

    n = 20
    # the paper's no-line-search setting with its rates: its raw network inputs too
    cfg = TrainConfig(steps=4, max_iter=5, eval_every=0, verbose=False, width=20, depth=2,
                      seed=3, line_search=line_search, lr=lr,
                      inputs="box" if line_search else "raw")
    D = _dist(cloud, comm, partition, kind)
    serial = _serial(cloud, kind)

    worst = [0.0, 0.0]

    def check_step(tr, evals):
        flat = tr._flat()
        hashes = comm.allgather(tensor_hash(flat))
        assert len(set(hashes)) == 1, f"ranks diverged after {evals} evals: {hashes}"
        ld, gd = _loss_and_grad(D, _as_model(D, flat))
        ls, gs = _loss_and_grad(serial, _as_model(serial, flat))
        worst[0] = max(worst[0], abs(ld - ls) / abs(ls))
        worst[1] = max(worst[1], float(torch.linalg.norm(gd - gs) / torch.linalg.norm(gs)))

    s = _history(Trainer(serial, cfg), n)
    d = _history(Trainer(D, cfg), n, after_step=check_step)
    spread("lockstep.equal_params.loss", worst[0], EQUAL_PARAMS_RTOL)
    spread("lockstep.equal_params.grad", worst[1], EQUAL_PARAMS_GRAD_RTOL)
    assert worst[0] <= EQUAL_PARAMS_RTOL and worst[1] <= EQUAL_PARAMS_GRAD_RTOL, worst

    delta = 1e-13
    tr = Trainer(serial, cfg)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in tr.params:
            p.mul_(1 + delta * (2 * torch.rand(p.shape, generator=gen, dtype=p.dtype) - 1))
    amp = np.maximum.accumulate(np.abs(_history(tr, n) - s) / np.abs(s)) / delta
    eta = max(worst[0], worst[1], EQUAL_PARAMS_RTOL)
    bound = 10 * eta * np.maximum(1.0, amp)
    dev = np.abs(d - s) / np.abs(s)
    spread("lockstep.history/bound", (dev / bound).max(), 1.0)
    assert np.all(dev <= bound), (dev, bound)
    assert s[-1] < s[0]  # it did train


# ----------------------------------------------------------------------------------------------
# Whole-job failure behaviour: launched mpirun (serial pass only; the fixture skips under MPI).

_FAIL_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from mpi4py import MPI
    from dtpinn_dist.comm import abort_on_exception
    from dtpinn_dist.comm import MPIComm

    mode = sys.argv[1]
    comm = MPIComm()
    with abort_on_exception():
        if mode == "file":
            from dtpinn_dist.geometry import load_cloud
            path = "/nonexistent/cloud.npz" if comm.rank == comm.size - 1 else sys.argv[2]
            cloud = load_cloud(path)
        elif mode == "nan":
            x = np.array([float("nan") if comm.rank == 1 else 1.0])
            if not np.isfinite(x).all():
                raise FloatingPointError("non-finite loss on this rank")
        elif mode == "same":
            raise ValueError("order must be a positive integer, got -1")
        # the healthy ranks wait in a collective that the failed rank never joins
        comm.sum(np.ones(3))
        comm.barrier()
        time.sleep(600)
""")


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("mode", ["file", "nan", "same"])
def test_failure_on_one_rank_ends_job(mpirun, tmp_path, n, mode):
    from dtpinn_dist.geometry import make_cloud, save_npz

    script = tmp_path / "fail.py"
    script.write_text(_FAIL_SCRIPT)
    good = tmp_path / "cloud.npz"  # the healthy ranks' readable cloud file
    save_npz(good, make_cloud("disk", n=200, seed=0))
    t0 = time.time()
    res = mpirun(n, [sys.executable, script, mode, good], timeout=300)
    took = time.time() - t0
    assert res.returncode != 0
    # Without the abort the healthy ranks would wait forever in the collective (and then sleep
    # 600 s). Starting 4 Python+torch ranks on 2 busy cores takes up to ~30 s, so the bound is
    # about that start-up time with a few-fold margin, far from the 600 s sleep.
    assert took < 150, f"job took {took:.1f}s to end"
    err = res.stderr
    want = {"file": f"rank {n - 1}: error:", "nan": "rank 1: error: FloatingPointError: non-finite",
            "same": "error: order must be a positive integer"}[mode]
    assert want in err, err[-2000:]


@pytest.mark.parametrize("n", [2, 4])
def test_cli_under_mpirun(mpirun, tmp_path, n):
    """``mpirun -n K python -m dtpinn_dist.train``: PETSc backend, one set of output lines
    (rank 0 only), metrics.json records the rank count, same result as serial."""
    import json
    import subprocess

    # 3 L-BFGS iterations per step: a long strong-Wolfe search amplifies round-off by ~1e3 at
    # each loss jump (test_lbfgs_lockstep_matches_serial bounds that); with 3 the two runs'
    # losses agreed to 1.7e-14 relative at 2 and 4 ranks (measured), 1e-6 is the tolerance
    args = ["--steps", "2", "--max-iter", "3", "--eval-every", "2", "--width", "20", "--depth",
            "2"]
    res = mpirun(n, [sys.executable, "-m", "dtpinn_dist.train", *args, "--check-lockstep",
                     "--out", tmp_path / "mpi"], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("final rel_l2") == 1 and res.stdout.count("stopped:") == 1
    assert "backend petsc" in res.stdout and f"{n} rank(s)" in res.stdout
    m = json.loads((tmp_path / "mpi" / "metrics.json").read_text())
    assert m["ranks"] == n
    assert all(h.get("lockstep") is True for h in m["history"])
    from conftest import mpi_env  # the same environment: this checkout on PYTHONPATH

    ser = subprocess.run([sys.executable, "-m", "dtpinn_dist.train", *args, "--out",
                          str(tmp_path / "serial")], capture_output=True, text=True, timeout=180,
                         env=mpi_env())
    assert ser.returncode == 0, ser.stderr[-3000:]
    s = json.loads((tmp_path / "serial" / "metrics.json").read_text())
    assert abs(m["final_loss"] - s["final_loss"]) <= 1e-6 * abs(s["final_loss"])


def test_cli_error_on_rank0_only_ends_job(mpirun, tmp_path):
    """Only rank 0 claims --out: an existing metrics.json must end every rank, not hang them."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    t0 = time.time()
    res = mpirun(2, [sys.executable, "-m", "dtpinn_dist.train", "--n-points", "80", "--steps", "1",
                     "--out", out], timeout=90)
    assert res.returncode != 0
    assert time.time() - t0 < 60
    assert "rank 0: error:" in res.stderr and "already exists" in res.stderr
    assert (out / "metrics.json").read_text() == "{}"


def test_cli_petsc_options_pass_through(mpirun, tmp_path):
    """PETSc options on the trainer's command line reach PETSc (-log_view prints MatMult)."""
    res = mpirun(2, [sys.executable, "-m", "dtpinn_dist.train", "--n-points", "200", "--steps", "1",
                     "--width", "10", "--depth", "2", "--order", "3", "--quiet",
                     "--out", tmp_path / "lv", "-log_view"], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "MatMult " in res.stdout and "MatMultTranspose" in res.stdout
