"""The signal-propagation experiment: its settings and configuration, theory against random networks, and the
verdict of every setting.

Two kinds of setting:
- trajectory settings (ordered and chaotic phases of both residual forms; post-LN without and with MLP biases;
  pre-LN with biases): theory (sim.signal_prop.propagate with finite-n attention, and the asymptotic
  sim.signal_prop.exponents) is compared with the mean over random networks
  (validate._signal_prop.random_networks) of the order parameters, the Jacobian growth and both exponents of
  one block at the collapsed state;
- finite-depth settings (points of the (sigma_V, sigma_w) plane of FINITE_DEPTH_BASE, one of them on the
  predicted crossing of the common-mode finite-depth exponents): the depth-L exponents from collapsed tokens of
  norm q0 (sim.signal_prop.exponents(h, depth=L, q0=q0): the angle, common-mode gradient and Frobenius gradient
  rates) are compared with their measurement on random depth-L networks in float64 (measure_finite_depth:
  forward growth of a tiny token spread, JVPs with common-mode and isotropic tangents).

Tolerances: every check allows 3 standard errors of the mean over networks (SE over networks: the seed-to-seed
noise of a finite sample); the per-layer checks also allow a floor for the finite-width bias, which shrinks with
d but which an SE over networks does not measure: |rho_th - rho| <= max(0.03, 3 SE),
|q_th/q - 1| <= max(5%, 3 SE), Jacobian growth |J_th/J - 1| <= max(10%, 3 SE). The exponents, measured on one
block at the collapsed state, get 3 SE. The finite-depth exponents get max(0.01, 3 SE) (FINITE_DEPTH_FLOOR).

Out of float32 range: the networks run in float32, so extreme inputs (q0 near 1e-40 or 1e38, say) can overflow or
underflow: a quantity that becomes NaN, inf, or zero where it must be positive (q, the Jacobian growth). Every
such network is recorded with the quantity and the first layer where it happened, and counts as the worst outcome:
the checks of that quantity FAIL and say how many networks left the range (their mean, over the networks that
stayed in range, is reported for information; with fewer than 2 of those, or a theory value that is not finite,
the check is not computable and FAILs with that reason). The finite-depth networks run in float64; a network
whose measured rate is nevertheless not finite is recorded and counted the same way.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from sim.signal_prop import MAX_DEPTH, critical_point, exponents, propagate
from theory.signal_prop import BlockParams
from validate._common.cli import SEED_LIMIT
from validate._common.reporting import Verdict
from validate._common import checks
from validate._signal_prop.random_networks import (EXPONENT_SEED_OFFSET, FINITE_DEPTH_QUANTITIES,
                                                   measure_exponents, measure_finite_depth, measure_network)

SETTINGS = {
    "normalized-ordered": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0, sigma_2=1.0,
                                      residual="normalized"),
    "normalized-chaotic": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=2.5, sigma_2=2.5,
                                      residual="normalized"),
    "plain-ordered": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0, sigma_2=1.0, residual="plain"),
    "plain-chaotic": BlockParams(alpha_A=0.3, alpha_M=0.3, sigma_w=6.0, sigma_2=1.0, residual="plain"),
    # LN after each residual sum, x <- LN(x + alpha F(x)), as in the original transformer; the same with MLP
    # biases (the block Giorlandino & Goldt analyse); and the canonical pre-LN block with MLP biases
    "post-LN": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=2.5, sigma_2=1.0, residual="plain",
                           placement="post"),
    "post-LN-biases": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=2.5, sigma_2=1.0, residual="plain",
                                  placement="post", sigma_b=0.5),
    "pre-LN-biases": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=2.5, sigma_2=2.5, residual="normalized",
                                 sigma_b=0.5),
}

# Finite-depth settings: points of the (sigma_V, sigma_w) plane of this block, where the depth-L exponents from
# unit-norm tokens cross (the collapsed norm relaxes from q0 = 1 down to q* < 1 at sigma_V < 1); None: the
# predicted crossing of the common-mode rates, critical_point(FINITE_DEPTH_BASE, FINITE_DEPTH_PLANE,
# FINITE_DEPTH_BOUNDS, depth=L, q0=q0) at the run's depth L and q0. The others lie in each sign quadrant of
# (lambda_a, lambda_g) at depth 16.
FINITE_DEPTH_BASE = BlockParams(alpha_A=0.25, alpha_M=0.25, sigma_A=1.0, sigma_2=1.0, residual="normalized")
FINITE_DEPTH_PLANE = ("sigma_V", "sigma_w")
FINITE_DEPTH_BOUNDS = ((0.2, 1.4), (0.75, 4.5))
FINITE_DEPTH_SETTINGS = {
    "finite-depth-ordered": {"sigma_V": 0.6, "sigma_w": 1.0},      # lambda_a < 0, lambda_g < 0
    "finite-depth-crossing": None,                                   # lambda_a = lambda_g = 0 (predicted)
    "finite-depth-split": {"sigma_V": 1.2, "sigma_w": 2.0},        # lambda_a < 0 < lambda_g
    "finite-depth-chaotic": {"sigma_V": 0.3, "sigma_w": 4.0},      # lambda_a > 0, lambda_g > 0
}
ALL_SETTINGS = tuple(SETTINGS) + tuple(FINITE_DEPTH_SETTINGS)
# Floor for the finite-width bias of the depth-L rates, which the SE over networks does not measure. Measured gaps
# theory - torch: <= 0.003 (within 1 SE) over 24 networks at width 128 and <= 0.002 (within 2 SE) over the 8
# networks of the default run at width 1024, where 3 SE is 0.001-0.005: the floor, not the SE, sets the
# tolerance there, so more networks would not tighten the check.
FINITE_DEPTH_FLOOR = 0.01

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
    settings: tuple[str, ...] = ALL_SETTINGS
    device: str = "cpu"
    out: str = "runs/signal_prop"

    def __post_init__(self):
        for name in ("width", "n_tokens", "probes"):
            checks.field(self, name, checks.integer, 2 if name == "n_tokens" else 1)
        # sim computes the finite-depth exponents up to MAX_DEPTH blocks, and the finite-depth settings take them
        # at every depth up to this one; the trajectory settings share the depth. The work there is hours, not a
        # hang: propagate's Monte Carlo takes ~35 ms per block at n = 32 (~1 h per trajectory setting), the
        # finite-depth loop L^2/2 block steps of ~24 ns (~2 min per setting); the networks' memory
        # (validate._signal_prop.memory) bounds the depth further (510 float64 blocks at width 1024 on 23.5 GiB)
        checks.field(self, "depth", checks.integer, 1, MAX_DEPTH,
                     why=" (sim.signal_prop.MAX_DEPTH, the deepest finite-depth exponents sim computes)")
        # at most NETWORK_SEED_STRIDE, so that distinct seed values draw distinct networks
        checks.field(self, "networks", checks.integer, 1, NETWORK_SEED_STRIDE)
        checks.field(self, "seeds", checks.sequence, lambda label, seed: checks.integer(
            label, seed, 0, MAX_SEED, why=f" (seed s draws networks from seeds s * {NETWORK_SEED_STRIDE} + k < 2^63)"))
        if len(self.seeds) * self.networks < 2:
            raise ValueError(f"networks={self.networks} with seeds={self.seeds!r}: a standard error needs at least "
                             "2 networks per setting")
        checks.field(self, "q0", checks.real, 0.0, above=True)
        checks.field(self, "rho0", checks.real, 0.0, 1.0, below=True)
        checks.field(self, "settings", checks.names, ALL_SETTINGS)
        checks.field(self, "device", checks.device)
        checks.field(self, "out", checks.text)

    def network_seeds(self) -> list[int]:
        """The seed of every network of a setting, pooled over the seed values."""
        return [s * NETWORK_SEED_STRIDE + k for s in self.seeds for k in range(self.networks)]


def same_experiment(a: SignalPropConfig, b: SignalPropConfig) -> bool:
    """Whether a and b draw the same networks and compare the same things: only where they run may differ."""
    def experiment(c):
        return dataclasses.replace(c, device="cpu", out=".")
    return experiment(a) == experiment(b)


# ----------------------------------------------------------------------------------------------------
# Theory against the networks of one setting
# ----------------------------------------------------------------------------------------------------
LAYER_QUANTITIES = ("q", "p", "rho", "jacobian")    # after every block; q and the Jacobian growth are > 0
EXPONENTS = ("angle", "gradient")


def setting_theory(name: str, cfg: SignalPropConfig) -> dict:
    """The predictions for setting `name`. A trajectory setting: its BlockParams, propagate's trajectory and the
    asymptotic exponents. A finite-depth setting: its BlockParams (for the crossing, where critical_point puts
    it, and how exact that is), the depth-L exponents from norm q0, and l times the depth-l ones for l = 0..L
    (the log growth after l blocks, for the figure)."""
    if name in SETTINGS:
        params = SETTINGS[name].replace(n_tokens=cfg.n_tokens)
        return {"kind": "trajectory", "params": params,
                "trajectory": propagate(params, cfg.depth, cfg.q0, cfg.rho0), "exponents": exponents(params)}
    base = FINITE_DEPTH_BASE.replace(n_tokens=cfg.n_tokens)
    point, crossing = FINITE_DEPTH_SETTINGS[name], None
    if point is None:
        found = critical_point(base, FINITE_DEPTH_PLANE, FINITE_DEPTH_BOUNDS, depth=cfg.depth, q0=cfg.q0)
        params = found.params
        crossing = {"exact": found.exact, "angle": found.angle, "gradient": found.gradient,
                    "plane": list(FINITE_DEPTH_PLANE), "bounds": [list(b) for b in FINITE_DEPTH_BOUNDS]}
    else:
        params = base.replace(**point)
    by_depth = [exponents(params, depth=layer, q0=cfg.q0) for layer in range(1, cfg.depth + 1)]
    return {"kind": "finite_depth", "params": params, "crossing": crossing, "exponents": by_depth[-1],
            "log_growth": {k: [0.0] + [layer * getattr(e, k) for layer, e in enumerate(by_depth, 1)]
                           for k in FINITE_DEPTH_QUANTITIES}}


def _first_out_of_range(values: np.ndarray, positive: bool) -> int | None:
    """The first index at which values are NaN or inf (or <= 0, for a positive quantity), else None."""
    bad = ~np.isfinite(values) | ((values <= 0) if positive else False)
    return int(np.argmax(bad)) if bad.any() else None


def _mean_se(samples: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean over networks of `size` values each, and its standard error; NaN with fewer than 2 networks."""
    if len(samples) < 2:
        return np.full(size, np.nan), np.full(size, np.nan)
    samples = np.asarray(samples, float)
    return samples.mean(0), samples.std(0, ddof=1) / math.sqrt(samples.shape[0])


