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

from tests._signals import default_sigint
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
run_sweep(LoggedTask({log!r}, sleep_s=0.25), POINTS, SEEDS, SweepStore({store!r}, "kill"), max_workers={workers})
"""


@pytest.mark.parametrize("workers", [2, 0], ids=["worker processes", "inline"])
def test_sigkill_midway_then_rerun_stores_every_pair_once_and_recomputes_none(tmp_path, workers):
    """With either executor, each batch is stored as it finishes: a rerun after SIGKILL computes only the rest."""
    store_path, log1, log2 = tmp_path / "s.sqlite", tmp_path / "first.log", tmp_path / "second.log"
    SweepStore(store_path, "kill")  # create the schema so the poll below can read it
    script = textwrap.dedent(KILLED_RUN).format(log=str(log1), store=str(store_path), workers=workers)
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
    rows = run_sweep(LoggedTask(str(log2)), POINTS, SEEDS, store, max_workers=workers)

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its dead parent's reaper) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _worker_pids(log: Path, parent: int) -> set[int]:
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
    return {int(pid) for pid in children.split()}


def test_workers_end_with_their_parent_when_it_is_killed(tmp_path):
    """SIGKILL of the sweep's own process only (not its group): its workers notice and exit, none stay idle."""
    store_path, log = tmp_path / "s.sqlite", tmp_path / "run.log"
    SweepStore(store_path, "kill")
    script = textwrap.dedent(KILLED_RUN).format(log=str(log), store=str(store_path), workers=2)
    run = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True)
    try:
        _wait_for(lambda: len(stored_pairs(store_path, "kill")) >= 2, 120, "the sweep made no progress")
        workers = _worker_pids(log, run.pid)
        assert workers, "no worker processes found"
        run.kill()
        run.wait()
        _wait_for(lambda: not any(_alive(pid) for pid in workers), 10, "workers outlived their parent")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


def test_ctrl_c_stops_at_once_and_keeps_what_finished(tmp_path):
    store_path, log = tmp_path / "s.sqlite", tmp_path / "run.log"
    SweepStore(store_path, "kill")
    script = textwrap.dedent(KILLED_RUN).format(log=str(log), store=str(store_path), workers=2)
    run = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True,
                           stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        _wait_for(lambda: len(stored_pairs(store_path, "kill")) >= 2, 120, "the sweep made no progress")
        workers = _worker_pids(log, run.pid)
        kept = len(stored_pairs(store_path, "kill"))
        start = time.monotonic()
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=30)
        assert time.monotonic() - start < 5, "Ctrl-C did not stop the sweep at once"
        assert run.returncode != 0 and "KeyboardInterrupt" in stderr and "InvalidStateError" not in stderr
        assert len(stored_pairs(store_path, "kill")) >= kept  # nothing finished was lost
        assert len(stored_pairs(store_path, "kill")) < len(POINTS) * len(SEEDS)  # and it did not run on
        _wait_for(lambda: not any(_alive(pid) for pid in workers), 10, "workers outlived the interrupted sweep")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


HOLD_STORE = """
import sys, time
from validate._common.sweep import SweepStore
with SweepStore({store!r}, "other").lock():
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_a_store_in_use_is_refused(tmp_path):
    from validate._common.sweep import StoreInUse

    store_path = tmp_path / "s.sqlite"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_STORE).format(store=str(store_path))],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(StoreInUse, match=f"in use by another run \\(pid {holder.pid}\\)"):
            run_sweep(LoggedTask(str(tmp_path / "x.log")), POINTS[:2], SEEDS, SweepStore(store_path, "mine"),
                      max_workers=0)
        assert not (tmp_path / "x.log").exists()  # refused before computing anything
    finally:
        holder.kill()
        holder.wait()
    # once the holder is gone, the store is free again, and the lock is re-entrant within one process
    store = SweepStore(store_path, "mine")
    with store.lock():
        run_sweep(LoggedTask(str(tmp_path / "x.log")), POINTS[:2], SEEDS, store, max_workers=0)
    assert len(stored_pairs(store_path, "mine")) == 4


@pytest.mark.parametrize("content, message", [
    (b"this is not a database, just some bytes" * 100, "not a sweep store"),
    (None, "foreign SQLite database"),
])
def test_a_file_that_is_not_a_sweep_store_is_named_before_any_compute(tmp_path, content, message):
    path = tmp_path / "s.sqlite"
    if content is None:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE people (name TEXT)")
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message):
        SweepStore(path, "x")
    assert path.read_bytes() == before  # refused untouched
    with pytest.raises(ValueError, match="is a directory"):
        SweepStore(tmp_path, "x")


def test_inline_sweep_stores_each_batch_before_the_next_starts(tmp_path):
    """A task that fails on its third batch leaves the first two stored (in this process, no pool)."""
    store = SweepStore(tmp_path / "s.sqlite", "inline")
    calls = []

    def task(items):
        calls.append(items)
        if len(calls) == 3:
            raise RuntimeError("third batch fails")
        return [{"value": expected_value(p, s)} for p, s in items]

    with pytest.raises(RuntimeError, match="third batch"):
        run_sweep(task, POINTS[:3], SEEDS, store, max_workers=0, batch_size=2)
    assert len(stored_pairs(tmp_path / "s.sqlite", "inline")) == 4


@pytest.mark.parametrize("address, message", [
    ("nonsense", "expected tcp://HOST:PORT"), ("tcp://127.0.0.1:99999", "expected tcp://HOST:PORT"),
    ("tcp://127.0.0.1:1", "no scheduler answers"),
])
def test_scheduler_addresses_are_checked_with_a_short_timeout(address, message):
    from validate._common.sweep import check_scheduler

    start = time.monotonic()
    with pytest.raises(ValueError, match=message):
        check_scheduler(address, timeout=1.0)
    assert time.monotonic() - start < 5
