"""`python -m validate.execution_manifold`: the claims of Xu (2026, arXiv 2602.10496) about low-dimensional
"execution manifolds", each measured as the paper does and against a null model or a corrected protocol.

Part one (C1-C6): for every seed and difficulty setting, a transformer is trained on marker-based modular
addition while the W_Q, W_K, W_V, W_O trajectory of every layer and the attention at the readout query are
recorded; trajectory dimension, orientation, routing and collapse are compared with null models.
Part two (C7-C12): one run of the main setting with its first seed, probed with SGD commutators at every
snapshot and with sparse autoencoders at three checkpoints. One table holds the rows of both parts.

    python -m validate.execution_manifold --quick        both parts, a small preset (about 3 min on 2 CPU cores)
    python -m validate.execution_manifold                the released code's run with five seeds
    python -m validate.execution_manifold --part one     C1-C6 only (--part two: C7-C12 only)

Every (setting, seed) of part one and part two's run is one row of the SQLite store <out>/sweep.sqlite, stored
the moment it finishes, so a rerun (also after a kill or Ctrl-C) resumes where it stopped (--fresh recomputes).
Writes <out>/execution_manifold.json and five figures; the repository's figures/ is updated by the default
experiment or with --update-figures.

Divergence: a run whose training loss, weights or measurements (attention, commutators) become NaN or inf stops
there and is stored as diverged, with its step. It is left out of every claim and counted in a "runs" row per
part, which FAILs when any run diverged; a claim with no finished run left is INFO (not measured). The JSON says
so under "divergence_policy" and lists the diverged runs under metrics.part_one.diverged and
metrics.part_two.diverged; the figures show the finished runs, or the loss curves until divergence when none is
left. Every input is checked before any compute: a bad value, a configuration this machine's memory cannot
hold, or an unusable --out or store ends the command with one line and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

from validate._common import cli
from validate._common.reporting import make_record, publish_figures, report
from validate._common.sweep import SweepStore
from validate._execution_manifold.claims import DIVERGENCE_POLICY, part_one_claims, part_two_claims
from validate._execution_manifold.figures import part_one_figures, part_two_figures
from validate._execution_manifold.memory import memory_problem
from validate._execution_manifold.modular import MLP_MODES
from validate._execution_manifold.part_one import PartOneConfig, run_part_one, stored_arrays_missing
from validate._execution_manifold.part_two import PartTwoConfig, stored_part_two
from validate._execution_manifold.trajectory import OPTIMIZERS, RunConfig

COMMAND = "execution_manifold"
PARTS = ("both", "one", "two")

# config field -> help; each becomes a flag --field-name (validate._common.cli.add_config_flags)
RUN_FLAGS = {
    "steps": "training steps per run",
    "snapshot_every": "steps between weight snapshots",
    "markers": "marker counts m mixed in training",
    "modulus": "C: labels are sums mod C",
    "seq_len": "sequence length T (the released code; the paper text says 32)",
    "batch_size": "training batch size",
    "optimizer": "adamw (the released code) or sgd (the paper text)",
    "mlp": "none (attention-only), on (standard blocks), unused (built, never called: the released code's P)",
    "n_layers": "transformer layers",
    "d_model": "model width",
    "n_heads": "attention heads",
}
PART_ONE_FLAGS = {
    "q": "variance fraction q of r_q (the paper's r90 is q = 0.9)",
    "null_draws": "draws per null model",
    "window": "snapshots per sliding window (part one) and per window basis (part two)",
    "difficulty_seeds": "seeds per difficulty setting; 0 skips the sweep",
}
PART_TWO_FLAGS = {
    "commutator_lr": "eta of the SGD probe steps",
    "commutator_samples": "commutators per snapshot",
    "commutator_precision": "float64: both paths on a float64 copy; float32: in place, as the released code",
    "sae_steps": "SAE training steps",
    "sae_examples": "activation vectors per SAE",
    "sae_d": "SAE latents",
    "sae_k": "TopK k",
    "ablation_sizes": "numbers of latents / PCA directions ablated",
    "random_ablation_draws": "random latent sets per ablation size",
}

# --quick: both parts small enough for a smoke test (argparse dests; flags the user gives beat them)
QUICK = {"steps": 1500, "snapshot_every": 50, "seeds": (0, 1, 2), "n_layers": 2, "d_model": 64, "lr": 1e-3,
         "null_draws": 100, "window": 8, "sweep_max_markers": (2,), "sweep_moduli": (), "difficulty_seeds": 1,
         "sae_steps": 1000, "sae_examples": 4096, "sae_d": 128, "sae_k": 8, "ablation_sizes": (1, 3, 6),
         "random_ablation_draws": 3, "commutator_samples": 5}


def _k_per_block(text: str):
    """argparse type of --k-per-block: an integer >= 1 or "r90"."""
    if text == "r90":
        return text
    return cli.integer(1)(text)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.command_parser(COMMAND, __doc__)
    parser.add_argument("--part", choices=PARTS, default="both",
                        help="both: part one (C1-C6, every seed and setting), then part two (C7-C12, one run of "
                             "the main setting's first seed); one: C1-C6 only; two: C7-C12 only (default both)")
    training = parser.add_argument_group("training (part one's runs; part two's run is the same with the first "
                                         "seed)")
    cli.add_config_flags(training, RunConfig(), RUN_FLAGS, choices={"optimizer": OPTIMIZERS, "mlp": MLP_MODES})
    training.add_argument("--lr", type=cli.real(), default=None,
                          help="learning rate (default 3e-4 with adamw, as the released code; 1e-3 with sgd, as "
                               "the paper text)")
    training.add_argument("--weight-decay", type=cli.real(), default=None,
                          help="weight decay (default 0.01 with adamw, as the released code; 0 with sgd)")
    one = parser.add_argument_group("part one: trajectory dimension, nulls, routing (C1-C6)")
    defaults_one = PartOneConfig()
    cli.add_config_flags(one, defaults_one, PART_ONE_FLAGS)
    one.add_argument("--sweep-max-markers", type=cli.integer(1), nargs="*", default=defaults_one.sweep_max_markers,
                     metavar="M", help="difficulty sweep: extra settings with m mixed in 1..M; the flag alone: "
                                       "none (default 2 6)")
    one.add_argument("--sweep-moduli", type=cli.integer(2), nargs="*", default=defaults_one.sweep_moduli,
                     metavar="C", help="difficulty sweep: other moduli C; the flag alone: none (default 16)")
    two = parser.add_argument_group("part two: SGD commutators and sparse autoencoders (C7-C12)")
    two.add_argument("--part-two-mlp", choices=("auto",) + MLP_MODES, default="auto",
                     help="MLPs of part two's run: auto adds the released code's never-called MLPs (which dilute "
                          "its whole-vector baseline) when --mlp is none, else keeps --mlp (default auto)")
    cli.add_config_flags(two, PartTwoConfig(), PART_TWO_FLAGS,
                         choices={"commutator_precision": ("float64", "float32")})
    two.add_argument("--k-per-block", type=_k_per_block, default=PartTwoConfig().k_per_block, metavar="K",
                     help="K_b, trajectory PCs per block of the execution basis: an integer or r90 (default 3)")
    cli.add_common_flags(parser, COMMAND, seeds=defaults_one.seeds, workers=0, threads=1, scheduler=True,
                         fresh=True, seeds_help="seeds of the main setting, one training run each (part two "
                                                "trains the first)",
                         quick="small presets of both parts: 2 layers, d=64, 1500 steps, 3 seeds, lr 1e-3, "
                               "smaller SAEs, 5 commutators per snapshot (about 3 min on 2 CPU cores)")
    cli.annotate_quick(parser, QUICK)
    return parser


# config fields the messages of the configs name, written as the flags that set them (steps -> --steps)
FLAG_FIELDS = (set(RUN_FLAGS) | set(PART_ONE_FLAGS) | set(PART_TWO_FLAGS)
               | {"lr", "weight_decay", "sweep_max_markers", "sweep_moduli", "k_per_block", "seeds", "threads"})


def flag_names(message: str) -> str:
    """A configuration's ValueError message with every field it names written as its flag."""
    return re.sub(r"(?<![\w-])([a-z][a-z0-9_]*)\b",
                  lambda m: "--" + m.group(1).replace("_", "-") if m.group(1) in FLAG_FIELDS else m.group(1),
                  message)


