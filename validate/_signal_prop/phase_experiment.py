"""The phase-diagram experiment: its configuration (the plane, the dense exponent map, the training grid and
recipe, where it runs) and its predictions, made before any training: the exponent maps and the predicted
critical point (Cowsik et al. 2024, abstract: the two exponents at initialization and their simultaneous
vanishing).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field

import numpy as np

from sim.signal_prop import GRID_FIELDS, critical_point, exponent_grid
from theory.signal_prop import BlockParams
from validate._common import checks
from validate._common.sweep import SweepStore
from validate._signal_prop.batched_train import MAX_SEED, RESULT_KEYS, TrainConfig
from validate._signal_prop.phase_task import HistogramTask

# the largest planes the computation can use: a dense map of MAX_MAP_POINTS^2 points holds 2 x 32 MB of
# exponents and takes about a minute to draw; a training grid of MAX_GRID^2 points is 10^4 trained models per
# seed (days at the default recipe) and puts hundreds of MB of training curves into the JSON record
MAX_MAP_POINTS, MAX_GRID = 2000, 100
AXIS_DECIMALS = 10   # grid values are rounded so that a point's stored key does not depend on float noise
OUTPUT_FILES = ("phase_diagram.json", "phase_diagram.png")


@dataclass(frozen=True)
class PhaseDiagramConfig:
    """A phase-diagram run: the plane, the dense exponent map, the training grid, the training recipe."""

    x_field: str = "alpha"
    x_range: tuple[float, float] = (0.05, 0.95)
    y_field: str = "sigma_w"
    y_range: tuple[float, float] = (0.5, 5.0)
    map_points: int = 200
    grid: tuple[int, int] = (6, 6)
    seeds: tuple[int, ...] = (0, 1)
    base: BlockParams = field(default_factory=lambda: BlockParams(n_tokens=HistogramTask().n_tokens))
    train: TrainConfig = field(default_factory=TrainConfig)
    models_per_batch: int = 12
    workers: int = 2
    scheduler: str | None = None
    device: str = "cpu"
    out: str = "runs/phase_diagram"
    store: str | None = None
    fresh: bool = False

    def __post_init__(self):
        for name in ("x_field", "y_field"):
            checks.field(self, name, checks.choice, GRID_FIELDS)
        overlapping = {"alpha": {"alpha_A", "alpha_M", "alpha"}}
        if self.x_field == self.y_field or self.y_field in overlapping.get(self.x_field, ()) \
                or self.x_field in overlapping.get(self.y_field, ()):
            raise ValueError(f"x_field={self.x_field!r} and y_field={self.y_field!r} must set different fields")
        if not isinstance(self.base, BlockParams):
            raise ValueError(f"base={self.base!r}: must be a theory.signal_prop.BlockParams")
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train={self.train!r}: must be a validate._signal_prop.batched_train.TrainConfig")
        for name, axis in (("x_range", self.x_field), ("y_range", self.y_field)):
            low, high = checks.field(self, name, checks.pair, checks.real)
            top = 1.0 if axis.startswith("alpha") and self.base.residual == "normalized" else math.inf
            if not 0 <= low < high <= top:
                raise ValueError(f"{name}={getattr(self, name)!r}: must satisfy 0 <= min < max"
                                 + (" <= 1 (alpha with residual='normalized')" if top == 1 else ""))
        checks.field(self, "map_points", checks.integer, 2, MAX_MAP_POINTS)
        checks.field(self, "grid", checks.pair, lambda name, v: checks.integer(name, v, 2, MAX_GRID))
        for name, points, axis in (("x_range", self.grid[0], "x"), ("y_range", self.grid[1], "y")):
            if len(set(self.axis_values(points, axis))) != points:
                raise ValueError(f"{name}={getattr(self, name)!r}: too narrow for {points} grid points (their "
                                 f"values, rounded to {AXIS_DECIMALS} decimals, coincide)")
        checks.field(self, "seeds", checks.sequence, lambda label, seed: checks.integer(
            label, seed, 0, MAX_SEED, why=" (seed s seeds a torch generator with 1000003 (s + 1) < 2^64)"))
        checks.field(self, "models_per_batch", checks.integer, 1)
        checks.field(self, "workers", checks.integer, 0)
        checks.field(self, "scheduler", checks.text, optional=True)
        checks.field(self, "device", checks.device)
        checks.field(self, "out", checks.text)
        checks.field(self, "store", checks.text, optional=True)
        if not isinstance(self.fresh, bool):
            raise ValueError(f"fresh={self.fresh!r}: must be True or False")
        if self.base.n_tokens != self.train.task.n_tokens:
            raise ValueError(f"base.n_tokens={self.base.n_tokens} must equal the task's sequence length "
                             f"{self.train.task.n_tokens}")
        outputs = {os.path.realpath(os.path.join(self.out, name)) for name in OUTPUT_FILES}
        if os.path.realpath(self.store_path()) in outputs:
            raise ValueError(f"store={self.store!r}: is one of the files the run writes ({', '.join(OUTPUT_FILES)} "
                             "in --out); choose another path")

    # -- the plane ----------------------------------------------------------------------------------------
    def axis_values(self, points: int, axis: str) -> np.ndarray:
        low, high = self.x_range if axis == "x" else self.y_range
        return np.round(np.linspace(low, high, points), AXIS_DECIMALS)

    def train_axes(self) -> tuple[np.ndarray, np.ndarray]:
        return self.axis_values(self.grid[0], "x"), self.axis_values(self.grid[1], "y")

    def map_axes(self) -> tuple[np.ndarray, np.ndarray]:
        return self.axis_values(self.map_points, "x"), self.axis_values(self.map_points, "y")

    def train_points(self) -> list[dict]:
        xs, ys = self.train_axes()
        return [{self.x_field: float(x), self.y_field: float(y)} for y in ys for x in xs]

    def store_path(self) -> str:
        return self.store or os.path.join(self.out, "phase_diagram.sqlite")

    def sweep_name(self) -> str:
        """Identifies every setting besides (point, seed) that changes a trained result."""
        identity = {"base": _params_dict(self.base), "train": self.train.to_dict(), "device": self.device}
        return "phase_diagram-" + hashlib.sha256(json.dumps(identity, sort_keys=True, default=str)
                                                 .encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["base"] = _params_dict(self.base)
        return d


def open_sweep_store(cfg: PhaseDiagramConfig) -> SweepStore:
    """The run's sweep store, checked before any compute: a location that cannot hold a store, a file that is
    not one, and (unless cfg.fresh discards them) stored rows of this sweep that cannot be read back or are not
    training results raise ValueError in one line."""
    store = SweepStore(cfg.store_path(), cfg.sweep_name())
    if cfg.fresh:
        return store
    try:
        rows = store.rows()
    except (sqlite3.DatabaseError, ValueError) as error:
        raise ValueError(f"store {store.path!r}: its rows cannot be read ({error}); use --fresh or another "
                         "--store") from None
    for row in rows:
        missing = RESULT_KEYS - set(row["result"]) if isinstance(row["result"], dict) else RESULT_KEYS
        if missing:
            raise ValueError(f"store {store.path!r}: the row of point {row['point']} seed {row['seed']} is not a "
                             f"training result (it lacks {', '.join(sorted(missing))}); use --fresh or another "
                             "--store")
    return store


def _params_dict(h: BlockParams) -> dict:
    d = dataclasses.asdict(h)
    d["activation"] = str(h.activation)
    return d


def same_experiment(a: PhaseDiagramConfig, b: PhaseDiagramConfig) -> bool:
    """Whether a and b train the same models on the same plane: only how and where they run may differ."""
    def experiment(c):
        return dataclasses.replace(c, models_per_batch=1, workers=0, scheduler=None, device="cpu", out=".",
                                   store=None, fresh=False, train=dataclasses.replace(c.train, threads=1))
    return experiment(a) == experiment(b)


# ----------------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------------
def exponent_maps(cfg: PhaseDiagramConfig) -> dict:
    """Both exponents (sim.signal_prop.exponent_grid, (ny, nx) arrays) on the dense map ("angle", "gradient")
    and at the training grid's points ("train_angle", "train_gradient")."""
    mx, my = cfg.map_axes()
    angle, gradient = exponent_grid(cfg.base, cfg.x_field, mx, cfg.y_field, my)
    tx, ty = cfg.train_axes()
    train_angle, train_gradient = exponent_grid(cfg.base, cfg.x_field, tx, cfg.y_field, ty)
    return {"angle": angle, "gradient": gradient, "train_angle": train_angle, "train_gradient": train_gradient}


