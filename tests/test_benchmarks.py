"""The benchmarks still run (their --quick presets): every row names its baseline and has a finite ratio.
No speed is asserted here; speed is measured by `python -m benchmarks`, as ratios within one run."""
import importlib
import math
import pkgutil

import pytest

import benchmarks

NAMES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))


@pytest.mark.parametrize("name", NAMES)
def test_quick_benchmark_rows(name):
    rows = importlib.import_module(f"benchmarks.{name}").run(quick=True)
    assert rows
    for row in rows:
        assert {"name", "baseline", "ratio", "detail"} <= row.keys()
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
