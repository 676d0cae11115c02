"""Checkpoint and restart (issue 11 section 3), in the library.

A run stopped at a step boundary (here: by a real SIGINT, as Ctrl-C does) and continued from its
checkpoint file in a fresh trainer ends with exactly the bits of an uninterrupted run, for every
optimizer and across schedule phase changes; serially and under ``mpirun -n K`` (``-m mpi``).
Checkpoints of another run, damaged files and files carrying code are refused with one message;
a blow-up keeps the parameters with the lowest loss seen and says where they are from.
"""
import os
import signal

import pytest
import torch

from dtpinn_dist.geometry import make_cloud
from dtpinn_dist.optimizer import CheckpointError, CheckpointMismatch, TrainConfig, Trainer
from dtpinn_dist.optimizer import checkpoint as ckpt
from dtpinn_dist.problem import discretize, paper_problem
from roundoff import gamma


@pytest.fixture(scope="module")
def cloud():
    return make_cloud("disk", n=180, seed=2)


_discs = {}


def _disc(cloud, kind="poisson", order=4, dtype=torch.float64, seed=2):
    key = (kind, order, dtype, seed)
    if key not in _discs:
        c = cloud if seed == 2 else make_cloud("disk", n=180, seed=seed)
        # the paper's problem and loss (its per-block weights): the cases' learning rates
        # (the paper's fixed-rate L-BFGS among them) are set for that scale
        _discs[key] = discretize(paper_problem(kind), c, order, dtype=dtype,
                                 partitioner="hilbert", weighting="count")
    return _discs[key]


def _cfg(**kw):
    base = dict(width=12, depth=2, eval_every=1, verbose=False)
    base.update(kw)
    return TrainConfig(**base)


def _strip(history):
    return [{k: v for k, v in h.items() if "time" not in k} for h in history]


def _interrupt_at(step):
    """A progress log that sends this process a real SIGINT once step ``step`` is recorded."""
    def log(line):
        if line.startswith(f"step {step:6d} "):
            os.kill(os.getpid(), signal.SIGINT)
    return log


CASES = {
    "lbfgs-wolfe": dict(steps=6),
    "lbfgs-paper": dict(steps=6, line_search=False, lr=0.5),
    "adam": dict(optimizer="adam", lr=1e-2, steps=6),
    "lm": dict(optimizer="lm", steps=6),
    # the stop falls into phase 2 (LM) of three
    "schedule": dict(schedule="lbfgs:2,lm:3,adam:2", lr=1e-2),
    # LM ends its phase early (rtol), the next phase starts at once: the state between
    "lm-ends-early": dict(schedule="lm:50,lbfgs:3", lm={"rtol": 0.3}),
}


# under MPI (slow on oversubscribed cores) the three that cover L-BFGS, LM and a phase change
UNDER_MPI = ("lbfgs-wolfe", "lm", "schedule")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.mpi) if c in UNDER_MPI
                                  else c for c in CASES])
def test_resume_continues_bit_for_bit(case, cloud, tmp_path_factory):
    disc = _disc(cloud)
    kw = CASES[case]
    ref = Trainer(disc, _cfg(**kw))
    r_ref = ref.train()
    stop = 3
    if case == "lm-ends-early":  # the step LM gave up at: the next phase is pending there
        stop = ref.phase_start
        assert ref.phase == 1 and 1 <= stop < r_ref.steps, (stop, r_ref.steps)
    path = tmp_path_factory.getbasetemp() / f"resume-{case}.pt"  # rank 0's is the one used
    first = Trainer(disc, _cfg(verbose=True, **kw), log=_interrupt_at(stop), checkpoint=path,
                    catch_signals=True)
    r_first = first.train()
    assert r_first.interrupted == "SIGINT" and r_first.steps == stop, r_first.stop_reason
    assert r_first.checkpoint_step == stop and f"at step {stop}" in r_first.stop_reason

    again = Trainer(disc, _cfg(**kw))  # a fresh network, optimizer and counters
    again.resume(path)
    assert again.step_count == stop
    r_again = again.train()
    for p, q in zip(ref.model.parameters(), again.model.parameters()):
        assert torch.equal(p, q)
    assert r_again.final_loss == r_ref.final_loss and r_again.evals == r_ref.evals
    assert _strip(r_again.history) == _strip(r_ref.history)
    assert r_again.stop_reason == r_ref.stop_reason


def test_checkpoint_holds_the_state_and_is_written_periodically(cloud, tmp_path):
    disc = _disc(cloud)
    path = tmp_path / "run"
    path.mkdir()
    t = Trainer(disc, _cfg(steps=5, checkpoint_every=2), checkpoint=path)
    res = t.train()
    assert res.checkpoint == str(path / "checkpoint.pt") and res.checkpoint_step == 5
    doc = ckpt.read(path)  # torch.load(weights_only=True) inside
    st = doc["state"]
    assert st["step"] == 5 and st["evals"] == res.evals and st["optimizer_name"] == "lbfgs"
    lb = st["optimizer"]["state"][0]
    assert len(lb["old_dirs"]) == len(lb["old_stps"]) >= 1  # the L-BFGS history
    assert st["fingerprint"]["ranks"] == 1 and st["fingerprint"]["order"] == 4
    assert st["fingerprint"]["cloud"]["hash"] == disc.info["cloud_hash"]
    assert [h["step"] for h in st["history"]] == [0, 1, 2, 3, 4, 5]
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.pt"]  # no temporary file left