def _compared(theory, mean, se, floor: float, relative: bool, left: list, networks: int,
              left_as: str = "out of float32 range") -> dict:
    """Theory against the mean over networks, layer by layer (or one exponent, floor 0): the largest gap, where,
    its tolerance max(floor, 3 SE) and the verdict. `left`: the layer at which each network that left the
    float32 range did so (None for an exponent); any such network makes the check FAIL."""
    theory = np.atleast_1d(np.asarray(theory, float))
    first_bad_theory = _first_out_of_range(theory, positive=False)
    layers = [layer for layer in left if layer is not None]
    result = {"max_gap": None, "relative": relative, "worst_layer": None, "tolerance_at_worst": None,
              "pass": False, "networks_out_of_range": len(left),
              "first_layer_out_of_range": min(layers) if layers else None, "not_computable": None}
    if first_bad_theory is not None:
        result["not_computable"] = "the theory is not finite" + (
            f" from layer {first_bad_theory} on" if theory.size > 1 else "")
        return result
    if networks - len(left) < 2:
        result["not_computable"] = (f"{len(left)} of {networks} networks {left_as}"
                                    + (f" from layer {min(layers)} on" if layers else "") + "; fewer than 2 left")
        return result
    gap = np.abs(theory / mean - 1) if relative else np.abs(theory - mean)
    tolerance = np.maximum(floor, STANDARD_ERRORS * (se / mean if relative else se))
    worst = int(gap.argmax())
    result.update(max_gap=float(gap[worst]), worst_layer=worst, tolerance_at_worst=float(tolerance[worst]),
                  **{"pass": bool(np.all(gap <= tolerance)) and not left})
    return result


