"""Configuration files (docs/config.md): parsing, errors naming the key and its table, flags
overriding the file, the TOML writer, and the example file under examples/ run for real."""
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from dtpinn_dist.train.__main__ import build_parser, main, parse_args
from dtpinn_dist.train.config import ConfigFileError, SCHEMA, resolved_config
from dtpinn_dist.train.toml_writer import dumps

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lshape.toml"


def _write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,needles", [
    ("[training]\nstepz = 3\n", ["'stepz'", "[training]", "did you mean 'steps'"]),
    ("[trainig]\nsteps = 3\n", ["[trainig]", "did you mean 'training'"]),
    ("steps = 3\n", ["'steps'", "[training]"]),
    ("[training.lm]\nstepp = 'cg'\n", ["'stepp'", "[training.lm]"]),
    ("[training]\nsteps = 'ten'\n", ["training.steps", "integer"]),
    ("[training]\nsteps = true\n", ["training.steps", "integer"]),
    ("[training]\noptimizer = 'lbgfs'\n", ["training.optimizer", "lbfgs, adam, lm"]),
    ("[run]\nquiet = 1\n", ["run.quiet", "true or false"]),
    ("[problem]\ntime = [0, 1, 2]\n", ["problem.time", "two numbers"]),
    ("[problem.params]\nk = 'x'\n", ["problem.params.k", "number"]),
    ("[bc.left]\ntype = 'robin'\ngamma = 1\n", ["'gamma'", "[bc.left]", "alpha, beta, g"]),
    ("[bc.left]\ntype = 'periodic'\n", ["bc.left", "dirichlet"]),
    ("[bc.left]\ntype = 'general'\n", ["bc.left", "expr"]),
    ("[cloud.domain]\ntype = 'annulus'\nradius = 2\n", ["'radius'", "[cloud.domain]",
                                                         "r_inner, r_outer"]),
    ("[cloud.domain]\ntype = 'hexagon'\n", ["'hexagon'", "polygon"]),
    ("[problem\n", ["not valid TOML", "line 1"]),
])
def test_bad_files_name_the_key_and_table(tmp_path, text, needles):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigFileError) as exc:
        parse_args(["--config", str(p)])
    msg = str(exc.value)
    assert str(p) in msg and "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_config_file_kinds_refused(tmp_path):
    import os
    with pytest.raises(ConfigFileError, match="does not exist"):
        parse_args(["--config", str(tmp_path / "none.toml")])
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigFileError, match="is a FIFO"):  # never opened: no hang
        parse_args(["--config", str(fifo)])


def test_flags_override_the_file(tmp_path):
    body = """
[training]
steps = 7
lr = 0.5
[cloud]
nodes = "clouds/c.npz"
[bc."*"]
type = "robin"
alpha = 2.0
g = "1"
[bc.inner]
type = "neumann"
"""
    p = _write(tmp_path, body)
    args, _ = parse_args(["--config", str(p)])
    assert args.steps == 7 and args.lr == 0.5
    assert args.nodes == str(tmp_path / "clouds" / "c.npz")  # relative to the file
    assert args.bc_table["*"] == {"type": "robin", "alpha": 2.0, "g": "1"}
    # flags win; the flag for one source clears the file's other source
    args, _ = parse_args(["--config", str(p), "--steps", "3", "--n-points", "50",
                          "--bc", "dirichlet"])
    assert args.steps == 3 and args.lr == 0.5
    assert args.n_points == 50 and args.nodes is None
    assert args.bc_table["*"] == {"type": "dirichlet"} and args.bc_table["inner"]["type"] == \
        "neumann"
    args, _ = parse_args(["--config", str(p), "--g", "0"])
    assert args.bc_table["*"] == {"type": "robin", "alpha": 2.0, "g": "0"}
    # a generated cloud's domain in the file: --domain replaces it, --nodes drops it
    p2 = _write(tmp_path, body.replace('nodes = "clouds/c.npz"', "n_points = 300\n"
                                       "[cloud.domain]\ntype = \"annulus\"\nr_inner = 0.3"), name="c2.toml")
    args, _ = parse_args(["--config", str(p2)])
    assert args.domain == "annulus" and args.domain_params == {"r_inner": 0.3}
    args, _ = parse_args(["--config", str(p2), "--domain", "disk"])
    assert args.domain == "disk" and args.domain_params is None and args.n_points == 300
    args, _ = parse_args(["--config", str(p2), "--nodes", "c.npz"])
    assert args.nodes == "c.npz" and args.n_points is None and args.domain_params is None


@pytest.mark.parametrize("flag", sorted({d for t in SCHEMA.values() if t for d in
                                         (t.values() if isinstance(t, dict) else [])
                                         if isinstance(d, str)}))
