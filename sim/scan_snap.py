"""Scan and snap numerics: a batched Numba Dormand-Prince 5(4) integrator and the ODEs of theory.scan_snap.

Every formula is compiled from a SymPy expression in `theory.scan_snap` (sympy.lambdify(modules="math",
cse=True) then numba.njit); this module only adds the loops and sums over token indices around those
per-component formulas, and the integrator. Three systems, each batched over settings:

* `integrate_reduced`: the Sec. 6 system (h(t/K), Gamma, z_common, B_n) of Eqns. 13 and 85 (Theorem 4);
  `reduced_closed_form` gives its exact solution (Lemma 6 solved by Newton, Eqns. 120-129).
* `integrate_lemma4`: h(t/K) together with the attention logits under Lemma 4 (Eqn. 97) with the Sec. 6
  closure beta_nn' = f_n . f_n'; Theorem 3's invariant holds exactly along it.
* `integrate_yz_flow`: the exact long-sequence gradient flow of the Y/Z model (Lemma 1 with c_n from Eqn. 5),
  classes averaged uniformly: what SGD on the Y/Z model follows for T -> infinity, small learning rates.

The integrator (`dopri5`) is Dormand & Prince's RK5(4)7M with FSAL, a mixed absolute/relative RMS error
norm and the usual step-size controller (Hairer, Norsett & Wanner, Solving ODEs I, Sec. II.4); it lands
exactly on the requested output times. `dopri5_fixed` takes fixed steps for convergence-order tests.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numba
import numpy as np
import sympy as sp

from theory import scan_snap as th

# passing a jitted right-hand side into the jitted integrator is Numba's "first-class function" feature
warnings.filterwarnings("ignore", category=numba.NumbaExperimentalFeatureWarning)

# ---------------------------------------------------------------------------------------------------------
# Formulas compiled from theory (one source of truth)
# ---------------------------------------------------------------------------------------------------------


def _compile(expr, args):
    """lambdify a SymPy scalar expression with the math module and njit it (no SciPy, no Piecewise)."""
    return numba.njit(sp.lambdify(args, expr, modules="math", cse=True))


_attention_score = _compile(th.attention_score, (th.prob_l, th.logit_l))
_decoder_input = _compile(th.decoder_input, (th.attn_l, th.attn_norm))
_decoder_prob_score = _compile(th.decoder_prob_score, (th.decoder_logit_j, th.decoder_logit_max))
_decoder_velocity = _compile(th.decoder_velocity, (th.eta_Y, th.input_l, th.target_j, th.prob_out_j))
_attention_velocity = _compile(th.attention_velocity, (th.eta_Z, th.input_l, th.backprop_l, th.backprop_proj))
_decoder_rate = _compile(th.decoder_rate, (th.eta_Y, th.M, th.h))
_speed_coefficient = _compile(th.speed_coefficient, (th.M, th.h))
_lemma4_term = _compile(th.lemma4_attention_velocity,
                        (th.eta_Z, th.gamma_sym, th.input_l, th.beta, th.overlap, th.input_other_l))
_beta_first_order = _compile(th.beta_first_order, (th.overlap,))
_reduced_rhs = tuple(_compile(e, th.reduced_state + th.reduced_params) for e in th.reduced_rhs)
_decoder_residual = _compile(th.decoder_closed_form()["residual"], (th.h, th.t, th.M, th.eta_Y))
_decoder_residual_dh = _compile(sp.diff(th.decoder_closed_form()["residual"], th.h), (th.h, th.t, th.M, th.eta_Y))
_snap = th.snap_closed_forms()
_Gamma_of_h = _compile(_snap["Gamma_of_h"], (th.h, th.eta_Y, th.eta_Z, th.M, th.K))
_z_common_of_Gamma = _compile(_snap["z_common"], (th.Gamma, th.C0))
_B_of_Gamma = _compile(_snap["B_of_Gamma"], (th.Gamma, th.C0))

COMPILED_FORMULAS = {
    "attention_score": (_attention_score, th.attention_score, (th.prob_l, th.logit_l)),
    "decoder_input": (_decoder_input, th.decoder_input, (th.attn_l, th.attn_norm)),
    "decoder_prob_score": (_decoder_prob_score, th.decoder_prob_score, (th.decoder_logit_j, th.decoder_logit_max)),
    "decoder_velocity": (_decoder_velocity, th.decoder_velocity, (th.eta_Y, th.input_l, th.target_j, th.prob_out_j)),
    "attention_velocity": (_attention_velocity, th.attention_velocity,
                           (th.eta_Z, th.input_l, th.backprop_l, th.backprop_proj)),
    "decoder_rate": (_decoder_rate, th.decoder_rate, (th.eta_Y, th.M, th.h)),
    "speed_coefficient": (_speed_coefficient, th.speed_coefficient, (th.M, th.h)),
    "lemma4_attention_velocity": (_lemma4_term, th.lemma4_attention_velocity,
                                  (th.eta_Z, th.gamma_sym, th.input_l, th.beta, th.overlap, th.input_other_l)),
    "decoder_residual": (_decoder_residual, th.decoder_closed_form()["residual"], (th.h, th.t, th.M, th.eta_Y)),
    "Gamma_of_h": (_Gamma_of_h, _snap["Gamma_of_h"], (th.h, th.eta_Y, th.eta_Z, th.M, th.K)),
    "z_common_of_Gamma": (_z_common_of_Gamma, _snap["z_common"], (th.Gamma, th.C0)),
    "B_of_Gamma": (_B_of_Gamma, _snap["B_of_Gamma"], (th.Gamma, th.C0)),
}
COMPILED_FORMULAS.update({f"reduced_rhs[{i}]": (f, e, th.reduced_state + th.reduced_params)
                          for i, (f, e) in enumerate(zip(_reduced_rhs, th.reduced_rhs))})

# ---------------------------------------------------------------------------------------------------------
# Dormand-Prince 5(4) coefficients (Dormand & Prince 1980, RK5(4)7M), kept as data
# ---------------------------------------------------------------------------------------------------------
DP_C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])
DP_A = np.array([
    [0, 0, 0, 0, 0, 0, 0],
    [1 / 5, 0, 0, 0, 0, 0, 0],
    [3 / 40, 9 / 40, 0, 0, 0, 0, 0],
    [44 / 45, -56 / 15, 32 / 9, 0, 0, 0, 0],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0, 0],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0, 0],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
], dtype=np.float64)
DP_B5 = DP_A[6].copy()  # the 5th-order weights (FSAL: the last stage is f at the new point)
DP_B4 = np.array([5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40])
DP_E = DP_B5 - DP_B4


@numba.njit(cache=False)
def _dp_step(rhs, t, y, p, h, k, ytmp, ynew, yerr):
    """One Dormand-Prince step from (t, y) with k[0] = f(t, y) already set; fills k[1..6], ynew, yerr."""
    n = y.size
    for s in range(1, 7):
        for i in range(n):
            acc = 0.0
            for j in range(s):
                acc += DP_A[s, j] * k[j, i]
            ytmp[i] = y[i] + h * acc
        rhs(t + DP_C[s] * h, ytmp, p, k[s])
    for i in range(n):
        ynew[i] = ytmp[i]  # stage 7 is evaluated at the 5th-order solution
        acc = 0.0
        for j in range(7):
            acc += DP_E[j] * k[j, i]
        yerr[i] = h * acc


@numba.njit(cache=False)
def dopri5(rhs, t_eval, y0, p, rtol, atol, max_steps, out, stats):
    """Adaptive Dormand-Prince 5(4) from t_eval[0] through every t_eval[i]; writes y(t_eval[i]) to out[i].

    rhs(t, y, p, dy) fills dy in place. Error norm: RMS of err_i / (atol + rtol max(|y_i|, |ynew_i|)).
    stats = [accepted steps, rejected steps, rhs evaluations, status (0 ok, 1 max_steps, 2 step underflow)].
    """
    n = y0.size
    k = np.empty((7, n))
    y = y0.copy()
    ytmp = np.empty(n)
    ynew = np.empty(n)
    yerr = np.empty(n)
    t = t_eval[0]
    out[0, :] = y
    rhs(t, y, p, k[0])
    nfev = 1
    # initial step (Hairer et al. II.4): h = 0.01 ||y|| / ||f||, capped by the first output interval
    d0 = 0.0
    d1 = 0.0
    for i in range(n):
        sc = atol + rtol * abs(y[i])
        d0 += (y[i] / sc) ** 2
        d1 += (k[0, i] / sc) ** 2
    d0 = np.sqrt(d0 / n)
    d1 = np.sqrt(d1 / n)
    span = t_eval[-1] - t_eval[0]
    h = 1e-6 * span if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h = min(h, span)
    accepted = 0
    rejected = 0
    status = 0
    for idx in range(1, t_eval.size):
        target = t_eval[idx]
        while t < target and status == 0:
            if accepted + rejected >= max_steps:
                status = 1
                break
            step = min(h, target - t)
            last = step < h
            _dp_step(rhs, t, y, p, step, k, ytmp, ynew, yerr)
            nfev += 6
            err = 0.0
            for i in range(n):
                sc = atol + rtol * max(abs(y[i]), abs(ynew[i]))
                err += (yerr[i] / sc) ** 2
            err = np.sqrt(err / n)
            if err <= 1.0:
                t = target if last else t + step
                for i in range(n):
                    y[i] = ynew[i]
                    k[0, i] = k[6, i]  # FSAL
                accepted += 1
                factor = 5.0 if err == 0.0 else min(5.0, max(0.2, 0.9 * err ** -0.2))
                if not last:
                    h = step * factor
                else:
                    h = max(h, step * factor)
            else:
                rejected += 1
                h = step * max(0.2, 0.9 * err ** -0.2)
                if h < 1e-14 * max(1.0, abs(t)):
                    status = 2
        out[idx, :] = y
    stats[0] = accepted
    stats[1] = rejected
    stats[2] = nfev
    stats[3] = status


@numba.njit(cache=False)
def dopri5_fixed(rhs, t0, t1, y0, p, n_steps, embedded, out):
    """n_steps equal Dormand-Prince steps from t0 to t1, written to out. With embedded=False the 5th-order
    weights propagate the solution (global order 5); with embedded=True the 4th-order ones do (order 4)."""
    n = y0.size
    k = np.empty((7, n))
    y = y0.copy()
    ytmp = np.empty(n)
    ynew = np.empty(n)
    yerr = np.empty(n)
    h = (t1 - t0) / n_steps
    for s in range(n_steps):
        t = t0 + s * h
        rhs(t, y, p, k[0])
        _dp_step(rhs, t, y, p, h, k, ytmp, ynew, yerr)
        for i in range(n):
            y[i] = ynew[i] - yerr[i] if embedded else ynew[i]
    out[:] = y


@numba.njit(cache=False, parallel=True)
def _dopri5_batch(rhs, t_eval, Y0, P, rtol, atol, max_steps, OUT, STATS):
    for b in numba.prange(Y0.shape[0]):
        dopri5(rhs, t_eval, Y0[b], P[b], rtol, atol, max_steps, OUT[b], STATS[b])


@dataclass(frozen=True)
class Solution:
    """Output of a batched integration: y[b, i] is the state of setting b at t[i]."""

    t: np.ndarray
    y: np.ndarray
    accepted: np.ndarray
    rejected: np.ndarray
    nfev: np.ndarray

    @property
    def steps(self) -> np.ndarray:
        return self.accepted + self.rejected


def integrate(rhs, t_eval, y0, params, rtol=1e-8, atol=1e-10, max_steps=1_000_000) -> Solution:
    """Integrate dy/dt = rhs(t, y, p) for a batch: y0 (B, n), params (B, n_p), every row on its own
    adaptive steps. Raises ValueError on bad input and RuntimeError if a setting fails to finish."""
    t_eval = np.ascontiguousarray(t_eval, dtype=np.float64)
    y0 = np.ascontiguousarray(np.atleast_2d(y0), dtype=np.float64)
    params = np.ascontiguousarray(np.atleast_2d(params), dtype=np.float64)
    if t_eval.ndim != 1 or t_eval.size < 2 or np.any(np.diff(t_eval) <= 0):
        raise ValueError("t_eval: need a strictly increasing 1-D array of at least 2 times")
    if y0.shape[0] != params.shape[0]:
        raise ValueError(f"y0/params: batch sizes differ ({y0.shape[0]} vs {params.shape[0]})")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol={rtol}, atol={atol}: both must be > 0")
    out = np.empty((y0.shape[0], t_eval.size, y0.shape[1]))
    stats = np.zeros((y0.shape[0], 4), dtype=np.int64)
    _dopri5_batch(rhs, t_eval, y0, params, float(rtol), float(atol), int(max_steps), out, stats)
    if np.any(stats[:, 3] != 0):
        bad = int(np.flatnonzero(stats[:, 3])[0])
        raise RuntimeError(f"dopri5: setting {bad} stopped early (status {stats[bad, 3]}: 1 = max_steps, "
                           f"2 = step-size underflow)")
    return Solution(t_eval, out, stats[:, 0], stats[:, 1], stats[:, 2])


# ---------------------------------------------------------------------------------------------------------
# (a) The reduced Sec. 6 system and its closed form
# ---------------------------------------------------------------------------------------------------------
@numba.njit(cache=False)
def reduced_rhs(t, y, p, dy):
    """(h(t/K), Gamma, z_common, B_n)' with p = (eta_Y, eta_Z, M, K, C_0); formulas from theory.reduced_rhs."""
    dy[0] = _reduced_rhs[0](y[0], y[1], y[2], y[3], p[0], p[1], p[2], p[3], p[4])
    dy[1] = _reduced_rhs[1](y[0], y[1], y[2], y[3], p[0], p[1], p[2], p[3], p[4])
    dy[2] = _reduced_rhs[2](y[0], y[1], y[2], y[3], p[0], p[1], p[2], p[3], p[4])
    dy[3] = _reduced_rhs[3](y[0], y[1], y[2], y[3], p[0], p[1], p[2], p[3], p[4])


