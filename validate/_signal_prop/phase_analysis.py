"""The phase diagram's verdicts: trained losses against the exponents at initialization.

The predictor is fixed in advance and has no fitted parameter: the distance of a point's exponents from the
predicted optimum, |lambda| = sqrt(lambda_a^2 + lambda_g^2) (per block, natural log).

The default plane (alpha against sigma_w; asymptotic exponents):
- Spearman correlation between the mean final test loss of each grid point and |lambda|: PASS when
  rho_s >= 0.5 with p < 0.01 (Cowsik et al. 2024, abstract, say "well predicted"; 0.5 is the conventional
  threshold of a strong rank correlation).
- Distance, in cells of the training grid, from the loss-minimizing grid point to the lambda_a = 0 curve of the
  dense map: PASS when some grid point statistically tied with the minimum (mean loss within 2 standard errors,
  standard errors from the seed-to-seed spread) lies within one cell of it. (The two asymptotic zero curves never
  cross, by the sum rule lambda_g - lambda_a = lambda_q + sum over attention sublayers of
  log(1 + alpha_A^2 sigma_V^2 g^2/(a_A^2 q)) > 0 at a stationary norm, so the "critical point" is a window edge and
  its distance tests nothing; it is still recorded.) The same distance to the finite-depth curve of the trained
  depth is reported beside it.
Also reported, not judged: the seed-to-seed Spearman across points (the ceiling any predictor can reach at
this noise), each exponent alone, the finite-depth |lambda|, and a leave-one-point-out cross-validated
quadratic fit of the loss in (lambda_a, lambda_g).

The crossing experiment (sigma_V against sigma_w, where the finite-depth zero curves cross), for Adam and for
SGD, and for each definition of the exponents (DEFINITIONS: the finite-depth angle exponent with the common-mode
or the Frobenius gradient exponent, and both measured on initialized networks):
- distance from the loss minimum (and from the points tied with it) to the definition's crossing: PASS when a
  tied point lies within one cell;
- Spearman of the final loss against the definition's |lambda| (as above);
- simultaneous vanishing (simultaneous_vanishing): PASS when the minimum lies within one cell of a crossing AND
  a point on that definition's lambda_a = 0 curve more than two cells from the crossing has a clearly worse loss
  (more than 2 combined standard errors above the minimum). If instead the minimum sits on lambda_a = 0 with
  lambda_g away from 0 (it follows the angle exponent's zero curve wherever lambda_g is), the verdict says so:
  that is evidence against the paper's claim in this reconstruction; so it does when the minimum follows neither
  (far from lambda_a = 0 too), and calls a minimum on lambda_a = 0 one to two cells from a crossing, with the rest
  of the curve worse, inconclusive;
- Adam against SGD (reported): the rank correlation of their point losses and the distance between their minima.

Divergence (a run whose training loss, gradient or test loss became NaN or inf; validate._signal_prop.
batched_train records the step) counts as the worst outcome: a point with a diverged seed has mean loss +inf,
which ranks above every finite loss in the Spearman (diverged points tie with each other) and never is the
loss minimum. The divergence row says how many runs diverged and where. A verdict that cannot be computed
(every point diverged, the loss or the predictor is the same at every point, fewer than 3 points with a finite
prediction, no crossing in the window) is FAIL, its measurement the reason. Points whose exponents are NaN are
left out of the Spearman and counted.
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np

from validate._common.checks import shown
from validate._common.reporting import Verdict
from validate._signal_prop.phase_experiment import PhaseDiagramConfig

SPEARMAN_THRESHOLD, SPEARMAN_P_MAX = 0.5, 0.01
TIE_STANDARD_ERRORS, DISTANCE_TOLERANCE_CELLS = 2.0, 1.0
FAR_FROM_CROSSING_CELLS = 2.0    # "more than two cells away" from a crossing, on the lambda_a = 0 curve
CURVE_REFINEMENT = 32            # measured (training-grid) maps are interpolated this much finer to trace curves
HEADLINE = ("spearman", "spearman_p", "min_loss_point", "distance_cells", "finite_depth_distance_cells",
            "predicted_critical_point")
DEFINITIONS = {"common": "common mode, depth L", "frobenius": "Frobenius, depth L",
               "measured": "measured at init (Frobenius)"}
OPTIMIZER_NAMES = {"adam": "Adam", "sgd": "SGD"}


def exponent_distance(angle, gradient):
    """The parameter-free predictor: distance of (lambda_a, lambda_g) from the predicted optimum (0, 0)."""
    return np.hypot(angle, gradient)


def point_losses(cfg: PhaseDiagramConfig, rows: list[dict]) -> dict:
    """Per grid point (y-major, like train_points): mean and standard error of the final test loss over
    seeds (inf if any seed diverged), the per-seed losses, and how many seeds diverged."""
    by_point: dict[str, list[dict]] = {}
    for r in rows:
        by_point.setdefault(json.dumps(r["point"], sort_keys=True), []).append(r)
    mean, se, per_seed, diverged = [], [], [], []
    for p in cfg.train_points():
        results = [r["result"] for r in sorted(by_point[json.dumps(p, sort_keys=True)], key=lambda r: r["seed"])]
        losses = [math.inf if _diverged(r) else r["final_test_loss"] for r in results]
        per_seed.append(losses)
        diverged.append(sum(_diverged(r) for r in results))
        finite = np.isfinite(losses).all()
        mean.append(float(np.mean(losses)) if finite else math.inf)
        se.append(float(np.std(losses, ddof=1) / math.sqrt(len(losses))) if finite and len(losses) > 1
                  else math.nan)
    gx, gy = cfg.grid
    return {"mean": np.array(mean).reshape(gy, gx), "se": np.array(se).reshape(gy, gx),
            "per_seed": np.array(per_seed), "diverged": np.array(diverged).reshape(gy, gx)}


def _diverged(result: dict) -> bool:
    """A run that diverged, or whose final test loss is missing or not finite (rows stored by older versions
    marked only a non-finite training loss or gradient)."""
    loss = result.get("final_test_loss")
    return bool(result.get("diverged")) or loss is None or not math.isfinite(loss)


def rank_correlation(x, y) -> tuple[float | None, float | None, str | None]:
    """Spearman (rho, p) of x and y over the pairs where neither is NaN (+-inf rank at the ends), or
    (None, None, why) when it cannot be computed."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 3:
        return None, None, f"only {int(keep.sum())} point(s) with a prediction and a loss (3 needed)"
    if np.unique(y[keep]).size == 1:
        return None, None, ("every point diverged" if np.isinf(y[keep]).all()
                            else "the loss is the same at every point")
    if np.unique(x[keep]).size == 1:
        return None, None, "the prediction is the same at every point"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ties are expected (diverged points); spearmanr handles them
        rho, p_value = spearmanr(x[keep], y[keep])
    return float(rho), float(p_value), None