def test_every_schema_key_is_a_flag_or_a_file_setting(flag):
    from dtpinn_dist.train.config import EXTRA_DESTS
    dests = {a.dest for a in build_parser()._actions}
    assert flag in dests or flag in EXTRA_DESTS


def test_every_flag_has_a_key():
    """A TOML key for every choice the flags offer (the config file's own flag excepted)."""
    from dtpinn_dist.train.config import SCHEMA

    def dests(t):
        for v in t.values():
            if isinstance(v, dict):
                yield from dests(v)
            else:
                yield v
    keys = set(dests({k: v for k, v in SCHEMA.items() if v}))
    flags = {a.dest for a in build_parser()._actions if a.option_strings} - {"help", "config"}
    flags -= {"resume"}  # which run to continue (its folder holds the config), not a setting
    flags -= {"bc", "g"}  # the [bc."*"] table
    assert flags <= keys, sorted(flags - keys)


def test_toml_writer_round_trip():
    doc = {"a": {"s": 'quote " back \\ tab\t é', "i": -3, "f": 1e-8, "g": 1e16, "h": 2.0,
                 "inf": float("inf"), "b": True, "l": [[0, 1], [2.5, 3]], "ls": ["x", "y"]},
           "bc": {"*": {"type": "robin"}, "edge 1": {"g": "sin(x)"}},
           "nested": {"t": {"u": {"v": 1}}}}
    text = dumps(doc, header="line one\nline two", comments={"a": "about a"})
    back = tomllib.loads(text)
    assert back == doc
    assert text.startswith("# line one\n# line two")
    assert dumps({"x": {"none": None, "k": 1}}) .strip().endswith("k = 1")


def test_resolved_config_pins_the_cloud(tmp_path):
    args, _ = parse_args(["--n-points", "150", "--steps", "2"])
    desc = {"kind": "generated", "n_requested": 150, "N": 148, "Ni": 108, "Nb": 40,
            "test": {"kind": "generated", "n_requested": 600, "n": 603}}
    doc, _ = resolved_config(args, desc)
    assert doc["cloud"] == {"n_points": 150, "domain": "disk", "test_points": 600}
    assert "out" not in doc["run"] and doc["training"]["steps"] == 2
    desc = {"kind": "authors", "path": "/ref/DiskPoissonNodes.mat", "N": 1663,
            "test": {"kind": "file", "path": "/ref/L.mat", "index": -1, "n": 21748}}
    doc, _ = resolved_config(args, desc)
    assert doc["cloud"] == {"nodes": "/ref/DiskPoissonNodes.mat", "n": 1663,
                            "test_nodes": "/ref/L.mat", "test_index": -1}
    desc = {"kind": "file", "path": "/data/c.mat", "index": None, "n_select": 828,
            "test": {"kind": "none", "n": 0}}
    doc, _ = resolved_config(args, desc)
    assert doc["cloud"] == {"nodes": "/data/c.mat", "n": 828}


def test_example_file_runs_and_its_resolved_config_reproduces_it(tmp_path, capsys):
    """examples/lshape.toml as committed (smaller and shorter by flags, which override it),
    then the run's own config.toml again: the same history, bit for bit."""
    doc = tomllib.loads(EXAMPLE.read_text())
    assert doc["cloud"]["domain"]["type"] == "polygon" and len(doc["bc"]) == 4
    small = ["--n-points", "250", "--test-points", "400", "--schedule", "lbfgs:3,lm:3",
             "--eval-every", "2", "--quiet"]
    out = tmp_path / "a"
    assert main(["--config", str(EXAMPLE), *small, "--out", str(out)]) == 0, \
        capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["schedule"] == "lbfgs:3,lm:3" and m["steps"] == 6
    assert m["settings"]["problem_declared"]["params"] == {"k": 1.0}
    assert set(m["settings"]["problem_declared"]["bc"]) == {"bottom", "right", "notch_top", "*"}
    assert m["final_rel_l2"] < m["history"][0]["rel_l2"]
    resolved = tomllib.loads((out / "config.toml").read_text())
    assert resolved["cloud"]["domain"]["names"][2] == "notch_top"
    assert resolved["bc"]["right"] == {"type": "robin", "alpha": 1.0, "beta": 2.0}
    again = tmp_path / "b"
    assert main(["--config", str(out / "config.toml"), "--out", str(again)]) == 0
    m2 = json.loads((again / "metrics.json").read_text())
    assert [h["loss"] for h in m2["history"]] == [h["loss"] for h in m["history"]]
    with np.load(out / "solution.npz") as a, np.load(again / "solution.npz") as b:
        assert np.array_equal(a["u"], b["u"])


def test_config_error_is_one_line_from_main(tmp_path, capsys):
    p = _write(tmp_path, "[training]\nstepz = 3\n")
    rc = main(["--config", str(p), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()
