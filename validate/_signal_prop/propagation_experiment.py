"""The signal-propagation experiment: its settings and configuration, theory against random networks, and the
verdict of every setting.

For each setting (ordered and chaotic phases, both residual forms), theory (sim.signal_prop.propagate with
finite-n attention, and sim.signal_prop.exponents) is compared with the mean over random networks
(validate._signal_prop.random_networks) of the order parameters, the Jacobian growth and both exponents.

Tolerances: every check allows 3 standard errors of the mean over networks (SE over networks: the seed-to-seed
noise of a finite sample); the per-layer checks also allow a floor for the finite-width bias, which shrinks with
d but which an SE over networks does not measure: |rho_th - rho| <= max(0.03, 3 SE),
|q_th/q - 1| <= max(5%, 3 SE), Jacobian growth |J_th/J - 1| <= max(10%, 3 SE). The exponents, measured on one
block at the collapsed state, get 3 SE.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from sim.signal_prop import exponents, propagate
from theory.signal_prop import BlockParams
from validate._common.cli import SEED_LIMIT
from validate._common.reporting import Verdict
from validate._signal_prop.random_networks import EXPONENT_SEED_OFFSET, measure_exponents, measure_network

SETTINGS = {
    "normalized-ordered": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0, sigma_2=1.0,
                                      residual="normalized"),
    "normalized-chaotic": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=2.5, sigma_2=2.5,
                                      residual="normalized"),
    "plain-ordered": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0, sigma_2=1.0, residual="plain"),
    "plain-chaotic": BlockParams(alpha_A=0.3, alpha_M=0.3, sigma_w=6.0, sigma_2=1.0, residual="plain"),
}

RHO_FLOOR, Q_FLOOR, JACOBIAN_FLOOR = 0.03, 0.05, 0.10
STANDARD_ERRORS = 3
# network k of seed value s is drawn from seed s * NETWORK_SEED_STRIDE + k: distinct seed values never share a
# network as long as networks <= NETWORK_SEED_STRIDE
NETWORK_SEED_STRIDE = 100003
MAX_SEED = (SEED_LIMIT - 1 - EXPONENT_SEED_OFFSET) // NETWORK_SEED_STRIDE - 1  # every derived seed fits in int64


@dataclass(frozen=True)
class SignalPropConfig:
    """A signal-propagation run: the networks drawn, the input simplex, the settings, where it runs.

    seeds: seed values; each seeds `networks` random networks per setting, and all of them are pooled."""

    width: int = 1024
    n_tokens: int = 32
    depth: int = 16
    networks: int = 8
    probes: int = 4
    q0: float = 1.0
    rho0: float = 0.5
    seeds: tuple[int, ...] = (0,)
    settings: tuple[str, ...] = tuple(SETTINGS)
    device: str = "cpu"
    out: str = "runs/signal_prop"

    def __post_init__(self):
        for name in ("width", "n_tokens", "depth", "networks", "probes"):
            v = getattr(self, name)
            minimum = 2 if name == "n_tokens" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name}={v!r}: must be an integer >= {minimum}")
        if self.networks > NETWORK_SEED_STRIDE:
            raise ValueError(f"networks={self.networks}: must be <= {NETWORK_SEED_STRIDE} (so that distinct "
                             "seed values draw distinct networks)")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) \
                or not all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in self.seeds):
            raise ValueError(f"seeds={self.seeds!r}: must be distinct integers in [0, {MAX_SEED}]")
        if len(self.seeds) * self.networks < 2:
            raise ValueError(f"networks={self.networks} with seeds={self.seeds!r}: a standard error needs at least "
                             "2 networks per setting")
        if not self.q0 > 0:
            raise ValueError(f"q0={self.q0!r}: must be > 0")
        if not 0.0 <= self.rho0 < 1.0:
            raise ValueError(f"rho0={self.rho0!r}: must lie in [0, 1)")
        unknown = [s for s in self.settings if s not in SETTINGS]
        if unknown or not self.settings:
            raise ValueError(f"settings={list(self.settings)!r}: allowed values are {list(SETTINGS)}")
        if self.device != "cpu" and not (self.device.startswith("cuda") and torch.cuda.is_available()):
            raise ValueError(f"device={self.device!r}: allowed values are 'cpu' or 'cuda' (when present)")

    def network_seeds(self) -> list[int]:
        """The seed of every network of a setting, pooled over the seed values."""
        return [s * NETWORK_SEED_STRIDE + k for s in self.seeds for k in range(self.networks)]


def same_experiment(a: SignalPropConfig, b: SignalPropConfig) -> bool:
    """Whether a and b draw the same networks and compare the same things: only where they run may differ."""
    def experiment(c):
        return dataclasses.replace(c, device="cpu", out="")
    return experiment(a) == experiment(b)


# ----------------------------------------------------------------------------------------------------
# Theory against the networks of one setting
# ----------------------------------------------------------------------------------------------------
def _mean_se(samples) -> tuple[np.ndarray, np.ndarray]:
    """Mean over networks (axis 0) and its standard error."""
    samples = np.asarray(samples, float)
    return samples.mean(0), samples.std(0, ddof=1) / math.sqrt(samples.shape[0])


def _worst_layer(gap: np.ndarray, tolerance: np.ndarray, gap_name: str) -> dict:
    worst = int(gap.argmax())
    return {gap_name: float(gap.max()), "worst_layer": worst, "tolerance_at_worst": float(tolerance[worst]),
            "pass": bool(np.all(gap <= tolerance))}


def _within(gap: float, se: float) -> dict:
    return {"gap": gap, "tolerance": STANDARD_ERRORS * se, "pass": bool(gap <= STANDARD_ERRORS * se)}


def evaluate_setting(name: str, cfg: SignalPropConfig, progress=None) -> dict:
    """Theory and the pooled measurements of setting `name`, and the checks between them."""
    params = SETTINGS[name].replace(n_tokens=cfg.n_tokens)
    theory = propagate(params, cfg.depth, cfg.q0, cfg.rho0)
    ex = exponents(params)
    runs, exps = [], []
    for seed in cfg.network_seeds():
        runs.append(measure_network(params, cfg.depth, cfg.width, cfg.q0, cfg.rho0, cfg.probes, seed, cfg.device))
        exps.append(measure_exponents(params, ex.q, cfg.width, cfg.probes, seed))
        if progress is not None:
            progress.update(1)
    measured = {k: _mean_se([r[k] for r in runs]) for k in ("q", "p", "rho", "jacobian")}
    (rho, rho_se), (q, q_se), (jacobian, jacobian_se) = measured["rho"], measured["q"], measured["jacobian"]
    angle_m, angle_se = _mean_se([e["angle"] for e in exps])
    grad_m, grad_se = _mean_se([e["gradient"] for e in exps])
    return {
        "params": {**dataclasses.asdict(params), "activation": str(params.activation)},
        "theory": {"q": theory.q.tolist(), "rho": theory.rho.tolist(), "jacobian": theory.jacobian.tolist(),
                   "angle_exponent": ex.angle, "gradient_exponent": ex.gradient, "collapsed_q": ex.q},
        "measured": {k: {"mean": m.tolist(), "se": se.tolist()} for k, (m, se) in measured.items()},
        "measured_exponents": {"angle": angle_m, "angle_se": angle_se, "gradient": grad_m,
                               "gradient_se": grad_se},
        "checks": {
            "rho": _worst_layer(np.abs(theory.rho - rho), np.maximum(RHO_FLOOR, STANDARD_ERRORS * rho_se),
                                "max_gap"),
            "q": _worst_layer(np.abs(theory.q / q - 1), np.maximum(Q_FLOOR, STANDARD_ERRORS * q_se / q),
                              "max_rel_gap"),
            "jacobian": _worst_layer(np.abs(theory.jacobian / jacobian - 1),
                                     np.maximum(JACOBIAN_FLOOR, STANDARD_ERRORS * jacobian_se / jacobian),
                                     "max_rel_gap"),
            "angle_exponent": _within(abs(ex.angle - angle_m), angle_se),
            "gradient_exponent": _within(abs(ex.gradient - grad_m), grad_se),
            "se_below_floors": bool(np.all(STANDARD_ERRORS * rho_se <= RHO_FLOOR)
                                    and np.all(STANDARD_ERRORS * q_se / q <= Q_FLOOR)),
        },
    }


def verdict_rows(results: dict) -> list[Verdict]:
    """Five rows per setting (claim = the setting): rho, q and the Jacobian growth at their worst layer, and
    both exponents; prediction = theory, measurement = mean ± SE over the networks."""
    rows = []
    for name, r in results.items():
        c, th, me = r["checks"], r["theory"], r["measured"]
        L = c["rho"]["worst_layer"]
        rows.append(Verdict.check(f"rho (worst layer {L})", f"{th['rho'][L]:.4f}",
                                  f"{me['rho']['mean'][L]:.4f} ± {me['rho']['se'][L]:.4f}",
                                  f"<= {c['rho']['tolerance_at_worst']:.3f}", c["rho"]["pass"], claim=name))
        L = c["q"]["worst_layer"]
        rows.append(Verdict.check(f"q (worst layer {L})", f"{th['q'][L]:.4f}",
                                  f"{me['q']['mean'][L]:.4f} ± {me['q']['se'][L]:.4f}",
                                  f"rel <= {c['q']['tolerance_at_worst']:.3f}", c["q"]["pass"], claim=name))
        L = c["jacobian"]["worst_layer"]
        rows.append(Verdict.check(f"|J|^2/nd (worst layer {L})", f"{th['jacobian'][L]:.4g}",
                                  f"{me['jacobian']['mean'][L]:.4g} ± {me['jacobian']['se'][L]:.2g}",
                                  f"rel <= {c['jacobian']['tolerance_at_worst']:.3f}", c["jacobian"]["pass"],
                                  claim=name))
        e = r["measured_exponents"]
        for exponent in ("angle", "gradient"):
            check = c[f"{exponent}_exponent"]
            rows.append(Verdict.check(f"{exponent} exponent", f"{th[f'{exponent}_exponent']:+.4f}",
                                      f"{e[exponent]:+.4f} ± {e[f'{exponent}_se']:.4f}",
                                      f"<= {check['tolerance']:.4f}", check["pass"], claim=name))
    return rows