def build_configs(args: argparse.Namespace) -> tuple[PartOneConfig, PartTwoConfig | None]:
    """Part one's configuration (part two's run is read from it) and, unless --part one, part two's."""
    run = RunConfig(**cli.config_values(args, RUN_FLAGS), lr=args.lr, weight_decay=args.weight_decay,
                    device=args.device, threads=args.threads)
    one = PartOneConfig(run=run, seeds=args.seeds, sweep_max_markers=args.sweep_max_markers,
                        sweep_moduli=args.sweep_moduli, **cli.config_values(args, PART_ONE_FLAGS))
    if args.part == "one":
        return one, None
    try:
        two = PartTwoConfig.from_part_one(one, mlp=args.part_two_mlp, k_per_block=args.k_per_block,
                                          **cli.config_values(args, PART_TWO_FLAGS))
    except ValueError as error:
        skip = " (--part one runs part one alone)" if args.part == "both" else ""
        raise ValueError(f"part two: {error}{skip}") from None
    return one, two


def is_default_experiment(args: argparse.Namespace) -> bool:
    """Whether these flags ask for the experiment the command runs without flags, up to where and how it runs
    (device, threads, workers, scheduler, out, fresh, quiet): its figures are the ones figures/ shows."""
    where = {"device": "cpu", "threads": 1}
    given = argparse.Namespace(**{**vars(args), **where})
    default = argparse.Namespace(**{**vars(cli.parse(build_parser(), [])), **where})
    return given.part == default.part and build_configs(given) == build_configs(default)