def predicted_critical_point(cfg: PhaseDiagramConfig) -> dict:
    """Where both exponents vanish inside the plane's window (sim.signal_prop.critical_point, bounded to
    the window). If they never vanish together there (exact=False), it is the window's point of smallest
    lambda_a^2 + lambda_g^2, and the record says so."""
    found = critical_point(cfg.base, free=(cfg.x_field, cfg.y_field), bounds=(cfg.x_range, cfg.y_range))
    values = {name: float(getattr(found.params, "alpha_A" if name == "alpha" else name))
              for name in (cfg.x_field, cfg.y_field)}
    return values | {
        "method": "sim.signal_prop.critical_point", "exact": bool(found.exact),
        "angle_exponent": float(found.angle), "gradient_exponent": float(found.gradient),
        "note": ("both exponents vanish here" if found.exact else "the exponents do not both vanish inside "
                 "the window: this is its point of smallest lambda_a^2 + lambda_g^2")}


def predict(cfg: PhaseDiagramConfig) -> dict:
    """Everything predicted before training: exponent_maps(cfg), the "critical" point and the "seconds" taken."""
    start = time.perf_counter()
    maps = exponent_maps(cfg)
    critical = predicted_critical_point(cfg)
    return {**maps, "critical": critical, "seconds": time.perf_counter() - start}


def point_exponents(cfg: PhaseDiagramConfig, point: dict, maps: dict) -> dict:
    """The predicted exponents at a training point (read off the training grid's maps)."""
    tx, ty = cfg.train_axes()
    jx = int(np.argmin(np.abs(tx - point[cfg.x_field])))
    jy = int(np.argmin(np.abs(ty - point[cfg.y_field])))
    return {"angle_exponent": float(maps["train_angle"][jy, jx]),
            "gradient_exponent": float(maps["train_gradient"][jy, jx])}
