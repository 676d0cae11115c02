"""The network's Jacobian with respect to its weights, ``Ju`` (nodes x parameters).

For plain MLPs (:class:`~dtpinn_dist.model.mlp.MLP`, or ``nn.Sequential`` of Linear/Tanh) it is
derived by hand: one forward sweep stores the activations, one backward sweep of the layer
structure gives, at every point at once, the factors ``du/dW_k = delta_k a_k^T``; from them ``Ju``,
the tangent kernel ``Ju Ju^T`` and ``Ju^T w`` follow without autograd. Any other model falls
back to ``torch.func.jacrev``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .params import flatten

__all__ = ["mlp_factors", "mlp_value_jacobian", "mlp_jacobian_columns", "mlp_ntk", "mlp_vjp",
           "mlp_jvp", "network_jacobian", "is_plain_mlp", "mlp_matches", "unflatten"]


def unflatten(model: nn.Module, theta: torch.Tensor) -> dict:
    """Name -> view of the flat vector ``theta`` shaped like each parameter of ``model``."""
    out, i = {}, 0
    for name, p in model.named_parameters():
        k = p.numel()
        out[name] = theta[i:i + k].view_as(p)
        i += k
    return out


def mlp_matches(model: nn.Module, x: torch.Tensor, u: torch.Tensor) -> bool:
    """Whether hand-derived values ``u`` equal ``model(x)`` (to 1e-12 relative: the same
    operations in the same order), so a model with a custom forward that merely looks like an
    MLP falls back to the generic path."""
    with torch.no_grad():
        ref = model(x).reshape(-1)
    top = float(ref.abs().max()) if ref.numel() else 0.0  # a rank may own no nodes
    return torch.allclose(u, ref, rtol=1e-12, atol=1e-12 * max(1.0, top))


def is_plain_mlp(model: nn.Module) -> bool:
    """Whether the hand-derived Jacobian applies to ``model``."""
    return _mlp_spec(model) is not None


# --------------------------------------------------------------------------------------------
_ACT = {"tanh": (torch.tanh, lambda z, a: 1.0 - a * a),
        "sin": (torch.sin, lambda z, a: torch.cos(z))}


def _mlp_spec(model: nn.Module):
    """``(linears, activation)`` of a plain MLP (Linear, act, Linear, ..., Linear), or None.

    Recognises :class:`dtpinn_dist.model.MLP` (``layers`` + ``activation``) and
    ``nn.Sequential`` of ``nn.Linear`` / ``nn.Tanh``.
    """
    if isinstance(model, nn.Sequential):
        mods = list(model)
        lins = mods[0::2]
        acts = mods[1::2]
        if lins and all(isinstance(m, nn.Linear) for m in lins) and \
                all(isinstance(m, nn.Tanh) for m in acts) and len(lins) == len(acts) + 1:
            spec = (lins, "tanh")
        else:
            return None
    elif isinstance(getattr(model, "layers", None), nn.ModuleList) and \
            getattr(model, "activation", None) in _ACT and \
            all(isinstance(m, nn.Linear) for m in model.layers):
        spec = (list(model.layers), model.activation)
    else:
        return None
    lin_params = {id(p) for m in spec[0] for p in m.parameters()}
    if any(id(p) not in lin_params for p in model.parameters()) or spec[0][-1].out_features != 1:
        return None
    return spec


def mlp_factors(model: nn.Module, x: torch.Tensor):
    """Forward and backward sweep of a scalar MLP: the factors of its weight Jacobian.

    For layer ``k`` with input activations ``a`` (n, in) and ``delta = du/dz_k`` (n, out),
    ``du/dW_k = delta a^T`` and ``du/db_k = delta`` at every point.

    Returns
    -------
    u : (n,) tensor
    factors : list of ``(linear, delta, a)``, one per ``nn.Linear`` in forward order.
    """
    spec = _mlp_spec(model)
    if spec is None:
        raise ValueError("needs a plain MLP (dtpinn_dist.model.MLP or nn.Sequential of "
                         "nn.Linear/nn.Tanh)")
    lins, act = spec
    f, df = _ACT[act]
    with torch.no_grad():
        # the model's own input map (MLP.normalize), so values equal model(x) bit for bit
        ins, zs, a = [], [], model.normalize(x) if hasattr(model, "normalize") else x
        for k, m in enumerate(lins):
            ins.append(a)
            z = torch.nn.functional.linear(a, m.weight, m.bias)
            zs.append(z)
            a = f(z) if k < len(lins) - 1 else z
        u = a[:, 0]
        deltas = [None] * len(lins)
        delta = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)  # du/dz_k
        for k in range(len(lins) - 1, -1, -1):
            deltas[k] = delta
            if k > 0:
                delta = (delta @ lins[k].weight) * df(zs[k - 1], ins[k])
    return u, [(m, deltas[k], ins[k]) for k, m in enumerate(lins)]


def mlp_value_jacobian(model: nn.Module, x: torch.Tensor):
    """Values and weight-Jacobian of a scalar MLP at the points ``x``, derived by hand.

    One forward sweep stores the activations, one backward sweep of the layer structure (all
    points at once) gives the factors of :func:`mlp_factors`: about the cost of two forward
    passes plus writing ``Ju``, far cheaper than ``n_params`` forward-mode passes.

    Parameters
    ----------
    model : nn.Module
        :class:`dtpinn_dist.model.MLP` (tanh or sin) or ``nn.Sequential`` of Linear/Tanh.
    x : (n, d) tensor

    Returns
    -------
    u : (n,) tensor
    Ju : (n, n_params) tensor, columns in ``model.parameters()`` order.
    """
    u, factors = mlp_factors(model, x)
    n_params = sum(p.numel() for p in model.parameters())
    return u, mlp_jacobian_columns(model, factors, 0, n_params)


def _blocks(model: nn.Module, factors):
    """``(start, parameter, kind, delta, a)`` per weight and bias, flat positions in
    ``model.parameters()`` order (kind "W": columns ``delta_o a_i``; "b": columns ``delta_o``)."""
    where, i = {}, 0
    for p in model.parameters():
        where[id(p)] = i
        i += p.numel()
    out = []
    for m, delta, a in factors:
        out.append((where[id(m.weight)], m.weight, "W", delta, a))
        if m.bias is not None:
            out.append((where[id(m.bias)], m.bias, "b", delta, a))
    return sorted(out, key=lambda t: t[0])


def mlp_jacobian_columns(model: nn.Module, factors, j0: int, j1: int) -> torch.Tensor:
    """Columns ``j0:j1`` of ``Ju`` (flat ``model.parameters()`` order) from the factors.

    Only the requested columns are written, so a caller can walk ``Ju`` in blocks of columns
    (``J = A Ju`` block by block) without ever holding all of ``Ju``.
    """
    n = factors[0][2].shape[0]
    ref = factors[0][1]
    out = torch.empty(n, j1 - j0, dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        for start, p, kind, delta, a in _blocks(model, factors):
            lo, hi = max(j0, start), min(j1, start + p.numel())
            if lo >= hi:
                continue
            if kind == "b":
                out[:, lo - j0:hi - j0] = delta[:, lo - start:hi - start]
                continue
            k_in = p.shape[1]
            o0, o1 = (lo - start) // k_in, (hi - start - 1) // k_in + 1
            blk = (delta[:, o0:o1, None] * a[:, None, :]).reshape(n, -1)
            off = start + o0 * k_in
            out[:, lo - j0:hi - j0] = blk[:, lo - off:hi - off]
    return out


def mlp_jvp(model: nn.Module, factors, v: torch.Tensor) -> torch.Tensor:
    """``Ju v`` for a flat parameter vector ``v`` from the factors, without forming ``Ju``.

    ``du = sum_k rowsum(delta_k * (a_k V_k^T + v_bk))``: one (n x in) x (in x out) product per
    layer, about the cost of a forward pass.
    """
    out = None
    with torch.no_grad():
        for start, p, kind, delta, a in _blocks(model, factors):
            blk = v[start:start + p.numel()]
            if kind == "W":
                t = ((a @ blk.view(p.shape).T) * delta).sum(1)
            else:
                t = delta @ blk
            out = t if out is None else out + t
    return out


def mlp_ntk(factors) -> torch.Tensor:
    """``Ju Ju^T`` (n x n) from the factors, without forming ``Ju``.

    ``(Ju_W Ju_W^T)_ij = (delta_i . delta_j)(a_i . a_j)``: per layer two (n x width) Gram
    products and a Hadamard product instead of an (n x n x n_params) contraction. Layers whose
    Hadamard product has low rank (the output layer, ``delta = 1``; the input layer, ``a = x``
    with 2-3 columns) are written as explicit feature columns (row-wise Kronecker products of
    ``delta`` and ``[a, 1]``) and summed by one Gram product, which saves their n x n passes.
    """
    n = factors[0][2].shape[0]
    feats, mids = [], []
    for m, delta, a in factors:
        if m.bias is not None:  # the bias is a constant input column: no "+1" pass over n x n
            a = torch.cat([a, a.new_ones(n, 1)], dim=1)
        kd, ka = delta.shape[1], a.shape[1]
        if kd * ka <= 4 * max(kd, ka):
            feats.append((delta[:, :, None] * a[:, None, :]).reshape(n, kd * ka))
        else:
            mids.append((delta, a))
    K = None
    if feats:
        F = torch.cat(feats, dim=1)
        K = F @ F.T
    for delta, a in mids:
        dd = delta @ delta.T
        aa = a @ a.T
        if K is None:
            K = dd.mul_(aa)
        else:
            K.addcmul_(dd, aa)  # in place: n x n temporaries are the cost here
    return K


def mlp_vjp(model: nn.Module, factors, w: torch.Tensor) -> torch.Tensor:
    """``Ju^T w`` (flat, ``model.parameters()`` order) from the factors."""
    blocks = {}
    for m, delta, a in factors:
        dw = delta * w[:, None]
        blocks[id(m.weight)] = (dw.T @ a).reshape(-1)
        if m.bias is not None:
            blocks[id(m.bias)] = dw.sum(0)
    return torch.cat([blocks[id(p)] for p in model.parameters()])


def network_jacobian(model: nn.Module, x: torch.Tensor):
    """``(u, Ju)`` at ``x``: hand-derived for plain MLPs, ``torch.func.jacrev`` otherwise.

    The hand-derived values are checked against ``model(x)`` so a model with a custom forward
    that merely looks like an MLP falls back to the generic path.
    """
    if _mlp_spec(model) is not None:
        u, Ju = mlp_value_jacobian(model, x)
        if mlp_matches(model, x, u):
            return u, Ju
    theta = flatten(model.parameters())

    def f(th):
        out = functional_call(model, unflatten(model, th), (x,))
        return out.reshape(-1)

    u = f(theta).detach()
    Ju = torch.func.jacrev(f)(theta)
    return u, Ju.detach()