def evaluate_setting(name: str, cfg: SignalPropConfig, progress=None, theory: dict | None = None) -> dict:
    """Theory and the pooled measurements of setting `name` (networks out of float32 range recorded and left
    out of the means), and the checks between them."""
    theory = setting_theory(name, cfg) if theory is None else theory
    if theory["kind"] == "finite_depth":
        return _evaluate_finite_depth(name, cfg, progress, theory)
    params, trajectory, ex = theory["params"], theory["trajectory"], theory["exponents"]
    samples = {k: [] for k in LAYER_QUANTITIES + EXPONENTS}
    events = []
    for seed in cfg.network_seeds():
        run = measure_network(params, cfg.depth, cfg.width, cfg.q0, cfg.rho0, cfg.probes, seed, cfg.device)
        run.update({k: [v] for k, v in measure_exponents(params, ex.q, cfg.width, cfg.probes, seed).items()})
        for k in samples:
            values = np.asarray(run[k], float)
            samples[k].append(values)
            layer = _first_out_of_range(values, positive=k in ("q", "jacobian"))
            if layer is not None:
                events.append({"network_seed": seed, "quantity": k, "layer": layer if k not in EXPONENTS else None})
        if progress is not None:
            progress.update(1)
    networks = len(cfg.network_seeds())
    left = {k: {e["network_seed"]: e["layer"] for e in events if e["quantity"] == k} for k in samples}
    measured = {k: _mean_se([v for s, v in zip(cfg.network_seeds(), samples[k]) if s not in left[k]],
                            1 if k in EXPONENTS else cfg.depth + 1) for k in samples}
    (rho, rho_se), (q, q_se) = measured["rho"], measured["q"]
    left = {k: list(layers.values()) for k, layers in left.items()}
    return {
        "kind": "trajectory",
        "params": _params_record(params),
        "theory": {"q": trajectory.q.tolist(), "rho": trajectory.rho.tolist(),
                   "jacobian": trajectory.jacobian.tolist(), "angle_exponent": ex.angle,
                   "gradient_exponent": ex.gradient, "collapsed_q": ex.q},
        "measured": {k: {"mean": m.tolist(), "se": se.tolist()} for k, (m, se) in measured.items()
                     if k in LAYER_QUANTITIES},
        "measured_exponents": {"angle": float(measured["angle"][0][0]), "angle_se": float(measured["angle"][1][0]),
                               "gradient": float(measured["gradient"][0][0]),
                               "gradient_se": float(measured["gradient"][1][0])},
        "out_of_float32_range": {"networks": networks, "events": events,
                                 "networks_by_quantity": {k: len(layers) for k, layers in left.items()}},
        "checks": {
            "rho": _compared(trajectory.rho, rho, rho_se, RHO_FLOOR, False, left["rho"], networks),
            "q": _compared(trajectory.q, q, q_se, Q_FLOOR, True, left["q"], networks),
            "jacobian": _compared(trajectory.jacobian, *measured["jacobian"], JACOBIAN_FLOOR, True,
                                  left["jacobian"], networks),
            "angle_exponent": _compared(ex.angle, *measured["angle"], 0.0, False, left["angle"], networks),
            "gradient_exponent": _compared(ex.gradient, *measured["gradient"], 0.0, False, left["gradient"],
                                           networks),
            "se_below_floors": bool(np.all(STANDARD_ERRORS * rho_se <= RHO_FLOOR)
                                    and np.all(STANDARD_ERRORS * q_se / q <= Q_FLOOR)),
        },
    }


