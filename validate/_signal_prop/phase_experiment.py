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
from dataclasses import dataclass, field

import numpy as np

from sim.signal_prop import GRID_FIELDS, critical_point, exponent_grid
from theory.signal_prop import BlockParams
from validate._signal_prop.batched_train import TrainConfig
from validate._signal_prop.phase_task import HistogramTask


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
            if getattr(self, name) not in GRID_FIELDS:
                raise ValueError(f"{name}={getattr(self, name)!r}: allowed values are {GRID_FIELDS}")
        overlapping = {"alpha": {"alpha_A", "alpha_M", "alpha"}}
        if self.x_field == self.y_field or self.y_field in overlapping.get(self.x_field, ()) \
                or self.x_field in overlapping.get(self.y_field, ()):
            raise ValueError(f"x_field={self.x_field!r} and y_field={self.y_field!r} must set different fields")
        for name in ("x_range", "y_range"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be finite with 0 <= min < max")
        for name, axis in (("x_range", self.x_field), ("y_range", self.y_field)):
            if axis.startswith("alpha") and self.base.residual == "normalized" and getattr(self, name)[1] > 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: alpha must lie in [0, 1] with "
                                 "residual='normalized'")
        if self.map_points < 2:
            raise ValueError(f"map_points={self.map_points!r}: must be >= 2")
        if len(self.grid) != 2 or min(self.grid) < 2:
            raise ValueError(f"grid={self.grid!r}: must be two integers >= 2")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds={self.seeds!r}: must be distinct non-negative integers")
        if self.models_per_batch < 1:
            raise ValueError(f"models_per_batch={self.models_per_batch!r}: must be >= 1")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers!r}: must be >= 0 (0 trains in this process)")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device={self.device!r}: allowed values are cpu, cuda, cuda:N")
        if self.base.n_tokens != self.train.task.n_tokens:
            raise ValueError(f"base.n_tokens={self.base.n_tokens} must equal the task's sequence length "
                             f"{self.train.task.n_tokens}")

    # -- the plane ----------------------------------------------------------------------------------------
    def axis_values(self, points: int, axis: str) -> np.ndarray:
        low, high = self.x_range if axis == "x" else self.y_range
        return np.round(np.linspace(low, high, points), 10)

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


def _params_dict(h: BlockParams) -> dict:
    d = dataclasses.asdict(h)
    d["activation"] = str(h.activation)
    return d


def same_experiment(a: PhaseDiagramConfig, b: PhaseDiagramConfig) -> bool:
    """Whether a and b train the same models on the same plane: only how and where they run may differ."""
    def experiment(c):
        return dataclasses.replace(c, models_per_batch=1, workers=0, scheduler=None, device="cpu", out="",
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


def point_exponents(cfg: PhaseDiagramConfig, point: dict, maps: dict) -> dict:
    """The predicted exponents at a training point (read off the training grid's maps)."""
    tx, ty = cfg.train_axes()
    jx = int(np.argmin(np.abs(tx - point[cfg.x_field])))
    jy = int(np.argmin(np.abs(ty - point[cfg.y_field])))
    return {"angle_exponent": float(maps["train_angle"][jy, jx]),
            "gradient_exponent": float(maps["train_gradient"][jy, jx])}
