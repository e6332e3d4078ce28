"""Resumable parameter sweeps: one SQLite row per (point, seed), stored the moment it is computed.

Every validate command that scans a grid reuses this module:

    store = SweepStore("runs/x/sweep.sqlite", sweep="config-hash")
    rows = run_sweep(task, points, seeds, store)            # local worker processes
    rows = run_sweep(task, points, seeds, store, scheduler="tcp://host:8786")   # a Dask cluster

- ``task(items)`` receives a list of ``(point, seed)`` pairs (``point`` a dict of JSON scalars) and returns one
  JSON-serializable result dict per pair, in order. Batches let a task train many models together
  (validate._signal_prop.batched_train); ``batch_size=1`` is the classic one-point-per-call sweep.
- Rows are written by this (the submitting) process only, one transaction per finished batch, so a crash or a
  SIGKILL loses at most the batches still in flight; stored rows are never half-written (SQLite transactions,
  WAL journal, synchronous=FULL).
- A rerun skips every (point, seed) already stored for the same ``sweep`` name; ``fresh=True`` deletes that
  sweep's rows first. The ``sweep`` name should identify everything besides the point and seed that changes a
  result (validate.phase_diagram uses a hash of its training configuration), so incompatible rows never mix.
- Batches run through a ``concurrent.futures`` executor: a ``ProcessPoolExecutor`` (spawned processes) by
  default, ``distributed.Client(scheduler).get_executor()`` given a scheduler address, any executor you pass,
  or inline in this process with ``max_workers=0``. The task must be picklable (a module-level function or a
  frozen dataclass with ``__call__``) and deterministic given its items, so all executors store the same numbers.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

Point = Mapping[str, Any]
Item = tuple[dict, int]
Task = Callable[[list[Item]], list[dict]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    sweep       TEXT    NOT NULL,
    point_key   TEXT    NOT NULL,
    seed        INTEGER NOT NULL,
    point       TEXT    NOT NULL,
    result      TEXT    NOT NULL,
    elapsed_s   REAL    NOT NULL,
    finished_at REAL    NOT NULL,
    PRIMARY KEY (sweep, point_key, seed)
)
"""


def point_key(point: Point) -> str:
    """Canonical text of a point: the same mapping always gives the same key (sorted keys, JSON scalars)."""
    if not isinstance(point, Mapping):
        raise ValueError(f"point must be a mapping of field -> JSON scalar, got {type(point).__name__}")
    for name, value in point.items():
        if not isinstance(name, str):
            raise ValueError(f"point field names must be strings, got {name!r}")
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise ValueError(f"point field {name!r} must be a JSON scalar, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"point field {name!r} must be finite, got {value}")
    return json.dumps(dict(point), sort_keys=True, separators=(",", ":"))


class SweepStore:
    """An SQLite file of sweep results: one row per (sweep, point, seed), written atomically.

    Opens a short-lived connection per operation, so the store can be shared between processes and survives
    being pickled (only the path and sweep name travel).
    """

    def __init__(self, path: str | os.PathLike, sweep: str = "default"):
        if not sweep or not isinstance(sweep, str):
            raise ValueError(f"sweep must be a non-empty string, got {sweep!r}")
        self.path = os.fspath(path)
        self.sweep = sweep
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed row survives a SIGKILL or power loss
            yield db
        finally:
            db.close()

    def done(self) -> set[tuple[str, int]]:
        """The (point_key, seed) pairs already stored for this sweep."""
        with self._connect() as db:
            return {(k, s) for k, s in db.execute(
                "SELECT point_key, seed FROM results WHERE sweep = ?", (self.sweep,))}

    def put(self, rows: Iterable[tuple[Point, int, dict, float]]) -> None:
        """Store (point, seed, result, elapsed_s) rows in ONE transaction: all of them or none.

        A plain INSERT (not OR REPLACE): storing a pair twice is a bug and raises sqlite3.IntegrityError.
        """
        now = time.time()
        records = [(self.sweep, point_key(p), int(s), point_key(p), json.dumps(r, sort_keys=True),
                    float(e), now) for p, s, r, e in rows]
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?)", records)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def rows(self) -> list[dict]:
        """Every stored row of this sweep: {"point", "seed", "result", "elapsed_s", "finished_at"}."""
        with self._connect() as db:
            cursor = db.execute(
                "SELECT point, seed, result, elapsed_s, finished_at FROM results WHERE sweep = ? "
                "ORDER BY point_key, seed", (self.sweep,))
            return [{"point": json.loads(p), "seed": s, "result": json.loads(r), "elapsed_s": e,
                     "finished_at": f} for p, s, r, e, f in cursor]

    def clear(self) -> int:
        """Delete this sweep's rows (other sweeps in the same file are kept); returns how many."""
        with self._connect() as db:
            return db.execute("DELETE FROM results WHERE sweep = ?", (self.sweep,)).rowcount


