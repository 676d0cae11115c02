"""Fig. 2 and 7 of the paper: the Laplacian (and biharmonic) of a random-weight network, autograd
against RBF-FD, as the network gets deeper.

For depths s = 1..10 of a width-50 tanh MLP with random (initial) weights, on the authors'
quasi-uniform disk nodes (N = 4977 and 19638): the Laplacian (Fig. 2) and the biharmonic
lap(lap(u)) (Fig. 7) of the network at the interior + boundary nodes by

* fp64 autograd (the reference), fp32 autograd (same weights, cast),
* RBF-FD of order p = 2..5 in fp64: the network on all nodes (with ghosts), then one SpMV,

with the relative error against fp64 autograd (the fp64 network holds the fp32 network's weights
exactly, as in the authors' script) and the time of one application (autograd: the
derivative passes after the forward pass, with the graph kept as training needs it; RBF-FD: the
SpMV alone, as the paper, and forward + SpMV). Several seeds give the error bars.

    python benchmarks/paper/fig2.py --mode reduced
    python benchmarks/paper/fig2.py --mode full --device cuda

Writes ``fig2.json``, ``fig2_laplacian.png`` and ``fig7_biharmonic.png`` into ``--out``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's dtpinn_dist
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import torch  # noqa: E402

import dtpinn_dist as dt  # noqa: E402
from dtpinn_dist.operators.linear import spmv  # noqa: E402
from dtpinn_dist.problem.autograd import autograd_fields  # noqa: E402

FIGURE = "fig2"
OPERATORS = {"laplacian": ("lap(u)", "lap"), "biharmonic": ("lap(lap(u))", "bilap")}
MODES = {
    "smoke": dict(sizes={"laplacian": (582,), "biharmonic": (582,)}, orders=(2, 3),
                  depths={"laplacian": (1, 2), "biharmonic": (1,)}, seeds=1),
    # one N (the biharmonic autograd takes ~6 s at s = 10, N = 4977, fp64, on one core)
    "reduced": dict(sizes={"laplacian": (4977,), "biharmonic": (4977,)}, orders=(2, 3, 4, 5),
                    depths={"laplacian": (1, 2, 4, 6, 8, 10), "biharmonic": (1, 2, 4, 6, 8, 10)},
                    seeds=3),
    "full": dict(sizes={"laplacian": (4977, 19638), "biharmonic": (4977, 19638)},
                 orders=(2, 3, 4, 5), depths={"laplacian": tuple(range(1, 11)),
                                              "biharmonic": tuple(range(1, 11))}, seeds=15),
}
PAPER_CLAIMS = {
    "fig2a": "Laplacian, N = 19638: p = 4 and p = 5 are more accurate than fp32 autograd; "
             "increasing p increases the accuracy of RBF-FD by about two orders of magnitude; "
             "errors reasonably low for p = 3 also.",
    "fig2b": "fp64 autograd is significantly more expensive than fp32, both scale slowly with "
             "depth; fp64 RBF-FD (all orders) is cheaper than both and independent of depth "
             "(weights precomputed, ~0.1 s for N = 19638 on a CPU).",
    "fig7a": "Biharmonic, N = 4977: fp32 autograd is the most accurate; increasing p increases "
             "RBF-FD accuracy by about two orders of magnitude.",
    "fig7b": "RBF-FD offers even greater speed-ups for high-order operators.",
    "setup": "width 50, depths 1..10, error bars over 15 random runs, RTX 2070 GPU.",
}


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    return float(torch.linalg.vector_norm(a - ref) / torch.linalg.vector_norm(ref))


def timed(fn, device):
    """(value, seconds) of ``fn()``: one timed call; calls shorter than 50 ms are re-timed
    with :func:`common.time_call` (median of repeats) for a stable figure."""
    C.sync(device)
    t0 = time.perf_counter()
    out = fn()
    C.sync(device)
    t = time.perf_counter() - t0
    if t < 0.05:
        t = C.time_call(fn, device, min_total=0.1, max_reps=30)
    return out, t


def measure(op_name, cloud, orders, depths, seeds, device, log):
    """All numbers of one operator on one cloud: one record per (depth, seed)."""
    pde, key = OPERATORS[op_name]
    problem = dt.Problem(pde, bc=dt.Dirichlet(g="0"), f="0")
    ops, setup = {}, {}
    for p in orders:
        disc = dt.discretize(problem, cloud, p, method="dt", dtype="fp64", device=device)
        ops[p], setup[p] = disc, disc.info["setup_time_s"]
    d0 = ops[orders[0]]
    X64 = d0.data["X"]                      # all nodes (interior, boundary, ghost), fp64
    rows = d0.data["rows_idx"]
    Xr64 = X64[rows].contiguous()           # interior + boundary
    Xr32 = Xr64.to(torch.float32)
    recs = []
    for depth in depths:
        for seed in range(seeds):
            m32 = dt.MLP(2, 50, depth, dtype=torch.float32, seed=seed, device=device)
            # the fp64 network holds exactly the fp32 weights (as the authors' W, initialised in
            # fp32 and cast): the error of fp32 autograd is then that of its arithmetic alone
            m64 = dt.MLP(2, 50, depth, dtype=torch.float64, seed=seed, device=device)
            with torch.no_grad():
                for a, b in zip(m64.parameters(), m32.parameters()):
                    a.copy_(b.to(torch.float64))

            def auto(model, X):
                return autograd_fields(model, X, 2, {key}, create_graph=True)[key].detach()

            ref, t64 = timed(lambda: auto(m64, Xr64), device)
            v32, t32 = timed(lambda: auto(m32, Xr32), device)
            # the forward pass alone, to separate it from the derivative passes
            with torch.no_grad():
                _, tf64 = timed(lambda: m64(Xr64), device)
                _, tf32 = timed(lambda: m32(Xr32), device)
                U, tfwd = timed(lambda: m64(X64).reshape(-1), device)
            rec = {"depth": depth, "seed": seed, "autograd_fp64_s": t64, "autograd_fp32_s": t32,
                   "forward_rows_fp64_s": tf64, "forward_rows_fp32_s": tf32,
                   "forward_all_nodes_fp64_s": tfwd, "err_autograd_fp32": rel(v32, ref),
                   "norm_ref": float(torch.linalg.vector_norm(ref.double().cpu()))}
            for p in orders:
                L = ops[p].system.ops["L"]
                with torch.no_grad():
                    v, ts = timed(lambda: spmv(L, U), device)
                rec[f"err_rbffd_p{p}"] = rel(v, ref)
                rec[f"spmv_p{p}_s"] = ts
                rec[f"forward_spmv_p{p}_s"] = tfwd + ts
            recs.append(rec)
            log(f"{op_name} N={len(Xr64)} depth={depth} seed={seed}: fp32 autograd err "
                f"{rec['err_autograd_fp32']:.1e}, RBF-FD err "
                + " ".join(f"p{p} {rec[f'err_rbffd_p{p}']:.1e}" for p in orders)
                + f"; autograd fp64 {t64 * 1e3:.1f} ms, fp32 {t32 * 1e3:.1f} ms, SpMV "
                + " ".join(f"p{p} {rec[f'spmv_p{p}_s'] * 1e3:.2f}" for p in orders) + " ms")
    nnz = {p: int(ops[p].info["operators"]["L"] or 0) for p in orders}
    return {"N": len(Xr64), "n_nodes_with_ghost": len(X64), "setup_time_s": setup, "nnz": nnz,
            "records": recs}


def summarize(block, orders, depths):
    """Per depth: statistics over seeds of every measured quantity."""
    keys = [k for k in block["records"][0] if k not in ("depth", "seed")]
    out = {}
    for depth in depths:
        rs = [r for r in block["records"] if r["depth"] == depth]
        out[str(depth)] = {k: C.stats(r[k] for r in rs) for k in keys}
    return out


def table(results, orders) -> str:
    head = ["operator", "N", "depth", "err fp32 autograd"] + [f"err p={p}" for p in orders] + [
        "autograd fp64 [ms]", "autograd fp32 [ms]"] + [f"SpMV p={p} [ms]" for p in orders]
    rows = []
    for op_name, per_n in results.items():
        for n, block in per_n.items():
            for depth, st in block["summary"].items():
                rows.append([op_name, n, depth, C.fmt(C.med(st["err_autograd_fp32"]))]
                            + [C.fmt(C.med(st[f"err_rbffd_p{p}"])) for p in orders]
                            + [C.fmt(1e3 * C.med(st["autograd_fp64_s"]), ".2f"),
                               C.fmt(1e3 * C.med(st["autograd_fp32_s"]), ".2f")]
                            + [C.fmt(1e3 * C.med(st[f"spmv_p{p}_s"]), ".3f") for p in orders])
    return C.render(head, rows)


def compare(results, orders, s) -> str:
    parts = []
    for op_name, per_n in results.items():
        for n, block in per_n.items():
            sm = block["summary"]
            depths = list(sm)
            e32 = [C.med(sm[d]["err_autograd_fp32"]) for d in depths]
            ep = {p: [C.med(sm[d][f"err_rbffd_p{p}"]) for d in depths] for p in orders}
            beats = [f"p={p}: {sum(a < b for a, b in zip(ep[p], e32))}/{len(depths)}"
                     for p in orders]
            gains = [C.span([C.ratio(a, b) for a, b in zip(ep[p], ep[q])], ".0f")
                     for p, q in zip(orders, orders[1:])]
            t64 = [C.med(sm[d]["autograd_fp64_s"]) for d in depths]
            t32 = [C.med(sm[d]["autograd_fp32_s"]) for d in depths]
            sp = {p: [C.med(sm[d][f"spmv_p{p}_s"]) for d in depths] for p in orders}
            pmax = orders[-1]
            parts.append(
                f"[{op_name}, N = {n}, depths {depths[0]}..{depths[-1]}] fp32 autograd error "
                f"(median over seeds) {C.span(e32, '.1e')}; RBF-FD error "
                + "; ".join(f"p={p} {C.span(ep[p], '.1e')}" for p in orders)
                + f". Depths at which RBF-FD beats fp32 autograd: {', '.join(beats)}. Error "
                f"gain per order step (p -> p+1, over depths): {', '.join(gains)}. Time of one "
                f"application: fp64 autograd over fp32 {C.span([C.ratio(a, b) for a, b in zip(t64, t32)])}x; "
                f"autograd growth from depth {depths[0]} to {depths[-1]}: fp32 "
                f"{C.fmt(C.ratio(t32[-1], t32[0]), '.1f')}x, fp64 "
                f"{C.fmt(C.ratio(t64[-1], t64[0]), '.1f')}x; fp32 autograd over the p={pmax} "
                f"SpMV {C.span([C.ratio(a, b) for a, b in zip(t32, sp[pmax])], '.0f')}x (SpMV "
                f"{C.span([1e3 * v for v in sp[pmax]], '.3f')} ms, flat in depth as it must be: "
                f"the network values are its input). Operator set-up (discretize, p = "
                f"{orders[0]}..{pmax}): {C.span(list(block['setup_time_s'].values()))} s.")
    parts.append(
        "Paper: " + " ".join(PAPER_CLAIMS[k] for k in ("fig2a", "fig2b", "fig7a", "fig7b"))
        + f" Differences in set-up: device {s['device']} (paper: an RTX 2070, whose fp64 rate "
        f"is 1/32 of fp32, which is why fp64 autograd costs so much more there than on a CPU), "
        f"{s['seeds']} seed(s) (paper 15), depths {s['depths']}, N {s['sizes']}; autograd "
        f"here is the library's vanilla-PINN code (graph kept, as in training).")
    return "\n".join(parts)


def plots(args, results, orders):
    plt = C.pyplot()
    for op_name, fname, title in (("laplacian", "fig2_laplacian.png", "Fig. 2: Laplacian"),
                                  ("biharmonic", "fig7_biharmonic.png", "Fig. 7: biharmonic")):
        per_n = results.get(op_name, {})
        if not per_n:
            continue
        fig, axes = plt.subplots(len(per_n), 2, squeeze=False, figsize=(10, 3.6 * len(per_n)))
        for i, (n, block) in enumerate(per_n.items()):
            sm = block["summary"]
            depths = [int(d) for d in sm]

            def panel(ax, curves, ylabel, title):
                """One log-scale panel of per-depth curves: (key, label, colour or None)."""
                for key, label, color in curves:
                    C.errorbar(ax, depths, [sm[str(d)][key] for d in depths], label,
                               **({"color": color} if color else {}))
                ax.set_yscale("log")
                ax.set_xlabel("depth s")
                ax.set_ylabel(ylabel)
                ax.set_title(title, fontsize=9)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)

            panel(axes[i][0], [("err_autograd_fp32", "fp32 autograd", "k")]
                  + [(f"err_rbffd_p{p}", f"RBF-FD p={p}", None) for p in orders],
                  "relative error vs fp64 autograd", f"N = {n}")
            panel(axes[i][1], [("autograd_fp64_s", "fp64 autograd", "k"),
                               ("autograd_fp32_s", "fp32 autograd", "gray")]
                  + [(f"spmv_p{p}_s", f"SpMV p={p}", None) for p in orders],
                  "time of one application [s]", f"N = {n} ({args.device})")
        fig.suptitle(f"{title} of a random-weight 50-wide tanh network (median, min..max)",
                     fontsize=10)
        C.save(fig, args, fname)


def main(argv=None):
    ap = C.parser(__doc__)
    ap.add_argument("--orders", help="comma-separated p (overrides the mode)")
    ap.add_argument("--depths", help="comma-separated depths for both operators (overrides)")
    ap.add_argument("--sizes", help="comma-separated N for both operators (overrides)")
    ap.add_argument("--operators", default="laplacian,biharmonic")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    s = C.setup(args, FIGURE, MODES[args.mode])
    if args.orders:
        s["orders"] = C.ints(args.orders)
    ops = tuple(args.operators.split(","))
    for o in ops:
        if o not in OPERATORS:
            raise SystemExit(f"unknown operator {o!r}: use {', '.join(OPERATORS)}")
    if args.depths:
        s["depths"] = {o: C.ints(args.depths) for o in ops}
    if args.sizes:
        s["sizes"] = {o: C.ints(args.sizes) for o in ops}
    s.update(device=args.device, operators=ops)
    mach = C.machine(args.device)
    log = C.Log(args.quiet)
    clouds, sources, results = {}, {}, {}
    for o in ops:
        results[o] = {}
        for n in s["sizes"][o]:
            if n not in clouds:
                clouds[n], sources[n] = C.disk_cloud(n, test=False)
                log(f"cloud {sources[n]}")
            block = measure(o, clouds[n], s["orders"], s["depths"][o], s["seeds"], args.device,
                            log)
            block["summary"] = summarize(block, s["orders"], s["depths"][o])
            results[o][str(block["N"])] = block
    plots(args, results, s["orders"])
    C.finish(args, FIGURE, {"settings": s, "clouds": sources, "paper": PAPER_CLAIMS,
                            "results": results},
             table(results, s["orders"]), compare(results, s["orders"], s), t_start, mach)


if __name__ == "__main__":
    main()
