"""Levenberg-Marquardt for DT-PINNs: the residual is (almost) linear in the network values.

The DT-PINN residual ``r(w) = [s_L (L u(w) - f); s_B (B u(w) - g)]`` (eq. (12)) has Jacobian
``J = [s_L L; s_B B] Ju``: a sparse matrix times the network Jacobian. Gauss-Newton /
Levenberg-Marquardt therefore apply directly, and reach test errors near the direct solve of the
discrete system that L-BFGS never does (docs/levenberg_marquardt.md).

Step computations (``step=``):

``"dense"``
    ``J`` formed explicitly (:meth:`~dtpinn_dist.optimizer.least_squares.PINNLeastSquares.jacobian`),
    step by fp64 Cholesky of ``J^T J + lam D`` (``"primal"``, P x P) or, serially and when J
    has fewer rows than columns, of ``Js Js^T + lam I`` with ``Js = J D^-1/2`` (``"dual"``,
    M x M; the same step). Distributed runs always use the primal form: ``J^T J`` and ``J^T r``
    are sums of per-rank blocks (``comm.sum``) while ``J J^T`` couples the ranks' rows.
``"cg"``
    matrix-free Gauss-Newton-CG (:mod:`.gauss_newton_cg`): ``J v`` and ``J^T y`` only.
``"auto"``
    dense when a fast structured Jacobian exists and fits ``memory_budget``, else CG.

Damping (defaults first): fixed factors (``lam /= 5`` on an accepted step, ``lam *= 3`` on a
rejected one; fastest here) or Nielsen's gain-ratio rule (``update="nielsen"``); Levenberg's
scaling ``D = const I`` or Marquardt's ``D = diag(J^T J)`` (``damping="marquardt"``, running max
as in MINPACK). Every reduction (loss, gradient, normal matrix, gain
ratio) goes through ``comm.sum``, which returns identical bits on every rank, so all ranks take
identical branches and keep identical parameters.
"""
from __future__ import annotations

import math
import time

import torch

from .gauss_newton_cg import estimate_jtj_diag, gn_matvec, pcg
from .least_squares import JacobianTooLarge, LeastSquaresProblem, PINNLeastSquares

