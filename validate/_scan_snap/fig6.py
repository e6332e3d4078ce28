"""The Syn-Medium sweep of Tian et al. 2023, Fig. 6: its grid, the task that trains one grid point, the
aggregation over seeds, and the verdicts on the two trends the paper reports (Sec. 8): the entropy of c_n on
distinct tokens falls as eta_Z grows, and rises with eta_Y/eta_Z beyond about 2.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from validate._common.reporting import Verdict
from validate._scan_snap.models import TrainConfig

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
    the axes are kept sorted, so the verdicts' "smallest" and "largest" values are the ends of each axis."""

    train: TrainConfig = field(default_factory=_authors_fig6_training)
    next_tokens: tuple = (2, 6, 10, 20)
    lr_z: tuple = (0.5, 1.0, 2.0, 3.0)
    ratios: tuple = (1.0, 2.0, 5.0, 10.0)
    seeds: tuple = tuple(range(1, 11))
    device: str = "cpu"

    def __post_init__(self):
        for name in ("next_tokens", "lr_z", "ratios", "seeds"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name}={values!r}: need distinct values")
            object.__setattr__(self, name, tuple(sorted(values)) if name != "seeds" else tuple(values))
        self.points()  # every point is a valid TrainConfig (e.g. Syn-Medium needs an even K)

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
    and its final loss (mean of the last 5 batches). A module-level function, so worker processes can run it."""
    import torch

    from sim import scan_snap as ss
    from validate._scan_snap.analysis import entropy_distinct
    from validate._scan_snap.models import make_classes, train

    torch.set_num_threads(1)  # one process per core: threads inside a process would only contend
    out = []
    for point, seed in items:
        fields = {k: v for k, v in point.items() if k != "device"}
        cfg = TrainConfig(seed=seed, **fields)
        classes = make_classes(cfg.dataset, cfg.next_tokens)
        table = ss.ClassTable.from_classes(classes)
        rec = train(cfg, [0, cfg.steps], device=point.get("device", "cpu"))
        ent = entropy_distinct(classes, ss.attention_from_logits(table, rec.Z))
        out.append({"entropy_start": float(ent[0]), "entropy_final": float(ent[-1]),
                    "final_loss": float(np.mean(rec.loss[-5:]))})
    return out


def aggregate(rows, cfg: SweepConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over seeds of the final entropy, each (len(next_tokens), len(lr_z), len(ratios))."""
    mean = np.full((len(cfg.next_tokens), len(cfg.lr_z), len(cfg.ratios)), np.nan)
    se = np.full_like(mean, np.nan)
    for i, K in enumerate(cfg.next_tokens):
        for j, lz in enumerate(cfg.lr_z):
            for k, r in enumerate(cfg.ratios):
                v = np.array([row["result"]["entropy_final"] for row in rows
                              if row["point"]["next_tokens"] == K and row["point"]["lr_z"] == lz
                              and row["point"]["lr_ratio"] == r])
                if v.size:
                    mean[i, j, k] = v.mean()
                    se[i, j, k] = v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0
    return mean, se


def verdicts(mean, se, cfg: SweepConfig) -> list[Verdict]:
    """The paper's two trends, each judged in every cell of the other two axes; the sub-threshold change as INFO."""
    lrs, ratios = cfg.lr_z, cfg.ratios
    rows = []
    # (a) entropy falls as eta_Z grows, at fixed K and ratio: H(largest eta_Z) < H(smallest eta_Z) by > 2 s.e.
    d = mean[:, 0, :] - mean[:, -1, :]
    ok = d > 2 * np.hypot(se[:, 0, :], se[:, -1, :])
    rows.append(Verdict.check(f"entropy falls as eta_Z grows: H(eta_Z={lrs[0]:g}) - H(eta_Z={lrs[-1]:g}) > 0, "
                              f"over (K, ratio) cells", "all cells > 0",
                              f"{int(ok.sum())}/{ok.size} cells; median diff {np.median(d):.3f}",
                              "> 2 s.e.m. per cell", ok.all()))
    # (b) entropy rises with the ratio beyond about 2: H(largest ratio) - H(ratio 2) > 0
    if 2.0 in ratios and ratios[-1] > 2.0:
        k2 = ratios.index(2.0)
        d = mean[:, :, -1] - mean[:, :, k2]
        ok = d > 2 * np.hypot(se[:, :, -1], se[:, :, k2])
        rows.append(Verdict.check(f"entropy rises with the ratio beyond 2: H(ratio {ratios[-1]:g}) - H(ratio 2) > 0, "
                                  f"over (K, eta_Z) cells", "all cells > 0",
                                  f"{int(ok.sum())}/{ok.size} cells; median diff {np.median(d):.3f}",
                                  "> 2 s.e.m. per cell", ok.all()))
    # below the threshold: H(ratio 2) vs H(ratio 1) (the paper: little change below ~2)
    if 1.0 in ratios and 2.0 in ratios:
        d = mean[:, :, ratios.index(2.0)] - mean[:, :, ratios.index(1.0)]
        rows.append(Verdict.check("H(ratio 2) - H(ratio 1) over (K, eta_Z) cells (paper: threshold near 2)",
                                  "small", f"median {np.median(d):.3f}, range [{d.min():.3f}, {d.max():.3f}]",
                                  "info", None))
    return rows
