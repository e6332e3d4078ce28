"""`python -m validate.scan_snap_sweep`: the Syn-Medium sweep of Tian et al. 2023, Fig. 6.

Average entropy of c_n (Eqn. 5) on distinct tokens after training, against eta_Y/eta_Z, for several eta_Z and
K, over 10 seeds, in the authors' setting (their log of the sweep, facebookresearch/luckmatters,
ssl/real-dataset/scan_snap/figure_6.log): Syn-Medium with 2 next tokens per query, K in {2, 6, 10, 20},
eta_Z in {0.5, 1, 2, 3}, eta_Y/eta_Z in {1, 2, 5, 10}, SGD momentum 0.9, batch 128, sequence length 128,
100 steps, PyTorch's default initialisation. The paper reports: the entropy falls as eta_Z grows, and rises
with the ratio beyond about 2.

One SQLite row per (point, seed) in --out/sweep.sqlite, written as it finishes; a rerun resumes (killed or
interrupted with Ctrl-C, a sweep keeps every finished batch). Points run on local worker processes (--workers, at
most one per usable core) or a Dask cluster (--scheduler tcp://host:8786). Writes scan_snap_sweep.json and
scan_snap_fig6.png in --out; the default experiment (or --update-figures) also puts the figure in the
repository's figures/. The Syn-Small experiment is `python -m validate.scan_snap`.

Divergence: a run whose loss, weights or entropy become NaN or inf is stored with its step (diverged_step) and
EXCLUDED from its cell's mean and standard error; metrics.runs_diverged and runs_finite count them per cell,
metrics.diverged lists them, a cell with no finite run has a null mean and is a gap in the figure. The first
verdict counts diverged runs (FAIL when there are any); the trend verdicts judge the cells that have finite runs,
say how many they left out, and FAIL when none is left. The JSON and the figure are written whatever diverged.

Every flag is checked before anything is computed (exit code 2 and one line naming it): learning rates and
eta_Y = ratio x eta_Z in [1e-12, 1e200], momentum in [0, 1), an even K (2 next tokens per query) up to 200,
--workers up to the usable cores, the store in --out (a sweep store not in use by another run).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

import numpy as np

from validate._common import checks, cli, reporting
from validate._common.sweep import SweepStore, run_sweep
from validate._scan_snap import fig6
from validate._scan_snap.fig6 import SweepConfig
from validate._scan_snap.figures import fig6_figure
from validate._scan_snap.models import INITS, MODELS

COMMAND = "scan_snap_sweep"
GRID_FLAGS = {
    "next_tokens": "values of K, the number of next tokens (even: 2 per query)",
    "lr_z": "values of the attention learning rate eta_Z",
    "ratios": "values of eta_Y/eta_Z",
}
TRAIN_FLAGS = {
    "steps": "SGD steps",
    "batch": "sequences per SGD step",
    "seq_len": "T: L-1 contextual tokens plus the query",
    "momentum": "SGD momentum",
    "init": "zero: Y(0)=Z(0)=0; default: PyTorch's nn.Linear/Embedding init",
    "model": "yz: Y and Z as free matrices; transformer: embeddings, W_Q, W_K, W_V",
    "d_model": "embedding width of --model transformer",
}
# 36 runs: K 2 and 6, eta_Z 1 and 3, ratios 1, 2 and 10, 3 seeds
QUICK = {"next_tokens": (2, 6), "lr_z": (1.0, 3.0), "ratios": (1.0, 2.0, 10.0), "seeds": (1, 2, 3)}
PAIRS_PER_TASK = 4  # (point, seed) pairs per submitted task: amortises a worker's start-up over a few runs


def build_parser():
    parser = cli.command_parser(COMMAND, __doc__)
    defaults = SweepConfig()
    cli.add_config_flags(parser.add_argument_group("the grid"), defaults, GRID_FLAGS)
    cli.add_config_flags(parser.add_argument_group("training (every grid point)"), defaults.train, TRAIN_FLAGS,
                         choices={"init": INITS, "model": MODELS})
    cli.add_common_flags(parser, COMMAND, seeds=defaults.seeds, workers=1, scheduler=True, fresh=True,
                         quick="a small preset for smoke tests, 36 runs")
    cli.annotate_quick(parser, QUICK)
    return parser


def config_from_args(args) -> SweepConfig:
    return SweepConfig(train=replace(SweepConfig().train, **cli.config_values(args, TRAIN_FLAGS)), seeds=args.seeds,
                       device=args.device, **cli.config_values(args, GRID_FLAGS))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_workers(workers) -> int:
    """Local worker processes: 0 (in this process) up to one per usable core (each trains on one torch thread, so
    more would only contend). ValueError otherwise."""
    return checks.integer("workers", workers, 0, usable_cores(), why=" (one per usable core; 0 runs in this process)")


def run(cfg: SweepConfig, out_dir: str, *, workers: int = 1, scheduler: str | None = None, fresh: bool = False,
        quiet: bool = False, publish: bool = False, argv=None) -> dict:
    """Every (point, seed) not yet stored, then the aggregate, the verdicts and the figure in out_dir (copied to
    figures/ when `publish`); returns the JSON record. Diverged runs are stored and left out of the aggregate (see
    the module docstring). ValueError before anything is computed for an out_dir this run cannot write, a store
    there that is not a sweep store, or a bad workers count."""
    if not isinstance(cfg, SweepConfig):
        raise ValueError(f"cfg: expected a SweepConfig, got {type(cfg).__name__}")
    if scheduler is None:
        workers = check_workers(workers)
    cli.prepare_output_directory(out_dir)
    points = cfg.points()
    store = SweepStore(os.path.join(out_dir, "sweep.sqlite"), sweep=cfg.store_name())
    start = time.perf_counter()
    with reporting.progress(len(points) * len(cfg.seeds), "syn-medium sweep", quiet) as bar:
        rows = run_sweep(fig6.sweep_task, points, cfg.seeds, store, batch_size=PAIRS_PER_TASK, scheduler=scheduler,
                         max_workers=workers, fresh=fresh, progress=bar.update)
    wall = time.perf_counter() - start
    agg = fig6.aggregate(rows, cfg)
    path = fig6_figure(cfg, agg, out_dir, argv=argv)
    reporting.publish_figures([path], publish)
    starts = [r["result"]["entropy_start"] for r in rows if r["result"].get("entropy_start") is not None]
    metrics = {"entropy_mean": agg["mean"], "entropy_sem": agg["se"],
               "entropy_start_mean": float(np.mean(starts)) if starts else None,
               "divergence_policy": fig6.DIVERGENCE_POLICY, "runs_finite": agg["finite"],
               "runs_diverged": agg["diverged"], "diverged": agg["diverged_runs"]}
    timings = {"total": wall, "training_in_all_stored_rows": float(sum(r["elapsed_s"] for r in rows))}
    return reporting.make_record(COMMAND, argv, cfg.record(), metrics, fig6.verdicts(agg, cfg), timings,
                                 sweep=cfg.store_name(), figures=[os.path.basename(path)])


def main(argv=None) -> int:
    parser = build_parser()
    args = cli.parse(parser, argv, quick=QUICK)
    cfg = cli.config_or_exit(parser, lambda: config_from_args(args))
    if args.scheduler is None:
        cli.config_or_exit(parser, lambda: check_workers(args.workers))
    cli.open_store(COMMAND, os.path.join(args.out, "sweep.sqlite"), cfg.store_name())
    # the default experiment (where it runs aside) is what README shows: it alone refreshes figures/
    is_default = replace(cfg, device=SweepConfig().device) == SweepConfig()
    start = time.perf_counter()
    record = run(cfg, args.out, workers=args.workers, scheduler=args.scheduler, fresh=args.fresh, quiet=args.quiet,
                 publish=args.update_figures or is_default, argv=argv)
    reporting.report(record, args.out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(COMMAND, main))
