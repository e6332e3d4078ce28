"""The Syn-Medium sweep of Tian et al. 2023, Fig. 6: its grid, the task that trains one grid point, the
aggregation over seeds, and the verdicts on the two trends the paper reports (Sec. 8): the entropy of c_n on
distinct tokens falls as eta_Z grows, and rises with eta_Y/eta_Z beyond about 2.

Divergence (DIVERGENCE_POLICY): a run whose loss, weights or entropy become NaN or inf is stored with its step
(result "diverged_step"; its entropies and loss None) and EXCLUDED from the mean and standard error of its cell;
each cell counts its finite and diverged runs, a cell with no finite run has no mean (null in the JSON, a gap in
the figure). The verdicts judge the cells that have finite runs, say how many cells they had to leave out, and
FAIL when none is left; the "diverged runs" verdict counts them and FAILs when there are any.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from validate._common import checks
from validate._common.reporting import Verdict
from validate._scan_snap.models import TrainConfig, learning_rate

DIVERGENCE_POLICY = ("a run whose loss, weights or entropy become NaN/inf is stored with diverged_step and "
                     "excluded from its cell's mean and s.e.m.; runs_diverged counts them per cell; verdicts judge "
                     "the cells with finite runs (FAIL when none is left); the 'diverged runs' verdict FAILs when "
                     "any diverged")

#: the grid's axes: TrainConfig fields that vary from point to point
AXES = ("next_tokens", "lr_z", "lr_ratio")


def _authors_fig6_training() -> TrainConfig:
    """The authors' Fig. 6 runs (their log of the sweep, facebookresearch/luckmatters,
    ssl/real-dataset/scan_snap/figure_6.log): Syn-Medium, SGD momentum 0.9, batch 128, sequence length 128,
    100 steps, PyTorch's default initialisation (model2.zero_init=false)."""
    return TrainConfig(dataset="syn-medium", init="default")


@dataclass(frozen=True)
class SweepConfig:
    """The grid next_tokens x lr_z x ratios, each point trained once per seed.

    train: the settings every point shares (its next_tokens, lr_z and lr_ratio are replaced by the point's);
    the axes (distinct values) are kept sorted, so the verdicts' "smallest" and "largest" values are the ends of
    each axis. Numbers may be NumPy scalars or arrays; every field is checked here (ValueError naming it)."""

    train: TrainConfig = field(default_factory=_authors_fig6_training)
    next_tokens: tuple = (2, 6, 10, 20)
    lr_z: tuple = (0.5, 1.0, 2.0, 3.0)
    ratios: tuple = (1.0, 2.0, 5.0, 10.0)
    seeds: tuple = tuple(range(1, 11))
    device: str = "cpu"

    def __post_init__(self):
        check = functools.partial(checks.field, self)  # check(name, rule, ...): self.name checked and stored
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train={self.train!r}: must be a TrainConfig")
        for name, rule in (("next_tokens", lambda label, v: checks.integer(label, v, 1)), ("lr_z", learning_rate),
                           ("ratios", lambda label, v: checks.real(label, v, 0.0, above=True))):
            object.__setattr__(self, name, tuple(sorted(checks.sequence(name, getattr(self, name), rule))))
        check("seeds", checks.seeds)
        check("device", checks.device)
        self.points()  # every point is a valid TrainConfig (Syn-Medium needs an even K; eta_Y in range; ...)

    def points(self) -> list[dict]:
        """Every grid point as the sweep store keys it: the TrainConfig fields but the seed, and the device
        (a CUDA generator draws other numbers than the CPU one)."""
        points = []
        for K in self.next_tokens:
            for lz in self.lr_z:
                for r in self.ratios:
                    point = {k: v for k, v in asdict(replace(self.train, next_tokens=K, lr_z=lz, lr_ratio=r)).items()
                             if k != "seed"}
                    point["device"] = self.device
                    points.append(point)
        return points

    def record(self) -> dict:
        """The config as the JSON record keeps it: `train` without the fields the grid and the seeds replace."""
        shared = {k: v for k, v in asdict(self.train).items() if k not in AXES and k != "seed"}
        return {**asdict(self), "train": shared}

    def store_name(self) -> str:
        """The sweep's name in the store: a hash of everything the points share, so rows of another training
        setting never mix with these."""
        fixed = {k: v for k, v in self.points()[0].items() if k not in AXES}
        return "syn-medium-" + hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:12]


