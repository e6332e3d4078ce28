"""`python -m validate.phase_diagram`: do two exponents at initialization predict the final test loss?

Cowsik, Nebabu, Qi, Ganguli (2024), arXiv:2403.02579, abstract: "the final test loss at the end of training
is well predicted just by these two exponents at the beginning of training, and ... the simultaneous
vanishing of these two exponents yields a simple necessary and sufficient condition to achieve minimal test
loss." This command puts that to a test on one plane of initialization hyperparameters (default: alpha =
alpha_A = alpha_M against sigma_w, the others fixed):

1. Predicted maps of the angle and gradient exponents (sim.signal_prop.exponent_grid, Numba) on a dense
   plane, their zero curves and the predicted critical point (sim.signal_prop.critical_point, bounded to
   the plane's window: where both vanish, or, where they never vanish together, the window's point of
   smallest lambda_a^2 + lambda_g^2).
2. Real training on a coarser grid of the same plane: the canonical deep transformer, one model per
   (point, seed), all trained identically on the noisy token-histogram task and batched over a model axis;
   every (point, seed) stored in an SQLite sweep as it finishes, so a rerun resumes.
3. The verdict, with a predictor fixed in advance and no fitted parameter, |lambda| = sqrt(lambda_a^2 +
   lambda_g^2): the Spearman correlation between each point's mean final test loss and |lambda| (PASS at
   >= 0.5 with p < 0.01), and the distance in grid cells from the loss minimum to the predicted critical
   point (PASS when a point tied with the minimum within 2 seed standard errors lies within one cell).

Divergence: a run whose training loss, gradient or test loss becomes NaN or inf is recorded with the step it
diverged at (the JSON's metrics.diverged and each point's diverged_at) and counts as the worst outcome: its point's
mean loss is +inf, ranked above every finite loss in the Spearman and never the minimum. The table's third row
says how many runs diverged. The run finishes and writes its JSON and figure whatever fraction diverged; a verdict
that cannot be computed (e.g. every point diverged) is FAIL, its measurement the reason.

Every input is checked before any compute (exit 2 and one line naming it): the ranges, the grid (2 to 100 points
per axis) and map (2 to 2000 points per axis), --base FIELD=VALUE (a fixed field, once, finite, not an axis), seeds
(at most 1.8e13: seed s seeds a torch generator with 1000003 (s + 1) < 2^64), the device, --out and --store
(a corrupt, foreign, unreadable or busy store; rows of this sweep that are not training results).

Writes --out/phase_diagram.json, --out/phase_diagram.png and the sweep store --out/phase_diagram.sqlite;
figures/phase_diagram.png is updated only by the default experiment (the defaults, however and wherever it
runs) or with --update-figures.
"""

from __future__ import annotations

import math
import os
import sys
import time

from sim.signal_prop import GRID_FIELDS
from theory.signal_prop import ACTIVATIONS, RESIDUALS, BlockParams
from validate._common import cli
from validate._common.reporting import (format_table, make_record, progress, publish_figures,
                                        save_figure, summary_line, write_record)
from validate._common.sweep import point_key, run_sweep
from validate._signal_prop.batched_train import OPTIMIZERS, SCHEDULES, TrainConfig, TrainPoints
from validate._signal_prop.figures import phase_diagram_figure
from validate._signal_prop.phase_analysis import HEADLINE, analyse, headline
from validate._signal_prop.phase_experiment import (MAX_GRID, MAX_MAP_POINTS, PhaseDiagramConfig, open_sweep_store,
                                                    point_exponents, predict, same_experiment)
from validate._signal_prop.phase_task import HistogramTask

COMMAND = "phase_diagram"
QUICK = {"grid": (3, 3), "models_per_batch": 9, "depth": 4, "width": 32, "d_ff": 32, "steps": 150,
         "test_size": 256}
PLANE_FLAGS = {"x_field": "horizontal axis: a BlockParams field, or alpha = alpha_A = alpha_M",
               "y_field": "vertical axis",
               "map_points": f"points per axis of the predicted exponent maps, 2 to {MAX_MAP_POINTS}"}
