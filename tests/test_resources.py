"""Memory checks: a job too large for the machine is refused before it allocates, with the
estimate and the limit (issue 11 section 6, resources)."""
import tracemalloc

import numpy as np
import pytest

from dtpinn_dist.geometry import Disk, make_cloud
from dtpinn_dist.geometry.nodes import estimate_cloud_bytes, spacing_for_count
from dtpinn_dist.resources import (ResourceError, available_memory, check_memory, format_bytes,
                                   parse_bytes)


def test_sizes():
    assert parse_bytes("8G") == 8 * 1024 ** 3 and parse_bytes("500m") == 500 * 1024 ** 2
    assert parse_bytes("2GiB") == 2 * 1024 ** 3 and parse_bytes("4096") == 4096
    for bad in ("lots", "-1G", "0", "inf"):
        with pytest.raises(ValueError, match="memory size|cannot read"):
            parse_bytes(bad)
    assert format_bytes(3 * 1024 ** 3) == "3.0 GiB" and format_bytes(512) == "512 B"


def test_check_memory_message():
    assert check_memory(1000, "x", limit=2000) == 1000
    with pytest.raises(ResourceError, match=r"a big job would need about 2\.0 GiB of memory "
                                            r"\(estimate\), but only 1\.0 GiB is available; "
                                            r"use less"):
        check_memory(2 * 1024 ** 3, "a big job", fix="use less", limit=1024 ** 3)
    with pytest.raises(ResourceError, match="more memory than any machine has"):
        check_memory(float("inf"), "an overflow", limit=1024)
    assert issubclass(ResourceError, ValueError)


def test_available_memory_and_env_cap(monkeypatch):
    avail = available_memory()
    assert avail is None or avail > 0
    monkeypatch.setenv("DTPINN_MEMORY_LIMIT", "1M")
    assert available_memory() <= 1024 ** 2
    with pytest.raises(ResourceError, match=r"only 1\.0 MiB is available"):
        check_memory(2 * 1024 ** 2, "two megabytes")
    monkeypatch.setenv("DTPINN_MEMORY_LIMIT", "a lot")
    with pytest.raises(ValueError, match="cannot read 'a lot' as a memory size"):
        available_memory()


def test_estimate_grows_with_the_node_count():
    dom = Disk()
    small, large = (estimate_cloud_bytes(dom, spacing_for_count(dom, n)) for n in (1e4, 1e6))
    assert 50 < large / small < 200  # proportional to N (the lattice term is too)
    assert estimate_cloud_bytes(dom, 1e-300) == float("inf")


@pytest.mark.parametrize("kw, match", [
    (dict(n=10 ** 9), r"make_cloud\(n=1000000000\) would need about \d+\.\d GiB of memory "
                      r"\(estimate\), but only 1\.0 GiB is available; use fewer nodes"),
    (dict(spacing=1e-7), r"make_cloud\(spacing=1e-07\) would need about [\d.]+ [PT]iB"),
    (dict(spacing=1e-300), r"more memory than any machine has"),
])
def test_make_cloud_refuses_before_allocating(monkeypatch, kw, match):
    monkeypatch.setenv("DTPINN_MEMORY_LIMIT", "1G")  # the same answer on any machine
    tracemalloc.start()
    try:
        with pytest.raises(ResourceError, match=match):
            make_cloud("disk", **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 ** 2, f"allocated {peak} bytes before refusing"


def test_make_cloud_size_arguments():
    with pytest.raises(ValueError, match="whole number of nodes"):
        make_cloud("disk", n=2.5)
    with pytest.raises(ValueError, match="n >= 10"):
        make_cloud("disk", n=3)
    with pytest.raises(ValueError, match="spacing 10 gives about 1 nodes"):
        make_cloud("disk", spacing=10.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive finite"):
            make_cloud("disk", spacing=bad)
    c = make_cloud("disk", n=np.int64(200), seed=0)  # numpy integers are fine
    assert abs(c.n_interior + c.n_boundary - 200) < 20