def sweep_task(items):
    """Train one Y/Z model per (point, seed) and return its entropy on distinct tokens at the start and the end,
    its final loss (mean of the last 5 batches), and diverged_step: None, or the step at which its loss, weights
    or entropy became NaN/inf (then the numbers it could not measure are None). A module-level function, so
    worker processes can run it."""
    import torch

    from sim import scan_snap as ss
    from validate._scan_snap.analysis import entropy_distinct, first_nonfinite_step
    from validate._scan_snap.models import make_classes, train

    torch.set_num_threads(1)  # one process per core: threads inside a process would only contend
    out = []
    for point, seed in items:
        fields = {k: v for k, v in point.items() if k != "device"}
        cfg = TrainConfig(seed=seed, **fields)
        classes = make_classes(cfg.dataset, cfg.next_tokens)
        table = ss.ClassTable.from_classes(classes)
        rec = train(cfg, [0, cfg.steps], device=point.get("device", "cpu"))
        att = ss.attention_from_logits(table, rec.Z)
        ent = entropy_distinct(classes, att)  # (NaN attention would read as entropy 0: check it too)
        step = rec.diverged_step
        if step is None:
            step = first_nonfinite_step(rec.steps, rec.Y, att, ent)
        finite = [float(e) if math.isfinite(e) else None for e in ent]
        out.append({"entropy_start": finite[0],
                    "entropy_final": finite[-1] if step is None else None,
                    "final_loss": float(np.mean(rec.loss[-5:])) if step is None else None,
                    "diverged_step": step})
    return out


def _diverged(result: dict) -> bool:
    """A stored run that blew up: diverged_step set, or (rows of older stores) a missing or non-finite entropy."""
    final = result.get("entropy_final")
    return result.get("diverged_step") is not None or final is None or not math.isfinite(final)


def aggregate(rows, cfg: SweepConfig) -> dict:
    """Per cell (len(next_tokens), len(lr_z), len(ratios)): mean and standard error over the seeds whose run stayed
    finite ("mean", "se"; NaN where none did), and how many runs stayed finite and diverged ("finite",
    "diverged"). "diverged_runs" lists each diverged run: point (K, lr_z, ratio), seed, step."""
    shape = (len(cfg.next_tokens), len(cfg.lr_z), len(cfg.ratios))
    out = {"mean": np.full(shape, np.nan), "se": np.full(shape, np.nan), "finite": np.zeros(shape, dtype=int),
           "diverged": np.zeros(shape, dtype=int), "diverged_runs": []}
    cells = {(K, lz, r): (i, j, k) for i, K in enumerate(cfg.next_tokens) for j, lz in enumerate(cfg.lr_z)
             for k, r in enumerate(cfg.ratios)}
    values = {index: [] for index in cells.values()}
    for row in rows:
        point, result = row["point"], row["result"]
        index = cells[(point["next_tokens"], point["lr_z"], point["lr_ratio"])]
        if _diverged(result):
            out["diverged"][index] += 1
            out["diverged_runs"].append({"next_tokens": point["next_tokens"], "lr_z": point["lr_z"],
                                         "ratio": point["lr_ratio"], "seed": row["seed"],
                                         "step": result.get("diverged_step")})
        else:
            values[index].append(result["entropy_final"])
    for index, v in values.items():
        out["finite"][index] = len(v)
        if v:
            out["mean"][index] = np.mean(v)
            out["se"][index] = np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    return out


