"""The README's Python example is run as written (examples run as tests)."""
import os
import re
import subprocess
import sys
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    return blocks[0]


def test_readme_example_is_short():
    lines = [ln for ln in _example().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(lines) <= 15, f"the README example has {len(lines)} lines; keep it <= 15"


def test_readme_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_example())
    env = {**os.environ, "PYTHONPATH": str(README.parent)}  # this checkout, not an installed copy
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=600, cwd=README.parent, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    err = float(re.search(r"relative L2 error: ([0-9.eE+-]+)", res.stdout).group(1))
    assert err < 1e-2, res.stdout[-2000:]


def test_readme_example_under_mpirun(mpirun, tmp_path):
    """The same script on 2 ranks: one answer (rank 0 prints it), close to the serial one."""
    script = tmp_path / "example.py"
    script.write_text(_example())
    res = mpirun(2, [sys.executable, script], timeout=600, cwd=README.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    errs = [float(v) for v in re.findall(r"relative L2 error: ([0-9.eE+-]+)", res.stdout)]
    assert errs and max(errs) < 1e-2
    assert len(set(errs)) == 1, "ranks disagree"
