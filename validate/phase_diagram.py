"""`python -m validate.phase_diagram`: do two exponents at initialization predict the final test loss?

Cowsik, Nebabu, Qi, Ganguli (2024), arXiv:2403.02579, abstract: "the final test loss at the end of training
is well predicted just by these two exponents at the beginning of training, and ... the simultaneous
vanishing of these two exponents yields a simple necessary and sufficient condition to achieve minimal test
loss." This command puts that to a test on a plane of initialization hyperparameters. Two built-in
experiments, chosen by --experiment:

plane (the default): alpha = alpha_A = alpha_M against sigma_w, the others fixed.
1. Predicted maps of the angle and gradient exponents (sim.signal_prop.exponent_grid, Numba) on a dense
   plane and their zero curves: the asymptotic exponents, and beside them the finite-depth ones of the trained
   depth from tokens of norm q0 = 1 (the embedding's). The asymptotic critical point (sim.signal_prop.
   critical_point) is recorded; by the sum rule at collapse (lambda_g - lambda_a = lambda_q + a positive
   attention term) the asymptotic zero curves never cross, so it is a window edge with exact=False.
2. Real training on a coarser grid of the same plane: the canonical deep transformer, one model per
   (point, seed), all trained identically on the noisy token-histogram task and batched over a model axis;
   every (point, seed) stored in an SQLite sweep as it finishes, so a rerun resumes.
3. The verdicts, with a predictor fixed in advance and no fitted parameter, |lambda| = sqrt(lambda_a^2 +
   lambda_g^2): the Spearman correlation between each point's mean final test loss and |lambda| (PASS at
   >= 0.5 with p < 0.01), and the distance in grid cells from the loss minimum to the lambda_a = 0 curve (PASS
   when a point tied with the minimum within 2 seed standard errors lies within one cell), asymptotic, with
   the finite-depth curve's distance beside it.

crossing: sigma_V against sigma_w at alpha_A = alpha_M = 0.25 (normalized residual, sigma_A = sigma_2 = 1, depth
16), where the finite-depth zero curves do cross. Every point is trained with Adam and again with plain SGD (one
learning rate for the whole plane: --sgd-lr, or by default the best of --sgd-lr-candidates at the central
point, recorded with its losses), and the finite-depth exponents of initialized networks of the trained width
are measured at every point (JVPs). Verdicts, per optimizer: the distance from the loss minimum (and from the
points tied with it) to each crossing (common-mode and Frobenius finite-depth exponents, and the measured
ones), the Spearman of the final loss against each definition's |lambda|, and "simultaneous vanishing": PASS
when the minimum lies within one cell of a crossing and a point on lambda_a = 0 more than two cells from it is
worse by more than 2 SE; a minimum that follows lambda_a = 0 wherever lambda_g is is reported as evidence
against the claim. Adam against SGD is reported. Defaults: 6 x 6 grid, 3 seeds, --out runs/phase_diagram_crossing
(`--experiment crossing --help` shows them all).

Divergence: a run whose training loss, gradient or test loss becomes NaN or inf is recorded with the step it
diverged at (the JSON's metrics.diverged and each point's diverged_at) and counts as the worst outcome: its point's
mean loss is +inf, ranked above every finite loss in the Spearman and never the minimum. The divergence row
says how many runs diverged. The run finishes and writes its JSON and figure whatever fraction diverged; a
verdict that cannot be computed (e.g. every point diverged) is FAIL, its measurement the reason.

Every input is checked before any compute (exit 2 and one line naming it): the ranges, the grid (2 to 100 points
per axis) and map (2 to 2000 points per axis), the sizes against this machine's memory (the estimated peak of the
batches of models running at once, the test set, the maps and the training curves; validate._signal_prop.memory),
--base FIELD=VALUE (a fixed field, once, finite, not an axis), seeds (at most 1.8e13: seed s seeds a torch
generator with 1000003 (s + 1) < 2^64), the device, --out and --store (a corrupt, foreign, unreadable or busy
store; rows of this sweep that are not training results).

Writes --out/phase_diagram.json, the figure (--out/phase_diagram.png; crossing: --out/phase_diagram_crossing.png)
and the sweep store --out/phase_diagram.sqlite; the figure in the repository's figures/ is updated only by an
experiment's defaults (however and wherever it runs) or with --update-figures.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time

from sim.signal_prop import GRID_FIELDS
from theory.signal_prop import ACTIVATIONS, RESIDUALS, BlockParams
from validate._common import cli
from validate._common import figure_style as fs
from validate._common.reporting import (format_table, make_record, progress, publish_figures,
                                        save_figure, summary_line, write_record)
from validate._common.sweep import make_executor, point_key, run_sweep
from validate._signal_prop.batched_train import OPTIMIZERS, SCHEDULES, TrainConfig, TrainPoints, params_at
from validate._signal_prop.figures import crossing_figure, phase_diagram_figure
from validate._signal_prop.memory import phase_diagram_problem
from validate._signal_prop.phase_analysis import (HEADLINE, analyse, analyse_crossing, headline, learning_rate_choice,
                                                  learning_rate_given)
from validate._signal_prop.phase_experiment import (EXPERIMENTS, MAX_GRID, MAX_MAP_POINTS, MeasureInitialExponents,
                                                    PhaseDiagramConfig, TrainLearningRates, default_config,
                                                    open_sweep_store, open_sweep_stores, point_exponents, predict,
                                                    same_experiment)
from validate._signal_prop.phase_task import HistogramTask

COMMAND = "phase_diagram"
QUICK = {"grid": (3, 3), "models_per_batch": 9, "depth": 4, "width": 32, "d_ff": 32, "steps": 150,
         "test_size": 256}
# the crossing experiment's smoke preset keeps depth 16 (the crossing moves with depth) on a 4 x 4 grid
QUICK_CROSSING = {"grid": (4, 4), "seeds": (0, 1), "models_per_batch": 8, "width": 32, "d_ff": 32, "steps": 150,
                  "test_size": 256, "map_points": 100, "probes": 8, "sgd_lr_candidates": (0.1, 0.2, 0.4)}
QUICK_PRESETS = {"plane": QUICK, "crossing": QUICK_CROSSING}
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
CROSSING_FLAGS = {"probes": "JVP probes per measured initialized network"}
FIXED_FIELDS = ("alpha_A", "alpha_M", "sigma_A", "sigma_V", "sigma_w", "sigma_2")


def run(cfg: PhaseDiagramConfig, *, argv=(), quiet: bool = False, update_figures: bool = False,
        figures_dir: str | None = None, predicted: dict | None = None) -> dict:
    """Predict (unless `predicted`, what predict(cfg) returned, is given), train (resuming the sweep store),
    judge; write the JSON record and the figure to cfg.out. Bad input, and a configuration this machine's memory
    cannot hold, raise ValueError before any training."""
    problem = phase_diagram_problem(cfg)
    if problem is not None:
        raise ValueError(problem)
    if cfg.experiment == "crossing":
        return run_crossing(cfg, argv=argv, quiet=quiet, update_figures=update_figures, figures_dir=figures_dir,
                            predicted=predicted)
    start = time.perf_counter()
    cli.prepare_output_directory(cfg.out)
    store = open_sweep_store(cfg)
    maps = predict(cfg) if predicted is None else predicted
    map_s = maps["seconds"]

    train_start = time.perf_counter()
    rows, pending = _train(cfg, cfg.train, store, quiet, "models trained")
    train_s = time.perf_counter() - train_start

    analysis = analyse(cfg, rows, maps)
    metrics = analysis["metrics"]
    figure = _save(phase_diagram_figure(cfg, maps, analysis, rows), cfg, argv,
                   [(row, row.quantity) for row in analysis["verdicts"][:2]])
    published = publish_figures([figure], update_figures or same_experiment(cfg, default_config()), figures_dir)
    tx, ty = cfg.train_axes()
    record = make_record(
        COMMAND, argv, cfg.to_dict(), metrics, analysis["verdicts"],
        {"exponent_maps": map_s, "training": train_s, "total": time.perf_counter() - start},
        figures=[figure, *published],
        store={"path": cfg.store_path(), "sweep": cfg.sweep_name(), "models_trained_now": pending},
        grid={"x": tx, "y": ty, "mean_loss": analysis["losses"]["mean"], "se": analysis["losses"]["se"],
              "angle": maps["train_angle"], "gradient": maps["train_gradient"],
              "finite_depth_angle": maps["train_fd_angle"], "finite_depth_gradient": maps["train_fd_gradient"],
              "finite_depth_gradient_frobenius": maps["train_fd_gradient_frobenius"],
              "cv_quadratic_prediction": analysis["cv_prediction"]},
        points=[{"point": r["point"], "seed": r["seed"], **point_exponents(cfg, r["point"], maps), **r["result"],
                 "elapsed_s": r["elapsed_s"]} for r in rows],
        # the headline numbers also at the top level, where README quotes them
        **{key: metrics[key] for key in HEADLINE})
    write_record(record, cfg.out)
    return record


def _save(fig, cfg: PhaseDiagramConfig, argv, verdicts) -> str:
    """The figure with its verdict lines ((row, label) pairs) and the command that made it, written to cfg.out."""
    fs.finish(fig, fs.command_line(f"validate.{COMMAND}", list(argv) if argv else None), verdicts)
    return save_figure(fig, cfg.out, cfg.figure_name(), **fs.SAVE_KWARGS)


def _pending(store, points, seeds, fresh: bool) -> int:
    return len(points) * len(seeds) - (0 if fresh else len(store.done() & {
        (point_key(p), s) for p in points for s in seeds}))


def _train(cfg: PhaseDiagramConfig, train: TrainConfig, store, quiet: bool, label: str, executor=None):
    """Every (point, seed) of the grid trained with `train` (stored rows kept): (rows, models trained now).
    Runs on `executor` if given, else as cfg says (scheduler, workers)."""
    points = cfg.train_points()
    pending = _pending(store, points, cfg.seeds, cfg.fresh)
    with progress(pending, label, quiet) as bar:
        rows = run_sweep(TrainPoints(cfg.base, train, cfg.device), points, list(cfg.seeds), store,
                         batch_size=cfg.models_per_batch, executor=executor,
                         scheduler=cfg.scheduler if executor is None else None, max_workers=cfg.workers,
                         fresh=cfg.fresh, progress=bar.update)
    return rows, pending


def _crossing_sweeps(cfg: PhaseDiagramConfig, stores: dict, pool, quiet: bool, timings: dict):
    """The crossing experiment's four sweeps on one executor (None: inline): the initialized networks measured,
    SGD's learning-rate candidates (unless sgd_lr is given), Adam's and SGD's models. Returns (training rows per
    optimizer, measured rows, SGD's learning rate and how it was set, what each sweep computed now)."""
    points, seeds = cfg.train_points(), list(cfg.seeds)
    where = {"executor": pool, "scheduler": None if pool is not None else cfg.scheduler,
             "max_workers": cfg.workers, "fresh": cfg.fresh}
    trained_now = {}

    phase = time.perf_counter()
    pending = _pending(stores["measured"], points, seeds, cfg.fresh)
    with progress(pending, "initialized networks measured", quiet) as bar:
        measured_rows = run_sweep(
            MeasureInitialExponents(cfg.base, cfg.train.depth, cfg.train.width, cfg.probes, cfg.train.threads),
            points, seeds, stores["measured"], batch_size=cfg.models_per_batch, progress=bar.update, **where)
    trained_now["measured_networks"] = pending
    timings["measurement"] = time.perf_counter() - phase

    phase = time.perf_counter()
    if cfg.sgd_lr is None:
        rates = [{"lr": float(rate)} for rate in cfg.sgd_lr_candidates]
        pending = _pending(stores["learning_rates"], rates, seeds, cfg.fresh)
        with progress(pending, "SGD learning-rate candidates trained", quiet) as bar:
            rate_rows = run_sweep(TrainLearningRates(params_at(cfg.base, cfg.central_point()), cfg.sgd_train(1.0),
                                                     cfg.device),
                                  rates, seeds, stores["learning_rates"], batch_size=len(seeds),
                                  progress=bar.update, **where)
        learning_rate = learning_rate_choice(cfg, rate_rows)
        trained_now["learning_rate_candidates"] = pending
        stores["sgd"] = open_sweep_store(cfg, cfg.sweep_name(cfg.sgd_train(learning_rate["value"])))
    else:
        learning_rate = learning_rate_given(cfg)
    timings["learning_rate"] = time.perf_counter() - phase

    rows = {}
    for optimizer, train in (("adam", cfg.train), ("sgd", cfg.sgd_train(learning_rate["value"]))):
        phase = time.perf_counter()
        rows[optimizer], trained_now[optimizer] = _train(cfg, train, stores[optimizer], quiet,
                                                         f"models trained ({optimizer})", executor=pool)
        timings[f"training_{optimizer}"] = time.perf_counter() - phase
    return rows, measured_rows, learning_rate, trained_now


