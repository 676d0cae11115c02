"""Levenberg-Marquardt / damped Gauss-Newton for DT-PINNs (registry names "lm" and "gn").

The DT-PINN residual ``r(w) = [s_L (L u(w) - f); s_B (B u(w) - g)]`` (eq. (12)) depends on the
weights only through the network values at the nodes, so ``J = A Ju``: the sparse linearisation
``A`` declared by the problem times the network Jacobian. Every step solves the damped normal
equations exactly or to a tolerance,

    (J^T J + lam D) p = -J^T r,

and is accepted when the loss falls (``lam /= 5`` then, ``lam *= 3`` and a new trial
otherwise). Step computations (``step=``):

``"dense"``
    Cholesky of the normal matrix, formed at every step: serially and with more parameters than
    rows, the dual ``J J^T + lam c I = A K A^T + lam c I`` from the network's tangent kernel
    ``K`` (``J`` never formed; ``p = -J^T z``); otherwise the primal ``J^T J + lam D`` (P x P)
    from this rank's rows of ``J`` (blocks of columns of ``A Ju``) reduced with ``comm.sum``.
``"cg"``
    matrix-free CG on the primal system: each iteration one ``J v = A (Ju v)`` and one
    ``J^T y = Ju^T (A^T y)`` (about two forward passes) and one P-vector reduction. Cheap while
    ``lam`` is large (the system is then well conditioned); a solve that misses ``cg_tol``
    within ``cg_maxiter`` still gives a descent direction (truncated CG).
``"lagged"``
    CG preconditioned by the Cholesky factor of an EARLIER step's normal matrix (primal P x P,
    or serially with fewer rows than parameters the dual rows x rows). When PCG misses
    ``cg_tol`` within ``lag_maxiter`` iterations (per step, all trials), the matrix is rebuilt
    at once and that step solved directly with it (no truncated step is taken); also after a
    step that failed; in between a step costs a few PCG iterations. The factor is recomputed
    for the current ``lam`` when ``lam`` moved by more than 10x from the one it was computed
    for.
``"auto"`` (default)
    chosen by a cost model (:func:`plan_auto`): with ``k`` the CG iterations that cost as much
    as forming and factoring the normal matrix (flop counts of the problem's pieces at measured
    rates, :func:`step_costs`), ``"dense"`` when ``k <= lag_maxiter``; otherwise ``"cg"`` with
    a budget per step of what the direct path would spend on the same trials (``k``, plus one
    Cholesky's worth per further trial; ``cg_maxiter`` per solve when given), and the first
    step whose CG does not converge within it is solved directly and starts ``"lagged"``. Stays
    ``"cg"`` when the dense matrix does not fit ``memory_budget`` (bytes per rank: this rank's
    rows of ``J`` + the P x P matrices) or when the problem has no cheap dense Jacobian
    (time-dependent problems: ``u_t`` by autograd).

Measured (``docs/levenberg_marquardt.md``): the matrix-free CG phase costs less than direct
steps while ``lam`` is large; afterwards PCG with the lagged factor needs tens of iterations
where plain CG needs hundreds.

Damping: Levenberg's ``D = c I`` (default) with ``c = ||J||_F^2 / P`` at the first step (exact
from the dense matrix; for a first CG step estimated from Rademacher probes in parameter space,
the same on every rank count), or Marquardt's ``D = diag(J^T J)`` (running max, as MINPACK;
needs the dense matrix: ``"dense"`` and ``"lagged"`` only, updated at rebuilds). Update rule
``"fixed"`` (``lam /= down`` on success, ``lam *= up`` on failure; measured best here) or
Nielsen's gain-ratio rule.

Distributed: parameter-space vectors are replicated and bit-identical, residual-space vectors are
this rank's rows; every reduction (loss, ``J^T r``, ``J^T J v``, ``J^T J``, ``||J p||^2``) is one
``comm.sum``, which returns identical bits on all ranks, so every rank takes identical branches
and keeps identical parameters. The dual form couples rows of all ranks and is serial only.
"""
from __future__ import annotations

import math
import time

import torch

from ..model.jacobian import is_plain_mlp
from .gauss_newton_cg import frobenius_scale, normal_matvec, pcg
from .least_squares import JacobianTooLarge, LeastSquaresProblem, PINNLeastSquares

__all__ = ["LevenbergMarquardt", "JacobianTooLarge", "STEP_KINDS"]

STEP_KINDS = ("auto", "dense", "cg", "lagged")