def reduced_params(eta_Y, eta_Z, M, K, C0=1.0) -> np.ndarray:
    """Broadcast settings into the (B, 5) parameter array of `reduced_rhs`."""
    cols = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (eta_Y, eta_Z, M, K, C0)))
    p = np.stack([np.ravel(c) for c in cols], axis=1)
    if np.any(p <= 0) or np.any(p[:, 2] <= 1):
        raise ValueError("reduced_params: eta_Y, eta_Z, K, C0 must be > 0 and M > 1")
    return p


def integrate_reduced(params, t_eval, rtol=1e-8, atol=1e-10) -> Solution:
    """Integrate the Sec. 6 system from h = Gamma = z = B = 0 for every row of `reduced_params`."""
    return integrate(reduced_rhs, t_eval, np.zeros((params.shape[0], 4)), params, rtol, atol)


@numba.njit(cache=False)
def _decoder_scale_one(tt, M, eta_Y):
    """Solve Lemma 6's implicit form for h at time tt by Newton's method (F convex and increasing in h).
    Start from the upper bound min(ln(M eta_Y t + 1)/M, eta_Y t/(M-1)), so the iterates decrease monotonically."""
    if tt <= 0.0:
        return 0.0
    hh = min(np.log(M * eta_Y * tt + 1.0) / M, eta_Y * tt / (M - 1.0))
    for _ in range(200):
        step = _decoder_residual(hh, tt, M, eta_Y) / _decoder_residual_dh(hh, tt, M, eta_Y)
        hh -= step
        if abs(step) <= 1e-15 * max(hh, 1e-300):
            break
    return hh