def run(one: PartOneConfig, two: PartTwoConfig | None, out_dir: str, *, part_one: bool = True, workers: int = 0,
        scheduler: str | None = None, fresh: bool = False, quiet: bool = True, argv=None) -> dict:
    """Part one (when part_one) and part two (when `two` is given), their verdicts and figures: the JSON record.

    Part one's runs and part two's run come from the store out_dir/sweep.sqlite when they are there; the store is
    held for the whole run. Diverged runs are handled as the module docstring says (DIVERGENCE_POLICY)."""
    with SweepStore(os.path.join(out_dir, "sweep.sqlite"), COMMAND).lock():
        return _run(one, two, out_dir, part_one, workers, scheduler, fresh, quiet, argv)


def _run(one, two, out_dir, part_one, workers, scheduler, fresh, quiet, argv) -> dict:
    started = time.perf_counter()
    log = None if quiet else (lambda text: print(f"[{COMMAND}] {text}", file=sys.stderr))
    rows, figures, config, metrics, timings = [], [], {}, {}, {}
    extra = {"parts": [], "divergence_policy": DIVERGENCE_POLICY}
    if part_one:
        runs = run_part_one(one, out_dir, workers=workers, scheduler=scheduler, fresh=fresh, quiet=quiet, log=log)
        verdicts, metrics["part_one"] = part_one_claims(one, runs, out_dir)
        rows += verdicts
        figures += part_one_figures(one, runs, metrics["part_one"], out_dir, verdicts=verdicts, argv=argv)
        config["part_one"] = one
        extra["parts"].append("one")
        extra["runs"] = {key: [{k: v for k, v in r.items() if k != "loss_curve"} for r in results]
                         for key, results in runs.items()}
        timings["train_per_run"] = {key: [r["seconds"]["train"] for r in results] for key, results in runs.items()}
        timings["part_one"] = time.perf_counter() - started
    if two is not None:
        started_two = time.perf_counter()
        if log is not None:
            log(f"part two: {two.run.n_layers} layers d={two.run.d_model}, {two.run.steps} steps, seed {two.seed}, "
                f"mlp {two.run.mlp}: commutators at every snapshot, SAEs at {len(two.sae_stages)} checkpoints")
        metrics["part_two"] = stored_part_two(two, out_dir, fresh=fresh, workers=workers, scheduler=scheduler,
                                              quiet=quiet)
        two_rows = part_two_claims(two, metrics["part_two"])
        rows += two_rows
        figures += part_two_figures(two, metrics["part_two"], out_dir, verdicts=two_rows, argv=argv)
        config["part_two"] = two
        extra["parts"].append("two")
        timings["part_two_run"] = metrics["part_two"]["seconds"]  # as computed, also when read from the store
        timings["part_two"] = time.perf_counter() - started_two
    timings["total"] = time.perf_counter() - started
    extra["figures"] = [os.path.basename(p) for p in figures]
    return make_record(COMMAND, argv, config, metrics, rows, timings, **extra)


def main(argv=None) -> int:
    started = time.perf_counter()
    parser = build_parser()
    args = cli.parse(parser, argv, quick=QUICK)
    try:
        one, two = build_configs(args)
    except ValueError as error:
        parser.error(flag_names(str(error)))
    problem = memory_problem(one, two, args.workers)
    if problem is not None:
        cli.fail(COMMAND, problem)
    cli.open_store(COMMAND, os.path.join(args.out, "sweep.sqlite"), COMMAND)
    missing = stored_arrays_missing(one, args.out) if args.part != "two" and not args.fresh else []
    if missing:
        cli.fail(COMMAND, f"{len(missing)} stored run(s) of this configuration lost their arrays file "
                          f"({os.path.join(args.out, missing[0])}); --fresh recomputes them")
    record = run(one, two, args.out, part_one=args.part != "two", workers=args.workers, scheduler=args.scheduler,
                 fresh=args.fresh, quiet=args.quiet, argv=argv)
    publish_figures([os.path.join(args.out, name) for name in record["figures"]],
                    args.update_figures or is_default_experiment(args))
    report(record, args.out, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(COMMAND, main))