#: CG iterations per solve of ``step="cg"`` when ``cg_maxiter`` is not given.
CG_MAXITER = 100

#: Flop rates of one core, measured on the development machine (docs/levenberg_marquardt.md,
#: "Choosing the step kind"): dense BLAS work (the tangent kernel's Gram products, ``J^T J``,
#: Cholesky, the MLP's layer products: 23-47 GFLOP/s) and sparse-times-dense products (scipy
#: CSR times a dense block, ``A K A^T``: 2-4.5 GFLOP/s). Only their ratio enters the choice.
DENSE_FLOPS_PER_S = 25e9
SPARSE_FLOPS_PER_S = 2.5e9


def step_costs(work: dict, rows: int, params: int, dual: bool) -> dict:
    """Estimated seconds of the pieces of one LM step, from :meth:`LeastSquaresProblem.work`
    (flops summed over ranks), the residual rows and parameters: ``iteration`` (one CG
    iteration: a ``J v`` and a ``J^T y``), ``build`` (the normal matrix: the dual ``J J^T`` from
    the tangent kernel when ``dual``, else ``J`` and ``J^T J``) and ``factor`` (its Cholesky)."""
    def sec(w):
        return w[0] / DENSE_FLOPS_PER_S + w[1] / SPARSE_FLOPS_PER_S

    if dual:
        build, n = sec(work["kernel"]), rows
    else:
        build, n = sec(work["jacobian"]) + float(rows) * params * params / DENSE_FLOPS_PER_S, params
    return {"iteration": 2.0 * sec(work["product"]), "build": build,
            "factor": float(n) ** 3 / 3.0 / DENSE_FLOPS_PER_S}


def plan_auto(costs: dict, lag_maxiter: int) -> tuple[str, int, int]:
    """What ``step="auto"`` does, from :func:`step_costs`: ``("dense", 0, 0)`` or
    ``("cg", k, k_trial)``.

    ``k = (build + factor) / iteration`` is the number of CG iterations that cost as much as
    one direct solve, ``k_trial = factor / iteration`` what each further trial of a step costs
    the direct path (one Cholesky at the new ``lam``). When ``k <= lag_maxiter`` a fresh
    factorisation costs no more than one PCG attempt with an old one, so every step is solved
    directly (``"dense"``). Otherwise the steps are matrix-free CG with a budget of
    ``k + (t - 1) k_trial`` iterations by its t-th trial (all trials together): what the direct
    path would have spent on the same trials. A step whose CG does not converge within it is
    solved directly instead; from then on the steps are ``"lagged"`` (PCG with that factor; a
    step whose PCG misses within ``lag_maxiter`` is again solved directly). Buying the
    factorisation only once CG has spent its price keeps each step within twice the cost of
    the better of the two choices made in hindsight (the ski-rental argument), whatever the
    sizes.
    """
    k = (costs["build"] + costs["factor"]) / costs["iteration"]
    if k <= lag_maxiter:
        return "dense", 0, 0
    return "cg", int(k), int(costs["factor"] / costs["iteration"])


def _cholesky(M: torch.Tensor, shift: torch.Tensor | float):
    """Lower Cholesky factor of ``M + diag(shift)`` (shift a scalar or a vector), or None.

    The shift is added to ``M``'s diagonal in place and the saved diagonal copied back after
    (exactly ``M`` again), so no second n x n copy of ``M`` is made."""
    d = M.diagonal().clone()
    M.diagonal().add_(shift)
    try:
        L, info = torch.linalg.cholesky_ex(M)
    finally:
        M.diagonal().copy_(d)
    return None if int(info) != 0 else L


def _chol_solve(L, b):
    """``(L L^T)^{-1} b`` by two triangular solves: the same operations as
    ``torch.cholesky_solve`` (equal bits measured) at 1/7 of its time for one right-hand side
    (1.2 vs 8.2 ms at order 1793, one core), which makes a PCG iteration with the factor
    about as cheap as a CG iteration."""
    y = torch.linalg.solve_triangular(L, b[:, None], upper=False)
    return torch.linalg.solve_triangular(L.T, y, upper=True)[:, 0]


def _direct_step(L, M, dual, lin, r, g, cache):
    """The step from the factor ``L`` of this step's own matrix ``M`` (+ lam D): the dual
    ``p = -J^T z`` with ``(J J^T + lam c I) z = r``, or the primal ``(J^T J + lam D) p = -g``.
    Leaves ``J p`` (dual) or ``p^T M p`` (primal) in ``cache`` for the predicted decrease."""
    if dual:
        z = _chol_solve(L, r)
        cache["Jp"] = -(M @ z)  # J p = -J J^T z
        return -lin.vjp(z)
    p = _chol_solve(L, -g)
    cache["pHp"] = float(torch.dot(p, M @ p))
    return p