@numba.njit(cache=False)
def _decoder_scale_vec(tt, M, eta_Y, out):
    for i in range(tt.size):
        out[i] = _decoder_scale_one(tt[i], M, eta_Y)


def decoder_scale(t, M, eta_Y) -> np.ndarray:
    """h(t) of Lemma 6 (exact, from e^{Mh} + (M-1)Mh = M eta_Y t + 1)."""
    tt = np.ascontiguousarray(np.atleast_1d(t), dtype=np.float64)
    out = np.empty_like(tt)
    _decoder_scale_vec(tt, float(M), float(eta_Y), out)
    return out


def reduced_closed_form(t, eta_Y, eta_Z, M, K, C0=1.0) -> dict:
    """Exact solution of the Sec. 6 system: h(t/K) by Lemma 6, then Gamma, z_common, B_n (Eqns. 120-129)."""
    hh = decoder_scale(np.asarray(t, dtype=np.float64) / K, M, eta_Y)
    G = np.array([_Gamma_of_h(x, eta_Y, eta_Z, M, K) for x in hh])
    return {"h": hh, "Gamma": G, "z_common": np.array([_z_common_of_Gamma(g, C0) for g in G]),
            "B": np.array([_B_of_Gamma(g, C0) for g in G])}


def speed_coefficient(t, M, K, eta_Y) -> np.ndarray:
    """gamma(t) of Eqn. 85 with Lemma 6's exact h(t/K)."""
    hh = decoder_scale(np.asarray(t, dtype=np.float64) / K, M, eta_Y)
    return np.array([_speed_coefficient(float(M), x) for x in hh])