BASE_FLAGS = {"residual": "residual form", "activation": "MLP nonlinearity"}
TRAIN_FLAGS = {"depth": "blocks", "width": "model width d", "d_ff": "MLP hidden width", "steps": "optimizer steps",
               "batch": "sequences per step", "lr": "learning rate", "optimizer": "optimizer",
               "schedule": "learning-rate schedule", "test_size": "held-out test sequences",
               "eval_every": "steps between test-loss evaluations"}
TASK_FLAGS = {"n_tokens": "sequence length n = number of classes", "vocab": "alphabet size",
              "noise": "label-noise rate"}
FIXED_FIELDS = ("alpha_A", "alpha_M", "sigma_A", "sigma_V", "sigma_w", "sigma_2")


def run(cfg: PhaseDiagramConfig, *, argv=(), quiet: bool = False, update_figures: bool = False,
        figures_dir: str | None = None, predicted: dict | None = None) -> dict:
    """Predict (unless `predicted`, what predict(cfg) returned, is given), train (resuming the sweep store),
    judge; write the JSON record and the figure to cfg.out. Bad input raises ValueError before any training."""
    start = time.perf_counter()
    cli.prepare_output_directory(cfg.out)
    store = open_sweep_store(cfg)
    maps = predict(cfg) if predicted is None else predicted
    critical = maps["critical"]
    map_s = maps["seconds"]

    points = cfg.train_points()
    train_start = time.perf_counter()
    pending = len(points) * len(cfg.seeds) - (0 if cfg.fresh else len(store.done() & {
        (point_key(p), s) for p in points for s in cfg.seeds}))
    with progress(pending, "models trained", quiet) as bar:
        rows = run_sweep(TrainPoints(cfg.base, cfg.train, cfg.device), points, list(cfg.seeds), store,
                         batch_size=cfg.models_per_batch, scheduler=cfg.scheduler, max_workers=cfg.workers,
                         fresh=cfg.fresh, progress=bar.update)
    train_s = time.perf_counter() - train_start

    analysis = analyse(cfg, rows, maps["train_angle"], maps["train_gradient"], critical)
    metrics = analysis["metrics"]
    figure = save_figure(phase_diagram_figure(cfg, maps, analysis, rows), cfg.out, "phase_diagram.png", dpi=100)
    published = publish_figures([figure], update_figures or same_experiment(cfg, PhaseDiagramConfig()),
                                figures_dir)
    tx, ty = cfg.train_axes()
    record = make_record(
        COMMAND, argv, cfg.to_dict(), metrics, analysis["verdicts"],
        {"exponent_maps": map_s, "training": train_s, "total": time.perf_counter() - start},
        figures=[figure, *published],
        store={"path": cfg.store_path(), "sweep": cfg.sweep_name(), "models_trained_now": pending},
        grid={"x": tx, "y": ty, "mean_loss": analysis["losses"]["mean"], "se": analysis["losses"]["se"],
              "angle": maps["train_angle"], "gradient": maps["train_gradient"],
              "cv_quadratic_prediction": analysis["cv_prediction"]},
        points=[{"point": r["point"], "seed": r["seed"], **point_exponents(cfg, r["point"], maps), **r["result"],
                 "elapsed_s": r["elapsed_s"]} for r in rows],
        # the headline numbers also at the top level, where README quotes them
        **{key: metrics[key] for key in HEADLINE})
    write_record(record, cfg.out)
    return record


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
def build_parser():
    d = PhaseDiagramConfig()
    parser = cli.command_parser(COMMAND, __doc__)
    plane = parser.add_argument_group("the plane")
    cli.add_config_flags(plane, d, PLANE_FLAGS, choices={"x_field": GRID_FIELDS, "y_field": GRID_FIELDS})
    plane.add_argument("--x-range", nargs=2, type=cli.real(), default=d.x_range, metavar=("MIN", "MAX"),
                       help="horizontal range (default %g %g)" % d.x_range)
    plane.add_argument("--y-range", nargs=2, type=cli.real(), default=d.y_range, metavar=("MIN", "MAX"),
                       help="vertical range (default %g %g)" % d.y_range)
    plane.add_argument("--grid", nargs=2, type=cli.integer(2, MAX_GRID), default=d.grid, metavar=("NX", "NY"),
                       help=f"training grid points per axis, 2 to {MAX_GRID} (default %d %d)" % d.grid)
    plane.add_argument("--base", nargs="+", default=(), metavar="FIELD=VALUE",
                       help=f"values of the fields held fixed, among {' '.join(FIXED_FIELDS)} (default: those of "
                            "BlockParams, e.g. sigma_A=1.0 sigma_2=1.0)")
    cli.add_config_flags(plane, d.base, BASE_FLAGS, choices={"residual": RESIDUALS, "activation": ACTIVATIONS})
    training = parser.add_argument_group("training (identical at every point)")
    cli.add_config_flags(training, d.train, TRAIN_FLAGS, choices={"optimizer": OPTIMIZERS, "schedule": SCHEDULES})
    cli.add_config_flags(training, d.train.task, TASK_FLAGS)
    execution = parser.add_argument_group("execution")
    cli.add_config_flags(execution, d, {"models_per_batch": "models trained together per sweep task"})
    execution.add_argument("--store", default=None, metavar="PATH",
                           help="SQLite sweep store (default OUT/phase_diagram.sqlite)")
    cli.add_common_flags(parser, COMMAND, seeds=d.seeds, workers=d.workers, threads=d.train.threads,
                         scheduler=True, fresh=True,
                         quick="smoke preset: 3x3 grid, depth 4, width 32, 150 steps (under a minute on a quiet "
                               "machine)", seeds_help="seed values, one model per grid point each")
    cli.annotate_quick(parser, QUICK)
    return parser