class LevenbergMarquardt:
    """Levenberg-Marquardt on a :class:`~dtpinn_dist.optimizer.least_squares.LeastSquaresProblem`.

    Parameters
    ----------
    lsq : LeastSquaresProblem or nn.Module
        The problem; or a model, with ``disc`` given, which builds
        :class:`~dtpinn_dist.optimizer.least_squares.PINNLeastSquares` (the model is updated in
        place).
    disc : Discretization, optional
        See above.
    step : {"auto", "dense", "cg", "lagged"}
        How each step's damped normal equations are solved (module docstring).
    form : {"auto", "primal", "dual"}
        Dense matrix of ``"dense"`` and ``"lagged"``: ``"auto"`` = dual serially when there are
        fewer residual rows than parameters (and the tangent kernel applies), else primal;
        "dual" needs a single rank.
    damping : {"levenberg", "marquardt"}
    lam0 : float
        Initial damping, relative to ``D``.
    lam_min, lam_max : float
        Clamp of the damping; exceeding ``lam_max`` stops with "stalled".
    max_rejects : int
        Rejected trial steps within one :meth:`step` before it gives up ("stalled").
    gtol : float
        Stop when ``||J^T r||_inf <= gtol``.
    xtol : float
        Stop when an accepted step has ``||p|| <= xtol (||w|| + xtol)``.
    ftol : float
        Stop when the loss ``sum ||r||^2 <= ftol``.
    rtol : float
        Stop when an accepted step reduced the loss by less than ``rtol * loss``.
    memory_budget : float
        Bytes per rank the dense matrices may use; beyond it ``"dense"`` and ``"lagged"``
        refuse (``JacobianTooLarge``) and ``"auto"`` stays matrix-free.
    cg_tol : float
        Relative residual tolerance of CG and PCG.
    cg_maxiter : int, optional
        CG iterations per solve of ``"cg"`` (default :data:`CG_MAXITER`) and of ``"auto"``
        before it factors (default for ``"auto"``: the cost model's step budget,
        :func:`plan_auto`).
    lag_maxiter : int
        PCG iterations per step of ``"lagged"`` (all trials together); a solve that misses
        ``cg_tol`` within them rebuilds the matrix and that step is solved directly.
    scale_probes : int
        Probes of the Levenberg scale when the first step is matrix-free.
    update : {"fixed", "nielsen"}
        Damping update: fixed factors (``lam /= down`` on success, ``lam *= up`` on failure), or
        Nielsen's gain-ratio rule.
    """

    def __init__(self, lsq, disc=None, *, step: str = "auto",
                 form: str = "auto", damping: str = "levenberg", lam0: float = 1.0,
                 lam_min: float = 1e-15, lam_max: float = 1e16, max_rejects: int = 30,
                 gtol: float = 0.0, xtol: float = 1e-15, ftol: float = 0.0, rtol: float = 0.0,
                 memory_budget: float = 4e9, cg_tol: float = 1e-2, cg_maxiter: int | None = None,
                 lag_maxiter: int = 20, scale_probes: int = 4, update: str = "fixed",
                 down: float = 5.0, up: float = 3.0):
        if not isinstance(lsq, LeastSquaresProblem):
            if disc is None:
                raise ValueError("give a LeastSquaresProblem, or (model, disc)")
            lsq = PINNLeastSquares(lsq, disc)
        if step not in STEP_KINDS:
            raise ValueError(f"unknown LM step {step!r}: use one of {', '.join(STEP_KINDS)}")
        if form not in ("auto", "primal", "dual"):
            raise ValueError(f"unknown normal-equation form {form!r}: 'auto', 'primal', 'dual'")
        if damping not in ("marquardt", "levenberg"):
            raise ValueError(f"unknown damping {damping!r}: use 'marquardt' or 'levenberg'")
        if damping == "marquardt" and step in ("cg", "auto"):
            raise ValueError(f"damping='marquardt' needs diag(J^T J), which the matrix-free "
                             f"step={step!r} never forms; use step='dense' or 'lagged', or "
                             "damping='levenberg'")
        if update not in ("nielsen", "fixed"):
            raise ValueError(f"unknown damping update {update!r}: use 'nielsen' or 'fixed'")
        for name, v in (("cg_maxiter", cg_maxiter), ("lag_maxiter", lag_maxiter),
                        ("scale_probes", scale_probes), ("max_rejects", max_rejects)):
            if v is None and name == "cg_maxiter":  # the default: see _cg_budget
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} = {v!r}: must be an integer >= 1")
        if not (cg_tol > 0 and cg_tol < 1):
            raise ValueError(f"cg_tol = {cg_tol!r}: must be in (0, 1)")
        self.update, self.down, self.up = update, float(down), float(up)
        self.self_evaluating = True  # the training loop lets it evaluate the residual itself
        self.lsq = lsq
        self.comm = lsq.comm
        if form == "dual" and self.comm.size > 1:
            raise ValueError("the dual (J J^T) form couples all ranks' rows and is serial only; "
                             "use form='primal' (J^T J, reduced with comm.sum) or step='cg'")
        self.step_kind, self.form, self.damping = step, form, damping
        self.lam0, self.lam_min, self.lam_max = float(lam0), float(lam_min), float(lam_max)
        self.max_rejects = int(max_rejects)
        self.gtol, self.xtol, self.ftol, self.rtol = float(gtol), float(xtol), float(ftol), float(rtol)
        self.memory_budget = float(memory_budget)
        self.cg_tol, self.cg_maxiter = float(cg_tol), cg_maxiter
        self.lag_maxiter, self.scale_probes = int(lag_maxiter), int(scale_probes)
        # state (checkpointed)
        self.lam = self.lam0
        self.nu = 2.0
        self.D = None
        self.steps = 0
        self.evals = 0          # residual evaluations (trial points and linearisation points)
        self.jac_evals = 0      # linearisations
        self.products = 0       # J v / J^T y products
        self.cg_iters = 0       # CG + PCG iterations, all steps
        self.rebuilds = 0       # dense normal matrices formed (dense steps, lagged rebuilds)
        self.n_accepted = 0
        self.n_rejected = 0
        self.elapsed = 0.0
        self.last_loss = math.nan
        self.stop_reason = ""
        self.history: list[dict] = []
        self.phase = "cg" if step == "auto" else step  # auto: "cg" until CG stops converging
        self._refresh = True    # lagged: build the normal matrix at the next step
        self._pre = None        # lagged: {"form", "M", "lam"}: the matrix and the lam of L
        self._pre_L = None      # its Cholesky factor (recomputed from M after a restore)
        self._dense_ok = None   # the dense matrix fits the memory budget (collective, once)
        self._plan = None       # auto: plan_auto's (kind, CG budget) (collective, once)
        self.costs = None       # auto: step_costs' estimates behind the plan

    # ------------------------------------------------------------------ sizes and choices
    def _use_dual(self, m: int, p: int) -> bool:
        """Dual (rows x rows) dense matrix: serial, Levenberg, fewer rows than parameters (or
        asked for), and a tangent-kernel Gram available (plain MLP, steady DT problem)."""
        if self.comm.size > 1 or self.damping != "levenberg" or self.form == "primal":
            return False
        gram_ok = getattr(self.lsq, "disc", None) is None or (
            self.lsq.has_fast_jacobian() and is_plain_mlp(self.lsq.model))
        if not gram_ok:
            return False
        return self.form == "dual" or m < p

    def dense_bytes(self) -> dict:
        """Bytes per rank of the dense step: this rank's rows of J and the normal matrices."""
        m, p = self.lsq.jacobian_shape()
        item = torch.finfo(self.lsq.get_params().dtype).bits // 8
        if self._use_dual(m, p):
            disc = getattr(self.lsq, "disc", None)
            n = m if disc is None else len(disc.data["X"])
            # kernel K (n x n), A K (m x n), G and the Cholesky factor
            normal, J = (n * n + m * n + 2 * m * m) * item, 0
        else:
            # local J^T J (and its mirror temporary), its reduced sum (distributed), the factor
            normal = (4 if self.comm.size > 1 else 3) * p * p * item
            J = m * p * item
        return {"J": J, "normal": normal, "total": J + normal}

    def _check_memory(self):
        b = self.dense_bytes()
        # every rank must agree (the sizes differ per rank): the largest decides
        worst = max(self.comm.allgather(float(b["total"])))
        if worst > self.memory_budget:
            m, p = self.lsq.jacobian_shape()
            raise JacobianTooLarge(
                f"the dense Levenberg-Marquardt matrices need about {worst / 1e9:.2f} GB per rank "
                f"(J {m} x {p}: {b['J'] / 1e9:.2f} GB, normal matrices {b['normal'] / 1e9:.2f} "
                f"GB) > memory budget {self.memory_budget / 1e9:.2f} GB; use the matrix-free "
                "step (step='cg'), more ranks, or raise memory_budget")

    def _dense_fits(self) -> bool:
        if self._dense_ok is None:
            try:
                self._check_memory()
                self._dense_ok = True
            except JacobianTooLarge:
                self._dense_ok = False
        return self._dense_ok

    def _factor_ok(self) -> bool:
        """Whether ``"auto"`` may form the dense matrix (cheap Jacobian, within the budget)."""
        return self.lsq.has_fast_jacobian() and self._dense_fits()

    def plan(self) -> tuple[str, int]:
        """``"auto"``'s choice (:func:`plan_auto`) for this problem (collective, once).

        The flops are summed over ranks and the rows counted globally, so every rank and every
        rank count makes the same choice."""
        if self._plan is None:
            m, P = self.lsq.jacobian_shape()
            w = self.lsq.work()
            dual = self._use_dual(m, P) and w.get("kernel") is not None
            key = "kernel" if dual else "jacobian"
            parts = self.comm.allgather((m, w["product"], w[key]))
            tot = {"product": tuple(sum(x[1][i] for x in parts) for i in (0, 1)),
                   key: tuple(sum(x[2][i] for x in parts) for i in (0, 1))}
            self.costs = step_costs(tot, sum(x[0] for x in parts), P, dual)
            self._plan = plan_auto(self.costs, self.lag_maxiter)
        return self._plan

    def resolve_step(self) -> str:
        """The kind the next step uses: 'dense', 'cg' or 'lagged' (collective)."""
        if self.step_kind in ("dense", "lagged"):
            self._check_memory()
            return self.step_kind
        if self.step_kind == "cg" or not self._factor_ok():
            return "cg"
        if self.plan()[0] == "dense":
            return "dense"
        return "lagged" if self.phase == "lagged" else "cg"

    def _cg_budget(self, trial: int, spent: int) -> int:
        """CG iterations the ``trial``-th solve of a step may use (``spent`` by the earlier
        trials): ``cg_maxiter`` per solve when given, else for ``"auto"`` (dense matrix
        allowed) the cost model's step budget ``k + (trial - 1) k_trial`` minus ``spent``,
        else :data:`CG_MAXITER` per solve."""
        if self.cg_maxiter is not None:
            return self.cg_maxiter
        if self.step_kind == "auto" and self._factor_ok():
            _, k, k_trial = self.plan()
            return k + (trial - 1) * k_trial - spent
        return CG_MAXITER

    # ------------------------------------------------------------------ helpers
    def _loss(self, r):
        return float(self.comm.sum((r * r).sum()))

    def _set_D(self, diag):
        """D from the diagonal of the dense ``J^T J`` (Levenberg: set once; Marquardt: max)."""
        floor = 1e-12 * float(diag.max()) if diag.numel() else 0.0
        diag = torch.clamp(diag, min=max(floor, 1e-300))
        if self.damping == "levenberg":
            if self.D is None:  # c I with c = mean squared column norm = trace(J^T J) / P
                self.D = torch.full_like(diag, float(diag.mean()))
        else:
            self.D = diag if self.D is None else torch.maximum(self.D, diag)

    def _accept_update(self, rho):
        if self.update == "nielsen":
            f = max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
        else:  # "fixed": Marquardt's constant factors (down on every success)
            f = 1.0 / self.down
        self.lam = max(self.lam_min, self.lam * f)
        self.nu = 2.0

    def _reject_update(self):
        if self.update == "nielsen":
            self.lam = min(self.lam * self.nu, 10 * self.lam_max)
            self.nu *= 2.0
        else:
            self.lam = min(self.lam * self.up, 10 * self.lam_max)

    # ------------------------------------------------------------------ dense matrices
    def _build(self, lin, dual: bool):
        """``(M, dual)``: the dense normal matrix at ``lin``, dual ``J J^T`` (when asked for and
        the tangent kernel applies) or primal ``J^T J`` (reduced); sets ``D`` from it."""
        self.rebuilds += 1
        G = lin.gram() if dual else None
        if G is not None:
            if self.D is None:
                P = lin.n_params
                self.D = torch.full((P,), float(torch.trace(G)) / P, dtype=G.dtype,
                                    device=G.device)
            return G, True
        H = self.comm.sum(lin.normal())
        self._set_D(H.diagonal().clone())
        return H, False

    def _shift(self, lam, dual):
        return lam * float(self.D[0]) if dual else lam * self.D

    # ------------------------------------------------------------------ step solvers
    # Each returns ``solve(lam) -> p`` (None when the damped matrix is not positive definite)
    # for one linearisation; ``info`` collects the counters of the step's record, ``cache``
    # what the predicted decrease can reuse, ``state`` the kind and form the step ends with.

    def _dense_solver(self, lin, r, g, info, cache, state):
        M, dual = self._build(lin, self._use_dual(r.numel(), g.numel()))
        info["rebuilt"], state["dual"] = True, dual

        def solve(lam):
            L = _cholesky(M, self._shift(lam, dual))
            info["refactors"] += 1
            if L is None:
                return None
            return _direct_step(L, M, dual, lin, r, g, cache)
        return solve

    def _cg_solver(self, lin, r, g, info, cache, state):
        """Matrix-free CG, each solve within :meth:`_cg_budget`. ``"auto"`` with the dense
        matrix allowed: a solve that misses ``cg_tol`` within it switches this step to the
        direct solve of a freshly built matrix and the following steps to ``"lagged"``.
        Otherwise a truncated solve still gives a descent direction."""
        comm = self.comm
        if self.D is None:
            c = frobenius_scale(lin, comm, g.numel(), self.scale_probes, seed=self.steps)
            self.D = torch.full_like(g, c)
        switch = self.step_kind == "auto" and self._factor_ok()
        direct, trials = [], [0]

        def solve(lam):
            if not direct:
                trials[0] += 1
                left = self._cg_budget(trials[0], info["cg_iters"])
                if left > 0:
                    D = self.D
                    p, it = pcg(lambda v: normal_matvec(lin, comm, v) + lam * D * v, -g, None,
                                self.cg_tol, left)
                    info["cg_iters"] += it["iters"]
                    info["cg_converged"] &= it["converged"]
                    if it["converged"] or not switch:
                        return p
                # CG has spent what the factorisation costs: factor, and keep the factor
                self._refresh, self.phase = True, "lagged"
                info["switched"], state["kind"] = True, "lagged"
                direct.append(self._lagged_solver(lin, r, g, info, cache, state))
            return direct[0](lam)
        return solve

    def _lagged_solver(self, lin, r, g, info, cache, state):
        """PCG preconditioned by the Cholesky factor of an earlier step's matrix, with a budget
        of ``lag_maxiter`` iterations for the whole step (all trials); a solve that misses
        ``cg_tol`` within what is left rebuilds the matrix at once and this step is solved
        directly (no truncated step is taken). The first step, and the step after a rejected
        one, rebuild first."""
        comm = self.comm
        cur = {}

        def rebuild():
            self._pre, self._pre_L = None, None  # free the old matrix first
            M, dual = self._build(lin, self._use_dual(r.numel(), g.numel()))
            self._pre = {"form": "dual" if dual else "primal", "M": M, "lam": None}
            self._refresh = False
            info["rebuilt"] = True
            cur.update(pre=self._pre, dual=dual, fresh=True)
            state["dual"] = dual

        if self._refresh or self._pre is None:
            rebuild()
        else:
            cur.update(pre=self._pre, dual=self._pre["form"] == "dual", fresh=False)
            state["dual"] = cur["dual"]

        def factor(lam):
            """The factor of M + lam D: exact when M is this step's matrix, else reused
            while lam is within 10x of the lam it was computed for."""
            pre, dual = cur["pre"], cur["dual"]
            if self._pre_L is None and pre["lam"] is not None:  # after a restore
                self._pre_L = _cholesky(pre["M"], self._shift(pre["lam"], dual))
            near = pre["lam"] is not None and (lam == pre["lam"] if cur["fresh"] else
                                               0.1 <= lam / pre["lam"] <= 10.0)
            if not near or self._pre_L is None:
                self._pre_L = _cholesky(pre["M"], self._shift(lam, dual))
                pre["lam"] = lam
                info["refactors"] += 1
            return self._pre_L

        trials = [0]

        def budget():
            """PCG iterations this trial may still use: ``lag_maxiter`` per step by hand; for
            ``"auto"`` the budget of its CG steps (:meth:`_cg_budget`: what the direct solve
            of the same trials would cost)."""
            if self.step_kind == "auto":
                return self._cg_budget(trials[0], info["pcg_iters"])
            return self.lag_maxiter - info["pcg_iters"]

        def solve(lam, spent=False):
            if not cur["fresh"]:
                trials[0] += 0 if spent else 1
                left = 0 if spent else budget()
                if left <= 0:
                    info["switched"] = True
                    rebuild()
            L = factor(lam)
            if L is None:
                return None
            if cur["fresh"]:  # this step's own matrix: the direct (dense) solve
                return _direct_step(L, cur["pre"]["M"], cur["dual"], lin, r, g, cache)
            if cur["dual"]:  # residual-space PCG on (J J^T + lam c I) z = r, p = -J^T z
                c = lam * float(self.D[0])
                z, it = pcg(lambda y: lin.jvp(lin.vjp(y)) + c * y, r,
                            lambda y: _chol_solve(L, y), self.cg_tol, left)
                p = -lin.vjp(z)
            else:
                D = self.D
                p, it = pcg(lambda v: normal_matvec(lin, comm, v) + lam * D * v, -g,
                            lambda v: _chol_solve(L, v), self.cg_tol, left)
            info["cg_iters"] += it["iters"]
            info["pcg_iters"] += it["iters"]
            if it["converged"]:
                return p
            info["cg_converged"] = False
            return solve(lam, spent=True)  # spent: factor this step's own matrix
        return solve

    # ------------------------------------------------------------------ one iteration
    def step(self, closure=None):
        """One LM iteration: linearise, then try steps (raising lam) until one is accepted.

        ``closure`` is accepted for ``torch.optim`` compatibility and ignored. Returns the loss
        after the iteration (a 0-d tensor) and appends a record to :attr:`history`.
        Collective when distributed.
        """
        if self.stop_reason:
            return torch.tensor(self.last_loss, dtype=torch.float64)
        t0 = time.perf_counter()
        kind = self.resolve_step()
        lsq, comm = self.lsq, self.comm
        theta = lsq.get_params()
        lin = lsq.linearize(theta)
        self.jac_evals += 1
        self.evals += 1
        r = lin.r
        F = self._loss(r)
        g = comm.sum(lin.vjp(r))
        rec = {"step": self.steps + 1, "kind": kind, "loss_before": F, "accepted": False}
        info = {"cg_iters": 0, "pcg_iters": 0, "cg_converged": True, "rebuilt": False,
                "refactors": 0, "switched": False}
        cache = {}
        state = {"kind": kind, "dual": False}
        if kind == "dense":
            solve = self._dense_solver(lin, r, g, info, cache, state)
        elif kind == "cg":
            solve = self._cg_solver(lin, r, g, info, cache, state)
        else:
            solve = self._lagged_solver(lin, r, g, info, cache, state)

        self.last_loss = F
        gnorm = float(g.abs().max()) if g.numel() else 0.0
        rec["grad_inf"] = gnorm
        if gnorm <= self.gtol:
            self.stop_reason = f"gradient tolerance: ||J^T r||_inf = {gnorm:.3e} <= {self.gtol:g}"
        elif self.ftol and F <= self.ftol:
            self.stop_reason = f"loss {F:.3e} <= ftol {self.ftol:g}"
        rejects = 0
        while not self.stop_reason:
            lam = self.lam
            cache.clear()
            p = solve(lam)
            if p is None or not bool(torch.isfinite(p).all()):
                ok, rho, F_new, pred = False, -1.0, math.inf, 0.0
            else:
                if "pHp" in cache:
                    jp2 = cache["pHp"]
                else:
                    Jp = cache["Jp"] if "Jp" in cache else lin.jvp(p)
                    jp2 = float(comm.sum((Jp * Jp).sum()))
                pred = -2.0 * float(torch.dot(p, g)) - jp2
                r_new = lsq.residual(theta + p)
                self.evals += 1
                F_new = self._loss(r_new)
                rho = (F - F_new) / pred if pred > 0 else -1.0
                ok = math.isfinite(F_new) and pred > 0 and rho > 0
            if ok:
                lsq.set_params(theta + p)
                self._accept_update(rho)
                self.n_accepted += 1
                pn = float(torch.linalg.vector_norm(p))
                rec.update(accepted=True, rho=rho, step_norm=pn, loss=F_new, lam_step=lam)
                self.last_loss = F_new
                if pn <= self.xtol * (float(torch.linalg.vector_norm(theta)) + self.xtol):
                    self.stop_reason = f"step tolerance: ||p|| = {pn:.3e}"
                elif self.ftol and F_new <= self.ftol:
                    self.stop_reason = f"loss {F_new:.3e} <= ftol {self.ftol:g}"
                elif self.rtol and F - F_new <= self.rtol * F:
                    self.stop_reason = f"relative loss decrease {(F - F_new) / F:.3e} <= rtol"
                break
            self.n_rejected += 1
            rejects += 1
            self._reject_update()
            if self.lam > self.lam_max or rejects >= self.max_rejects:
                self.stop_reason = (f"stalled: no decrease after {rejects} trial steps "
                                    f"(lambda {self.lam:.3e})")
                rec["loss"] = F
        # what the next step does
        kind, dual = state["kind"], state["dual"]
        if kind == "lagged" and not rec["accepted"]:
            self._refresh = True  # the old factor no longer preconditions well
        self.cg_iters += info["cg_iters"]
        self.products += lin.products
        self.steps += 1
        self.elapsed += time.perf_counter() - t0
        # time and time_s (the trainer's key): LM training time so far, metrics excluded
        rec.update(kind=kind, form="dual" if dual else "primal", lam=self.lam, rejects=rejects,
                   cg_iters=info["cg_iters"], cg_converged=info["cg_converged"],
                   rebuilt=info["rebuilt"], switched=info["switched"], rebuilds=self.rebuilds,
                   refactors=info["refactors"], products=lin.products,
                   products_via=lin.kind, evals=self.evals, jac_evals=self.jac_evals,
                   time=self.elapsed, time_s=self.elapsed)
        rec.setdefault("loss", F)
        self.history.append(rec)
        return torch.tensor(self.last_loss, dtype=torch.float64)

    # ------------------------------------------------------------------ reporting
    def progress(self) -> dict:
        """Counters for the training loop's records (``metrics.json`` history): the last step's
        kind and form, the damping, and totals of CG iterations, rebuilds, accepted and rejected
        trials."""
        last = self.history[-1] if self.history else {}
        return {"lm_steps": self.steps, "lm_kind": last.get("kind", self.phase),
                "lm_form": last.get("form"), "lm_lam": self.lam,
                "lm_cg_iters": self.cg_iters, "lm_rebuilds": self.rebuilds,
                "lm_accepted": self.n_accepted, "lm_rejected": self.n_rejected,
                "lm_products": self.products}

    # ------------------------------------------------------------------ torch.optim-like
    def zero_grad(self, set_to_none: bool = True):
        """No-op (LM does not use ``.grad``); for ``torch.optim`` compatibility."""

    def state_dict(self) -> dict:
        """Damping, scaling, counters, the step-kind phase, the lagged preconditioner's matrix
        and history (the weights live in the model). Tensors, numbers, strings, lists and dicts
        only (``torch.load(weights_only=True)``). The lagged matrix is P x P (or rows x rows)."""
        # M itself, not a copy (P x P: ~490 MB at the paper's network): it is never modified
        # for good (_cholesky restores its diagonal; a rebuild makes a new tensor), and the
        # trainer's checkpoint deep-copies what it saves
        pre = None if self._pre is None else {"form": self._pre["form"],
                                              "M": self._pre["M"].detach(),
                                              "lam": self._pre["lam"]}
        return {"lam": self.lam, "nu": self.nu,
                "D": None if self.D is None else self.D.detach().clone(),
                "steps": self.steps, "evals": self.evals, "jac_evals": self.jac_evals,
                "products": self.products, "cg_iters": self.cg_iters,
                "rebuilds": self.rebuilds, "n_accepted": self.n_accepted,
                "n_rejected": self.n_rejected, "elapsed": self.elapsed,
                "last_loss": self.last_loss, "stop_reason": self.stop_reason,
                "phase": self.phase, "refresh": self._refresh, "pre": pre,
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.lam, self.nu = float(state["lam"]), float(state["nu"])
        self.D = None if state["D"] is None else state["D"].clone()
        for k in ("steps", "evals", "jac_evals", "products", "cg_iters", "rebuilds",
                  "n_accepted", "n_rejected"):
            setattr(self, k, int(state[k]))
        self.elapsed = float(state["elapsed"])
        self.last_loss = float(state["last_loss"])
        self.stop_reason = state["stop_reason"]
        self.phase = state["phase"]
        self._refresh = bool(state["refresh"])
        pre = state["pre"]
        self._pre = None if pre is None else {"form": pre["form"], "M": pre["M"].clone(),
                                              "lam": pre["lam"]}
        self._pre_L = None  # recomputed from M (the same bits) when next needed
        self.history = [dict(h) for h in state["history"]]