# ---------------------------------------------------------------------------------------------------------
# Long-sequence attention (Lemma 2 / Eqn. 5) on a class table
# ---------------------------------------------------------------------------------------------------------
@numba.njit(cache=False)
def _class_attention(P, zrow, c):
    """c_l = P_l e^{z_l} / sum (Eqn. 5) over the support of P; returns ||c||. Shifted by max z (invariant)."""
    zmax = -np.inf
    for l in range(P.size):
        if P[l] > 0 and zrow[l] > zmax:
            zmax = zrow[l]
    total = 0.0
    for l in range(P.size):
        c[l] = _attention_score(P[l], zrow[l] - zmax) if P[l] > 0 else 0.0
        total += c[l]
    sq = 0.0
    for l in range(P.size):
        c[l] /= total
        sq += c[l] * c[l]
    return np.sqrt(sq)


@dataclass(frozen=True)
class ClassTable:
    """Numeric form of a theory.SequenceClasses: probabilities (K, M), query row of Z per class, next tokens."""

    probabilities: np.ndarray
    query_rows: np.ndarray
    queries: np.ndarray
    next_tokens: np.ndarray

    @classmethod
    def from_classes(cls, classes: th.SequenceClasses) -> "ClassTable":
        qs = classes.query_tokens()
        return cls(np.array([[float(x) for x in row] for row in classes.probabilities]),
                   np.array([qs.index(q) for q in classes.queries], dtype=np.int64),
                   np.array(qs, dtype=np.int64), np.array(classes.next_tokens, dtype=np.int64))

    @property
    def n_classes(self) -> int:
        return self.probabilities.shape[0]

    @property
    def n_vocab(self) -> int:
        return self.probabilities.shape[1]

    @property
    def n_queries(self) -> int:
        return self.queries.size


