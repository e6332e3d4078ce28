"""The phase-diagram experiments: their configuration (the plane, the dense exponent map, the training grid and
recipe, where it runs), their predictions, made before any training (Cowsik et al. 2024, abstract: the two
exponents at initialization and their simultaneous vanishing), and the sweep tasks besides training itself.

Two experiments share this configuration:
- "plane" (the default): alpha = alpha_A = alpha_M against sigma_w, trained with Adam. Its predictions are the
  asymptotic exponents (sim.signal_prop.exponents at the collapsed fixed point), shown beside the finite-depth
  ones of the trained depth.
- "crossing": sigma_V against sigma_w at alpha_A = alpha_M = 0.25 (normalized residual, sigma_A = sigma_2 = 1),
  where the finite-depth exponents of a depth-16 network fed tokens of norm q0 = 1 have zero curves that cross
  (the asymptotic ones never do: at collapse lambda_g - lambda_a = lambda_q + a positive attention term). Every
  point is trained twice, with Adam and with plain SGD at one learning rate for the whole plane, and the
  finite-depth exponents of initialized networks of the trained width are measured (JVPs) at every point.
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
from validate._signal_prop.batched_train import MAX_SEED, RESULT_KEYS, TrainConfig, params_at, train_batched
from validate._signal_prop.phase_task import HistogramTask

# the largest planes the computation can use: a dense map of MAX_MAP_POINTS^2 points holds 2 x 32 MB of
# exponents and takes about a minute to draw; a training grid of MAX_GRID^2 points is 10^4 trained models per
# seed (days at the default recipe) and puts hundreds of MB of training curves into the JSON record
MAX_MAP_POINTS, MAX_GRID = 2000, 100
AXIS_DECIMALS = 10   # grid values are rounded so that a point's stored key does not depend on float noise
EXPERIMENTS = ("plane", "crossing")
FIGURES = {"plane": "phase_diagram.png", "crossing": "phase_diagram_crossing.png"}
OUTPUT_FILES = ("phase_diagram.json", *FIGURES.values())
# the norm of the tokens the trained networks start from: embeddings N(0, 1) give q = |x|^2/d = 1 per token
# (validate._signal_prop.batched_train.PhaseModel), the q0 of the finite-depth exponents
EMBEDDING_Q0 = 1.0
# plain SGD's learning rate is chosen once, at the plane's central point, among these (factor-2 steps); on this
# task at width 64, depth 16, 150 steps, 0.1 to 0.3 trained and 1.0 stalled at the context-free loss. A wider scan
# (0.025 to 0.8, 400 steps, 3 seeds) gave 0.598, 0.562, 0.560, 0.566, 0.594, 1.517: the default keeps the four
# around that optimum, to fit the run in 15 minutes; a choice at either end is flagged (at_edge_of_candidates)
SGD_LR_CANDIDATES = (0.05, 0.1, 0.2, 0.4)
DEFAULT_PROBES = 16   # JVP probes per measured network: seed-to-seed sd of an exponent ~0.009 per block at 16


@dataclass(frozen=True)
class PhaseDiagramConfig:
    """A phase-diagram run: the experiment, the plane, the dense exponent map, the training grid and recipe.

    experiment="crossing" (default_config("crossing") has its plane) trains every point with `train` (Adam) and
    again with plain SGD at learning rate sgd_lr (None: the candidate of sgd_lr_candidates with the lowest mean
    final test loss at the plane's central point), and measures the finite-depth exponents of `probes` JVP probes
    on initialized networks; those three fields are the crossing experiment's only.
    """

    experiment: str = "plane"
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
    sgd_lr: float | None = None
    sgd_lr_candidates: tuple[float, ...] = SGD_LR_CANDIDATES
    probes: int = DEFAULT_PROBES

    def __post_init__(self):
        checks.field(self, "experiment", checks.choice, EXPERIMENTS)
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
        if self.base.placement != "pre" or self.base.sigma_b != 0:
            raise ValueError(f"base: placement={self.base.placement!r}, sigma_b={self.base.sigma_b!r}: the trained "
                             "networks (validate._signal_prop.batched_train) are the pre-LN block without biases")
        if self.sgd_lr is not None:
            checks.field(self, "sgd_lr", checks.real, 0.0, above=True)
        checks.field(self, "sgd_lr_candidates", checks.sequence,
                     lambda label, v: checks.real(label, v, 0.0, above=True))
        checks.field(self, "probes", checks.integer, 1)
        if self.experiment == "plane":
            for name, default in (("sgd_lr", None), ("sgd_lr_candidates", SGD_LR_CANDIDATES),
                                  ("probes", DEFAULT_PROBES)):
                if getattr(self, name) != default:
                    raise ValueError(f"{name}={getattr(self, name)!r}: applies to experiment='crossing' only")
        elif self.train.optimizer != "adam":
            raise ValueError(f"optimizer={self.train.optimizer!r}: the crossing experiment trains every point "
                             "with adam and again with sgd (its learning rate: sgd_lr); leave optimizer at adam")
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

    def central_point(self) -> dict:
        """The middle of the window (a grid point when both axes have an odd number of points)."""
        return {name: float(np.round((low + high) / 2, AXIS_DECIMALS))
                for name, (low, high) in ((self.x_field, self.x_range), (self.y_field, self.y_range))}

    def store_path(self) -> str:
        return self.store or os.path.join(self.out, "phase_diagram.sqlite")

    def figure_name(self) -> str:
        return FIGURES[self.experiment]

    def sgd_train(self, lr: float) -> TrainConfig:
        """The crossing experiment's SGD recipe: `train` with plain SGD at learning rate lr (the same schedule)."""
        return dataclasses.replace(self.train, optimizer="sgd", lr=float(lr))

    def sweep_name(self, train: TrainConfig | None = None) -> str:
        """Identifies every setting besides (point, seed) that changes a trained result (default recipe: train)."""
        identity = {"base": _params_dict(self.base), "train": (train or self.train).to_dict(),
                    "device": self.device}
        return "phase_diagram-" + _digest(identity)

    def learning_rate_sweep_name(self) -> str:
        """The SGD learning-rate candidates at the central point (rows keyed by {"lr": value})."""
        identity = {"base": _params_dict(params_at(self.base, self.central_point())),
                    "train": self.sgd_train(1.0).to_dict(), "device": self.device}
        return "phase_diagram-lr-" + _digest(identity)

    def measurement_sweep_name(self) -> str:
        """The finite-depth exponents measured on initialized networks (float64 on the CPU, whatever --device)."""
        identity = {"base": _params_dict(self.base), "depth": self.train.depth, "width": self.train.width,
                    "q0": EMBEDDING_Q0, "probes": self.probes}
        return "phase_diagram-init-" + _digest(identity)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["base"] = _params_dict(self.base)
        return d


def _digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


MEASURED_KEYS = frozenset({"angle", "gradient", "gradient_frobenius"})


def open_sweep_store(cfg: PhaseDiagramConfig, sweep: str | None = None, kind: str = "training") -> SweepStore:
    """A sweep of the run's store (default: the training sweep of cfg.train), checked before any compute: a
    location that cannot hold a store, a file that is not one, and (unless cfg.fresh discards them) stored rows
    of this sweep that cannot be read back or are not results of its kind ("training", "measurement") raise
    ValueError in one line."""
    store = SweepStore(cfg.store_path(), sweep or cfg.sweep_name())
    if cfg.fresh:
        return store
    try:
        rows = store.rows()
    except (sqlite3.DatabaseError, ValueError) as error:
        raise ValueError(f"store {store.path!r}: its rows cannot be read ({error}); use --fresh or another "
                         "--store") from None
    expected = RESULT_KEYS if kind == "training" else MEASURED_KEYS
    for row in rows:
        missing = expected - set(row["result"]) if isinstance(row["result"], dict) else expected
        if missing:
            raise ValueError(f"store {store.path!r}: the row of point {row['point']} seed {row['seed']} is not a "
                             f"{kind} result (it lacks {', '.join(sorted(missing))}); use --fresh or another "
                             "--store")
    return store


def open_sweep_stores(cfg: PhaseDiagramConfig) -> dict:
    """Every sweep of the run known before training, checked (open_sweep_store): "adam" (cfg.train) and, for
    the crossing experiment, "learning_rates", "measured" and, when sgd_lr is given, "sgd"."""
    stores = {"adam": open_sweep_store(cfg)}
    if cfg.experiment == "crossing":
        stores["learning_rates"] = open_sweep_store(cfg, cfg.learning_rate_sweep_name())
        stores["measured"] = open_sweep_store(cfg, cfg.measurement_sweep_name(), kind="measurement")
        if cfg.sgd_lr is not None:
            stores["sgd"] = open_sweep_store(cfg, cfg.sweep_name(cfg.sgd_train(cfg.sgd_lr)))
    return stores


def _params_dict(h: BlockParams) -> dict:
    d = dataclasses.asdict(h)
    d["activation"] = str(h.activation)
    return d


def default_config(experiment: str = "plane", **changes) -> PhaseDiagramConfig:
    """The defaults of an experiment ("plane" or "crossing"), with `changes`."""
    experiment = checks.choice("experiment", experiment, EXPERIMENTS)
    if experiment == "crossing":
        # normalized residual, alpha_A = alpha_M = 0.25, sigma_A = sigma_2 = 1, depth 16: the finite-depth zero
        # curves cross inside this window (common mode at sigma_V = 0.61, sigma_w = 2.0; Frobenius at n = 8 at
        # sigma_V = 0.92, sigma_w = 3.15: two cells of the 6 x 6 grid apart); three seeds give each point's
        # standard error two degrees of freedom. 6 x 6 x 3 x 2 optimizers = 216 models (+ 18 learning-rate
        # candidates) fit 15 minutes on two cores; 7 x 7 would not. 18 models per batch: 6 batches per optimizer,
        # 3 rounds of the 2 workers
        changes = {"experiment": "crossing", "x_field": "sigma_V", "x_range": (0.2, 1.4), "y_field": "sigma_w",
                   "y_range": (0.75, 4.5), "grid": (6, 6), "seeds": (0, 1, 2), "models_per_batch": 18,
                   "base": BlockParams(alpha_A=0.25, alpha_M=0.25, sigma_A=1.0, sigma_2=1.0,
                                       n_tokens=HistogramTask().n_tokens),
                   "out": "runs/phase_diagram_crossing", **changes}
    return PhaseDiagramConfig(**changes)


def same_experiment(a: PhaseDiagramConfig, b: PhaseDiagramConfig) -> bool:
    """Whether a and b train the same models on the same plane: only how and where they run may differ."""
    def experiment(c):
        return dataclasses.replace(c, models_per_batch=1, workers=0, scheduler=None, device="cpu", out=".",
                                   store=None, fresh=False, train=dataclasses.replace(c.train, threads=1))
    return experiment(a) == experiment(b)


# ----------------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------------
FINITE_DEPTH_MAPS = ("fd_angle", "fd_gradient", "fd_gradient_frobenius")


def exponent_maps(cfg: PhaseDiagramConfig) -> dict:
    """The exponents (sim.signal_prop.exponent_grid, (ny, nx) arrays) on the dense map and, prefixed "train_",
    at the training grid's points: asymptotic ("angle", "gradient") and those of the trained depth from tokens of
    norm EMBEDDING_Q0 ("fd_angle", "fd_gradient" common mode, "fd_gradient_frobenius" at n = base.n_tokens)."""
    maps = {}
    for prefix, (xs, ys) in (("", cfg.map_axes()), ("train_", cfg.train_axes())):
        maps[prefix + "angle"], maps[prefix + "gradient"] = exponent_grid(cfg.base, cfg.x_field, xs, cfg.y_field, ys)
        finite_depth = exponent_grid(cfg.base, cfg.x_field, xs, cfg.y_field, ys, depth=cfg.train.depth,
                                     q0=EMBEDDING_Q0)
        maps.update({prefix + name: values for name, values in zip(FINITE_DEPTH_MAPS, finite_depth)})
    return maps


def _found(cfg: PhaseDiagramConfig, found, method: str, both_vanish: str, otherwise: str) -> dict:
    values = {name: float(getattr(found.params, "alpha_A" if name == "alpha" else name))
              for name in (cfg.x_field, cfg.y_field)}
    return values | {"method": method, "exact": bool(found.exact), "angle_exponent": float(found.angle),
                     "gradient_exponent": float(found.gradient), "note": both_vanish if found.exact else otherwise}


def predicted_critical_point(cfg: PhaseDiagramConfig) -> dict:
    """Where both asymptotic exponents vanish inside the plane's window (sim.signal_prop.critical_point,
    bounded to the window). If they never vanish together there (exact=False, which at collapse the sum rule
    lambda_g - lambda_a = lambda_q + sum log(1 + alpha_A^2 sigma_V^2/(a_A^2 q)) > 0 makes the rule wherever the
    norm is stationary), it is the window's point of smallest lambda_a^2 + lambda_g^2, and the record says so."""
    found = critical_point(cfg.base, free=(cfg.x_field, cfg.y_field), bounds=(cfg.x_range, cfg.y_range))
    return _found(cfg, found, "sim.signal_prop.critical_point", "both exponents vanish here",
                  "the exponents do not both vanish inside the window: this is its point of smallest "
                  "lambda_a^2 + lambda_g^2")


PREDICTED_CROSSINGS = {"common": "common", "frobenius": "frobenius"}   # definition -> critical_point's gradient=


def predicted_crossings(cfg: PhaseDiagramConfig) -> dict:
    """Where the finite-depth angle exponent and each finite-depth gradient exponent (common mode, Frobenius)
    vanish together inside the window: sim.signal_prop.critical_point(depth=trained depth, q0=EMBEDDING_Q0),
    exact=False when they do not cross there."""
    crossings = {}
    for name, gradient in PREDICTED_CROSSINGS.items():
        found = critical_point(cfg.base, free=(cfg.x_field, cfg.y_field), bounds=(cfg.x_range, cfg.y_range),
                               depth=cfg.train.depth, q0=EMBEDDING_Q0, gradient=gradient)
        crossings[name] = _found(
            cfg, found, f"sim.signal_prop.critical_point(depth={cfg.train.depth}, q0={EMBEDDING_Q0:g}, "
                        f"gradient={gradient!r})", "both finite-depth exponents vanish here",
            "the finite-depth zero curves do not cross inside the window")
    return crossings


def predict(cfg: PhaseDiagramConfig) -> dict:
    """Everything predicted before training: exponent_maps(cfg), the asymptotic "critical" point (plane) or the
    finite-depth "crossings" (crossing), and the "seconds" taken."""
    start = time.perf_counter()
    maps = exponent_maps(cfg)
    if cfg.experiment == "plane":
        maps["critical"] = predicted_critical_point(cfg)
    else:
        maps["crossings"] = predicted_crossings(cfg)
    return {**maps, "seconds": time.perf_counter() - start}


def point_exponents(cfg: PhaseDiagramConfig, point: dict, maps: dict) -> dict:
    """The predicted exponents at a training point (read off the training grid's maps)."""
    tx, ty = cfg.train_axes()
    jx = int(np.argmin(np.abs(tx - point[cfg.x_field])))
    jy = int(np.argmin(np.abs(ty - point[cfg.y_field])))
    return {"angle_exponent": float(maps["train_angle"][jy, jx]),
            "gradient_exponent": float(maps["train_gradient"][jy, jx]),
            **{f"{name}_exponent": float(maps["train_" + name][jy, jx]) for name in FINITE_DEPTH_MAPS}}


# ----------------------------------------------------------------------------------------------------
# The crossing experiment's other sweeps (picklable tasks for validate._common.sweep)
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeasureInitialExponents:
    """Finite-depth exponents of freshly initialized networks, one per (point, seed)
    (validate._signal_prop.random_networks.measure_finite_depth: a depth-`depth`, width-`width` canonical
    transformer fed collapsed tokens of norm EMBEDDING_Q0, `probes` JVP probes). The networks are drawn from the
    trained networks' distribution (same BlockParams, depth and width; d_ff = width) with their own seeds."""

    base: BlockParams
    depth: int
    width: int
    probes: int
    threads: int = 1

    def __call__(self, items: list[tuple[dict, int]]) -> list[dict]:
        import torch

        from validate._signal_prop.random_networks import measure_finite_depth
        torch.set_num_threads(self.threads)
        results = []
        for point, seed in items:
            measured = measure_finite_depth(params_at(self.base, point), self.depth, self.width, EMBEDDING_Q0,
                                            self.probes, int(seed))
            results.append({name: _json_number(measured[name]) for name in sorted(MEASURED_KEYS)}
                           | {"q_final": _json_number(measured["q"][-1])})
        return results


@dataclass(frozen=True)
class TrainLearningRates:
    """Train one point's models at several learning rates: items ({"lr": value}, seed), the models of each
    learning rate trained together (validate._signal_prop.batched_train.train_batched)."""

    params: BlockParams
    train: TrainConfig
    device: str = "cpu"

    def __call__(self, items: list[tuple[dict, int]]) -> list[dict]:
        by_rate: dict[float, list[int]] = {}
        for index, (point, _) in enumerate(items):
            by_rate.setdefault(float(point["lr"]), []).append(index)
        results: list = [None] * len(items)
        for rate, indices in by_rate.items():
            records = train_batched([self.params] * len(indices), [items[i][1] for i in indices],
                                    dataclasses.replace(self.train, lr=rate), self.device)
            for index, record in zip(indices, records):
                results[index] = record
        return results


def _json_number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