def _params_record(params: BlockParams) -> dict:
    return {**dataclasses.asdict(params), "activation": str(params.activation)}


def _evaluate_finite_depth(name: str, cfg: SignalPropConfig, progress, theory: dict) -> dict:
    """The depth-L exponents of setting `name` against their mean over random float64 networks (networks whose
    rate is not finite recorded, left out of the mean and failing that check), and the log growth after every
    block for the figure."""
    params, ex = theory["params"], theory["exponents"]
    samples = {k: [] for k in FINITE_DEPTH_QUANTITIES}
    curves = {k: [] for k in FINITE_DEPTH_QUANTITIES + ("q",)}
    events = []
    for seed in cfg.network_seeds():
        run = measure_finite_depth(params, cfg.depth, cfg.width, cfg.q0, cfg.probes, seed, cfg.device)
        for k in FINITE_DEPTH_QUANTITIES:
            if math.isfinite(run[k]):
                samples[k].append([run[k]])
                curves[k].append(run["log_growth"][k])
            else:
                events.append({"network_seed": seed, "quantity": k, "layer": None})
        curves["q"].append(run["q"])
        if progress is not None:
            progress.update(1)
    networks = len(cfg.network_seeds())
    measured = {k: _mean_se(samples[k], 1) for k in FINITE_DEPTH_QUANTITIES}
    left = {k: [None for e in events if e["quantity"] == k] for k in FINITE_DEPTH_QUANTITIES}
    curve_stats = {k: _mean_se([c for c in v if np.all(np.isfinite(c))], cfg.depth + 1) for k, v in curves.items()}
    return {
        "kind": "finite_depth",
        "params": _params_record(params),
        "depth": cfg.depth, "q0": cfg.q0, "crossing": theory["crossing"],
        "theory": {**{k: getattr(ex, k) for k in FINITE_DEPTH_QUANTITIES}, "q": ex.q,
                   "log_growth": theory["log_growth"]},
        "measured": {k: {"mean": float(m[0]), "se": float(se[0])} for k, (m, se) in measured.items()},
        "measured_log_growth": {k: {"mean": m.tolist(), "se": se.tolist()} for k, (m, se) in curve_stats.items()},
        "non_finite": {"networks": networks, "events": events,
                       "networks_by_quantity": {k: len(v) for k, v in left.items()}},
        "checks": {k: _compared(getattr(ex, k), *measured[k], FINITE_DEPTH_FLOOR, False, left[k], networks,
                                "not finite") for k in FINITE_DEPTH_QUANTITIES},
    }