def attention_from_logits(table: ClassTable, Z_rows) -> np.ndarray:
    """c_n for every class from query rows of Z (..., n_queries, M) -> (..., K, M), by Eqn. 5."""
    Z_rows = np.asarray(Z_rows, dtype=np.float64)
    lead = Z_rows.shape[:-2]
    flat = Z_rows.reshape(-1, table.n_queries, table.n_vocab)
    out = np.empty((flat.shape[0], table.n_classes, table.n_vocab))
    for b in range(flat.shape[0]):
        for k in range(table.n_classes):
            _class_attention(table.probabilities[k], flat[b, table.query_rows[k]], out[b, k])
    return out.reshape(lead + (table.n_classes, table.n_vocab))


# ---------------------------------------------------------------------------------------------------------
# (b) The exact long-sequence gradient flow of the Y/Z model (Lemma 1 with Eqn. 5)
# ---------------------------------------------------------------------------------------------------------
# parameter layout: [eta_Y, eta_Z, M, K, n_queries, query_row[K], next_token[K], P[K*M]]


@numba.njit(cache=False)
def yz_flow_rhs(t, y, p, dy):
    """E_n[Lemma 1] with classes uniform: state y = [Y (M x M, row-major), Z query rows (n_q x M)]."""
    eta_Y = p[0]
    eta_Z = p[1]
    M = int(p[2])
    K = int(p[3])
    off_P = 5 + 2 * K
    Y = y[:M * M].reshape((M, M))
    Z = y[M * M:]
    dY = dy[:M * M].reshape((M, M))
    dZ = dy[M * M:]
    dy[:] = 0.0
    c = np.empty(M)
    f = np.empty(M)
    s = np.empty(M)
    alpha = np.empty(M)
    g = np.empty(M)
    for k in range(K):
        row = int(p[5 + k])
        nxt = int(p[5 + K + k])
        P = p[off_P + k * M: off_P + (k + 1) * M]
        norm = _class_attention(P, Z[row * M:(row + 1) * M], c)
        for l in range(M):
            f[l] = _decoder_input(c[l], norm)
        smax = -np.inf
        for j in range(M):
            acc = 0.0
            for l in range(M):
                acc += Y[l, j] * f[l]
            s[j] = acc
            smax = max(smax, acc)
        total = 0.0
        for j in range(M):
            alpha[j] = _decoder_prob_score(s[j], smax)
            total += alpha[j]
        for j in range(M):
            alpha[j] /= total
        f_dot_g = 0.0
        for l in range(M):
            acc = 0.0
            for j in range(M):
                e_j = 1.0 if j == nxt else 0.0
                acc += Y[l, j] * (e_j - alpha[j])
                if f[l] != 0.0:
                    dY[l, j] += _decoder_velocity(eta_Y, f[l], e_j, alpha[j]) / K
            g[l] = acc
            f_dot_g += f[l] * acc
        for l in range(M):
            dZ[row * M + l] += _attention_velocity(eta_Z, f[l], g[l], f_dot_g) / K