def _fixed_fields(pairs, axes) -> dict:
    """--base FIELD=VALUE pairs as {field: number}: each a field held fixed (not one the axes set), given once,
    with a finite value."""
    values = {}
    set_by_axes = {f for axis in axes for f in ((axis, "alpha_A", "alpha_M") if axis == "alpha" else (axis,))}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in FIXED_FIELDS:
            raise ValueError(f"--base {pair!r}: FIELD must be one of {', '.join(FIXED_FIELDS)} (n_tokens, "
                             "activation, residual have their own flags)")
        if name in set_by_axes:
            raise ValueError(f"--base {pair!r}: {name} is set by an axis of the plane (--x-field/--y-field)")
        if name in values:
            raise ValueError(f"--base {pair!r}: {name} is given twice")
        try:
            values[name] = float(value)
        except ValueError:
            raise ValueError(f"--base {pair!r}: VALUE must be a number") from None
        if not math.isfinite(values[name]):
            raise ValueError(f"--base {pair!r}: VALUE must be a finite number")
    return values


def parse_config(argv=None) -> tuple[PhaseDiagramConfig, object]:
    """The run's configuration and the parsed arguments (bad values exit with code 2 and one line)."""
    parser = build_parser()
    args = cli.parse(parser, argv, quick=QUICK)

    def build():
        task = HistogramTask(**cli.config_values(args, TASK_FLAGS))
        base = BlockParams(n_tokens=task.n_tokens, **cli.config_values(args, BASE_FLAGS),
                           **_fixed_fields(args.base, (args.x_field, args.y_field)))
        train = TrainConfig(task=task, threads=args.threads, **cli.config_values(args, TRAIN_FLAGS))
        return PhaseDiagramConfig(
            base=base, train=train, x_range=args.x_range, y_range=args.y_range, grid=args.grid, seeds=args.seeds,
            workers=args.workers, scheduler=args.scheduler, device=args.device, out=args.out, store=args.store,
            fresh=args.fresh, **cli.config_values(args, PLANE_FLAGS), models_per_batch=args.models_per_batch)
    return cli.config_or_exit(parser, build), args


def main(argv=None) -> int:
    cfg, args = parse_config(argv)
    cli.open_store(COMMAND, cfg.store_path(), cfg.sweep_name())
    try:
        open_sweep_store(cfg)   # its rows readable and training results, before any compute
    except ValueError as error:
        cli.fail(COMMAND, str(error))
    try:   # sim checks the plane's values against the ranges its numerics are made for
        predicted = predict(cfg)
    except ValueError as error:
        cli.fail(COMMAND, f"the plane's predicted exponents: {error}")
    record = run(cfg, argv=sys.argv[1:] if argv is None else argv, quiet=args.quiet,
                 update_figures=args.update_figures, predicted=predicted)
    print(format_table(record["verdicts"]))
    print("\n" + headline(record["metrics"], cfg))
    print(summary_line(record["verdicts"], record["timings_s"]["total"], os.path.join(cfg.out, f"{COMMAND}.json")))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(COMMAND, main))
