"""`python -m validate.signal_prop`: the token-geometry map and both exponents against random torch networks.

Cowsik, Nebabu, Qi, Ganguli (2024), arXiv:2403.02579: token geometry through a deep transformer at
initialization follows an n-particle map, with an angle exponent (ordered vs chaotic phase) and a gradient
exponent. For each setting, --networks random transformers of width d are drawn per seed value (all pooled).
Trajectory settings (ordered and chaotic phases of both residual forms of the canonical pre-LN block; post-LN
without and with MLP biases; pre-LN with MLP biases):
  1. a simplex (q0, rho0) of n tokens is pushed through each: q, p, rho after every block, compared with
     sim.signal_prop.propagate (finite-n attention);
  2. the end-to-end Jacobian growth E|dX_l/dX_0|_F^2 / (n d) is measured with Jacobian-vector products on
     isotropic Gaussian probes, compared with propagate's tangent map;
  3. both exponents are measured on one block at the collapsed state with JVPs (a zero-mean differential
     probe for the angle exponent, a common-mode probe for the gradient exponent), compared with
     sim.signal_prop.exponents.
Finite-depth settings (normalized residual, alpha_A = alpha_M = 0.25, points of the (sigma_V, sigma_w) plane,
one of them where sim.signal_prop.critical_point(..., depth=--depth, q0=--q0) puts the crossing of the
common-mode exponents): the per-block exponents of a depth-L network fed n identical tokens of norm q0,
sim.signal_prop.exponents(h, depth=L, q0=q0), against float64 networks: the angle exponent from the forward
growth of a tiny token spread, (1/L) log(epsilon_L/epsilon_0), the common-mode and the Frobenius gradient
exponents from JVPs with common-mode and isotropic tangents, (1/L) log(|J v|^2/|v|^2).
Tolerances: 3 standard errors of the mean over networks, with a floor for the finite-width bias in the
per-layer checks: |rho_th - rho| <= max(0.03, 3 SE), |q_th/q - 1| <= max(5%, 3 SE), Jacobian growth
max(10%, 3 SE) relative, one-block exponents 3 SE, finite-depth exponents max(0.01, 3 SE).

Out of float32 range: the networks run in float32, so extreme inputs (q0 near 1e-40 or 1e38) can overflow or
underflow. Each network whose q, rho, Jacobian growth or exponent becomes NaN, inf (or zero, for q and the
Jacobian growth) is recorded in the JSON (metrics.SETTING.out_of_float32_range: network seed, quantity, first
layer) and counts as the worst outcome: that quantity's check FAILs and says how many networks left the range; it
is left out of the mean. The run finishes and writes its JSON and figure whatever fraction overflowed.

Every input is checked before any compute (exit 2 and one line naming it): sizes (integers >= 1, n >= 2, depth
at most sim.signal_prop.MAX_DEPTH) and their estimated peak memory against this machine's (the networks' weights
and activations, the theory's Monte Carlo, the results; validate._signal_prop.memory), q0 > 0 and finite (and in
the range sim's theory evaluates), rho0 in [0, 1), distinct known settings, seeds, the device, --out.

Writes --out/signal_prop.json, --out/signal_prop.png (trajectory settings) and --out/signal_prop_finite_depth.png
(finite-depth settings: the log growth after every block, theory against torch); figures/ is updated only by the
default experiment (the defaults, wherever it runs) or with --update-figures.
"""
from __future__ import annotations

import os
import sys
import time

from validate._common import cli
from validate._common.reporting import (format_table, make_record, progress, publish_figures, summary_line,
                                        write_record)
from validate._signal_prop.figures import signal_prop_figures
from validate._signal_prop.memory import signal_prop_problem
from validate._signal_prop.propagation_experiment import (ALL_SETTINGS, SignalPropConfig, evaluate_setting,
                                                          same_experiment, setting_theory, verdict_rows)

COMMAND = "signal_prop"
QUICK = {"width": 256, "depth": 8, "networks": 4, "probes": 2}
FLAGS = {"width": "model width d", "n_tokens": "tokens n", "depth": "blocks",
         "networks": "random networks per setting and seed value", "probes": "inputs and probes per network",
         "q0": "input squared norm per dimension", "rho0": "input cosine between tokens",
         "settings": "which settings"}


def predict(cfg: SignalPropConfig) -> dict:
    """The theory of every setting (sim checks q0 and rho0 against the ranges its numerics are made for)."""
    return {name: setting_theory(name, cfg) for name in cfg.settings}


def run(cfg: SignalPropConfig, *, argv=(), quiet: bool = False, update_figures: bool = False,
        figures_dir: str | None = None, theory: dict | None = None) -> dict:
    """Measure every setting against its theory (predict(cfg), unless given), write the JSON record and the
    figures (with the verdicts they illustrate and the command, argv, in their footer) to cfg.out; returns the
    record. Bad input, and a configuration this machine's memory cannot hold, raise ValueError before any
    network is drawn."""
    problem = signal_prop_problem(cfg)
    if problem is not None:
        raise ValueError(problem)
    start = time.perf_counter()
    cli.prepare_output_directory(cfg.out)
    theory = predict(cfg) if theory is None else theory
    results = {}
    with progress(len(cfg.settings) * len(cfg.network_seeds()), "networks", quiet) as bar:
        for name in cfg.settings:
            results[name] = evaluate_setting(name, cfg, bar, theory[name])
    rows = verdict_rows(results)
    figures = signal_prop_figures(results, cfg, cfg.out, verdicts=rows, argv=list(argv) if argv else None)
    published = publish_figures(figures, update_figures or same_experiment(cfg, SignalPropConfig()), figures_dir)
    record = make_record(COMMAND, argv, cfg, results, rows,
                         {"total": time.perf_counter() - start}, figures=[*figures, *published])
    write_record(record, cfg.out)
    return record


def build_parser():
    parser = cli.command_parser(COMMAND, __doc__)
    cli.add_config_flags(parser.add_argument_group("the networks and their inputs"), SignalPropConfig(), FLAGS,
                         choices={"settings": ALL_SETTINGS})
    cli.add_common_flags(parser, COMMAND, seeds=SignalPropConfig.seeds,
                         quick="smoke preset: width 256, depth 8, 4 networks, 2 probes",
                         seeds_help="seed values; each draws --networks random networks per setting, all pooled")
    cli.annotate_quick(parser, QUICK)
    return parser


def parse_config(argv=None) -> tuple[SignalPropConfig, object]:
    """The run's configuration and the parsed arguments (bad values exit with code 2 and one line)."""
    parser = build_parser()
    args = cli.parse(parser, argv, quick=QUICK)
    return cli.config_or_exit(parser, lambda: SignalPropConfig(
        seeds=args.seeds, device=args.device, out=args.out, **cli.config_values(args, FLAGS))), args


def main(argv=None) -> int:
    cfg, args = parse_config(argv)
    problem = signal_prop_problem(cfg)
    if problem is not None:
        cli.fail(COMMAND, problem)
    try:
        theory = predict(cfg)
    except ValueError as error:
        cli.fail(COMMAND, f"the theory of these inputs: {error}")
    record = run(cfg, argv=sys.argv[1:] if argv is None else argv, quiet=args.quiet,
                 update_figures=args.update_figures, theory=theory)
    print(format_table(record["verdicts"]))
    print(summary_line(record["verdicts"], record["timings_s"]["total"], os.path.join(cfg.out, f"{COMMAND}.json")))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_command(COMMAND, main, resumable=False))