def yz_flow_params(table: ClassTable, eta_Y, eta_Z) -> np.ndarray:
    """(B, n_p) parameters of `yz_flow_rhs` for learning rates broadcast against each other."""
    eY, eZ = np.broadcast_arrays(np.atleast_1d(np.asarray(eta_Y, float)), np.atleast_1d(np.asarray(eta_Z, float)))
    if np.any(eY <= 0) or np.any(eZ <= 0):
        raise ValueError("eta_Y, eta_Z: learning rates must be > 0")
    fixed = np.concatenate([[table.n_vocab, table.n_classes, table.n_queries], table.query_rows,
                            table.next_tokens, table.probabilities.ravel()]).astype(np.float64)
    return np.stack([np.concatenate([[a, b], fixed]) for a, b in zip(eY.ravel(), eZ.ravel())])


@dataclass(frozen=True)
class YZTrajectory:
    """Y (B, T, M, M), Z query rows (B, T, n_q, M), attention c_n (B, T, K, M) at times t."""

    t: np.ndarray
    Y: np.ndarray
    Z: np.ndarray
    attention: np.ndarray
    solution: Solution


def integrate_yz_flow(table: ClassTable, eta_Y, eta_Z, t_eval, Y0=None, Z0=None, rtol=1e-7,
                      atol=1e-9) -> YZTrajectory:
    """Integrate Lemma 1's long-sequence flow from Y0, Z0 (zeros by default, the paper's Y(0) = Z(0) = 0)."""
    params = yz_flow_params(table, eta_Y, eta_Z)
    M, nq = table.n_vocab, table.n_queries
    y0 = np.zeros((params.shape[0], M * M + nq * M))
    if Y0 is not None:
        y0[:, :M * M] = np.asarray(Y0, float).reshape(-1, M * M)
    if Z0 is not None:
        y0[:, M * M:] = np.asarray(Z0, float).reshape(-1, nq * M)
    sol = integrate(yz_flow_rhs, t_eval, y0, params, rtol, atol)
    Y = sol.y[:, :, :M * M].reshape(sol.y.shape[0], -1, M, M)
    Z = sol.y[:, :, M * M:].reshape(sol.y.shape[0], -1, nq, M)
    return YZTrajectory(sol.t, Y, Z, attention_from_logits(table, Z), sol)


