"""The sweep machinery (validate._common.sweep): resumable SQLite rows, SIGKILL safety, local vs Dask executors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from validate._common.sweep import SweepStore, point_key, run_sweep

REPO = Path(__file__).resolve().parents[1]
POINTS = [{"alpha": round(0.1 * i, 3), "sigma_w": 2.0} for i in range(1, 13)]
SEEDS = [0, 1]


def expected_value(point: dict, seed: int) -> float:
    """A deterministic 'result' of a (point, seed): what any executor, in any process, must store."""
    rng = np.random.default_rng([zlib.crc32(point_key(point).encode()), seed])
    return float(rng.normal())


@dataclass(frozen=True)
class LoggedTask:
    """A picklable task that appends one line per computed item to a log, so a test can see what ran."""

    log_path: str
    sleep_s: float = 0.0

    def __call__(self, items):
        results = []
        for point, seed in items:
            time.sleep(self.sleep_s)
            with open(self.log_path, "a") as log:  # O_APPEND: one short line per write, no interleaving
                log.write(json.dumps([point_key(point), seed]) + "\n")
            results.append({"value": expected_value(point, seed), "pid": os.getpid()})
        return results


def read_log(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]


def stored_pairs(store_path: Path, sweep: str) -> list[tuple[str, int]]:
    with sqlite3.connect(store_path) as db:
        return list(db.execute("SELECT point_key, seed FROM results WHERE sweep = ?", (sweep,)))


def test_rerun_skips_stored_rows_and_fresh_starts_over(tmp_path):
    store = SweepStore(tmp_path / "s.sqlite", sweep="t")
    log = tmp_path / "calls.log"
    task = LoggedTask(str(log))
    rows = run_sweep(task, POINTS[:4], SEEDS, store, max_workers=0, batch_size=3)
    assert [(r["point"], r["seed"]) for r in rows] == [(p, s) for p in POINTS[:4] for s in SEEDS]
    assert [r["result"]["value"] for r in rows] == [expected_value(p, s) for p in POINTS[:4] for s in SEEDS]
    assert len(read_log(log)) == 8
    run_sweep(task, POINTS[:4], SEEDS, store, max_workers=0)          # all stored: nothing runs
    assert len(read_log(log)) == 8
    run_sweep(task, POINTS[:6], SEEDS, store, max_workers=0)          # only the two new points run
    assert sorted(read_log(log)[8:]) == sorted((point_key(p), s) for p in POINTS[4:6] for s in SEEDS)
    run_sweep(task, POINTS[:2], SEEDS, store, max_workers=0, fresh=True)
    assert len(read_log(log)) == 12 + 4 and len(store.rows()) == 4


def test_sweeps_in_one_file_are_kept_apart(tmp_path):
    path = tmp_path / "s.sqlite"
    run_sweep(LoggedTask(str(tmp_path / "a.log")), POINTS[:2], [0], SweepStore(path, "a"), max_workers=0)
    run_sweep(LoggedTask(str(tmp_path / "b.log")), POINTS[:2], [0], SweepStore(path, "b"), max_workers=0)
    assert len(read_log(tmp_path / "b.log")) == 2  # sweep "a" rows did not satisfy sweep "b"
    SweepStore(path, "a").clear()
    assert len(SweepStore(path, "b").rows()) == 2


def test_storing_a_pair_twice_is_an_error(tmp_path):
    store = SweepStore(tmp_path / "s.sqlite")
    store.put([(POINTS[0], 0, {"value": 1.0}, 0.1)])
    with pytest.raises(sqlite3.IntegrityError):
        store.put([(POINTS[1], 0, {"value": 1.0}, 0.1), (POINTS[0], 0, {"value": 2.0}, 0.1)])
    assert len(store.rows()) == 1  # the failed transaction stored neither row


@pytest.mark.parametrize("bad, message", [
    (dict(batch_size=0), "batch_size"), (dict(max_workers=-1), "max_workers"), (dict(seeds=[]), "seeds"),
    (dict(seeds=[1, 1]), "seeds"), (dict(points=[POINTS[0], POINTS[0]]), "distinct"),
    (dict(points=[{"alpha": float("nan")}]), "alpha")])
def test_bad_arguments_raise_value_error(tmp_path, bad, message):
    args = dict(points=POINTS[:2], seeds=SEEDS) | bad
    with pytest.raises(ValueError, match=message):
        run_sweep(LoggedTask(str(tmp_path / "x.log")), args.pop("points"), args.pop("seeds"),
                  SweepStore(tmp_path / "s.sqlite"), **args)


KILLED_RUN = """
from tests.test_sweep import LoggedTask, POINTS, SEEDS
from validate._common.sweep import SweepStore, run_sweep
run_sweep(LoggedTask({log!r}, sleep_s=0.25), POINTS, SEEDS, SweepStore({store!r}, "kill"), max_workers=2)
"""


def test_sigkill_midway_then_rerun_stores_every_pair_once_and_recomputes_none(tmp_path):
    store_path, log1, log2 = tmp_path / "s.sqlite", tmp_path / "first.log", tmp_path / "second.log"
    SweepStore(store_path, "kill")  # create the schema so the poll below can read it
    script = textwrap.dedent(KILLED_RUN).format(log=str(log1), store=str(store_path))
    # its own session, so SIGKILL goes to the whole run: the driver and its worker processes
    run = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True)
    total = len(POINTS) * len(SEEDS)
    deadline = time.monotonic() + 120
    while len(stored_pairs(store_path, "kill")) < total // 3:
        assert run.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    stored_at_kill = set(stored_pairs(store_path, "kill"))
    assert total // 3 <= len(stored_at_kill) < total, "the kill should land midway"

    store = SweepStore(store_path, "kill")
    rows = run_sweep(LoggedTask(str(log2)), POINTS, SEEDS, store, max_workers=2)

    pairs = stored_pairs(store_path, "kill")
    assert len(pairs) == total and len(set(pairs)) == total  # every pair present exactly once
    recomputed = read_log(log2)
    assert len(recomputed) == len(set(recomputed))
    assert set(recomputed) == {(point_key(p), s) for p in POINTS for s in SEEDS} - stored_at_kill
    assert [r["result"]["value"] for r in rows] == [expected_value(p, s) for p in POINTS for s in SEEDS]


def test_dask_local_cluster_stores_the_same_rows_as_local_processes(tmp_path):
    distributed = pytest.importorskip("distributed")
    local = SweepStore(tmp_path / "local.sqlite", "grid")
    run_sweep(LoggedTask(str(tmp_path / "l.log")), POINTS[:6], SEEDS, local, max_workers=2, batch_size=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        remote = SweepStore(tmp_path / "dask.sqlite", "grid")
        run_sweep(LoggedTask(str(tmp_path / "d.log")), POINTS[:6], SEEDS, remote,
                  scheduler=cluster.scheduler_address, batch_size=2)
    local_rows, remote_rows = local.rows(), remote.rows()
    assert [(r["point"], r["seed"], r["result"]["value"]) for r in local_rows] == \
        [(r["point"], r["seed"], r["result"]["value"]) for r in remote_rows]
    # the Dask rows really came from the cluster's worker processes, not from this one
    assert {r["result"]["pid"] for r in remote_rows}.isdisjoint({os.getpid()})