__all__ = ["LevenbergMarquardt", "JacobianTooLarge"]


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
    step : {"auto", "dense", "cg"}
    form : {"auto", "primal", "dual"}
        Dense normal-equation form (see module docstring); "dual" needs a single rank.
    damping : {"marquardt", "levenberg"}
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
        Bytes the dense step may use (J, Ju, normal matrix); beyond it the dense step refuses
        (``JacobianTooLarge``) and "auto" switches to CG.
    cg_tol, cg_maxiter, cg_probes : float, int, int
        CG relative-residual tolerance, iteration cap, probes for the Jacobi preconditioner.
    update : {"nielsen", "fixed"}
        Damping update: Nielsen's gain-ratio rule, or fixed factors (``lam /= down`` on
        success, ``lam *= up`` on failure).
    """

    def __init__(self, lsq, disc=None, *, step: str = "auto",
                 form: str = "auto", damping: str = "levenberg", lam0: float = 1.0,
                 lam_min: float = 1e-15, lam_max: float = 1e16, max_rejects: int = 30,
                 gtol: float = 0.0, xtol: float = 1e-15, ftol: float = 0.0, rtol: float = 0.0,
                 memory_budget: float = 4e9, cg_tol: float = 1e-3, cg_maxiter: int = 200,
                 cg_probes: int = 8, update: str = "fixed", down: float = 5.0,
                 up: float = 3.0):
        if not isinstance(lsq, LeastSquaresProblem):
            if disc is None:
                raise ValueError("give a LeastSquaresProblem, or (model, disc)")
            lsq = PINNLeastSquares(lsq, disc)
        if step not in ("auto", "dense", "cg"):
            raise ValueError(f"unknown LM step {step!r}: use 'auto', 'dense' or 'cg'")
        if form not in ("auto", "primal", "dual"):
            raise ValueError(f"unknown normal-equation form {form!r}: 'auto', 'primal', 'dual'")
        if damping not in ("marquardt", "levenberg"):
            raise ValueError(f"unknown damping {damping!r}: use 'marquardt' or 'levenberg'")
        if update not in ("nielsen", "fixed"):
            raise ValueError(f"unknown damping update {update!r}: use 'nielsen' or 'fixed'")
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
        self.cg_tol, self.cg_maxiter, self.cg_probes = float(cg_tol), int(cg_maxiter), int(cg_probes)
        # state (checkpointed)
        self.lam = self.lam0
        self.nu = 2.0
        self.D = None
        self.steps = 0
        self.evals = 0          # residual evaluations (trial points and Jacobian points)
        self.jac_evals = 0      # dense Jacobians, or Gauss-Newton linearisations for CG
        self.products = 0       # J v / J^T y products (CG)
        self.n_accepted = 0
        self.n_rejected = 0
        self.elapsed = 0.0
        self.last_loss = math.nan
        self.stop_reason = ""
        self.history: list[dict] = []
        self._resolved_step = None

    # ------------------------------------------------------------------ sizes and choices
    def dense_bytes(self) -> dict:
        """Bytes the dense step would allocate: J, Ju (nodes x P), the normal matrix."""
        m, p = self.lsq.jacobian_shape()
        item = torch.finfo(self.lsq.get_params().dtype).bits // 8
        dual = self._use_dual(m, p)
        disc = getattr(self.lsq, "disc", None)
        n_nodes = 0 if disc is None else len(disc.data["X"])
        normal = (m * m if dual else p * p) * item
        if not dual and self.comm.size > 1:
            normal *= 2  # the local J^T J and its reduced sum (comm.sum: Reduce + Bcast)
        # J, J*J (column norms), Ju, the normal matrix and its Cholesky factor
        return {"J": 2 * m * p * item, "Ju": n_nodes * p * item, "normal": 2 * normal,
                "total": 2 * m * p * item + n_nodes * p * item + 2 * normal}

    def _use_dual(self, m, p) -> bool:
        if self.comm.size > 1:
            return False
        if self.form == "auto":
            return m < p
        return self.form == "dual"

    def _check_memory(self):
        b = self.dense_bytes()
        # every rank must agree (the sizes differ per rank): the largest decides
        worst = max(self.comm.allgather(float(b["total"])))
        if worst > self.memory_budget:
            m, p = self.lsq.jacobian_shape()
            raise JacobianTooLarge(
                f"dense Levenberg-Marquardt needs about {worst / 1e9:.2f} GB (J {m} x {p}: "
                f"{b['J'] / 1e9:.2f} GB, network Jacobian {b['Ju'] / 1e9:.2f} GB, normal matrix "
                f"{b['normal'] / 1e9:.2f} GB) > memory budget {self.memory_budget / 1e9:.2f} GB; "
                "use the matrix-free Gauss-Newton-CG step (step='cg') or raise memory_budget")

    def resolve_step(self) -> str:
        """'dense' or 'cg' (resolving 'auto'; collective)."""
        if self._resolved_step is not None:
            return self._resolved_step
        kind = self.step_kind
        if kind == "dense":
            self._check_memory()
        elif kind == "auto":
            fast = self.lsq.has_fast_jacobian()
            kind = "cg"
            if fast:
                try:
                    self._check_memory()
                    kind = "dense"
                except JacobianTooLarge:
                    pass
        self._resolved_step = kind
        return kind

    # ------------------------------------------------------------------ helpers
    def _loss(self, r):
        return float(self.comm.sum((r * r).sum()))

    def _update_D(self, diag):
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
        gram = None
        if kind == "dense" and self.damping == "levenberg" and self.comm.size == 1 \
                and self.form != "primal" and hasattr(lsq, "gram"):
            m, p = lsq.jacobian_shape()
            if self._use_dual(m, p):
                gram = lsq.gram(theta)
        if gram is not None:
            # J J^T from the network's tangent kernel, J never formed (serial, D = c I)
            r, G, jt = gram
            self.jac_evals += 1
            self.evals += 1
            F = self._loss(r)
            g = jt(r)
            if self.D is None:
                self.D = torch.full_like(g, float(torch.trace(G)) / g.numel())
            c = float(self.D[0])
            solve_info = {}
            cache = {}

            def solve(lam):
                Gl = G.clone()
                Gl.diagonal().add_(lam * c)
                Lc, info = torch.linalg.cholesky_ex(Gl)
                if int(info) != 0:
                    return None
                z = torch.cholesky_solve(r[:, None], Lc)[:, 0]
                cache["z"] = z
                return -jt(z)

            def jac_vec(v):
                return -(G @ cache["z"])  # J p = -J J^T z for the p of the last solve
        elif kind == "dense":
            r, J = lsq.jacobian(theta)
            self.jac_evals += 1
            self.evals += 1
            F = self._loss(r)
            g = comm.sum(J.T @ r)
            self._update_D(comm.sum((J * J).sum(0)))
            m, p = J.shape
            dual = self._use_dual(m, p)
            if dual:
                sq = torch.sqrt(self.D)
                Js = J / sq
                G = Js @ Js.T
                eye = torch.eye(m, dtype=G.dtype, device=G.device)
            else:
                H = comm.sum(J.T @ J)
            solve_info = {}

            def solve(lam):
                if dual:
                    Lc, info = torch.linalg.cholesky_ex(G + lam * eye)
                    if int(info) != 0:
                        return None
                    z = torch.cholesky_solve(r[:, None], Lc)[:, 0]
                    return -(Js.T @ z) / sq
                Lc, info = torch.linalg.cholesky_ex(H + torch.diag(lam * self.D))
                if int(info) != 0:
                    return None
                return torch.cholesky_solve(-g[:, None], Lc)[:, 0]

            def jac_vec(v):
                return J @ v
        else:
            r = lsq.residual(theta)
            self.evals += 1
            self.jac_evals += 1
            F = self._loss(r)
            g = comm.sum(lsq.vjp(theta, r))
            self._update_D(estimate_jtj_diag(lsq, theta, comm, self.cg_probes, seed=self.steps))
            self.products += 1 + self.cg_probes
            solve_info = {"cg_iters": 0}
            dvec = self.D
            # Jacobi preconditioner from the (estimated) diagonal of J^T J
            diagH = dvec

            def solve(lam):
                def mv(v):
                    return gn_matvec(lsq, theta, v, comm) + lam * dvec * v
                x, info = pcg(mv, -g, diagH + lam * dvec, tol=self.cg_tol, maxiter=self.cg_maxiter)
                solve_info["cg_iters"] += info["iters"]
                self.products += 2 * info["iters"]
                return x

            def jac_vec(v):
                self.products += 1
                return lsq.jvp(theta, v)

        self.last_loss = F
        gnorm = float(g.abs().max()) if g.numel() else 0.0
        rec = {"step": self.steps + 1, "loss_before": F, "grad_inf": gnorm, "accepted": False}
        if gnorm <= self.gtol:
            self.stop_reason = f"gradient tolerance: ||J^T r||_inf = {gnorm:.3e} <= {self.gtol:g}"
        elif self.ftol and F <= self.ftol:
            self.stop_reason = f"loss {F:.3e} <= ftol {self.ftol:g}"
        rejects = 0
        while not self.stop_reason:
            p = solve(self.lam)
            if p is None or not bool(torch.isfinite(p).all()):
                ok, rho, F_new, pred = False, -1.0, math.inf, 0.0
            else:
                Jp = jac_vec(p)
                pred = -2.0 * float(torch.dot(p, g)) - float(comm.sum((Jp * Jp).sum()))
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
                rec.update(accepted=True, rho=rho, step_norm=pn, loss=F_new)
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
        self.steps += 1
        self.elapsed += time.perf_counter() - t0
        # time and time_s (the trainer's key): LM training time so far, metrics excluded
        rec.update(lam=self.lam, rejects=rejects, evals=self.evals, jac_evals=self.jac_evals,
                   time=self.elapsed, time_s=self.elapsed, **solve_info)
        rec.setdefault("loss", F)
        self.history.append(rec)
        return torch.tensor(self.last_loss, dtype=torch.float64)

    # ------------------------------------------------------------------ torch.optim-like
    def zero_grad(self, set_to_none: bool = True):
        """No-op (LM does not use ``.grad``); for ``torch.optim`` compatibility."""

    def state_dict(self) -> dict:
        """Damping, counters, scaling and history (the weights live in the model)."""
        return {"lam": self.lam, "nu": self.nu,
                "D": None if self.D is None else self.D.detach().clone(),
                "steps": self.steps, "evals": self.evals, "jac_evals": self.jac_evals,
                "products": self.products, "n_accepted": self.n_accepted,
                "n_rejected": self.n_rejected, "elapsed": self.elapsed,
                "last_loss": self.last_loss, "stop_reason": self.stop_reason,
                "resolved_step": self._resolved_step,
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.lam, self.nu = float(state["lam"]), float(state["nu"])
        self.D = None if state["D"] is None else state["D"].clone()
        for k in ("steps", "evals", "jac_evals", "products", "n_accepted", "n_rejected"):
            setattr(self, k, int(state[k]))
        self.elapsed = float(state["elapsed"])
        self.last_loss = float(state["last_loss"])
        self.stop_reason = state["stop_reason"]
        self._resolved_step = state.get("resolved_step")
        self.history = [dict(h) for h in state["history"]]
