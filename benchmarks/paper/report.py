"""Markdown of the paper benchmarks' results: one section per ``fig*.json`` found in the given
folders (machine, load, versions, the command, the table, 'what we see vs the paper', the plots).

    python benchmarks/paper/report.py runs/paper/*-reduced --images docs/paper > results.md

``--images DIR`` copies each run's JSON and PNG files into DIR and links them from there
(relative to ``--relative-to``, default the folder of DIR's parent, i.e. ``docs/``). Without
``--images``, ``--relative-to DIR`` links the files where they lie (e.g. the committed
``benchmarks/results/paper/*-reduced`` folders, from ``docs/``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

ORDER = ["fig2", "fig3", "fig5", "fig6", "fig9"]
TITLES = {"fig2": "Fig. 2 and 7: derivatives of a random-weight network, autograd vs RBF-FD",
          "fig3": "Fig. 3, 4 and 8: linear Poisson, DT-PINNs vs vanilla PINNs",
          "fig5": "Fig. 5: nonlinear Poisson",
          "fig6": "Fig. 6: heat equation",
          "fig9": "Fig. 9 and 10: star-shaped domain"}


def section(doc: dict, folder: Path, images: Path | None, rel_to: Path | None) -> str:
    fig, m = doc["figure"], doc["machine"]
    load0 = ", ".join(f"{v:.2f}" for v in m["load_avg_start"])
    load1 = ", ".join(f"{v:.2f}" for v in m["load_avg_end"])
    v = m["versions"]
    lines = [f"## {TITLES.get(fig, fig)}", "",
             f"`python benchmarks/paper/{fig}.py --mode {doc['mode']}` -- {m['cpu']} "
             f"({m['cpu_count']} cores), device {m['device']}"
             + (f" ({m['gpu']})" if m.get("gpu") else "")
             + f", {m['torch_threads']} torch thread(s); load average (1, 5, 15 min) {load0} at "
             f"the start, {load1} at the end; torch {v['torch']}, numpy {v['numpy']}, scipy "
             f"{v['scipy']}, dtpinn_dist {v['dtpinn_dist']} (commit "
             f"{(m.get('git_commit') or '?')[:10]}{', modified' if m.get('git_dirty') else ''});"
             f" wall time {doc['wall_time_s']:.0f} s.", ""]
    clouds = doc.get("clouds") or {}
    if clouds:
        lines += ["Clouds: " + "; ".join(f"{src}" for src in clouds.values()) + ".", ""]
    lines += [doc["table"], "", "**What we see vs the paper** (generated from the numbers):", ""]
    lines += [f"- {p}" for p in doc["comparison"].split("\n")] + [""]
    pngs = sorted(folder.glob("*.png"))
    if images is not None:
        images.mkdir(parents=True, exist_ok=True)
        for f in pngs + [folder / f"{fig}.json"]:
            shutil.copy2(f, images / f.name)
        base = Path(os.path.relpath(images, rel_to)) if rel_to else images
        lines += [f"![{p.stem}]({(base / p.name).as_posix()})" for p in pngs]
        lines += ["", f"All numbers: [`{fig}.json`]({(base / (fig + '.json')).as_posix()})."]
    elif rel_to is not None:
        base = Path(os.path.relpath(folder, rel_to))
        lines += [f"![{p.stem}]({(base / p.name).as_posix()})" for p in pngs]
        lines += ["", f"All numbers: [`{fig}.json`]({(base / (fig + '.json')).as_posix()})."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--images", type=Path, default=None)
    ap.add_argument("--relative-to", type=Path, default=None)
    a = ap.parse_args(argv)
    docs = []
    for folder in a.folders:
        for f in sorted(folder.glob("fig*.json")):
            docs.append((json.loads(f.read_text()), folder))
    docs.sort(key=lambda d: ORDER.index(d[0]["figure"]) if d[0]["figure"] in ORDER else 99)
    rel = a.relative_to or (a.images.parent if a.images else None)
    print("\n".join(section(d, folder, a.images, rel) for d, folder in docs))


if __name__ == "__main__":
    main()