def run_crossing(cfg: PhaseDiagramConfig, *, argv=(), quiet: bool = False, update_figures: bool = False,
                 figures_dir: str | None = None, predicted: dict | None = None) -> dict:
    """The crossing experiment: predict, measure the initialized networks, choose SGD's learning rate (unless
    given), train with Adam and with SGD (each sweep resumable), judge; write the JSON record and the figure."""
    start = time.perf_counter()
    cli.prepare_output_directory(cfg.out)
    stores = open_sweep_stores(cfg)
    maps = predict(cfg) if predicted is None else predicted
    timings = {"exponent_maps": maps["seconds"]}
    with contextlib.ExitStack() as stack:
        # one pool of workers for the four sweeps (spawning and importing costs seconds per pool); in this
        # process (--workers 0) each sweep runs its batches inline and stores each as it finishes
        pool = (stack.enter_context(make_executor(cfg.scheduler, cfg.workers)) if cfg.scheduler or cfg.workers
                else None)
        rows, measured_rows, learning_rate, trained_now = _crossing_sweeps(cfg, stores, pool, quiet, timings)

    analysis = analyse_crossing(cfg, rows, maps, measured_rows, learning_rate)
    metrics = analysis["metrics"]
    figure = _save(crossing_figure(cfg, maps, analysis), cfg, argv,
                   [(row, f"{row.claim}: simultaneous vanishing: "
                          + metrics["optimizers"][{"Adam": "adam", "SGD": "sgd"}[row.claim]]
                          ["simultaneous_vanishing"]["summary"])
                    for row in analysis["verdicts"] if row.quantity.startswith("simultaneous")])
    published = publish_figures([figure], update_figures or same_experiment(cfg, default_config("crossing")),
                                figures_dir)
    tx, ty = cfg.train_axes()
    measured = analysis["measured"]
    config = cfg.to_dict() | {"sgd_train": cfg.sgd_train(learning_rate["value"]).to_dict(),
                              "sgd_lr_used": learning_rate["value"], "sgd_lr_how": learning_rate["text"]}
    timings["total"] = time.perf_counter() - start
    record = make_record(
        COMMAND, argv, config, metrics, analysis["verdicts"], timings, figures=[figure, *published],
        store={"path": cfg.store_path(), "sweeps": {name: store.sweep for name, store in stores.items()},
               "models_trained_now": trained_now},
        grid={"x": tx, "y": ty,
              **{f"mean_loss_{o}": analysis["losses"][o]["mean"] for o in rows},
              **{f"se_{o}": analysis["losses"][o]["se"] for o in rows},
              "finite_depth_angle": maps["train_fd_angle"], "finite_depth_gradient": maps["train_fd_gradient"],
              "finite_depth_gradient_frobenius": maps["train_fd_gradient_frobenius"],
              **{f"measured_{name}": measured[name] for name in
                 ("angle", "gradient", "gradient_frobenius", "angle_se", "gradient_se", "gradient_frobenius_se")}},
        points=[{"optimizer": optimizer, "point": r["point"], "seed": r["seed"],
                 **point_exponents(cfg, r["point"], maps), **r["result"], "elapsed_s": r["elapsed_s"]}
                for optimizer in rows for r in rows[optimizer]],
        measured_points=[{"point": r["point"], "seed": r["seed"], **r["result"]} for r in measured_rows],
        # the headline verdicts also at the top level, where README quotes them
        simultaneous_vanishing={optimizer: m["simultaneous_vanishing"]["text"]
                                for optimizer, m in metrics["optimizers"].items()},
        predicted_crossings=metrics["predicted_crossings"], measured_crossings=metrics["measured_crossings"])
    write_record(record, cfg.out)
    return record


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
def build_parser(experiment: str = "plane"):
    """The command's parser, its defaults those of `experiment` (the defaults --experiment selects)."""
    d = default_config(experiment)
    parser = cli.command_parser(COMMAND, __doc__)
    parser.add_argument("--experiment", choices=EXPERIMENTS, default=experiment,
                        help="plane: alpha x sigma_w, asymptotic exponents, Adam; crossing: sigma_V x sigma_w at "
                             "alpha 0.25, where the depth-16 zero curves cross, Adam and SGD, measured "
                             "exponents; it sets the defaults of the other flags (see --experiment crossing "
                             "--help) (default %(default)s)")
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
    crossing = parser.add_argument_group("the crossing experiment only")
    crossing.add_argument("--sgd-lr", type=cli.real(0.0, exclusive=True), default=d.sgd_lr, metavar="LR",
                          help="plain SGD's learning rate, one for the whole plane (default: the candidate with "
                               "the lowest mean final test loss at the central grid point)")
    crossing.add_argument("--sgd-lr-candidates", nargs="+", type=cli.real(0.0, exclusive=True),
                          default=d.sgd_lr_candidates, metavar="LR",
                          help="the learning rates tried at the central point (default %s)"
                               % " ".join(f"{v:g}" for v in d.sgd_lr_candidates))
    cli.add_config_flags(crossing, d, CROSSING_FLAGS)
    execution.add_argument("--store", default=None, metavar="PATH",
                           help="SQLite sweep store (default OUT/phase_diagram.sqlite)")
    cli.add_common_flags(parser, COMMAND, seeds=d.seeds, workers=d.workers, threads=d.train.threads,
                         scheduler=True, fresh=True,
                         quick="smoke preset: 3x3 grid, depth 4, width 32, 150 steps (under a minute on a quiet "
                               "machine); crossing: 4x4 grid, 2 seeds, depth 16, width 32, 150 steps (under two "
                               "minutes)", seeds_help="seed values, one model per grid point each")
    parser.set_defaults(out=d.out)
    cli.annotate_quick(parser, QUICK_PRESETS[experiment])
    return parser