def _trend_row(quantity: str, d, ok, runs_total: int) -> Verdict:
    """A trend judged in every cell where both of its ends have a finite run (NaN in d elsewhere)."""
    known = np.isfinite(d)
    left_out = int(d.size - known.sum())
    note = f"; {left_out} cells left out (no finite run at one end)" if left_out else ""
    if not known.any():
        return Verdict.check(quantity, "all cells > 0", f"no cell to judge: every run at one end of each cell "
                             f"diverged ({runs_total} runs)", "> 2 s.e.m. per cell", False)
    return Verdict.check(quantity, "all cells > 0", f"{int(ok[known].sum())}/{int(known.sum())} cells; median diff "
                         f"{np.median(d[known]):.3f}{note}", "> 2 s.e.m. per cell", bool(ok[known].all()))


def verdicts(agg: dict, cfg: SweepConfig) -> list[Verdict]:
    """The paper's two trends, each judged in every cell of the other two axes; the sub-threshold change as INFO;
    first, the count of diverged runs (see DIVERGENCE_POLICY). agg: `aggregate`'s dict."""
    mean, se = agg["mean"], agg["se"]
    lrs, ratios = cfg.lr_z, cfg.ratios
    runs = int(agg["finite"].sum() + agg["diverged"].sum())
    lost = agg["diverged_runs"]
    shown = "; ".join(f"K={d['next_tokens']} eta_Z={d['lr_z']:g} ratio {d['ratio']:g} seed {d['seed']} at step "
                      f"{d['step'] if d['step'] is not None else '?'}" for d in lost[:8])
    rows = [Verdict.check("runs that diverged (NaN or inf in loss, weights or entropy); excluded from every cell",
                          "0", f"{len(lost)} of {runs}" + (f": {shown}" if lost else "") +
                          (f"; ... ({len(lost) - 8} more in metrics.diverged)" if len(lost) > 8 else ""),
                          "0 (the gradient flow never blows up)", not lost)]
    # (a) entropy falls as eta_Z grows, at fixed K and ratio: H(largest eta_Z) < H(smallest eta_Z) by > 2 s.e.
    quantity = (f"entropy falls as eta_Z grows: H(eta_Z={lrs[0]:g}) - H(eta_Z={lrs[-1]:g}) > 0, over (K, ratio) "
                "cells")
    if len(lrs) < 2:
        rows.append(Verdict.check(quantity, "all cells > 0", "one eta_Z: nothing to compare", "info (needs 2 eta_Z)",
                                  None))
    else:
        d = mean[:, 0, :] - mean[:, -1, :]
        with np.errstate(invalid="ignore"):
            ok = d > 2 * np.hypot(se[:, 0, :], se[:, -1, :])
        rows.append(_trend_row(quantity, d, ok, runs))
    # (b) entropy rises with the ratio beyond about 2: H(largest ratio) - H(ratio 2) > 0
    if 2.0 in ratios and ratios[-1] > 2.0:
        k2 = ratios.index(2.0)
        d = mean[:, :, -1] - mean[:, :, k2]
        with np.errstate(invalid="ignore"):
            ok = d > 2 * np.hypot(se[:, :, -1], se[:, :, k2])
        rows.append(_trend_row(f"entropy rises with the ratio beyond 2: H(ratio {ratios[-1]:g}) - H(ratio 2) > 0, "
                               "over (K, eta_Z) cells", d, ok, runs))
    # below the threshold: H(ratio 2) vs H(ratio 1) (the paper: little change below ~2)
    if 1.0 in ratios and 2.0 in ratios:
        d = mean[:, :, ratios.index(2.0)] - mean[:, :, ratios.index(1.0)]
        known = d[np.isfinite(d)]
        rows.append(Verdict.check("H(ratio 2) - H(ratio 1) over (K, eta_Z) cells (paper: threshold near 2)", "small",
                                  f"median {np.median(known):.3f}, range [{known.min():.3f}, {known.max():.3f}]"
                                  if known.size else "no cell with finite runs at both ratios", "info", None))
    return rows