class _InlineExecutor(cf.Executor):
    """Runs each submission immediately in this process (``max_workers=0``): for debugging and profiling."""

    def submit(self, fn, /, *args, **kwargs):
        future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(error)
        return future


@contextmanager
def make_executor(scheduler: str | None = None, max_workers: int = 1):
    """The executor a sweep runs on: a Dask cluster at ``scheduler``, else local spawned processes (or inline)."""
    if scheduler is not None:
        try:
            from distributed import Client
        except ImportError as error:  # a user asked for Dask without installing it
            raise ValueError("scheduler needs the 'distributed' package: pip install 'dask[distributed]'") from error
        client = Client(scheduler)
        try:
            yield client.get_executor()
        finally:
            client.close()
    elif max_workers == 0:
        yield _InlineExecutor()
    else:
        # spawn, not fork: torch and Numba thread pools do not survive fork reliably
        with cf.ProcessPoolExecutor(max_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool


def _timed(task: Task, items: list[Item]) -> tuple[list[dict], float]:
    start = time.perf_counter()
    results = task(items)
    return results, time.perf_counter() - start


def run_sweep(task: Task, points: Sequence[Point], seeds: Sequence[int], store: SweepStore, *,
              batch_size: int = 1, executor: cf.Executor | None = None, scheduler: str | None = None,
              max_workers: int = 1, fresh: bool = False, progress: Callable[[int], None] | None = None
              ) -> list[dict]:
    """Compute every (point, seed) not yet in ``store``, storing each batch as it finishes.

    Returns the stored rows of all requested pairs, in the order points x seeds (seed varying fastest).
    ``progress(n)`` is called with the number of pairs each finished batch added (e.g. ``tqdm.update``).
    Pairs are batched in that same order, so a given pending set always forms the same batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_workers < 0:
        raise ValueError(f"max_workers must be >= 0, got {max_workers}")
    if not seeds:
        raise ValueError("seeds must not be empty")
    keys = [point_key(p) for p in points]
    if len(set(keys)) != len(keys):
        raise ValueError("points must be distinct")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    if fresh:
        store.clear()
    done = store.done()
    pending = [(dict(p), int(s)) for p, k in zip(points, keys) for s in seeds if (k, int(s)) not in done]
    batches = [pending[i:i + batch_size] for i in range(0, len(pending), batch_size)]

    if batches:
        with (_borrowed(executor) if executor is not None else make_executor(scheduler, max_workers)) as pool:
            futures = {pool.submit(_timed, task, batch): batch for batch in batches}
            try:
                for future in cf.as_completed(futures):
                    batch = futures[future]
                    results, elapsed = future.result()
                    if len(results) != len(batch):
                        raise RuntimeError(f"task returned {len(results)} results for {len(batch)} items")
                    per_item = elapsed / len(batch)
                    store.put((p, s, r, per_item) for (p, s), r in zip(batch, results))
                    if progress is not None:
                        progress(len(batch))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    stored = {(point_key(r["point"]), r["seed"]): r for r in store.rows()}
    return [stored[(k, int(s))] for k in keys for s in seeds]


@contextmanager
def _borrowed(executor: cf.Executor):
    """A caller's executor: used, not shut down."""
    yield executor