def _experiment(argv) -> str:
    """The --experiment the command line asks for ("plane" when absent or not one of EXPERIMENTS: the full
    parser then reports a bad value in one line)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--experiment", default="plane")
    known, _ = pre.parse_known_args(argv)
    return known.experiment if known.experiment in EXPERIMENTS else "plane"


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
    argv = sys.argv[1:] if argv is None else list(argv)
    experiment = _experiment(argv)
    parser = build_parser(experiment)
    args = cli.parse(parser, argv, quick=QUICK_PRESETS[experiment])
    d = default_config(experiment)

    def build():
        task = HistogramTask(**cli.config_values(args, TASK_FLAGS))
        fixed = {name: getattr(d.base, name) for name in FIXED_FIELDS} | _fixed_fields(
            args.base, (args.x_field, args.y_field))
        base = BlockParams(n_tokens=task.n_tokens, **cli.config_values(args, BASE_FLAGS), **fixed)
        train = TrainConfig(task=task, threads=args.threads, **cli.config_values(args, TRAIN_FLAGS))
        return PhaseDiagramConfig(
            experiment=experiment, base=base, train=train, x_range=args.x_range, y_range=args.y_range,
            grid=args.grid, seeds=args.seeds, workers=args.workers, scheduler=args.scheduler, device=args.device,
            out=args.out, store=args.store, fresh=args.fresh, **cli.config_values(args, PLANE_FLAGS),
            models_per_batch=args.models_per_batch, sgd_lr=args.sgd_lr,
            sgd_lr_candidates=tuple(args.sgd_lr_candidates), **cli.config_values(args, CROSSING_FLAGS))
    return cli.config_or_exit(parser, build), args


def main(argv=None) -> int:
    cfg, args = parse_config(argv)
    problem = phase_diagram_problem(cfg)
    if problem is not None:
        cli.fail(COMMAND, problem)
    cli.open_store(COMMAND, cfg.store_path(), cfg.sweep_name())
    try:
        open_sweep_stores(cfg)   # its rows readable and results of their kind, before any compute
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