def _saved(cloud, tmp_path, **kw):
    path = tmp_path / "ck.pt"
    Trainer(_disc(cloud), _cfg(steps=2, **kw), checkpoint=path).train()
    return path


@pytest.mark.parametrize("change, needle", [
    (dict(width=16), "network width: 12 in the checkpoint, 16 now"),
    (dict(order=3), "RBF-FD order: 4 in the checkpoint, 3 now"),
    (dict(seed=3), "point cloud: "),
    (dict(kind="nonlinear-poisson"), "problem pde: 'lap(u)' in the checkpoint"),
    (dict(dtype=torch.float32), "dtype: 'fp64' in the checkpoint, 'fp32' now"),
    (dict(schedule="adam:4"), "phase 1 (lbfgs) of its schedule"),
])
def test_a_checkpoint_of_another_run_is_refused(cloud, tmp_path, change, needle):
    path = _saved(cloud, tmp_path)
    d = {k: change.pop(k) for k in ("order", "seed", "kind", "dtype") if k in change}
    disc = _disc(cloud, **d)
    t = Trainer(disc, _cfg(steps=4, **change))
    before = [p.detach().clone() for p in t.model.parameters()]
    with pytest.raises(CheckpointMismatch) as exc:
        t.resume(path)
    msg = str(exc.value)
    assert needle in msg and str(path) in msg and "\n" not in msg, msg
    for p, q in zip(t.model.parameters(), before):  # nothing was loaded
        assert torch.equal(p, q)


def test_a_checkpoint_from_another_rank_count_is_refused(cloud, tmp_path):
    path = _saved(cloud, tmp_path)
    doc = ckpt.read(path)
    doc["state"]["fingerprint"]["ranks"] = 2  # as written by a 2-rank run
    t = Trainer(_disc(cloud), _cfg(steps=4))
    with pytest.raises(CheckpointMismatch, match="rank count: 2 in the checkpoint, 1 now"):
        t.load_state_dict(doc["state"], source="that checkpoint")


class _Planted:
    """Unpickling this would run code: create a folder."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_damaged_foreign_and_odd_files_are_refused(cloud, tmp_path):
    path = _saved(cloud, tmp_path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code = tmp_path / "code.pt"
    torch.save({"format": ckpt.FORMAT, "version": 1, "state": _Planted(str(tmp_path / "pwned"))},
               code)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)  # opening it would block for ever
    for f, needle in [(cut, "damaged or not a checkpoint"), (code, "damaged or not a checkpoint"),
                      (other, "is not a dtpinn_dist checkpoint"), (fifo, "not a regular file"),
                      (tmp_path / "none", "no checkpoint at")]:
        with pytest.raises(CheckpointError) as exc:
            Trainer(_disc(cloud), _cfg()).resume(f)
        assert needle in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
    assert not (tmp_path / "pwned").exists()


def test_an_unwritable_checkpoint_stops_with_one_error(cloud, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    t = Trainer(_disc(cloud), _cfg(steps=2), checkpoint=blocker / "ck.pt")
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*ck.pt"):
        t.train()


def test_blow_up_keeps_the_lowest_loss_and_says_where_from(cloud):
    """The issue's case: L-BFGS without a line search at lr 10 blows up at once. The run keeps
    the parameters with the lowest loss seen (so never worse than the start) and names their
    step and evaluation in the stop reason and the result."""
    disc = _disc(cloud)
    t = Trainer(disc, _cfg(steps=5, line_search=False, lr=10.0, width=50, depth=4))
    res = t.train()
    assert "diverged" in res.stop_reason or "non-finite" in res.stop_reason, res.stop_reason
    r = res.restored
    assert r is not None and r["evaluation"] >= 1
    assert f"{r['loss']:.3e} at step {r['step']} (evaluation {r['evaluation']})" in \
        res.stop_reason
    start = res.history[0]["loss"]
    assert res.final_loss <= start
    # the kept parameters are the ones that had that loss: the training loss (r*r).sum() and
    # the evaluation's sum of loss terms differ only by summation order, a few ulps of the sum
    # (measured 2e-16 relative). Both are sums of the same n <= len(X) positive terms, each
    # with <= 4 roundings (scale, square): each within gamma_(n+4) (Higham lemma 3.1)
    assert abs(res.final_loss - r["loss"]) <= \
        2 * float(gamma(len(disc.data["X"]) + 4)) * r["loss"]
    assert res.final_rel_l2 <= 1.5 * res.history[0]["rel_l2"]