# ---------------------------------------------------------------------------------------------------------
# Lemma 4 with the Sec. 6 closure (and h(t/K) from Lemma 6), for Theorem 3
# ---------------------------------------------------------------------------------------------------------
# parameter layout: [eta_Y, eta_Z, M, K, n_queries, query_row[K], P[K*M]]


@numba.njit(cache=False)
def lemma4_rhs(t, y, p, dy):
    """State y = [h(t/K), Z query rows]; dz by Eqn. 97 with beta_nn' = f_n . f_n' and gamma of Eqn. 85."""
    eta_Y = p[0]
    eta_Z = p[1]
    M = int(p[2])
    K = int(p[3])
    off_P = 5 + K
    dy[:] = 0.0
    dy[0] = _decoder_rate(eta_Y, float(M), y[0]) / K
    gamma = _speed_coefficient(float(M), y[0])
    Z = y[1:]
    F = np.empty((K, M))
    c = np.empty(M)
    for k in range(K):
        row = int(p[5 + k])
        norm = _class_attention(p[off_P + k * M: off_P + (k + 1) * M], Z[row * M:(row + 1) * M], c)
        for l in range(M):
            F[k, l] = _decoder_input(c[l], norm)
    for k in range(K):
        row = int(p[5 + k])
        for k2 in range(K):
            if k2 == k:
                continue
            ov = 0.0
            for l in range(M):
                ov += F[k, l] * F[k2, l]
            b = _beta_first_order(ov)
            for l in range(M):
                if F[k, l] != 0.0:
                    dy[1 + row * M + l] += _lemma4_term(eta_Z, gamma, F[k, l], b, ov, F[k2, l])


def lemma4_params(table: ClassTable, eta_Y, eta_Z) -> np.ndarray:
    eY, eZ = np.broadcast_arrays(np.atleast_1d(np.asarray(eta_Y, float)), np.atleast_1d(np.asarray(eta_Z, float)))
    if np.any(eY <= 0) or np.any(eZ <= 0):
        raise ValueError("eta_Y, eta_Z: learning rates must be > 0")
    fixed = np.concatenate([[table.n_vocab, table.n_classes, table.n_queries], table.query_rows,
                            table.probabilities.ravel()]).astype(np.float64)
    return np.stack([np.concatenate([[a, b], fixed]) for a, b in zip(eY.ravel(), eZ.ravel())])


def integrate_lemma4(table: ClassTable, eta_Y, eta_Z, t_eval, rtol=1e-9, atol=1e-12) -> dict:
    """Integrate Lemma 4 from h = 0, Z = 0; returns {'t', 'h', 'Z' (B, T, n_q, M), 'attention', 'solution'}."""
    params = lemma4_params(table, eta_Y, eta_Z)
    y0 = np.zeros((params.shape[0], 1 + table.n_queries * table.n_vocab))
    sol = integrate(lemma4_rhs, t_eval, y0, params, rtol, atol)
    Z = sol.y[:, :, 1:].reshape(sol.y.shape[0], -1, table.n_queries, table.n_vocab)
    return {"t": sol.t, "h": sol.y[:, :, 0], "Z": Z, "attention": attention_from_logits(table, Z),
            "solution": sol}