def cross_validated_quadratic(angle: np.ndarray, gradient: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Leave-one-point-out predictions of a least-squares quadratic in (lambda_a, lambda_g) (finite losses)."""
    features = np.stack([np.ones_like(angle), angle, gradient, angle**2, gradient**2, angle * gradient], 1)
    predictions = np.full(loss.shape, np.nan)
    for i in range(len(loss)):
        keep = np.arange(len(loss)) != i
        coef, *_ = np.linalg.lstsq(features[keep], loss[keep], rcond=None)
        predictions[i] = features[i] @ coef
    return predictions


def divergence_summary(rows: list[dict]) -> dict:
    """Every diverged run with the step it diverged at, and the counts."""
    runs = [{"point": r["point"], "seed": r["seed"], "diverged_at": r["result"].get("diverged_at")}
            for r in rows if _diverged(r["result"])]
    return {"runs": len(rows), "diverged_runs": len(runs),
            "diverged_points": len({json.dumps(r["point"], sort_keys=True) for r in runs}), "diverged": runs}


# ----------------------------------------------------------------------------------------------------
# Geometry on the plane, in cells of the training grid
# ----------------------------------------------------------------------------------------------------
def cell_size(xs, ys) -> np.ndarray:
    """(dx, dy) of the training grid: distances are measured in these units."""
    return np.array([xs[1] - xs[0], ys[1] - ys[0]], float)


def cells_between(cell: np.ndarray, a, b) -> float:
    """Distance between points a and b (x, y), in cells."""
    return float(np.hypot(*((np.asarray(a, float) - np.asarray(b, float)) / cell)))


def _refined(xs, ys, values, factor: int):
    """values (ny, nx) on ys x xs, bilinearly interpolated onto a grid `factor` times finer."""
    xs, ys, values = np.asarray(xs, float), np.asarray(ys, float), np.asarray(values, float)
    fine_x = np.linspace(xs[0], xs[-1], (len(xs) - 1) * factor + 1)
    fine_y = np.linspace(ys[0], ys[-1], (len(ys) - 1) * factor + 1)
    rows = np.array([np.interp(fine_x, xs, row) for row in values])
    return fine_x, fine_y, np.array([np.interp(fine_y, ys, column) for column in rows.T]).T


def _sign_change(a, b):
    """Where a and b (finite) have opposite signs or one of them is 0."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(a) & np.isfinite(b) & (((a < 0) & (b > 0)) | ((a > 0) & (b < 0)) | (a == 0) | (b == 0))


def zero_curve(xs, ys, values, refine: int = 1) -> np.ndarray:
    """Points (x, y) of the zero curve of values (ny, nx) on the grid ys x xs, shape (points, 2): where values
    change sign along a grid edge, placed by linear interpolation along it (refine > 1: on a grid that many
    times finer, bilinearly interpolated first). Non-finite values break the curve."""
    if refine > 1:
        xs, ys, values = _refined(xs, ys, values, refine)
    xs, ys, values = np.asarray(xs, float), np.asarray(ys, float), np.asarray(values, float)
    points = []
    for axis in (1, 0):
        a = values[:, :-1] if axis == 1 else values[:-1, :]
        b = values[:, 1:] if axis == 1 else values[1:, :]
        iy, ix = np.nonzero(_sign_change(a, b))
        va, vb = a[iy, ix], b[iy, ix]
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(va == vb, 0.0, va / (va - vb))
        if axis == 1:
            points.append(np.stack([xs[ix] + t * (xs[ix + 1] - xs[ix]), ys[iy]], 1))
        else:
            points.append(np.stack([xs[ix], ys[iy] + t * (ys[iy + 1] - ys[iy])], 1))
    return np.concatenate(points) if points else np.empty((0, 2))


def distance_to_curve(cell: np.ndarray, point, curve: np.ndarray) -> float | None:
    """Distance in cells from point (x, y) to the nearest point of a zero curve; None for an empty curve."""
    if len(curve) == 0:
        return None
    return float(np.min(np.hypot(*((curve - np.asarray(point, float)) / cell).T)))


def on_zero_curve(values) -> np.ndarray:
    """The training-grid points on the zero curve of values (ny, nx): of every two neighbours (along x or y)
    whose values have opposite signs (or one is 0), the one nearer to 0 (both when equally near); a boolean
    mask. Each marked point lies within half a cell of the curve along a grid line."""
    values = np.asarray(values, float)
    mask = np.zeros(values.shape, bool)
    for axis in (0, 1):
        a = values[:-1, :] if axis == 0 else values[:, :-1]
        b = values[1:, :] if axis == 0 else values[:, 1:]
        change = _sign_change(a, b)
        near_a, near_b = change & (np.abs(a) <= np.abs(b)), change & (np.abs(b) <= np.abs(a))
        if axis == 0:
            mask[:-1, :] |= near_a
            mask[1:, :] |= near_b
        else:
            mask[:, :-1] |= near_a
            mask[:, 1:] |= near_b
    return mask


def zero_crossings(xs, ys, first, second, refine: int = CURVE_REFINEMENT) -> list[tuple[float, float]]:
    """Where the zero curves of two maps (ny, nx) on ys x xs cross: the centres of the connected groups of
    cells of a `refine`-times finer bilinear grid in which both maps change sign (to 1/refine of a cell)."""
    from scipy.ndimage import label

    fine_x, fine_y, a = _refined(xs, ys, first, refine)
    _, _, b = _refined(xs, ys, second, refine)

    def changes(f):
        corners = np.stack([f[:-1, :-1], f[:-1, 1:], f[1:, :-1], f[1:, 1:]])
        with np.errstate(invalid="ignore"):
            return np.isfinite(corners).all(0) & (corners.min(0) <= 0) & (corners.max(0) >= 0)

    groups, count = label(changes(a) & changes(b), structure=np.ones((3, 3)))
    centres_x, centres_y = (fine_x[:-1] + fine_x[1:]) / 2, (fine_y[:-1] + fine_y[1:]) / 2
    found = []
    for k in range(1, count + 1):
        iy, ix = np.nonzero(groups == k)
        found.append((float(centres_x[ix].mean()), float(centres_y[iy].mean())))
    return found


def minimum_and_ties(mean, se):
    """(iy, ix) of the lowest finite mean loss and the mask of points tied with it (finite, within
    TIE_STANDARD_ERRORS combined standard errors; a missing SE counts as 0), or None when no loss is finite."""
    mean, se = np.asarray(mean, float), np.asarray(se, float)
    trained = np.isfinite(mean)
    if not trained.any():
        return None
    iy, ix = np.unravel_index(np.argmin(np.where(trained, mean, np.inf)), mean.shape)
    se_filled = np.where(np.isfinite(se), se, 0.0)
    tied = trained & (mean <= mean[iy, ix] + TIE_STANDARD_ERRORS * np.sqrt(se_filled**2 + se_filled[iy, ix]**2))
    return int(iy), int(ix), tied


def _grid_points(xs, ys) -> np.ndarray:
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy], -1)    # (ny, nx, 2)


def distances_to(xs, ys, mean, se, targets) -> dict:
    """From the loss minimum and from its tied points to the nearest of `targets` (an (N, 2) array of points: a
    crossing, a zero curve), in cells; "reason" when not computable."""
    found = minimum_and_ties(mean, se)
    targets = np.asarray(targets, float).reshape(-1, 2)
    if found is None:
        return {"cells": None, "tied_cells": None, "reason": "every grid point diverged: there is no loss minimum"}
    if len(targets) == 0:
        return {"cells": None, "tied_cells": None, "reason": "nothing to measure to inside the window"}
    iy, ix, tied = found
    cell, points = cell_size(xs, ys), _grid_points(xs, ys)
    minimum = distance_to_curve(cell, points[iy, ix], targets)
    tied_cells = min(distance_to_curve(cell, points[jy, jx], targets) for jy, jx in zip(*np.nonzero(tied)))
    return {"cells": minimum, "tied_cells": tied_cells, "reason": None}


# ----------------------------------------------------------------------------------------------------
# Simultaneous vanishing
# ----------------------------------------------------------------------------------------------------
def simultaneous_vanishing(xs, ys, mean, se, definitions: dict) -> dict:
    """Does the loss minimum sit where both exponents vanish, rather than anywhere on lambda_a = 0?

    definitions: name -> {"crossings": [(x, y), ...] (empty when the curves do not cross in the window),
    "angle": lambda_a at the training points (ny, nx), "curve": points (N, 2) of its zero curve}. For each
    definition with a crossing (the one nearest the minimum): the minimum's distance to it, and the training
    points on lambda_a = 0 (on_zero_curve) more than FAR_FROM_CROSSING_CELLS from it, each either tied with the
    minimum (within TIE_STANDARD_ERRORS combined SE) or clearly worse; and, whatever the minimum does, how many
    of those far points match or beat the training point nearest the crossing (is the crossing special along
    lambda_a = 0?).

    PASS ("pass") when for some definition the minimum lies within DISTANCE_TOLERANCE_CELLS of its crossing and
    one of those far points is clearly worse. Otherwise, for the crossing nearest the minimum: "against" when the
    minimum lies within one cell of lambda_a = 0 and either more than FAR_FROM_CROSSING_CELLS from the crossing
    or tied with a far point of the curve (the loss follows lambda_a = 0 wherever lambda_g is); "inconclusive"
    when it lies on lambda_a = 0 one to two cells from the crossing and every far point is worse; "neither" when
    it lies farther than a cell from lambda_a = 0 too; "not computable" without a minimum, without a crossing,
    or when lambda_a = 0 has no training point far from the crossing the minimum is at. Returns {"passed", "outcome", "summary" (a short
    line), "text", "definition" (the one the text is about), "per_definition"}."""
    def result(passed, outcome, text, definition=None, per=None):
        label = DEFINITIONS.get(definition, definition)
        if per and definition in per and outcome in ("against", "neither"):
            p = per[definition]
            near = p["nearest_point_to_crossing"]
            text += (f"; along lambda_a = 0, the training point nearest that crossing ({shown(near['loss'], '.3f')} "
                     f"± {shown(near['se'], '.3f')}) is matched within {TIE_STANDARD_ERRORS:g} SE or beaten by "
                     f"{p['far_curve_points_not_worse_than_crossing']} of the {p['far_curve_points']} points more "
                     f"than {FAR_FROM_CROSSING_CELLS:g} cells from it")
        summary = {"pass": f"minimum at the crossing ({label}), worse on lambda_a = 0 away from it",
                   "against": "against the claim: the minimum follows lambda_a = 0 wherever lambda_g is",
                   "neither": "against the claim: the minimum follows neither the crossing nor lambda_a = 0",
                   "inconclusive": "inconclusive: the minimum lies on lambda_a = 0, 1 to 2 cells from a crossing",
                   "not computable": text}[outcome]
        return {"passed": passed, "outcome": outcome, "summary": summary, "text": text, "definition": definition,
                "per_definition": per or {}}

    found = minimum_and_ties(mean, se)
    if found is None:
        return result(False, "not computable", "not computable: every grid point diverged")
    iy, ix, tied = found
    mean = np.asarray(mean, float)
    cell, points = cell_size(xs, ys), _grid_points(xs, ys)
    minimum = points[iy, ix]
    per = {}
    for name, d in definitions.items():
        if not len(d["crossings"]):
            continue
        crossing = min(d["crossings"], key=lambda c: cells_between(cell, minimum, c))
        far = on_zero_curve(d["angle"]) & (np.hypot(*((points - np.asarray(crossing)) / cell).transpose(2, 0, 1))
                                           > FAR_FROM_CROSSING_CELLS)
        worse = far & ~tied
        to_crossing = cells_between(cell, minimum, crossing)
        # the training point nearest the crossing against the far points of the curve: is the crossing special
        # along lambda_a = 0, whatever the global minimum does? (far points not clearly better than it)
        cy, cx = np.unravel_index(np.argmin(np.hypot(*((points - np.asarray(crossing)) / cell).transpose(2, 0, 1))),
                                  mean.shape)
        se_filled = np.where(np.isfinite(se), se, 0.0)
        at_crossing, at_crossing_se = mean[cy, cx], se_filled[cy, cx]
        far_not_worse = far & np.isfinite(mean) & (
            mean <= at_crossing + TIE_STANDARD_ERRORS * np.sqrt(se_filled**2 + at_crossing_se**2))
        per[name] = {"crossing": [float(crossing[0]), float(crossing[1])], "minimum_cells": to_crossing,
                     "minimum_to_curve_cells": distance_to_curve(cell, minimum, np.asarray(d["curve"])),
                     "far_curve_points": int(far.sum()), "far_curve_points_worse": int(worse.sum()),
                     "far_curve_points_tied": int((far & tied).sum()),
                     "far_curve_best": _best_on(mean, far),
                     "nearest_point_to_crossing": {"x": float(points[cy, cx, 0]), "y": float(points[cy, cx, 1]),
                                                   "loss": _number(at_crossing), "se": _number(se[cy, cx])},
                     "far_curve_points_not_worse_than_crossing": int(far_not_worse.sum()),
                     "passed": bool(to_crossing <= DISTANCE_TOLERANCE_CELLS and worse.any())}
    if not per:
        return result(False, "not computable", "not computable: no crossing inside the window")
    passing = [name for name in per if per[name]["passed"]]
    if passing:
        name = min(passing, key=lambda n: per[n]["minimum_cells"])
        p = per[name]
        return result(True, "pass", (
            f"the minimum lies {p['minimum_cells']:.2f} cells from the crossing ({DEFINITIONS.get(name, name)}); "
            f"on lambda_a = 0 more than {FAR_FROM_CROSSING_CELLS:g} cells from it, {p['far_curve_points_worse']} "
            f"of {p['far_curve_points']} points are worse by > {TIE_STANDARD_ERRORS:g} SE"), name, per)
    name = min(per, key=lambda n: per[n]["minimum_cells"])
    p = per[name]
    label = DEFINITIONS.get(name, name)
    to_curve = p["minimum_to_curve_cells"]
    if p["minimum_cells"] <= DISTANCE_TOLERANCE_CELLS and p["far_curve_points"] == 0:
        return result(False, "not computable", (
            f"not computable: the minimum lies {p['minimum_cells']:.2f} cells from the crossing ({label}), but "
            f"lambda_a = 0 has no training point more than {FAR_FROM_CROSSING_CELLS:g} cells from it"), name, per)
    on_curve = to_curve is not None and to_curve <= DISTANCE_TOLERANCE_CELLS
    if on_curve and p["minimum_cells"] <= FAR_FROM_CROSSING_CELLS and p["far_curve_points_tied"] == 0:
        return result(False, "inconclusive", (
            f"inconclusive: the loss minimum lies on lambda_a = 0 ({to_curve:.2f} cells from it), "
            f"{p['minimum_cells']:.2f} cells from the nearest crossing ({label}): more than "
            f"{DISTANCE_TOLERANCE_CELLS:g} cell away, yet every point of lambda_a = 0 more than "
            f"{FAR_FROM_CROSSING_CELLS:g} cells from it is worse by > {TIE_STANDARD_ERRORS:g} SE"), name, per)
    if on_curve:
        return result(False, "against", (
            f"against the claim in this reconstruction: the loss minimum follows lambda_a = 0 wherever lambda_g "
            f"is (minimum {to_curve:.2f} cells from lambda_a = 0, {p['minimum_cells']:.2f} cells from the nearest "
            f"crossing ({label}); on lambda_a = 0 more than {FAR_FROM_CROSSING_CELLS:g} cells from it, "
            f"{p['far_curve_points_tied']} of {p['far_curve_points']} points are tied with the minimum within "
            f"{TIE_STANDARD_ERRORS:g} SE)"), name, per)
    return result(False, "neither", (
        f"against the claim: the loss minimum lies {p['minimum_cells']:.2f} cells from the nearest crossing "
        f"({label}) and {shown(to_curve, '.2f')} cells from lambda_a = 0: it follows neither"), name, per)


def _best_on(mean, mask) -> float | None:
    values = np.asarray(mean, float)[mask]
    values = values[np.isfinite(values)]
    return float(values.min()) if values.size else None



def divergence_summary(rows: list[dict]) -> dict:
    """Every diverged run with the step it diverged at, and the counts."""
    runs = [{"point": r["point"], "seed": r["seed"], "diverged_at": r["result"].get("diverged_at")}
            for r in rows if _diverged(r["result"])]
    return {"runs": len(rows), "diverged_runs": len(runs),
            "diverged_points": len({json.dumps(r["point"], sort_keys=True) for r in runs}), "diverged": runs}


def _number(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _minimum_point(cfg: PhaseDiagramConfig, mean, se) -> dict:
    found = minimum_and_ties(mean, se)
    if found is None:
        return {cfg.x_field: None, cfg.y_field: None, "loss": None, "se": None}
    iy, ix, _ = found
    xs, ys = cfg.train_axes()
    return {cfg.x_field: float(xs[ix]), cfg.y_field: float(ys[iy]), "loss": float(mean[iy, ix]),
            "se": _number(se[iy, ix])}


def _seed_ceiling(per_seed) -> float | None:
    return rank_correlation(per_seed[:, 0], per_seed[:, 1])[0] if per_seed.shape[1] >= 2 else None


# ----------------------------------------------------------------------------------------------------
# The default plane
# ----------------------------------------------------------------------------------------------------
def analyse(cfg: PhaseDiagramConfig, rows: list[dict], maps: dict) -> dict:
    """The metrics and verdicts of a finished sweep of the plane experiment (whatever fraction of it diverged);
    maps: validate._signal_prop.phase_experiment.predict(cfg)."""
    train_angle, train_gradient = maps["train_angle"], maps["train_gradient"]
    losses = point_losses(cfg, rows)
    mean, se = losses["mean"], losses["se"]
    predictor = exponent_distance(train_angle, train_gradient)
    rho_s, p_value, spearman_reason = rank_correlation(predictor, mean)
    xs, ys = cfg.train_axes()
    mx, my = cfg.map_axes()
    found = minimum_and_ties(mean, se)

    # the loss minimum (and its tied points) to the lambda_a = 0 curve, asymptotic and of the trained depth
    curves = {"asymptotic": zero_curve(mx, my, maps["angle"]), "finite_depth": zero_curve(mx, my, maps["fd_angle"])}
    to_curve = {name: distances_to(xs, ys, mean, se, curve) for name, curve in curves.items()}
    for name, where in to_curve.items():
        if where["reason"] == "nothing to measure to inside the window":
            where["reason"] = "lambda_a does not vanish inside the window" + (
                "" if name == "asymptotic" else f" (depth {cfg.train.depth})")

    per_seed = losses["per_seed"]
    trained = np.isfinite(mean)
    usable = (trained & np.isfinite(train_angle) & np.isfinite(train_gradient)).ravel()
    cv, cv_rho = np.full(mean.size, np.nan), None
    if usable.sum() >= 8:
        cv[usable] = cross_validated_quadratic(train_angle.ravel()[usable], train_gradient.ravel()[usable],
                                               mean.ravel()[usable])
        cv_rho = rank_correlation(cv[usable], mean.ravel()[usable])[0]

    critical = maps["critical"]
    critical_xy = np.array([critical[cfg.x_field], critical[cfg.y_field]], float)
    jx = int(np.nanargmin(np.abs(xs - critical_xy[0]))) if np.isfinite(critical_xy[0]) else 0
    jy = int(np.nanargmin(np.abs(ys - critical_xy[1]))) if np.isfinite(critical_xy[1]) else 0
    task = cfg.train.task
    metrics = {
        "predictor": "|lambda| = sqrt(lambda_a^2 + lambda_g^2), no fitted parameters",
        "spearman": rho_s, "spearman_p": p_value, "spearman_not_computable": spearman_reason,
        "points_without_prediction": int(np.isnan(predictor).sum()),
        "seed_to_seed_spearman": _seed_ceiling(per_seed),
        "cv_quadratic_spearman": cv_rho,
        "spearman_abs_angle_only": rank_correlation(np.abs(train_angle), mean)[0],
        "spearman_abs_gradient_only": rank_correlation(np.abs(train_gradient), mean)[0],
        "spearman_finite_depth": rank_correlation(
            exponent_distance(maps["train_fd_angle"], maps["train_fd_gradient"]), mean)[0],
        "spearman_finite_depth_frobenius": rank_correlation(
            exponent_distance(maps["train_fd_angle"], maps["train_fd_gradient_frobenius"]), mean)[0],
        "min_loss_point": _minimum_point(cfg, mean, se),
        "distance_to": "the lambda_a = 0 curve of the asymptotic exponents (dense map), in training-grid cells",
        "distance_cells": to_curve["asymptotic"]["cells"],
        "distance_cells_to_nearest_tied_point": to_curve["asymptotic"]["tied_cells"],
        "distance_not_computable": to_curve["asymptotic"]["reason"],
        "finite_depth_distance_cells": to_curve["finite_depth"]["cells"],
        "finite_depth_distance_cells_to_nearest_tied_point": to_curve["finite_depth"]["tied_cells"],
        "finite_depth_distance_not_computable": to_curve["finite_depth"]["reason"],
        "finite_depth": {"depth": cfg.train.depth, "q0": 1.0},
        "predicted_critical_point": critical,
        "loss_at_grid_point_nearest_prediction": {cfg.x_field: float(xs[jx]), cfg.y_field: float(ys[jy]),
                                                  "loss": _number(mean[jy, jx]), "se": _number(se[jy, jx])},
        "tied_with_minimum": int(found[2].sum()) if found else 0,
        **divergence_summary(rows),
        "bayes_loss": task.bayes_loss(), "context_free_loss": task.context_free_loss(),
    }
    return {"metrics": metrics, "verdicts": verdict_rows(metrics, cfg), "losses": losses, "predictor": predictor,
            "cv_prediction": cv.reshape(mean.shape), "curves": curves}


def _distance_text(cells, tied, reason) -> str:
    return (f"not computable: {reason}" if reason else f"{cells:.2f} cells ({tied:.2f} to a tied point)")


def _divergence_text(metrics: dict) -> str:
    steps = [r["diverged_at"] for r in metrics["diverged"] if r["diverged_at"] is not None]
    return (f"{metrics['diverged_runs']} of {metrics['runs']} runs at {metrics['diverged_points']} point(s)"
            + ("" if not steps else f", at step {steps[0]}" if min(steps) == max(steps)
               else f", at steps {min(steps)} to {max(steps)}"))


def _spearman_text(rho_s, p_value, reason, left_out: int = 0) -> str:
    text = f"not computable: {reason}" if rho_s is None else f"{rho_s:+.3f} (p = {p_value:.2g})"
    if left_out:
        text += f"; {left_out} point(s) without a finite prediction left out"
    return text


def _spearman_passed(rho_s, p_value) -> bool:
    return rho_s is not None and rho_s >= SPEARMAN_THRESHOLD and p_value < SPEARMAN_P_MAX


def verdict_rows(metrics: dict, cfg: PhaseDiagramConfig | None = None) -> list[Verdict]:
    """The plane's two judged rows and the divergence row (INFO)."""
    depth = cfg.train.depth if cfg is not None else metrics["finite_depth"]["depth"]
    where = _distance_text(metrics["distance_cells"], metrics["distance_cells_to_nearest_tied_point"],
                           metrics["distance_not_computable"])
    if not metrics["distance_not_computable"]:
        where += f"; to the depth-{depth} curve: " + _distance_text(
            metrics["finite_depth_distance_cells"], metrics["finite_depth_distance_cells_to_nearest_tied_point"],
            metrics["finite_depth_distance_not_computable"])
    return [
        Verdict.check("Spearman(final test loss, |lambda|)", "strongly positive",
                      _spearman_text(metrics["spearman"], metrics["spearman_p"], metrics["spearman_not_computable"],
                                     metrics["points_without_prediction"]),
                      f">= {SPEARMAN_THRESHOLD}, p < {SPEARMAN_P_MAX}",
                      _spearman_passed(metrics["spearman"], metrics["spearman_p"])),
        Verdict.check("loss minimum to the lambda_a = 0 curve (asymptotic)", "0 cells", where,
                      f"a point within {TIE_STANDARD_ERRORS:g} SE of the min lies <= "
                      f"{DISTANCE_TOLERANCE_CELLS:g} cell from it",
                      metrics["distance_not_computable"] is None
                      and metrics["distance_cells_to_nearest_tied_point"] <= DISTANCE_TOLERANCE_CELLS),
        Verdict.check("runs diverged (NaN or inf loss, gradient or test loss)", "", _divergence_text(metrics),
                      "counted as the worst loss", None),
    ]


def headline(metrics: dict, cfg: PhaseDiagramConfig) -> str:
    """The numbers behind the verdicts in one paragraph, for the terminal."""
    if cfg.experiment == "crossing":
        return crossing_headline(metrics, cfg)
    where = {k: v for k, v in metrics["min_loss_point"].items() if k not in ("loss", "se")}
    critical = metrics["predicted_critical_point"]
    predicted = {k: round(v, 4) for k, v in critical.items() if k in (cfg.x_field, cfg.y_field)}
    rank = {key: shown(metrics[key], "+.3f") for key in (
        "spearman", "seed_to_seed_spearman", "cv_quadratic_spearman", "spearman_abs_angle_only",
        "spearman_abs_gradient_only", "spearman_finite_depth")}
    return (f"Spearman {rank['spearman']} (p = {shown(metrics['spearman_p'], '.2g')}; seed-to-seed ceiling "
            f"{rank['seed_to_seed_spearman']}; |angle| alone {rank['spearman_abs_angle_only']}; |gradient| alone "
            f"{rank['spearman_abs_gradient_only']}; CV quadratic {rank['cv_quadratic_spearman']}; depth-"
            f"{metrics['finite_depth']['depth']} |lambda| {rank['spearman_finite_depth']}); min loss "
            f"{shown(metrics['min_loss_point']['loss'], '.3f')} at {where}, "
            f"{shown(metrics['distance_cells'], '.2f')} cells from the asymptotic lambda_a = 0 curve and "
            f"{shown(metrics['finite_depth_distance_cells'], '.2f')} from the depth-{metrics['finite_depth']['depth']} "
            f"one; the asymptotic critical point {predicted} has exact={critical['exact']} (the zero curves do "
            f"not cross: sum rule); {metrics['diverged_runs']} of {metrics['runs']} runs diverged")


# ----------------------------------------------------------------------------------------------------
# The crossing experiment
# ----------------------------------------------------------------------------------------------------
def measured_maps(cfg: PhaseDiagramConfig, rows: list[dict]) -> dict:
    """The exponents measured on initialized networks, per training point (ny, nx): the mean over seeds
    ("angle", "gradient", "gradient_frobenius"), their standard errors ("<name>_se") and the number of
    networks with a finite value ("networks")."""
    by_point: dict[str, list[dict]] = {}
    for r in rows:
        by_point.setdefault(json.dumps(r["point"], sort_keys=True), []).append(r["result"])
    gx, gy = cfg.grid
    maps = {}
    for name in ("angle", "gradient", "gradient_frobenius"):
        mean, se, count = [], [], []
        for p in cfg.train_points():
            values = np.array([np.nan if r.get(name) is None else r[name]
                               for r in by_point.get(json.dumps(p, sort_keys=True), [])], float)
            values = values[np.isfinite(values)]
            count.append(values.size)
            mean.append(values.mean() if values.size else np.nan)
            se.append(values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else np.nan)
        maps[name] = np.array(mean).reshape(gy, gx)
        maps[name + "_se"] = np.array(se).reshape(gy, gx)
        maps["networks"] = np.array(count).reshape(gy, gx)
    return maps


def definition_maps(cfg: PhaseDiagramConfig, maps: dict, measured: dict) -> dict:
    """Per definition: its lambda_a and lambda_g at the training points, its crossings in the window and the
    points of its lambda_a = 0 curve (predicted: sim's critical point and the dense map; measured: traced on
    the training grid, bilinearly interpolated)."""
    xs, ys = cfg.train_axes()
    mx, my = cfg.map_axes()
    fd_curve = zero_curve(mx, my, maps["fd_angle"])
    crossings = maps["crossings"]
    out = {}
    for name, gradient in (("common", "fd_gradient"), ("frobenius", "fd_gradient_frobenius")):
        c = crossings[name]
        out[name] = {"angle": maps["train_fd_angle"], "gradient": maps["train_" + gradient],
                     "crossings": [(c[cfg.x_field], c[cfg.y_field])] if c["exact"] else [], "curve": fd_curve}
    out["measured"] = {"angle": measured["angle"], "gradient": measured["gradient_frobenius"],
                       "crossings": zero_crossings(xs, ys, measured["angle"], measured["gradient_frobenius"]),
                       "curve": zero_curve(xs, ys, measured["angle"], refine=CURVE_REFINEMENT)}
    return out


def _crossing_record(cfg: PhaseDiagramConfig, crossings) -> list[dict]:
    return [{cfg.x_field: float(x), cfg.y_field: float(y)} for x, y in crossings]


def analyse_optimizer(cfg: PhaseDiagramConfig, rows: list[dict], definitions: dict) -> dict:
    """One optimizer's losses against every definition: distances to the crossings, Spearman against |lambda|,
    the simultaneous-vanishing verdict."""
    xs, ys = cfg.train_axes()
    losses = point_losses(cfg, rows)
    mean, se = losses["mean"], losses["se"]
    found = minimum_and_ties(mean, se)
    per_definition = {}
    for name, d in definitions.items():
        predictor = exponent_distance(d["angle"], d["gradient"])
        rho_s, p_value, reason = rank_correlation(predictor, mean)
        distance = distances_to(xs, ys, mean, se, np.array(d["crossings"], float).reshape(-1, 2))
        if distance["reason"] == "nothing to measure to inside the window":
            distance["reason"] = "the zero curves do not cross inside the window"
        per_definition[name] = {"spearman": rho_s, "spearman_p": p_value, "spearman_not_computable": reason,
                                "points_without_prediction": int(np.isnan(predictor).sum()),
                                "distance_cells": distance["cells"],
                                "distance_cells_to_nearest_tied_point": distance["tied_cells"],
                                "distance_not_computable": distance["reason"],
                                "crossings": _crossing_record(cfg, d["crossings"])}
    vanishing = simultaneous_vanishing(xs, ys, mean, se, definitions)
    return {"losses": losses, "metrics": {
        "min_loss_point": _minimum_point(cfg, mean, se), "tied_with_minimum": int(found[2].sum()) if found else 0,
        "seed_to_seed_spearman": _seed_ceiling(losses["per_seed"]), "definitions": per_definition,
        "simultaneous_vanishing": vanishing, **divergence_summary(rows)}}


def compare_optimizers(cfg: PhaseDiagramConfig, adam: dict, sgd: dict) -> dict:
    """Adam against SGD: the rank correlation of their point losses, their minima and the distance between."""
    rho_s, p_value, reason = rank_correlation(adam["losses"]["mean"], sgd["losses"]["mean"])
    a, b = adam["metrics"]["min_loss_point"], sgd["metrics"]["min_loss_point"]
    apart = None
    if a["loss"] is not None and b["loss"] is not None:
        xs, ys = cfg.train_axes()
        apart = cells_between(cell_size(xs, ys), (a[cfg.x_field], a[cfg.y_field]), (b[cfg.x_field], b[cfg.y_field]))
    return {"spearman": rho_s, "spearman_p": p_value, "spearman_not_computable": reason, "minima_cells_apart": apart}


def analyse_crossing(cfg: PhaseDiagramConfig, rows: dict, maps: dict, measured_rows: list[dict],
                     learning_rate: dict) -> dict:
    """The crossing experiment's metrics and verdicts. rows: optimizer ("adam", "sgd") -> training rows;
    maps: predict(cfg); measured_rows: the rows of MeasureInitialExponents; learning_rate: how SGD's was set."""
    measured = measured_maps(cfg, measured_rows)
    definitions = definition_maps(cfg, maps, measured)
    per_optimizer = {name: analyse_optimizer(cfg, rows[name], definitions) for name in rows}
    task = cfg.train.task
    metrics = {
        "predictor": "|lambda| = sqrt(lambda_a^2 + lambda_g^2) of each definition, no fitted parameters",
        "definitions": DEFINITIONS,
        "finite_depth": {"depth": cfg.train.depth, "q0": 1.0, "n_tokens": cfg.base.n_tokens},
        "predicted_crossings": maps["crossings"],
        "measured_crossings": _crossing_record(cfg, definitions["measured"]["crossings"]),
        "measured_common_mode_crossings": _crossing_record(cfg, zero_crossings(
            *cfg.train_axes(), measured["angle"], measured["gradient"])),
        "measured_networks_per_point": int(measured["networks"].min()) if measured["networks"].size else 0,
        "measured_minus_predicted": {
            name: _number(float(np.nanmean(measured[name] - maps["train_" + fd])))
            for name, fd in (("angle", "fd_angle"), ("gradient", "fd_gradient"),
                             ("gradient_frobenius", "fd_gradient_frobenius"))},
        "sgd_learning_rate": learning_rate,
        "optimizers": {name: result["metrics"] for name, result in per_optimizer.items()},
        "bayes_loss": task.bayes_loss(), "context_free_loss": task.context_free_loss(),
    }
    if "adam" in per_optimizer and "sgd" in per_optimizer:
        metrics["adam_against_sgd"] = compare_optimizers(cfg, per_optimizer["adam"], per_optimizer["sgd"])
    all_rows = [r for name in rows for r in rows[name]]
    metrics.update(divergence_summary(all_rows))
    return {"metrics": metrics, "verdicts": crossing_verdict_rows(metrics, cfg), "measured": measured,
            "definitions": definitions, "losses": {name: r["losses"] for name, r in per_optimizer.items()}}


def crossing_verdict_rows(metrics: dict, cfg: PhaseDiagramConfig) -> list[Verdict]:
    """Per optimizer: simultaneous vanishing, then per definition the distance to its crossing and the Spearman;
    then Adam against SGD, SGD's learning rate and the divergence row (INFO)."""
    rows = []
    for optimizer, m in metrics["optimizers"].items():
        name = OPTIMIZER_NAMES.get(optimizer, optimizer)
        vanishing = m["simultaneous_vanishing"]
        rows.append(Verdict.check(
            "simultaneous vanishing: loss minimum at a crossing, not anywhere on lambda_a = 0",
            f"min <= {DISTANCE_TOLERANCE_CELLS:g} cell from a crossing; worse on lambda_a = 0 farther away",
            vanishing["text"], f"{DISTANCE_TOLERANCE_CELLS:g} cell; > {TIE_STANDARD_ERRORS:g} SE worse at > "
                               f"{FAR_FROM_CROSSING_CELLS:g} cells", vanishing["passed"], claim=name))
        for definition, label in DEFINITIONS.items():
            d = m["definitions"][definition]
            rows.append(Verdict.check(
                f"loss minimum to the crossing ({label})", "0 cells",
                _distance_text(d["distance_cells"], d["distance_cells_to_nearest_tied_point"],
                               d["distance_not_computable"]),
                f"a point within {TIE_STANDARD_ERRORS:g} SE of the min lies <= {DISTANCE_TOLERANCE_CELLS:g} cell "
                "away", d["distance_not_computable"] is None
                and d["distance_cells_to_nearest_tied_point"] <= DISTANCE_TOLERANCE_CELLS, claim=name))
        for definition, label in DEFINITIONS.items():
            d = m["definitions"][definition]
            rows.append(Verdict.check(
                f"Spearman(final test loss, |lambda|) ({label})", "strongly positive",
                _spearman_text(d["spearman"], d["spearman_p"], d["spearman_not_computable"],
                               d["points_without_prediction"]),
                f">= {SPEARMAN_THRESHOLD}, p < {SPEARMAN_P_MAX}", _spearman_passed(d["spearman"], d["spearman_p"]),
                claim=name))
    if "adam_against_sgd" in metrics:
        c = metrics["adam_against_sgd"]
        minima = {OPTIMIZER_NAMES[o]: metrics["optimizers"][o]["min_loss_point"] for o in ("adam", "sgd")}
        where = "; ".join(f"{o} min {shown(p['loss'], '.3f')} at ({shown(p[cfg.x_field], '.3g')}, "
                          f"{shown(p[cfg.y_field], '.3g')})" for o, p in minima.items())
        rows.append(Verdict.check(
            "Adam against SGD: rank correlation of the point losses; minima apart", "",
            f"{_spearman_text(c['spearman'], c['spearman_p'], c['spearman_not_computable'])}; minima "
            f"{shown(c['minima_cells_apart'], '.2f')} cells apart ({where})", "", None, claim="both"))
    lr = metrics["sgd_learning_rate"]
    rows.append(Verdict.check("SGD learning rate (one for the whole plane)", "", lr["text"], "", None, claim="SGD"))
    rows.append(Verdict.check("runs diverged (NaN or inf loss, gradient or test loss)", "", _divergence_text(metrics),
                              "counted as the worst loss", None, claim="both"))
    return rows


def crossing_headline(metrics: dict, cfg: PhaseDiagramConfig) -> str:
    """The crossing experiment's numbers in one paragraph, for the terminal."""
    crossings = "; ".join(
        f"{DEFINITIONS[name]} ({shown(c[cfg.x_field], '.3f')}, {shown(c[cfg.y_field], '.3f')})"
        + ("" if c["exact"] else " not exact: no crossing in the window")
        for name, c in metrics["predicted_crossings"].items())
    measured = ", ".join(f"({p[cfg.x_field]:.3f}, {p[cfg.y_field]:.3f})" for p in metrics["measured_crossings"]) \
        or "none in the window"
    parts = [f"crossings in ({cfg.x_field}, {cfg.y_field}): {crossings}; measured at init: {measured}"]
    for optimizer, m in metrics["optimizers"].items():
        best = m["min_loss_point"]
        parts.append(f"{OPTIMIZER_NAMES.get(optimizer, optimizer)}: min loss {shown(best['loss'], '.3f')} at "
                     f"({shown(best[cfg.x_field], '.3g')}, {shown(best[cfg.y_field], '.3g')}), "
                     f"{m['tied_with_minimum']} point(s) tied; {m['simultaneous_vanishing']['text']}")
    parts.append(f"SGD learning rate: {metrics['sgd_learning_rate']['text']}")
    parts.append(f"{metrics['diverged_runs']} of {metrics['runs']} runs diverged")
    return "\n".join(parts)


def learning_rate_choice(cfg: PhaseDiagramConfig, rows: list[dict]) -> dict:
    """SGD's learning rate for the whole plane: the candidate with the lowest mean final test loss over seeds
    at the central point (a diverged seed makes its candidate's loss +inf); the smallest candidate if every one
    diverged. Returns the value, each candidate's loss and a one-line account of the choice."""
    by_rate: dict[float, list[float]] = {}
    for r in rows:
        loss = math.inf if _diverged(r["result"]) else r["result"]["final_test_loss"]
        by_rate.setdefault(float(r["point"]["lr"]), []).append(loss)
    candidates = []
    for rate in cfg.sgd_lr_candidates:
        losses = by_rate[float(rate)]
        finite = bool(np.isfinite(losses).all())
        candidates.append({"lr": float(rate), "mean_loss": float(np.mean(losses)) if finite else None,
                           "se": float(np.std(losses, ddof=1) / math.sqrt(len(losses)))
                           if finite and len(losses) > 1 else None,
                           "diverged_seeds": int(np.sum(~np.isfinite(losses)))})
    finite = [c for c in candidates if c["mean_loss"] is not None]
    centre = cfg.central_point()
    where = f"({cfg.x_field} = {centre[cfg.x_field]:g}, {cfg.y_field} = {centre[cfg.y_field]:g})"
    losses = ", ".join(f"{c['lr']:g}: " + ("diverged" if c["mean_loss"] is None else
                                          f"{c['mean_loss']:.3f}" + (f" ± {c['se']:.3f}" if c["se"] else ""))
                       for c in candidates)
    if finite:
        best = min(finite, key=lambda c: c["mean_loss"])
        rates = sorted(c["lr"] for c in candidates)
        edge = best["lr"] in (rates[0], rates[-1])
        text = (f"{best['lr']:g}, the lowest mean final test loss over {len(cfg.seeds)} seed(s) at the central point "
                f"{where} among {losses}" + ("; at the edge of the candidates" if edge else ""))
        value = best["lr"]
    else:
        value, edge = min(c["lr"] for c in candidates), True
        text = f"{value:g}, the smallest candidate: every candidate diverged at the central point {where}"
    return {"value": value, "chosen": "scan", "central_point": centre, "candidates": candidates,
            "at_edge_of_candidates": edge, "text": text}


def learning_rate_given(cfg: PhaseDiagramConfig) -> dict:
    """SGD's learning rate as the user gave it (--sgd-lr)."""
    return {"value": cfg.sgd_lr, "chosen": "given", "central_point": cfg.central_point(), "candidates": [],
            "at_edge_of_candidates": None, "text": f"{cfg.sgd_lr:g}, given (--sgd-lr)"}
