"""`python -m validate.scan_snap --lr-ratio 10`: scan and snap (Tian et al. 2023) against real training.

1. The authors' regime (Syn-Small, SGD momentum 0.9, batch 128, T = 128, 100 steps, Y(0) = Z(0) = 0; the
   training flags change it): attention maps (Fig. 4), the entropy of c_n on distinct tokens for several
   eta_Y/eta_Z, the order in which distinct tokens are dropped against P(l|n) (Theorem 3), common tokens
   falling (Theorem 2b).
2. The theory's regime (plain SGD, zero init, small eta_Z = --theory-lr-z, long sequences): the torch Y/Z model
   against the exact long-sequence gradient flow of Lemma 1 (sim.integrate_yz_flow), relative error of the
   attention on distinct tokens at every logged step.
3. The snap time: the peak of the back-propagated signal ||Y (e_n - alpha_n)|| (which tracks gamma(t),
   Theorem 1) against t0' = K ln M / eta_Y (Theorem 4), for several ratios; its exponent in eta_Y.

Divergence: a training run whose loss, weights or measurements become NaN or inf is recorded as diverged with
its step (metrics.diverged in the JSON) and EXCLUDED from every number and verdict; the first verdict row counts
the diverged runs and FAILs when there are any (the gradient flow never blows up), and a verdict whose inputs all
diverged FAILs and says so. A prediction that cannot be computed (a Lemma 1 flow the integrator cannot finish:
step-size underflow, too many steps; a rate outside the theory's formulas) is recorded with its reason
(metrics.prediction_failures) and its rows say so; the run still finishes and writes its JSON and figures.

Every flag is checked before anything is computed (exit code 2 and one line naming it): learning rates and
their products eta_Y = ratio x eta_Z in [1e-12, 1e200], momentum in [0, 1), --theory-seeds at most the number of
--seeds, --snap-steps >= 3, and sizes whose trajectories fit in half of this machine's memory.

Writes scan_snap.json and PNG figures in --out; the default experiment (or --update-figures) also puts the
figures in the repository's figures/. The Syn-Medium sweep of Fig. 6 is `python -m validate.scan_snap_sweep`.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

from validate._common import cli, reporting
from validate._scan_snap import experiment
from validate._scan_snap.experiment import ScanSnapConfig
from validate._scan_snap.figures import scan_snap_figures
from validate._scan_snap.models import DATASETS, INITS, MODELS, TrainConfig

COMMAND = "scan_snap"
TRAIN_FLAGS = {
    "lr_ratio": "eta_Y / eta_Z of the main run",
    "lr_z": "attention learning rate eta_Z (authors' regime)",
    "dataset": "synthetic data set",
    "next_tokens": "K, the number of next tokens (classes)",
    "steps": "SGD steps (authors' regime)",
    "batch": "sequences per SGD step",
    "seq_len": "T: L-1 contextual tokens plus the query",
    "momentum": "SGD momentum (authors' regime)",
    "init": "zero: Y(0)=Z(0)=0; default: PyTorch's nn.Linear/Embedding init",
    "model": "yz: Y and Z as free matrices; transformer: embeddings, W_Q, W_K, W_V",
    "d_model": "embedding width of --model transformer",
}
EXPERIMENT_FLAGS = {
    "ratios": "eta_Y/eta_Z values of the entropy and snap-time measurements; the main --lr-ratio is always added",
    "theory_lr_z": "eta_Z of the theory-regime runs",
    "theory_steps": "SGD steps of the theory-regime runs",
    "theory_seq_len": "T of the theory-regime runs",
    "theory_seeds": "how many of --seeds the theory regime uses",
    "snap_steps": "steps of the snap-time runs (logged every step)",
}
# about 6 s: 2 seeds, ratios 1 and the main one, short runs
QUICK = {"seeds": (1, 2), "ratios": (1.0,), "steps": 40, "theory_steps": 150, "theory_seq_len": 128,
         "theory_seeds": 1, "snap_steps": 60}


def build_parser():
    parser = cli.command_parser(COMMAND, __doc__)
    cli.add_config_flags(parser.add_argument_group("training (the authors' regime)"), TrainConfig(), TRAIN_FLAGS,
                         choices={"dataset": DATASETS, "init": INITS, "model": MODELS})
    cli.add_config_flags(parser.add_argument_group("measurements and the theory's regime"), ScanSnapConfig(),
                         EXPERIMENT_FLAGS)
    cli.add_common_flags(parser, COMMAND, seeds=ScanSnapConfig().seeds,
                         quick="a small preset for smoke tests, about 6 s")
    cli.annotate_quick(parser, QUICK)
    return parser


def config_from_args(args) -> ScanSnapConfig:
    return ScanSnapConfig(train=TrainConfig(**cli.config_values(args, TRAIN_FLAGS)), seeds=args.seeds,
                          device=args.device, **cli.config_values(args, EXPERIMENT_FLAGS))


def run(cfg: ScanSnapConfig, out_dir: str, *, quiet: bool = False, publish: bool = False, argv=None) -> dict:
    """Both regimes and their figures in out_dir (copied to figures/ when `publish`); returns the JSON record.
    Diverged runs and failed flows are recorded and left out (see the module docstring); ValueError for an
    out_dir this run cannot write, before anything is computed."""
    import torch
    if not isinstance(cfg, ScanSnapConfig):
        raise ValueError(f"cfg: expected a ScanSnapConfig, got {type(cfg).__name__}")
    cli.prepare_output_directory(out_dir)
    torch.set_num_threads(1)  # M x M matrices with M = 34: threads cost more than they give
    timings = {}
    start = time.perf_counter()
    with reporting.progress(cfg.progress_total(), COMMAND, quiet) as bar:
        authors = experiment.authors_regime(cfg, bar.update)
        timings["authors_regime"] = time.perf_counter() - start
        theory = experiment.theory_regime(cfg, bar.update)
        timings["theory_regime"] = time.perf_counter() - start - timings["authors_regime"]
    rows = experiment.verdicts(cfg, authors, theory)
    figures_start = time.perf_counter()
    paths = scan_snap_figures(cfg, authors, theory, out_dir, verdicts=rows, argv=argv)
    reporting.publish_figures(paths, publish)
    timings["figures"] = time.perf_counter() - figures_start
    timings["total"] = time.perf_counter() - start
    record = reporting.make_record(COMMAND, argv, cfg, experiment.metrics(cfg, authors, theory), rows, timings,
                                   figures=[os.path.basename(p) for p in paths], integrator=experiment.INTEGRATOR)
    return record


def main(argv=None) -> int:
    parser = build_parser()
    args = cli.parse(parser, argv, quick=QUICK)
    cfg = cli.config_or_exit(parser, lambda: config_from_args(args))
    # the default experiment (where it runs aside) is what README shows: it alone refreshes figures/
    is_default = replace(cfg, device=ScanSnapConfig().device) == ScanSnapConfig()
    start = time.perf_counter()
    record = run(cfg, args.out, quiet=args.quiet, publish=args.update_figures or is_default, argv=argv)
    reporting.report(record, args.out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(COMMAND, main, resumable=False))
