"""`python -m validate.scan_snap_sweep`: the Syn-Medium sweep of the paper's Fig. 6.

Average entropy of c_n (Eqn. 5) on distinct tokens after training, against eta_Y/eta_Z, for several eta_Z and
K, over 10 seeds, in the authors' setting (luckmatters scan_snap/figure_6.log): Syn-Medium with 2 next tokens
per query, K in {2, 6, 10, 20}, eta_Z in {0.5, 1, 2, 3}, eta_Y/eta_Z in {1, 2, 5, 10}, SGD momentum 0.9,
batch 128, sequence length 128, 100 steps, PyTorch's default initialisation (model2.zero_init=false).
The paper reports: the entropy falls as eta_Z grows, and rises with the ratio beyond about 2.

One SQLite row per (point, seed) in --out/sweep.sqlite, written as it finishes; a rerun resumes. Points run on
local worker processes (--workers) or a Dask cluster (--scheduler tcp://host:8786).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict

import numpy as np

from validate.scan_snap import REPO_FIGURES, _atomic_savefig, _float_list, _int_list, format_table, versions, \
    write_json

DEFAULT_OUT = os.path.join("runs", "scan_snap_sweep")


def sweep_task(items):
    """Train one Y/Z model per (point, seed) and return its final entropy on distinct tokens."""
    import torch

    from sim import scan_snap as ss
    from validate.scan_snap_analysis import entropy_distinct
    from validate.scan_snap_models import TrainConfig, make_classes, train

    torch.set_num_threads(1)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m validate.scan_snap_sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--next-tokens", type=_int_list, default=(2, 6, 10, 20), help="values of K (even)")
    p.add_argument("--lr-z", type=_float_list, default=(0.5, 1.0, 2.0, 3.0), help="values of eta_Z")
    p.add_argument("--ratios", type=_float_list, default=(1.0, 2.0, 5.0, 10.0), help="values of eta_Y/eta_Z")
    p.add_argument("--seeds", type=_int_list, default=tuple(range(1, 11)))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--init", choices=("zero", "default"), default="default")
    p.add_argument("--model", choices=("yz", "transformer"), default="yz")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (0: inline)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address; overrides --workers")
    p.add_argument("--fresh", action="store_true", help="discard stored rows of this sweep first")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true", help="K=2 and 6, eta_Z 1 and 3, ratios 1, 2, 10, 3 seeds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    return p


def aggregate(rows, Ks, lrs, ratios):
    mean = np.full((len(Ks), len(lrs), len(ratios)), np.nan)
    se = np.full_like(mean, np.nan)
    for i, K in enumerate(Ks):
        for j, lz in enumerate(lrs):
            for k, r in enumerate(ratios):
                v = np.array([row["result"]["entropy_final"] for row in rows
                              if row["point"]["next_tokens"] == K and row["point"]["lr_z"] == lz
                              and row["point"]["lr_ratio"] == r])
                if v.size:
                    mean[i, j, k] = v.mean()
                    se[i, j, k] = v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0
    return mean, se


def sweep_verdicts(mean, se, Ks, lrs, ratios) -> list[dict]:
    rows = []
    # (a) entropy falls as eta_Z grows, at fixed K and ratio: H(largest eta_Z) < H(smallest eta_Z) by > 2 s.e.
    d = mean[:, 0, :] - mean[:, -1, :]
    s = np.hypot(se[:, 0, :], se[:, -1, :])
    ok = d > 2 * s
    rows.append({"quantity": f"entropy falls as eta_Z grows: H(eta_Z={lrs[0]:g}) - H(eta_Z={lrs[-1]:g}) > 0, "
                             f"over (K, ratio) cells", "prediction": "all cells > 0",
                 "measurement": f"{int(ok.sum())}/{ok.size} cells; median diff {np.median(d):.3f}",
                 "tolerance": "> 2 s.e.m. per cell", "verdict": "PASS" if ok.all() else "FAIL"})
    # (b) entropy rises with the ratio beyond about 2: H(largest ratio) - H(ratio 2) > 0
    if 2.0 in ratios and ratios[-1] > 2.0:
        k2 = ratios.index(2.0)
        d = mean[:, :, -1] - mean[:, :, k2]
        s = np.hypot(se[:, :, -1], se[:, :, k2])
        ok = d > 2 * s
        rows.append({"quantity": f"entropy rises with the ratio beyond 2: H(ratio {ratios[-1]:g}) - H(ratio 2) > 0, "
                                 f"over (K, eta_Z) cells", "prediction": "all cells > 0",
                     "measurement": f"{int(ok.sum())}/{ok.size} cells; median diff {np.median(d):.3f}",
                     "tolerance": "> 2 s.e.m. per cell", "verdict": "PASS" if ok.all() else "FAIL"})
    # below the threshold: H(ratio 2) vs H(ratio 1) (the paper: little change below ~2)
    if 1.0 in ratios and 2.0 in ratios:
        d = mean[:, :, ratios.index(2.0)] - mean[:, :, ratios.index(1.0)]
        rows.append({"quantity": "H(ratio 2) - H(ratio 1) over (K, eta_Z) cells (paper: threshold near 2)",
                     "prediction": "small", "measurement": f"median {np.median(d):.3f}, range "
                                                           f"[{d.min():.3f}, {d.max():.3f}]",
                     "tolerance": "info", "verdict": "INFO"})
    return rows


def figure(mean, se, Ks, lrs, ratios, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(Ks), figsize=(4 * len(Ks), 3.6), squeeze=False, sharey=True)
    for i, (ax, K) in enumerate(zip(axes[0], Ks)):
        for j, lz in enumerate(lrs):
            col = plt.cm.viridis(j / max(1, len(lrs) - 1) * 0.9)
            ax.errorbar(ratios, mean[i, j], yerr=se[i, j], marker="o", ms=3, capsize=2, color=col,
                        label=f"eta_Z = {lz:g}")
        ax.set_xscale("log")
        ax.set_xticks(ratios)
        ax.set_xticklabels([f"{r:g}" for r in ratios])
        ax.set_title(f"K = {K} next tokens ({K // 2} {'query' if K == 2 else 'queries'})")
        ax.set_xlabel("eta_Y / eta_Z")
    axes[0][0].set_ylabel("final entropy of c_n on distinct tokens")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Syn-Medium, SGD momentum 0.9, batch 128, T=128, 100 steps, default init (cf. paper Fig. 6)")
    _atomic_savefig(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from validate.scan_snap_models import TrainConfig
    from validate.sweep import SweepStore, run_sweep

    Ks, lrs, ratios, seeds = list(args.next_tokens), list(args.lr_z), list(args.ratios), list(args.seeds)
    if args.quick:
        Ks, lrs, ratios, seeds = [2, 6], [1.0, 3.0], [1.0, 2.0, 10.0], seeds[:3]
    if args.workers < 0:
        parser.error(f"--workers {args.workers}: must be >= 0")
    points = []
    try:
        for K in Ks:
            for lz in lrs:
                for r in ratios:
                    cfg = TrainConfig(dataset="syn-medium", next_tokens=K, model=args.model, init=args.init,
                                      lr_z=lz, lr_ratio=r, momentum=args.momentum, steps=args.steps,
                                      batch=args.batch, seq_len=args.seq_len)
                    point = {k: v for k, v in asdict(cfg).items() if k != "seed"}
                    point["device"] = args.device
                    points.append(point)
    except ValueError as error:
        parser.error(str(error))
    if len(set(seeds)) != len(seeds):
        parser.error(f"--seeds {seeds}: must be distinct")
    os.makedirs(args.out, exist_ok=True)
    fixed = {k: v for k, v in points[0].items() if k not in ("next_tokens", "lr_z", "lr_ratio")}
    name = "syn-medium-" + hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:12]
    store = SweepStore(os.path.join(args.out, "sweep.sqlite"), sweep=name)
    from tqdm import tqdm
    bar = tqdm(total=len(points) * len(seeds), desc="syn-medium sweep",
               disable=args.quiet or not sys.stderr.isatty())
    start = time.perf_counter()
    rows = run_sweep(sweep_task, points, seeds, store, batch_size=4, scheduler=args.scheduler,
                     max_workers=args.workers, fresh=args.fresh, progress=bar.update)
    bar.close()
    wall = time.perf_counter() - start
    mean, se = aggregate(rows, Ks, lrs, ratios)
    verdict_rows = sweep_verdicts(mean, se, Ks, lrs, ratios)
    fig_path = os.path.join(args.out, "scan_snap_fig6.png")
    figure(mean, se, Ks, lrs, ratios, fig_path)
    if not args.quick and os.path.normpath(args.out) == os.path.normpath(DEFAULT_OUT):
        import shutil
        os.makedirs(REPO_FIGURES, exist_ok=True)
        shutil.copyfile(fig_path, os.path.join(REPO_FIGURES, "scan_snap_fig6.png"))
    record = {"command": "scan_snap_sweep", "config": {"next_tokens": Ks, "lr_z": lrs, "ratios": ratios,
                                                       "seeds": seeds, **fixed, "sweep": name},
              "versions": versions(),
              "timings_s": {"wall_this_run": wall, "compute_all_rows": float(sum(r["elapsed_s"] for r in rows))},
              "metrics": {"entropy_mean": mean, "entropy_sem": se,
                          "entropy_start_mean": float(np.mean([r["result"]["entropy_start"] for r in rows]))},
              "verdicts": verdict_rows, "figures": [os.path.basename(fig_path)]}
    write_json(record, os.path.join(args.out, "scan_snap_sweep.json"))
    print(format_table(verdict_rows))
    print(f"\n{len(rows)} runs ({len(points)} points x {len(seeds)} seeds); wall {wall:.1f} s this run, "
          f"{record['timings_s']['compute_all_rows']:.1f} s of training in all stored rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
