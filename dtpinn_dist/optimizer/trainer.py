"""The one training loop: phases of a schedule, stop rules, budgets, evaluation (DT and vanilla
PINNs, serial and distributed).

Distributed rules (all ranks must take bit-identical optimizer steps):

* the network is initialised from the seed and then rank 0's state is broadcast;
* the closure computes this rank's ``(r * r).sum()``, back-propagates it, then SUMS the gradient
  over ranks with one deterministic ``comm.sum`` on the flattened vector (copied back into
  ``.grad``) and sums the loss the same way. ``comm.sum`` returns identical bits on every rank,
  so every rank's optimizer sees the same loss and gradient and branches identically;
* no other collective runs inside the optimizer; stop decisions (time budget) are made on rank 0
  and broadcast between steps, a stop signal is agreed on between steps (one ``allgather``),
  evaluation metrics are global sums between steps.

Checkpoints (:mod:`.checkpoint`): :meth:`Trainer.state_dict` holds everything the loop needs to
continue, so a run resumed from a checkpoint takes exactly the steps an uninterrupted run takes
(same bits, with the same thread count); the trainer writes one every ``checkpoint_every``
steps, when it stops (step or time budget, a stop signal, a blow-up) and at the end.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from ..comm.signals import StopSignals, signal_name
from ..model.mlp import MLP
from ..model.params import copy_flat_into, flatten
from . import checkpoint as ckpt
from .first_order import default_lr
from .registry import NO_LEARNING_RATE, build, parse_schedule

__all__ = ["TrainConfig", "TrainResult", "Trainer", "ConfigError"]


@dataclass
class TrainConfig:
    """Settings of one training run (all serialisable, written to metrics.json).

    Attributes
    ----------
    optimizer : str
        A name of :data:`~dtpinn_dist.optimizer.registry.OPTIMIZERS` ('lbfgs', 'adam', 'lm'
        or its alias 'gn').
    lr : float or None
        None: 1.0 for L-BFGS with a line search, the paper's rate without one
        (:func:`~dtpinn_dist.optimizer.first_order.default_lr`), 1e-3 for Adam.
    line_search : bool
        L-BFGS strong-Wolfe line search (default; the paper used none: ``False`` with the
        paper's rates).
    history_size, max_iter : int
        L-BFGS memory and inner iterations per step (torch defaults, as the authors).
    tolerance_grad, tolerance_change : float
        L-BFGS stopping tolerances (torch's 1e-7 and 1e-9 end runs that are still improving;
        0 stops only at a zero gradient or a zero step). The stop reason names the one that
        fired.
    steps : int
        Optimizer steps (``optimizer.step`` calls) budget.
    tol : float
        Stop when the loss is <= tol (0: never).
    time_budget : float or None
        Stop when the TRAINING time (evaluation excluded) exceeds this many seconds.
    eval_every : int
        Metrics every this many steps (and at the end).
    seed : int
        Network initialisation seed.
    width, depth, activation
        Network shape (paper: 50, 4, tanh).
    inputs : {"auto", "box", "raw"}
        What the default network's first layer sees: the coordinates (and time) mapped from
        the cloud's bounding box to [-1, 1] (``box``), or the raw values (``raw``, the
        paper's). ``auto`` (default): ``box`` unless the raw inputs are already of order one
        (:func:`~dtpinn_dist.model.mlp.inputs_of_order_one`: the paper's disk and time
        interval), so those runs stay as they were measured.
    divergence_factor : float
        Treat a loss above this multiple of the initial loss as divergence (stop, restore the
        parameters with the lowest loss seen); 0 disables. L-BFGS without line search can
        blow up.
    verbose : bool
        Progress lines (rank 0 only).
    schedule : str, optional
        Optimizer phases, e.g. ``"lbfgs:300,lm:100"`` (L-BFGS for 300 steps, then
        Levenberg-Marquardt for 100); overrides ``optimizer`` and ``steps``.
    lm : dict
        Options of :class:`~dtpinn_dist.optimizer.lm.LevenbergMarquardt` (``step``,
        ``memory_budget``, ``cg_maxiter``, ...).
    checkpoint_every : int
        With a checkpoint file (``Trainer(checkpoint=...)``, ``fit(checkpoint=...)``): write it
        every this many steps (0: only when the run stops).
    """

    optimizer: str = "lbfgs"
    lr: float | None = None
    line_search: bool = True
    history_size: int = 100
    max_iter: int = 20
    tolerance_grad: float = 0.0
    tolerance_change: float = 0.0
    steps: int = 500
    tol: float = 0.0
    time_budget: float | None = None
    eval_every: int = 10
    seed: int = 0
    width: int = 50
    depth: int = 4
    activation: str = "tanh"
    inputs: str = "auto"
    divergence_factor: float = 1e6
    verbose: bool = True
    schedule: str | None = None
    lm: dict = field(default_factory=dict)
    checkpoint_every: int = 0

    def __post_init__(self):
        """Every setting checked once, here, with one message naming the setting."""
        def need(ok, name, what):
            if not ok:
                raise ConfigError(name, f"{name} = {getattr(self, name)!r}: {what}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def finite(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("width", "depth", "history_size", "max_iter"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name,
                 "must be an integer >= 1")
        for name in ("steps", "eval_every", "seed", "checkpoint_every"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name,
                 "must be an integer >= 0")
        need(self.lr is None or (finite(self.lr) and self.lr > 0), "lr",
             "the learning rate must be a finite number > 0")
        for name in ("tol", "tolerance_grad", "tolerance_change", "divergence_factor"):
            need(finite(getattr(self, name)) and getattr(self, name) >= 0, name,
                 "must be a finite number >= 0")
        need(self.time_budget is None or (finite(self.time_budget) and self.time_budget > 0),
             "time_budget", "must be a finite number of seconds > 0 (or None)")
        from ..model.mlp import ACTIVATIONS
        need(self.activation in ACTIVATIONS, "activation", f"use one of {sorted(ACTIVATIONS)}")
        need(self.inputs in ("auto", "box", "raw"), "inputs", "use 'auto', 'box' or 'raw'")
        from .registry import OPTIMIZERS
        need(self.optimizer in OPTIMIZERS, "optimizer", f"use one of {sorted(OPTIMIZERS)}")
        if self.schedule is not None:
            try:
                parse_schedule(self.schedule)
            except ValueError as exc:
                raise ConfigError("schedule", str(exc)) from None
        need(isinstance(self.lm, dict), "lm", "must be a dict of Levenberg-Marquardt options")


class ConfigError(ValueError):
    """A training setting is out of range; ``param`` names it (the CLI maps it to its flag)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class TrainResult:
    """What a run produced. ``history``: one dict per evaluation (see :meth:`Trainer.evaluate`).

    ``restored``: after a blow-up or a non-finite loss, where the parameters the run kept come
    from (``{"step", "evaluation", "loss"}``: the loss evaluation with the lowest loss seen, the
    step it belongs to); None otherwise. ``interrupted``: the stop signal's name ("SIGINT") when
    one ended the run. ``checkpoint``/``checkpoint_step``: the last checkpoint written (or
    resumed from) and its step. ``error_split``: which residual block limits the network's
    error (:func:`~dtpinn_dist.problem.diagnostics.error_split`), when the run computed it.
    """

    history: list = field(default_factory=list)
    steps: int = 0
    evals: int = 0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    final_loss: float | None = None
    final_rel_l2: float | None = None
    best_rel_l2: float | None = None
    best_step: int | None = None
    time_to_best_s: float | None = None
    stop_reason: str = ""
    restored: dict | None = None
    interrupted: str | None = None
    checkpoint: str | None = None
    checkpoint_step: int | None = None
    error_split: dict | None = None

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


#: Bytes per (point x hidden unit x layer x 8) one loss+gradient evaluation keeps alive, measured
#: with the 4 x 50 MLP (peak RSS): DT 4-7 (time-dependent: u_t by double backward), vanilla
#: 6-13 (second derivatives); with margin:
_BYTES_FACTOR = {"dt": 10, "vanilla": 20}
def _input_box(rule: str, box):
    """The network's input map for the setting ``inputs`` (see :class:`TrainConfig`)."""
    from ..model.mlp import inputs_of_order_one

    if rule == "raw" or (rule == "auto" and inputs_of_order_one(box)):
        return None
    return box


#: Parameter-sized vectors the loop keeps besides the optimizer's: the parameters, their
#: gradients, the restore point, the step's starting point, the summed gradient (MPI).
_PARAM_COPIES = 5


def _mlp_size(in_dim: int, width: int, depth: int) -> int:
    """Parameters of :class:`~dtpinn_dist.model.MLP` (``depth`` hidden layers of ``width``)."""
    sizes = [in_dim] + [width] * depth + [1]
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def training_bytes(disc, cfg: TrainConfig, phases, n_params: int, width: int, depth: int,
                   checkpoint: bool) -> dict:
    """Estimated peak memory of a training run on this rank, by part (bytes, float): the
    network's evaluations, the parameters and their copies, the largest phase's optimizer state
    (L-BFGS: 2 x pairs x parameters and torch's history-long list; Adam: 2 moments; LM: its
    dense matrices where it may use them) and, with checkpoints, the state copied to write one.
    Keys name the setting that drives each part."""
    item = torch.finfo(disc.dtype).bits // 8
    n, p = float(disc.network_points), float(n_params)
    lbfgs_iters = sum(k for name, k in phases if name == "lbfgs") * float(cfg.max_iter)
    opt, lists = {}, 0.0
    for name, _ in phases:
        if name == "lbfgs":
            pairs = min(float(cfg.history_size), lbfgs_iters)
            # torch keeps a list of history_size entries (8 bytes each) from the first step; a
            # checkpoint copies it twice more (deepcopy, then the CPU copy) and pickles it
            lists = 8.0 * cfg.history_size
            opt["L-BFGS state (--history-size)"] = lists + (2 * pairs + 3) * p * item
        elif name == "adam":
            opt["Adam moments"] = 2 * p * item
        elif name in ("lm", "gn"):
            dense = (3 * p * p + n * p) * item
            if cfg.lm.get("step", "auto") not in ("dense", "lagged"):
                dense = min(dense, float(cfg.lm.get("memory_budget", 4e9)))  # else it uses CG
            opt["Levenberg-Marquardt matrices (--lm-step, --lm-memory-gb)"] = dense + 4 * p * item
    worst = max(opt.items(), key=lambda kv: kv[1], default=("optimizer state", 0.0))
    parts = {"network evaluation (nodes x --width x --depth)":
             n * width * depth * item * _BYTES_FACTOR[disc.method],
             "parameters and copies (--width, --depth)": _PARAM_COPIES * p * item,
             worst[0]: worst[1]}
    if checkpoint:  # state_dict(): the network, the restore point and the optimizer state
        parts["checkpoint copy (--checkpoint-every)"] = 2 * p * item + worst[1] + lists * 9 / 8
    return parts


def _check_memory(disc, cfg, phases, model, checkpoint: bool) -> None:
    """Refuse, before the network is built, a run whose training cannot fit in memory
    (:func:`training_bytes`), with the estimate by part."""
    from ..resources import check_memory_parts

    if model is None:
        width, depth = cfg.width, cfg.depth
        n_params = _mlp_size(disc.input_dim, width, depth)
    else:
        mats = [q for q in model.parameters() if q.dim() == 2]
        width = max((q.shape[0] for q in mats), default=1)
        depth = max(1, len(mats) - 1)
        n_params = sum(q.numel() for q in model.parameters())
    parts = training_bytes(disc, cfg, phases, n_params, width, depth, checkpoint)
    check_memory_parts(parts, f"training a {width} x {depth} network ({n_params} parameters) "
                       f"at {disc.network_points} points ({disc.method}, {disc.m} time slice(s))",
                       fix="use a smaller network, fewer nodes or time steps (nt), a shorter "
                           "history, or more ranks")


class Trainer:
    """Train ``model`` on a :class:`~dtpinn_dist.problem.discrete.Discretization` (this rank's
    share of it).

    Parameters
    ----------
    disc : Discretization
    config : TrainConfig
    model : torch.nn.Module, optional
        Default: :class:`~dtpinn_dist.model.MLP` of ``config``'s shape in the discretisation's
        dtype.
    log : callable
        Where progress lines go (called on rank 0 only).
    checkpoint : path-like, optional
        Checkpoint file (a directory: ``DIR/checkpoint.pt``) written every
        ``config.checkpoint_every`` steps and when the run stops (:mod:`.checkpoint`).
    checkpoint_meta : dict, optional
        Plain data stored with every checkpoint (the CLI stores its arguments there).
    catch_signals : bool
        While :meth:`train` runs, SIGINT (Ctrl-C), SIGTERM and SIGUSR1 stop the run cleanly
        after the step in progress (checkpoint written, ``result.interrupted`` set) instead of
        killing it; a second Ctrl-C abandons the step (:mod:`dtpinn_dist.comm.signals`).
    """

    def __init__(self, disc, config: TrainConfig | None = None, model=None, log=print, *,
                 checkpoint=None, checkpoint_meta: dict | None = None,
                 catch_signals: bool = False):
        self.disc = disc
        self.config = cfg = config or TrainConfig()
        self.comm = disc.comm
        self.log = log
        dtype = disc.dtype
        disc.problem.check_well_posed()
        self.phases = parse_schedule(cfg.schedule) if cfg.schedule else [(cfg.optimizer, cfg.steps)]
        _check_memory(disc, cfg, self.phases, model, checkpoint is not None)
        if model is None:
            model = MLP(disc.input_dim, cfg.width, cfg.depth, dtype=dtype, seed=cfg.seed,
                        activation=cfg.activation, device=disc.device,
                        input_box=_input_box(cfg.inputs, disc.input_box))
        pdt = next(model.parameters()).dtype
        if pdt != dtype:
            raise ValueError(f"the network is {pdt} but the discretisation is {dtype}; "
                             "discretize with the network's dtype")
        self.model = model
        # every rank starts from rank 0's weights, whatever its own init produced
        state = self.comm.bcast({k: v.detach().cpu() for k, v in model.state_dict().items()}
                                if self.comm.rank == 0 else None)
        model.load_state_dict(state)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # learning rate of each first-order phase (None for LM), as used
        self.lrs = [None if name in NO_LEARNING_RATE else (cfg.lr if cfg.lr is not None else default_lr(
            name, disc.method, disc.problem.name, cfg.line_search)) for name, _ in self.phases]
        self.lr = next((lr for lr in self.lrs if lr is not None), None)
        self.phase, self.phase_start = 0, 0
        self._set_optimizer(0)
        self.step_count = 0
        self.evals = 0
        self.train_time = 0.0
        self.eval_time = 0.0
        self.history: list[dict] = []
        self._last_loss = math.nan
        self._nonfinite = False  # a closure evaluation of the step in progress was not finite
        # the restore point: the parameters with the lowest loss seen, and where they are from
        self._best_params = self._flat()
        self._best = None  # {"step", "evaluation", "loss"} once a loss was seen
        self._evals0 = 0   # evaluations before the step in progress
        self.checkpoint = None if checkpoint is None else ckpt.checkpoint_file(checkpoint)
        self.checkpoint_meta = dict(checkpoint_meta or {})
        self.checkpoint_step = None  # step of the last checkpoint written or resumed from
        self.catch_signals = catch_signals
        self._signals = None
        self._check_finite_start()

    def _check_finite_start(self) -> None:
        """Refuse, before any step, a problem whose loss or gradient is not finite at the
        initial network (NaN from ``u**u`` at a negative u, ``log(u)``, ...): one ``ValueError``
        naming the loss term (collective: the same answer on every rank)."""
        # one residual evaluation, one collective: each term's squares and the gradient's health
        parts = self.disc.residual_parts(self.model)
        sq = torch.stack([(r * r).sum() for r in parts.values()])
        grads = torch.autograd.grad(sq.sum(), self.params, allow_unused=True)
        bad = sum(int(not torch.isfinite(g).all()) for g in grads if g is not None)
        glob = self.comm.sum(torch.cat([sq.detach(), sq.new_tensor([float(bad)])]).to(
            torch.float64))
        terms = {k: float(v) for k, v in zip(parts, glob[:-1])}
        bad = float(glob[-1])
        shown = ", ".join(f"{k} term {v:.3g}" for k, v in terms.items())
        broken = [k for k, v in terms.items() if not math.isfinite(v)]
        if broken:
            raise ValueError(
                f"the loss is not finite at the initial network ({shown}): the {broken[0]} "
                "term's declared expression gives NaN or inf there (e.g. u**u or log(u) at a "
                "negative u, sqrt of a negative value); change the declaration")
        if bad:
            raise ValueError(
                f"the loss at the initial network is finite ({shown}) but its gradient is not: "
                "a term is not differentiable there (e.g. u**u, sqrt(u) or abs(u) at u = 0); "
                "change the declaration")

    def _next_phase(self) -> None:
        self.phase += 1
        self.phase_start = self.step_count

    def _set_optimizer(self, phase: int) -> None:
        """Make a fresh optimizer of schedule phase ``phase`` current (phases share no
        state)."""
        keep, self.phase = self.phase, phase  # the registry reads the phase's settings
        try:
            self.optimizer = build(self.phases[phase][0], self)
        finally:
            self.phase = keep
        self.optimizer_name = self.phases[phase][0]
        self._optimizer_phase = phase

    # ------------------------------------------------------------------ core
    def _diverged(self, loss: float) -> bool:
        f = self.config.divergence_factor
        return bool(f) and self.history and loss > f * self.history[0]["loss"]

    def _flat(self) -> torch.Tensor:
        return flatten(self.params)

    def _set_flat(self, v: torch.Tensor) -> None:
        copy_flat_into(v, self.params)

    def _note_loss(self, loss: float, step: int) -> None:
        """Keep the current parameters as the restore point when ``loss`` is the lowest seen.
        ``step``: the step these parameters belong to (the step that reached them, or the one
        in progress for a trial point inside it)."""
        if math.isfinite(loss) and (self._best is None or loss < self._best["loss"]):
            self._best_params = self._flat()
            self._best = {"step": step, "evaluation": self.evals, "loss": loss}

    def closure(self) -> torch.Tensor:
        """zero_grad, local loss, backward, global gradient and loss (one comm.sum each)."""
        self.optimizer.zero_grad(set_to_none=False)
        r = self.disc.residual(self.model)
        local = (r * r).sum()
        local.backward()
        comm = self.comm
        if comm.size > 1:
            # one reduction for the whole gradient, bit-identical on every rank
            g = comm.sum(flatten(p.grad for p in self.params))
            copy_flat_into(g, [p.grad for p in self.params])
            loss = comm.sum(local.detach())
        else:
            loss = local.detach()
        self.evals += 1
        # the first evaluation of a step is at the point the previous steps reached; later ones
        # are trial points of the step in progress (L-BFGS without a line search makes the last
        # update of a step() without evaluating it: the next step's first evaluation does)
        first = self.evals == self._evals0 + 1
        self._note_loss(float(loss), self.step_count if first else self.step_count + 1)
        if not torch.isfinite(loss):
            self._nonfinite = True  # seen during the step in progress
            # zero gradient makes L-BFGS return at once instead of iterating on NaNs
            for p in self.params:
                p.grad.zero_()
        self._last_loss = float(loss)
        return loss

    def evaluate(self) -> dict:
        """Global metrics now: loss terms, rel L2, residual norms, counters, times (collective)."""
        t0 = time.perf_counter()
        terms = self.disc.loss_terms(self.model)
        rec = {"step": self.step_count, "evals": self.evals, "loss": float(sum(terms.values()))}
        rec.update({f"loss_{k}": v for k, v in terms.items()})
        rec["rel_l2"] = self.disc.rel_l2(self.model)
        rec.update(self.disc.residual_norms(self.model))
        self.eval_time += time.perf_counter() - t0
        rec["time_s"] = self.train_time
        rec["eval_time_s"] = self.eval_time
        return rec

    def _record(self, result: TrainResult) -> dict:
        rec = self.evaluate()
        progress = getattr(self.optimizer, "progress", None)
        if callable(progress):  # e.g. LM: step kind, damping, CG iterations, rebuilds, rejects
            rec.update(progress())
        self.history.append(rec)
        e = rec["rel_l2"]
        if e is not None and math.isfinite(e) and (result.best_rel_l2 is None
                                                   or e < result.best_rel_l2):
            result.best_rel_l2, result.best_step, result.time_to_best_s = e, rec["step"], rec["time_s"]
        if self.config.verbose and self.comm.rank == 0:
            err = "n/a" if e is None else f"{e:.3e}"
            self.log(f"step {rec['step']:6d}  evals {rec['evals']:7d}  loss {rec['loss']:.3e}  "
                     f"rel_l2 {err}  pde_res {rec['discrete_pde_res']:.2e}  "
                     f"train {rec['time_s']:.1f}s  eval {rec['eval_time_s']:.1f}s")
        return rec

    def _stop_signal(self) -> int:
        """The stop signal any rank caught (0: none); the same on every rank (collective)."""
        caught = int(self._signals.caught) if self._signals is not None else 0
        if self.comm.size > 1:
            caught = next((s for s in self.comm.allgather(caught) if s), 0)
        return caught

    def _restore_best(self) -> str:
        """Put the restore point back; the phrase saying where it is from."""
        self._set_flat(self._best_params)
        b = self._best
        if b is None:
            return "kept the initial parameters (no finite loss was seen)"
        return (f"restored the parameters with the lowest loss seen, {b['loss']:.3e} at step "
                f"{b['step']} (evaluation {b['evaluation']})")

    def train(self) -> TrainResult:
        """Run until the step budget, the loss tolerance, the time budget, a stop signal or a
        NaN/inf loss (collective)."""
        guard = StopSignals() if self.catch_signals else contextlib.nullcontext()
        with guard as signals:
            self._signals = signals
            try:
                return self._train()
            finally:
                self._signals = None

    def _train(self) -> TrainResult:
        cfg = self.config
        res = TrainResult()
        if not self.history:
            self._record(res)
        reason = None
        abandoned = False
        every = cfg.checkpoint_every if self.checkpoint is not None else 0
        while self.phase < len(self.phases):
            name, n_steps = self.phases[self.phase]
            if self.step_count - self.phase_start >= n_steps:
                if self.phase == len(self.phases) - 1:
                    break  # the phase stays current, so a restored run can continue it
                self._next_phase()
                continue
            if self._signals is not None:
                sig = self._stop_signal()
                if sig:
                    res.interrupted = signal_name(sig)
                    reason = f"interrupted by {res.interrupted} at step {self.step_count}"
                    break
            if self._optimizer_phase != self.phase:
                self._set_optimizer(self.phase)
                if self.phase and self.comm.rank == 0 and cfg.verbose:
                    self.log(f"phase {self.phase + 1}: {name} for up to {n_steps} steps")
            start = self._flat()
            t0 = time.perf_counter()
            self._evals0 = evals0 = self.evals
            self._nonfinite = False
            try:
                if getattr(self.optimizer, "self_evaluating", False):
                    lm_evals = self.optimizer.evals
                    self.optimizer.step()
                    self.evals += self.optimizer.evals - lm_evals
                    self._last_loss = self.optimizer.last_loss
                    # LM accepts only decreasing steps: its point after the step is evaluated
                    self._note_loss(self._last_loss, self.step_count + 1)
                else:
                    self.optimizer.step(self.closure)
            except (IndexError, RuntimeError, ValueError):
                # a NaN/inf trial point breaks torch's line search (its bracket logic assumes
                # finite losses): the run ends below with the last sane parameters. The loss is
                # a global sum, so every rank fails here alike.
                if not self._nonfinite:
                    raise
                self._last_loss = math.nan
            except KeyboardInterrupt:
                # a second Ctrl-C: give the step up. Under MPI the other ranks may be inside a
                # collective of this step: only ending the job is safe (the caller aborts).
                if self.comm.size > 1:
                    raise
                self.train_time += time.perf_counter() - t0
                self._set_flat(start)
                # the optimizer's state is half-updated: no checkpoint is written from it
                abandoned = True
                res.interrupted = "SIGINT"
                reason = (f"interrupted by SIGINT during step {self.step_count + 1} (the step "
                          f"was abandoned; parameters of step {self.step_count} kept)")
                break
            self.train_time += time.perf_counter() - t0
            self.step_count += 1
            # judged at the end of the step: a NaN trial point that the line search backed
            # out of is not a failure
            if not math.isfinite(self._last_loss) or not torch.isfinite(self._flat()).all():
                res.restored = copy.deepcopy(self._best)
                reason = (f"non-finite loss at step {self.step_count}: stopped and "
                          f"{self._restore_best()} (try a smaller learning rate lr)")
                if self.comm.rank == 0:
                    self.log(reason)
                break
            if math.isfinite(self._last_loss) and self._diverged(self._last_loss):
                res.restored = copy.deepcopy(self._best)
                reason = (f"diverged at step {self.step_count} (loss {self._last_loss:.3e} > "
                          f"{cfg.divergence_factor:g} x the starting loss "
                          f"{self.history[0]['loss']:.3e}): {self._restore_best()} (try a line "
                          "search or a smaller learning rate lr)")
                if self.comm.rank == 0:
                    self.log(reason)
                break
            if cfg.eval_every and self.step_count % cfg.eval_every == 0:
                self._record(res)
            if cfg.tol and self._last_loss <= cfg.tol:
                reason = f"loss {self._last_loss:.3e} <= tol {cfg.tol:g}"
                break
            # A phase also ends when its optimizer can do no more (then the next one takes over).
            phase_over = None
            if getattr(self.optimizer, "stop_reason", ""):
                phase_over = f"{name}: {self.optimizer.stop_reason}"
            elif self.evals - evals0 <= 1 and torch.equal(self._flat(), start):
                phase_over = self._no_progress(name)
            if cfg.time_budget is not None:
                # rank 0's clock decides, so all ranks stop after the same step
                stop = self.comm.bcast(self.train_time >= cfg.time_budget
                                       if self.comm.rank == 0 else None)
                if stop:
                    reason = f"time budget {cfg.time_budget:g}s"
                    break
            if phase_over:
                if self.phase == len(self.phases) - 1:
                    reason = phase_over
                    break
                if self.comm.rank == 0 and cfg.verbose:
                    self.log(f"{phase_over} at step {self.step_count}")
                self._next_phase()
            if every and self.step_count % every == 0:
                self.save_checkpoint()
        reason = reason or "step budget"
        # The checkpoint holds the state at this step boundary, before the closing evaluation
        # below: a run resumed from it records exactly what an uninterrupted one does.
        # (after a blow-up it holds the restored parameters)
        if self.checkpoint is not None and not abandoned and (
                self.checkpoint_step != self.step_count or res.restored is not None):
            self.save_checkpoint()
        if not self.history or self.history[-1]["step"] != self.step_count:
            self._record(res)
        last = self.history[-1]
        res.history = self.history
        res.steps, res.evals = self.step_count, self.evals
        res.train_time_s, res.eval_time_s = self.train_time, self.eval_time
        res.final_loss, res.final_rel_l2 = last["loss"], last["rel_l2"]
        res.stop_reason = reason
        if self.checkpoint_step is not None and self.checkpoint is not None:
            res.checkpoint, res.checkpoint_step = str(self.checkpoint), self.checkpoint_step
        # best over the whole history (also after a restart from a checkpoint)
        best = [h for h in self.history if h["rel_l2"] is not None and math.isfinite(h["rel_l2"])]
        if best:
            b = min(best, key=lambda h: h["rel_l2"])
            res.best_rel_l2, res.best_step, res.time_to_best_s = b["rel_l2"], b["step"], b["time_s"]
        if cfg.verbose and self.comm.rank == 0:
            self.log(f"stopped: {reason}")
        return res

    def _no_progress(self, name: str) -> str:
        """Why a first-order step changed nothing: the tolerance that fired."""
        cfg = self.config
        g = max((float(p.grad.abs().max()) for p in self.params if p.grad is not None),
                default=0.0)
        if name == "lbfgs" and g <= cfg.tolerance_grad:
            return (f"converged: lbfgs tolerance_grad fired (max |gradient| {g:.3e} <= "
                    f"{cfg.tolerance_grad:g})")
        if name == "lbfgs":
            return (f"converged: lbfgs made no progress (its step fell to tolerance_change "
                    f"{cfg.tolerance_change:g}; max |gradient| {g:.3e})")
        return f"converged ({name} made no progress; max |gradient| {g:.3e})"

    # ------------------------------------------------------------------ checkpoint state
    def fingerprint(self) -> dict:
        """What this run trains on (:func:`~dtpinn_dist.optimizer.checkpoint.fingerprint`)."""
        return ckpt.fingerprint(self.disc, self.model)

    def state_dict(self) -> dict:
        """Everything needed to continue, as plain data: the run's fingerprint, network,
        optimizer state (L-BFGS history, Adam moments, LM damping and scaling), RNG states,
        step and evaluation counters, schedule phase, times, history and the restore point."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
        return {"fingerprint": self.fingerprint(),
                "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "optimizer": _cpu(copy.deepcopy(self.optimizer.state_dict())),
                "optimizer_name": self.optimizer_name,
                "optimizer_phase": self._optimizer_phase,
                "phase": self.phase, "phase_start": self.phase_start,
                "step": self.step_count, "evals": self.evals,
                "train_time_s": self.train_time, "eval_time_s": self.eval_time,
                "last_loss": self._last_loss,
                "restore_point": {"params": self._best_params.detach().cpu().clone(),
                                  "where": copy.deepcopy(self._best)},
                "rng": rng,
                "history": copy.deepcopy(self.history), "config": asdict(self.config)}

    def load_state_dict(self, state: dict, source: str = "the state") -> None:
        """Continue from :meth:`state_dict` (of this run, or read from a checkpoint).

        The state (weights, optimizer history, counters) comes from ``state``; the settings
        (learning rate, tolerances, budgets) from this trainer's config. Refused, with one
        message naming every difference, when ``state`` is from a different problem, cloud,
        order, method, dtype, rank count or network (:class:`~.checkpoint.CheckpointMismatch`),
        or when its schedule phase is not the same optimizer here.
        """
        ckpt.check_state(state, source)
        fp = state.get("fingerprint")
        if fp is not None:
            diffs = ckpt.compare(fp, self.fingerprint())
            if diffs:
                raise ckpt.CheckpointMismatch(
                    f"{source} is from a different run: {'; '.join(diffs)}; continue it with the "
                    "settings it was written with, or start a new run in another folder")
        ckpt.check_shapes(state, self.model, source)
        op = int(state.get("optimizer_phase", state.get("phase", 0)))
        phase = int(state.get("phase", op))
        name = state.get("optimizer_name", self.phases[0][0])
        if op >= len(self.phases) or self.phases[op][0] != name or phase >= len(self.phases):
            now = ",".join(f"{n}:{k}" for n, k in self.phases)
            raise ckpt.CheckpointMismatch(
                f"{source} is in phase {op + 1} ({name}) of its schedule, but this run's schedule "
                f"is {now}: keep the schedule's phases up to there (only their lengths and later "
                "phases may change)")
        self.model.load_state_dict(state["model"])
        self.phase, self.phase_start = phase, int(state.get("phase_start", 0))
        self._set_optimizer(op)
        fresh = getattr(self.optimizer, "param_groups", None)
        settings = [{k: v for k, v in g.items() if k != "params"} for g in fresh or []]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
            from ..resources import one_line
            raise ckpt.CheckpointError(
                f"{source}: its {name} state does not fit this run ({one_line(exc)}); resume "
                "from another checkpoint or start a new run") from None
        for g, s in zip(getattr(self.optimizer, "param_groups", []), settings):
            g.update(s)  # settings from this run's config, state from the checkpoint
        rng = state.get("rng", {"torch": state.get("rng_torch")})
        if rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step_count, self.evals = int(state["step"]), int(state["evals"])
        self.train_time, self.eval_time = float(state["train_time_s"]), float(state["eval_time_s"])
        self._last_loss = float(state.get("last_loss", math.nan))
        self.history = copy.deepcopy(state["history"])
        rp = state.get("restore_point")
        if rp is not None:
            self._best_params = rp["params"].to(self._best_params).clone()
            self._best = copy.deepcopy(rp["where"])
        else:
            self._best_params, self._best = self._flat(), None

    def save_checkpoint(self, path=None):
        """Write :meth:`state_dict` to ``path`` (default: the trainer's checkpoint) atomically;
        rank 0 writes (collective)."""
        target = ckpt.checkpoint_file(path) if path is not None else self.checkpoint
        if target is None:
            raise ValueError("no checkpoint file: give Trainer(checkpoint=...) or a path")
        # only rank 0 writes: the others need not build (and copy) the state
        state = self.state_dict() if self.comm.rank == 0 else None
        out = ckpt.save(target, state, self.comm, meta=self.checkpoint_meta)
        if path is None:
            self.checkpoint_step = self.step_count
        return out

    def resume(self, path) -> dict:
        """Continue from the checkpoint at ``path`` (a file, or a run folder holding
        ``checkpoint.pt``); returns its ``meta``. Collective; raises
        :class:`~.checkpoint.CheckpointError` (or ``CheckpointMismatch``) on every rank."""
        doc = ckpt.load(path, self.comm)
        self.load_state_dict(doc["state"], source=f"checkpoint {ckpt.checkpoint_file(path)}")
        self.checkpoint_step = self.step_count
        return doc.get("meta", {})


def _cpu(obj):
    """The same structure with every tensor on the CPU (a checkpoint loads anywhere)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj
