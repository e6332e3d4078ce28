"""Measurements on scan-and-snap trajectories: entropy of attention on distinct tokens, drop order against
P(l|n) (Kendall tau), common-token suppression, and the peak time of the back-propagated signal."""
from __future__ import annotations

import numpy as np
from scipy.stats import kendalltau

from theory.scan_snap import SequenceClasses

#: a distinct token counts as dropped when its attention ends at least this fraction below its own maximum.
#: Measured: in the frozen phase of Syn-Small runs (steps 60-100, momentum 0.9) c_l moves 1.5e-4 (relative,
#: standard deviation) per logged step; 5e-3 is ~30x that, so jitter is not counted as a drop.
DROP_THRESHOLD = 5e-3


def entropy_distinct(classes: SequenceClasses, attention) -> np.ndarray:
    """Entropy (nats) of c_n restricted to class n's distinct tokens and renormalised, averaged over classes.
    attention (..., K, M) -> (...). A class whose distinct tokens all underflowed to zero attention (a
    saturated softmax on another token) counts as entropy 0: its renormalised attention is undefined, and
    the limit of any sequence of such attention vectors collapsing onto one token has entropy 0. Attention that
    holds NaN or inf (a diverged run) gives NaN, never a number that could pass for a measurement."""
    attention = np.asarray(attention)
    per_class = []
    for k in range(classes.n_classes):
        p = attention[..., k, list(classes.distinct_tokens(k))]
        total = p.sum(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore"):  # inf / inf: NaN, as the result below will be
            p = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
        entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
        per_class.append(np.where(np.isfinite(total[..., 0]), entropy, np.nan))
    return np.mean(per_class, axis=0)


def drop_times(times, attention_distinct, threshold=DROP_THRESHOLD) -> np.ndarray:
    """Drop time of each token: the logged time of its maximum attention, if it ends more than `threshold`
    (relative) below that maximum; inf (censored: not dropped within the run) otherwise.
    attention_distinct (n_times, n_tokens)."""
    a = np.asarray(attention_distinct)
    peak = np.max(a, axis=0)
    dropped = a[-1] < peak * (1.0 - threshold)
    return np.where(dropped, np.asarray(times)[np.argmax(a, axis=0)], np.inf)


def drop_order_tau(probabilities, drops) -> tuple[float, int]:
    """Kendall tau between drop order and P(l|n) with censoring (Harrell-style concordance): over pairs with
    P_l < P_l' where at least one token dropped, +1 if l dropped strictly first (or l' never dropped),
    -1 if l' dropped strictly first, 0 for equal drop times. Theorem 3 predicts +1 (low P dropped first).
    Returns (tau, number of comparable pairs); tau is nan when nothing dropped."""
    P = np.asarray(probabilities, dtype=float)
    d = np.asarray(drops, dtype=float)
    score, pairs = 0, 0
    for i in range(P.size):
        for j in range(P.size):
            if not P[i] < P[j] or (np.isinf(d[i]) and np.isinf(d[j])):
                continue
            pairs += 1
            score += int(np.sign(d[j] - d[i])) if not (np.isinf(d[i]) or np.isinf(d[j])) else (
                1 if np.isinf(d[j]) else -1)
    return (score / pairs if pairs else float("nan")), pairs


def logit_order_tau(probabilities, logit_change) -> float:
    """Kendall tau between P(l|n) and z_ml(t) - z_ml(0) over distinct tokens (Eqn. 98: dz/dt = eta_Z f_l^2 xi_n
    grows with P_l e^{z_l}, so the change stays ordered by P when Z(0) = 0). nan when either side is constant
    (z did not move on these tokens): no order to compare."""
    return float(kendalltau(probabilities, logit_change)[0])


def common_tokens_fall(classes: SequenceClasses, attention_start, attention_end) -> bool:
    """True if every common token's attention c_{l|n} ends below where it started, in every class (Thm. 2b)."""
    common = list(classes.common_tokens())
    return bool(np.all(np.asarray(attention_end)[..., common] < np.asarray(attention_start)[..., common]))


def peak_time(times, values) -> float:
    """Logged time of the maximum, refined by a parabola through the three logged points around it
    (in log time, since the logs are geometric)."""
    times = np.asarray(times, dtype=float)
    v = np.asarray(values, dtype=float)
    i = int(np.argmax(v))
    if i == 0 or i == v.size - 1 or times[i - 1] <= 0:
        return float(times[i])
    x = np.log(times[i - 1:i + 2])
    a, b, _ = np.polyfit(x, v[i - 1:i + 2], 2)
    return float(np.exp(-b / (2 * a))) if a < 0 else float(times[i])


def sem(values) -> float:
    """Standard error of the mean over seeds (0 for a single seed)."""
    v = np.asarray(values, dtype=float)
    return float(np.std(v, ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0


def first_nonfinite_step(steps, *arrays) -> int | None:
    """The first of `steps` at which any of `arrays` (each indexed by step along its first axis) holds NaN or inf;
    None when all are finite."""
    bad = np.zeros(len(steps), dtype=bool)
    for a in arrays:
        a = np.asarray(a, dtype=float).reshape(len(steps), -1)
        bad |= ~np.all(np.isfinite(a), axis=1)
    return int(np.asarray(steps)[np.argmax(bad)]) if bad.any() else None
