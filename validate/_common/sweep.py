"""Resumable parameter sweeps: one SQLite row per (point, seed), stored the moment it is computed.

Every validate command that scans a grid reuses this module:

    store = SweepStore("runs/x/sweep.sqlite", sweep="config-hash")
    rows = run_sweep(task, points, seeds, store)            # local worker processes
    rows = run_sweep(task, points, seeds, store, scheduler="tcp://host:8786")   # a Dask cluster

- ``task(items)`` receives a list of ``(point, seed)`` pairs (``point`` a dict of JSON scalars) and returns one
  JSON-serializable result dict per pair, in order. Batches let a task train many models together
  (validate._signal_prop.batched_train); ``batch_size=1`` is the classic one-point-per-call sweep.
- Rows are written by this (the submitting) process only, one transaction per finished batch, with every
  executor (the inline one too), so a crash, a Ctrl-C or a SIGKILL loses at most the batches still in flight;
  stored rows are never half-written (SQLite transactions, WAL journal, synchronous=FULL). Ctrl-C stops at once:
  worker processes are terminated, and a worker whose parent died exits by itself.
- One sweep at a time per store file: a second run on a store in use raises StoreInUse (its message names the
  file and the holder's pid), so two runs never compute the same rows. A file that is not a sweep store (not
  SQLite, or a database of other tables) raises ValueError before anything is computed.
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
import errno
import fcntl
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

Point = Mapping[str, Any]
Item = tuple[dict, int]
Task = Callable[[list[Item]], list[dict]]
_LOCKS: dict[str, list] = {}  # realpath -> [open lock file, depth]: the stores this process holds
_LOCKS_GUARD = threading.Lock()

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


_COLUMNS = ("sweep", "point_key", "seed", "point", "result", "elapsed_s", "finished_at")


class StoreInUse(RuntimeError):
    """Another run holds the store: one sweep at a time per file."""


class SweepStore:
    """An SQLite file of sweep results: one row per (sweep, point, seed), written atomically.

    Opens a short-lived connection per operation, so the store can be shared between processes and survives
    being pickled (only the path and sweep name travel). Raises ValueError for a location that cannot hold a
    store and for a file that is not one (not SQLite, or a database without this schema).
    """

    def __init__(self, path: str | os.PathLike, sweep: str = "default"):
        if not sweep or not isinstance(sweep, str):
            raise ValueError(f"sweep must be a non-empty string, got {sweep!r}")
        self.path = os.fspath(path)
        self.sweep = sweep
        if os.path.isdir(self.path):
            raise ValueError(f"store {self.path!r} is a directory, not a file")
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as error:
            raise ValueError(f"store {self.path!r}: cannot create its directory ({error.strerror})") from None
        if not os.access(parent, os.W_OK) or (os.path.exists(self.path) and not os.access(self.path, os.W_OK)):
            raise ValueError(f"store {self.path!r}: not writable")
        try:
            if os.path.exists(self.path):
                self._check_schema()  # read-only first: a file that is not ours is refused untouched
            with self._connect() as db:
                db.execute(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise ValueError(f"store {self.path!r} is not a sweep store: {error}") from None

    def _check_schema(self) -> None:
        db = sqlite3.connect(f"file:{os.path.abspath(self.path)}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "results" in tables:
                columns = tuple(row[1] for row in db.execute("PRAGMA table_info(results)"))
                if columns != _COLUMNS:
                    raise ValueError(f"store {self.path!r} is a foreign SQLite database: its results table has "
                                     f"columns {list(columns)}, a sweep store has {list(_COLUMNS)}")
            elif tables:
                raise ValueError(f"store {self.path!r} is a foreign SQLite database (tables {sorted(tables)}), "
                                 "not a sweep store")
        finally:
            db.close()

    @contextmanager
    def lock(self):
        """Hold the store for one run: StoreInUse when another process holds it (an flock on PATH.lock, released
        when the run ends or its process dies). Re-entrant within one process."""
        key = os.path.realpath(self.path)
        with _LOCKS_GUARD:
            held = _LOCKS.get(key)
            if held is None:
                handle = open(key + ".lock", "a+")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    handle.close()
                    if error.errno in (errno.EAGAIN, errno.EACCES):
                        raise StoreInUse(f"store {self.path!r} is in use by another run (pid {holder}); wait for "
                                         "it to finish or use another --out/--store") from None
                    raise
                handle.truncate(0)
                handle.write(str(os.getpid()))
                handle.flush()
                held = _LOCKS[key] = [handle, 0]
            held[1] += 1
        try:
            yield self
        finally:
            with _LOCKS_GUARD:
                held[1] -= 1
                if held[1] == 0:
                    del _LOCKS[key]
                    held[0].close()  # closing the file releases the flock

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


def check_scheduler(address: str, timeout: float = 3.0) -> str:
    """A Dask scheduler address, checked before any compute: the form tcp://HOST:PORT (or HOST:PORT), the
    'distributed' package, and a TCP connection within `timeout` seconds. ValueError in one line otherwise."""
    match = re.fullmatch(r"(?:tcp://)?(\[[0-9a-fA-F:]+\]|[\w.-]+):(\d{1,5})", str(address))
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"scheduler {address!r}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:8786")
    try:
        import distributed  # noqa: F401
    except ImportError:  # a user asked for Dask without installing it
        raise ValueError("scheduler needs the 'distributed' package: pip install 'dask[distributed]'") from None
    host, port = match.group(1).strip("[]"), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise ValueError(f"scheduler {address!r}: no scheduler answers there within {timeout:g} s "
                         f"({error.strerror or error})") from None
    return address


@contextmanager
def make_executor(scheduler: str | None = None, max_workers: int = 1):
    """The executor a sweep runs on: a Dask cluster at ``scheduler``, else local spawned processes (or inline)."""
    if scheduler is not None:
        check_scheduler(scheduler)
        from distributed import Client
        client = Client(scheduler, timeout=10)
        try:
            yield client.get_executor()
        finally:
            client.close()
    elif max_workers == 0:
        yield _InlineExecutor()
    else:
        # spawn, not fork: torch and Numba thread pools do not survive fork reliably
        pool = cf.ProcessPoolExecutor(max_workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_exit_with_parent, initargs=(os.getpid(),))
        try:
            yield pool
        except BaseException:
            # stop at once: drop queued batches and end the workers mid-batch (their rows were never stored)
            # (futures are not cancelled here: the pool marks them broken itself, and Python 3.11's pool thread
            # raises InvalidStateError on a future that was cancelled first)
            processes = list((getattr(pool, "_processes", None) or {}).values())
            for process in processes:
                process.terminate()
            pool.shutdown(wait=False)
            raise
        else:
            pool.shutdown(wait=True)


def _exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Worker initializer: a daemon thread ends this worker when its parent is gone (killed with SIGKILL, say),
    so a killed sweep leaves no idle workers behind. Ctrl-C reaches the parent alone, which ends the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


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
    with store.lock():
        if fresh:
            store.clear()
        done = store.done()
        pending = [(dict(p), int(s)) for p, k in zip(points, keys) for s in seeds if (k, int(s)) not in done]
        batches = [pending[i:i + batch_size] for i in range(0, len(pending), batch_size)]

        def keep(batch, results, elapsed):
            if len(results) != len(batch):
                raise RuntimeError(f"task returned {len(results)} results for {len(batch)} items")
            store.put((p, s, r, elapsed / len(batch)) for (p, s), r in zip(batch, results))
            if progress is not None:
                progress(len(batch))

        if batches and executor is None and scheduler is None and max_workers == 0:
            for batch in batches:  # in this process: each batch is stored before the next one starts
                keep(batch, *_timed(task, batch))
        elif batches:
            with (_borrowed(executor) if executor is not None else make_executor(scheduler, max_workers)) as pool:
                futures = {pool.submit(_timed, task, batch): batch for batch in batches}
                for future in cf.as_completed(futures):
                    keep(futures[future], *future.result())

        stored = {(point_key(r["point"]), r["seed"]): r for r in store.rows()}
    return [stored[(k, int(s))] for k in keys for s in seeds]


@contextmanager
def _borrowed(executor: cf.Executor):
    """A caller's executor: used, not shut down."""
    yield executor