def _measurement(check: dict, mean, se, spec: str, se_spec: str, networks: int, left_as: str = "out of float32 range"
                 ) -> str:
    if check["not_computable"]:
        return f"n/a: {check['not_computable']}"
    text = f"{checks.shown(mean, spec)} ± {checks.shown(se, se_spec)}"
    if check["networks_out_of_range"]:
        layer = check["first_layer_out_of_range"]
        text += (f"; {check['networks_out_of_range']} of {networks} networks {left_as}"
                 + (f" from layer {layer} on" if layer is not None else "") + " (left out; counted as a failure)")
    return text


def verdict_rows(results: dict) -> list[Verdict]:
    """Five rows per trajectory setting (claim = the setting): rho, q and the Jacobian growth at their worst
    layer, and both exponents; three per finite-depth setting: its depth-L exponents; prediction = theory,
    measurement = mean ± SE over the networks."""
    rows = []
    for name, r in results.items():
        if r["kind"] == "finite_depth":
            rows += _finite_depth_rows(name, r)
            continue
        c, th, me = r["checks"], r["theory"], r["measured"]
        networks = r["out_of_float32_range"]["networks"]
        for key, label, spec, se_spec, tolerance in (("rho", "rho", ".4f", ".4f", "<= {:.3f}"),
                                                      ("q", "q", ".4g", ".4f", "rel <= {:.3f}"),
                                                      ("jacobian", "|J|^2/nd", ".4g", ".2g", "rel <= {:.3f}")):
            check = c[key]
            L = check["worst_layer"]
            if L is None:   # not computable: show the first layer where it went wrong
                L = check["first_layer_out_of_range"] if check["first_layer_out_of_range"] is not None else \
                    _first_out_of_range(np.asarray(th[key], float), positive=False) or 0
            rows.append(Verdict.check(
                f"{label} ({'worst ' if check['worst_layer'] is not None else ''}layer {L})",
                checks.shown(th[key][L], spec),
                _measurement(check, me[key]["mean"][L], me[key]["se"][L], spec, se_spec, networks),
                tolerance.format(check["tolerance_at_worst"]) if check["tolerance_at_worst"] is not None else "",
                check["pass"], claim=name))
        e = r["measured_exponents"]
        for exponent in EXPONENTS:
            check = c[f"{exponent}_exponent"]
            rows.append(Verdict.check(
                f"{exponent} exponent", checks.shown(th[f"{exponent}_exponent"], "+.4f"),
                _measurement(check, e[exponent], e[f"{exponent}_se"], "+.4f", ".4f", networks),
                f"<= {check['tolerance_at_worst']:.4f}" if check["tolerance_at_worst"] is not None else "",
                check["pass"], claim=name))
    return rows


FINITE_DEPTH_LABELS = {"angle": "angle exponent", "gradient": "common-mode gradient exponent",
                       "gradient_frobenius": "Frobenius gradient exponent"}


def _finite_depth_rows(name: str, r: dict) -> list[Verdict]:
    """The three depth-L exponents of a finite-depth setting (per block, natural log)."""
    networks = r["non_finite"]["networks"]
    where = f"depth {r['depth']} from q0 = {checks.shown(r['q0'], 'g')}"
    rows = []
    for k in FINITE_DEPTH_QUANTITIES:
        check, me = r["checks"][k], r["measured"][k]
        extra = f", n = {r['params']['n_tokens']}" if k == "gradient_frobenius" else ""
        rows.append(Verdict.check(
            f"{FINITE_DEPTH_LABELS[k]} ({where}{extra})", checks.shown(r["theory"][k], "+.4f"),
            _measurement(check, me["mean"], me["se"], "+.4f", ".4f", networks, "not finite"),
            f"<= {check['tolerance_at_worst']:.4f}" if check["tolerance_at_worst"] is not None else "",
            check["pass"], claim=name))
    if r["crossing"] is not None:
        c, p = r["crossing"], r["params"]
        x, y = c["plane"]
        rows.append(Verdict.check(
            f"predicted crossing of the common-mode exponents ({where}) in the ({x}, {y}) plane",
            f"{x} = {p[x]:.4f}, {y} = {p[y]:.4f}",
            f"theory there: lambda_a {checks.shown(c['angle'], '+.1e')}, lambda_g "
            f"{checks.shown(c['gradient'], '+.1e')}"
            + ("" if c["exact"] else "; no exact crossing inside the bounds (the closest point)"), "", None,
            claim=name))
    return rows
