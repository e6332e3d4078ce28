"""Scan and snap numerics: a batched Numba Dormand-Prince 5(4) integrator and the ODEs of theory.scan_snap.

Every formula is compiled from a SymPy expression in `theory.scan_snap`: SymPy's Python code printer (with
common-subexpression elimination) writes them into the generated module sim/_scan_snap_formulas.py as
@numba.njit(cache=True) functions, regenerated whenever theory/scan_snap.py or the generator changes
(`generate_formulas_module`); their `exp` is sim.vector_exp's, which vectorizes.
This module only adds the loops and sums over token indices around those per-component formulas, and the
integrator. Three systems, each batched over settings:

* `integrate_reduced`: the Sec. 6 system (h(t/K), Gamma, z_common, B_n) of Eqns. 13 and 85 (Theorem 4);
  `reduced_closed_form` gives its exact solution (Lemma 6 solved by Newton, Eqns. 120-129).
* `integrate_lemma4`: h(t/K) together with the attention logits under Lemma 4 (Eqn. 97) with the Sec. 6
  closure beta_nn' = f_n . f_n'; Theorem 3's invariant holds exactly along it.
* `integrate_yz_flow`: the exact long-sequence gradient flow of the Y/Z model (Lemma 1 with c_n from Eqn. 5),
  classes averaged uniformly: what SGD on the Y/Z model follows for T -> infinity, small learning rates.

The integrator (`dopri5`) is Dormand & Prince's RK5(4)7M with FSAL, a mixed absolute/relative RMS error
norm and the usual step-size controller (Hairer, Norsett & Wanner, Solving ODEs I, Sec. II.4). By default it
lands exactly on the requested output times; `integrate(..., dense=True)` steps past them and fills them from
the method's 4th-order continuous extension, as solve_ivp's t_eval does. `dopri5_fixed` takes fixed steps for
convergence-order tests.

Inputs. Every public Python function checks its inputs before computing and raises a one-line ValueError naming
the input and what is allowed (NumPy scalars and arrays are accepted wherever Python numbers are). The Numba
kernels (`dopri5`, `dopri5_fixed`, the right-hand sides) check nothing: they index arrays by the parameter
layout without bounds checks, so call them through `integrate` and the integrate_* functions, which do. Ranges:
M <= M_MAX = 1e150 ((M-1)^2 of Eqn. 85 and (M-1) M h of Lemma 6 stay finite) and M eta_Y t / K < 1e300 (Lemma 6
solves e^{Mh} = M eta_Y t + 1 - (M-1) M h); eta_Y, eta_Z, K and C0 in RATE_RANGE = [1e-30, 1e30], so that
Gamma = (eta_Z/eta_Y) K (M-1)^2 h^2 / 2 and Gamma / C0 neither overflow nor lose a value that matters to
underflow; decoder entries |Y| <= 1e300 / M (the logits Y^T f stay finite). Near 0, h (Lemma 6), B_n and
z_common are accurate to ~1e-16 absolute, not relative: the printed formulas subtract exp(Mh) - 1 and
log(C0 + 4 Gamma) - log(C0), which cancel as M eta_Y t / K or Gamma / C0 fall below ~1e-8.
A solver that cannot finish (a diverging or too stiff setting) raises RuntimeError naming the setting.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import tempfile
from dataclasses import dataclass

import numba
import numpy as np
import sympy as sp
from sympy.printing.pycode import pycode

from sim import vector_exp
from theory import scan_snap as th
from theory._cli import choice, count, real_number, shown


# ---------------------------------------------------------------------------------------------------------
# Formulas compiled from theory (one source of truth)
# ---------------------------------------------------------------------------------------------------------


def formula_specs() -> list:
    """(name, SymPy expression, argument symbols) of every formula this module compiles, taken from theory.
    Runs the SymPy derivations (about 10 s); the import uses the generated module instead."""
    dc = th.decoder_closed_form()
    snap = th.snap_closed_forms()
    specs = [
        ("attention_score", th.attention_score, (th.prob_l, th.logit_l)),
        ("decoder_input", th.decoder_input, (th.attn_l, th.attn_norm)),
        ("decoder_prob_score", th.decoder_prob_score, (th.decoder_logit_j, th.decoder_logit_max)),
        ("decoder_velocity", th.decoder_velocity, (th.eta_Y, th.input_l, th.target_j, th.prob_out_j)),
        ("attention_velocity", th.attention_velocity, (th.eta_Z, th.input_l, th.backprop_l, th.backprop_proj)),
        ("decoder_rate", th.decoder_rate, (th.eta_Y, th.M, th.h)),
        ("speed_coefficient", th.speed_coefficient, (th.M, th.h)),
        ("lemma4_term", th.lemma4_attention_velocity,
         (th.eta_Z, th.gamma_sym, th.input_l, th.beta, th.overlap, th.input_other_l)),
        ("beta_first_order", th.beta_first_order, (th.overlap,)),
        ("decoder_residual", dc["residual"], (th.h, th.t, th.M, th.eta_Y)),
        ("decoder_residual_dh", sp.diff(dc["residual"], th.h), (th.h, th.t, th.M, th.eta_Y)),
        ("Gamma_of_h", snap["Gamma_of_h"], (th.h, th.eta_Y, th.eta_Z, th.M, th.K)),
        ("z_common_of_Gamma", snap["z_common"], (th.Gamma, th.C0)),
        ("B_of_Gamma", snap["B_of_Gamma"], (th.Gamma, th.C0)),
    ]
    specs += [(f"reduced_rhs_{i}", e, th.reduced_state + th.reduced_params) for i, e in enumerate(th.reduced_rhs)]
    return specs


M_MAX = 1e150                  # vocabulary sizes M the formulas evaluate (module docstring)
RATE_RANGE = (1e-30, 1e30)     # learning rates eta_Y, eta_Z, the class count K and C0 (module docstring)
SCALE_TIME_MAX = 1e300          # bound on M eta_Y t / K, the argument of Lemma 6's e^{Mh}


def _real_array(name: str, value, low: float = -np.inf, high: float = np.inf, *, open_low: bool = False,
                ndim=None) -> np.ndarray:
    """`value` as a float64 array of finite real numbers (no bools, no strings) within the bounds; a one-line
    ValueError naming `name` otherwise. ndim: the required number of dimensions (None: any)."""
    try:
        array = np.asarray(value)
        if array.dtype.kind == "O":
            array = np.array([real_number(name, v) for v in array.ravel()], dtype=float).reshape(array.shape)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "iuf" or (ndim is not None and array.ndim != ndim):
        shape = "" if ndim is None else f" with {ndim} dimension{'s' if ndim != 1 else ''}"
        raise ValueError(f"{name}: must be an array of real numbers{shape}")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array) | (array <= low if open_low else array < low) | (array > high)
    if bad.any():
        bounds = ("" if low == -np.inf else f" {'>' if open_low else '>='} {low:g}") + (
            "" if high == np.inf else f"{',' if low > -np.inf else ''} <= {high:g}")
        raise ValueError(f"{name}: every value must be finite{bounds}, got {shown(float(array[bad].flat[0]))}")
    return array


def _check_rates(eta_Y, eta_Z=None) -> tuple:
    """Learning rates: in RATE_RANGE, broadcast against each other, at least one setting."""
    rates = [_real_array("eta_Y", eta_Y, *RATE_RANGE)]
    if eta_Z is not None:
        rates.append(_real_array("eta_Z", eta_Z, *RATE_RANGE))
    try:
        rates = np.broadcast_arrays(*rates)
    except ValueError:
        raise ValueError(f"eta_Y, eta_Z: shapes {rates[0].shape} and {rates[1].shape} do not broadcast") from None
    if rates[0].size == 0:
        raise ValueError("eta_Y, eta_Z: need at least one setting")
    return tuple(rates)


_GENERATED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_scan_snap_formulas.py")


def _source_digest() -> str:
    """SHA-256 of what the generated module's machine code is made from: theory/scan_snap.py, the generator's
    own code and sim/vector_exp.py (whose exp the generated formulas call)."""
    digest = hashlib.sha256()
    for path in (th.__file__, vector_exp.__file__):
        with open(path, "rb") as fh:
            digest.update(fh.read())
    digest.update(inspect.getsource(generate_formulas_module).encode())
    return digest.hexdigest()


def _drop_compiled_callers() -> None:
    """Delete the on-disk Numba cache of this module and of the generated one. Numba keys a cached function on
    its own file only, so machine code that inlined an older generated formula would otherwise be reused after
    the formulas change."""
    cache_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    if not os.path.isdir(cache_dir):
        return
    for name in os.listdir(cache_dir):
        if name.startswith(("scan_snap.", "_scan_snap_formulas.")) and name.endswith((".nbi", ".nbc")):
            try:
                os.remove(os.path.join(cache_dir, name))
            except OSError:
                pass  # another process removed it first


def generate_formulas_module(path: str = _GENERATED) -> None:
    """Write sim/_scan_snap_formulas.py: every formula of `formula_specs` printed by SymPy's Python code
    printer (with common-subexpression elimination) as an @njit(cache=True) function of plain floats. A real
    module, unlike lambdify's pseudo-file, lets Numba cache the machine code on disk."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ValueError(f"path={shown(path)}: must be a file path in an existing directory")
    lines = ['"""GENERATED by sim.scan_snap.generate_formulas_module from theory/scan_snap.py: do not edit."""',
             "import math", "", "import numba", "", "from sim import vector_exp", "",
             f'SOURCE_SHA256 = "{_source_digest()}"', ""]

    def code(e):  # exp as sim.vector_exp's, which LLVM can vectorize in the token loops (libm's it cannot)
        return pycode(e, fully_qualified_modules=True, user_functions={"exp": "vector_exp.exp"})

    for name, expr, args in formula_specs():
        subs, (reduced,) = sp.cse([expr], symbols=sp.numbered_symbols("_x"))
        lines += ["", "@numba.njit(cache=True)", f"def {name}({', '.join(str(a) for a in args)}):"]
        lines += [f"    {lhs} = {code(rhs)}" for lhs, rhs in subs]
        lines += [f"    return {code(reduced)}", ""]
    fd, tmp = tempfile.mkstemp(suffix=".py", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines))
    os.replace(tmp, path)


def _load_formulas():
    """Import the generated module, regenerating it first if theory/scan_snap.py or the generator changed."""
    try:
        from sim import _scan_snap_formulas as mod
        if getattr(mod, "SOURCE_SHA256", None) == _source_digest():
            return mod
    except ImportError:
        pass
    generate_formulas_module()
    _drop_compiled_callers()
    import sim._scan_snap_formulas as mod
    return importlib.reload(mod)


_F = _load_formulas()
_attention_score = _F.attention_score
_decoder_input = _F.decoder_input
_decoder_prob_score = _F.decoder_prob_score
_decoder_velocity = _F.decoder_velocity
_attention_velocity = _F.attention_velocity
_decoder_rate = _F.decoder_rate
_speed_coefficient = _F.speed_coefficient
_lemma4_term = _F.lemma4_term
_beta_first_order = _F.beta_first_order
_decoder_residual = _F.decoder_residual
_decoder_residual_dh = _F.decoder_residual_dh
_Gamma_of_h = _F.Gamma_of_h
_z_common_of_Gamma = _F.z_common_of_Gamma
_B_of_Gamma = _F.B_of_Gamma
# one name per component: a tuple of compiled functions would make Numba call them through pointers (its
# experimental first-class function type, which warns at compile time), and LLVM cannot inline those
_reduced_rhs_0, _reduced_rhs_1 = _F.reduced_rhs_0, _F.reduced_rhs_1
_reduced_rhs_2, _reduced_rhs_3 = _F.reduced_rhs_2, _F.reduced_rhs_3


def compiled_formulas() -> dict:
    """{name: (compiled function, SymPy expression, argument symbols)}, for tests against SymPy."""
    return {name: (getattr(_F, name), expr, args) for name, expr, args in formula_specs()}


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
assert DP_A[6, 1] == 0.0 and DP_E[1] == 0.0  # _dp_step skips these two terms
# Continuous extension (Shampine 1986; Hairer, Norsett & Wanner I, Sec. II.6): inside a step of size h from y,
# y(t + theta h) = y + h sum_j k_j sum_m DP_P[j, m] theta^(m+1), a 4th-order interpolant that equals the 5th-order
# solution at theta = 1 and has derivative f at both ends (tests check both and its local order).
DP_P = np.array([
    [1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
    [0.0, 0.0, 0.0, 0.0],
    [0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799],
    [0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
    [0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632],
    [0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
    [0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423],
])


# Sums that may be reordered (reassociation, fused multiply-adds, reciprocals), so that they run in SIMD lanes;
# results change only at rounding level (1e-16 relative per sum). Used by the integrator's stage sums and error
# norm and by the Lemma 1 flow's sums over tokens (13% off its right-hand side). No flag that assumes finite
# values: the max-shifts start from -inf.
_REORDER = {"reassoc", "contract", "arcp"}


@numba.njit(cache=True, fastmath=_REORDER)
def _dp_step(system, t, y, p, h, k, ytmp, ynew, yerr, rtol, atol):
    """One Dormand-Prince step from (t, y) with k[0] = f(t, y) already set; fills k[1..6], ynew, yerr and
    returns the error norm: the RMS of yerr_i / (atol + rtol max(|y_i|, |ynew_i|))."""
    n = y.size
    k0, k1, k2, k3, k4, k5, k6 = k[0], k[1], k[2], k[3], k[4], k[5], k[6]
    a = h * DP_A
    e = h * DP_E
    # one pass over the components per stage, written out: a loop over j inside would not vectorize
    for i in range(n):
        ytmp[i] = y[i] + a[1, 0] * k0[i]
    _rhs(system, t + DP_C[1] * h, ytmp, p, k1)
    for i in range(n):
        ytmp[i] = y[i] + a[2, 0] * k0[i] + a[2, 1] * k1[i]
    _rhs(system, t + DP_C[2] * h, ytmp, p, k2)
    for i in range(n):
        ytmp[i] = y[i] + a[3, 0] * k0[i] + a[3, 1] * k1[i] + a[3, 2] * k2[i]
    _rhs(system, t + DP_C[3] * h, ytmp, p, k3)
    for i in range(n):
        ytmp[i] = y[i] + a[4, 0] * k0[i] + a[4, 1] * k1[i] + a[4, 2] * k2[i] + a[4, 3] * k3[i]
    _rhs(system, t + DP_C[4] * h, ytmp, p, k4)
    for i in range(n):
        ytmp[i] = y[i] + a[5, 0] * k0[i] + a[5, 1] * k1[i] + a[5, 2] * k2[i] + a[5, 3] * k3[i] + a[5, 4] * k4[i]
    _rhs(system, t + DP_C[5] * h, ytmp, p, k5)
    # A[6, 1] = E[1] = 0. Stage 7 is evaluated at the 5th-order solution (FSAL). The error's terms in k0..k5 are
    # summed in this pass, which reads those stages anyway: the memory traffic, not the arithmetic, bounds
    # these loops (for the Lemma 1 flow 11 arrays of 1224 states lie in L2), and this saves reading five again.
    for i in range(n):
        ynew[i] = y[i] + a[6, 0] * k0[i] + a[6, 2] * k2[i] + a[6, 3] * k3[i] + a[6, 4] * k4[i] + a[6, 5] * k5[i]
        yerr[i] = e[0] * k0[i] + e[2] * k2[i] + e[3] * k3[i] + e[4] * k4[i] + e[5] * k5[i]
    _rhs(system, t + DP_C[6] * h, ynew, p, k6)
    err = 0.0
    for i in range(n):
        yerr[i] += e[6] * k6[i]
        err += (yerr[i] / (atol + rtol * max(abs(y[i]), abs(ynew[i])))) ** 2
    return np.sqrt(err / n)


@numba.njit(cache=True)
def _dense_output(y, k, h, theta, out):
    """out = y(t + theta h) by the continuous extension DP_P of the step whose stages are k."""
    w = np.zeros(7)
    power = 1.0
    for m in range(4):
        power *= theta
        for j in range(7):
            w[j] += h * DP_P[j, m] * power
    for i in range(y.size):
        out[i] = y[i] + w[0] * k[0, i] + w[2] * k[2, i] + w[3] * k[3, i] + w[4] * k[4, i] + w[5] * k[5, i] + w[6] * k[6, i]


@numba.njit(cache=True)
def dopri5(system, t_eval, y0, p, rtol, atol, max_steps, dense, out, stats):
    """Adaptive Dormand-Prince 5(4) from t_eval[0] through every t_eval[i]; writes y(t_eval[i]) to out[i].

    system: an integer from `system_id` (right-hand sides are dispatched by number, not passed as functions,
    so that Numba can cache this on disk); each rhs(t, y, p, dy) fills dy in place.
    dense=False: the steps land exactly on every output time (outputs carry the 5th-order solution's error).
    dense=True: the steps ignore the output times, which are filled by the 4th-order continuous extension
    DP_P (as solve_ivp's t_eval does): fewer steps when outputs are closer together than the steps need.
    Error norm: RMS of err_i / (atol + rtol max(|y_i|, |ynew_i|)).
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
    _rhs(system, t, y, p, k[0])
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
    idx = 1  # the next output to fill
    while idx < t_eval.size and status == 0:
        target = t_eval[-1] if dense else t_eval[idx]
        if accepted + rejected >= max_steps:
            status = 1
            break
        step = min(h, target - t)
        last = step < h
        err = _dp_step(system, t, y, p, step, k, ytmp, ynew, yerr, rtol, atol)
        nfev += 6
        if err <= 1.0:
            t_new = target if last else t + step
            while dense and idx < t_eval.size - 1 and t_eval[idx] < t_new:
                _dense_output(y, k, step, (t_eval[idx] - t) / step, out[idx])
                idx += 1
            t = t_new
            y, ynew = ynew, y  # the new point becomes the current one: swap the buffers, no copy
            k[0, :] = k[6, :]  # FSAL
            if t == t_eval[idx]:
                out[idx, :] = y
                idx += 1
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
    stats[0] = accepted
    stats[1] = rejected
    stats[2] = nfev
    stats[3] = status


@numba.njit(cache=True)
def dopri5_fixed(system, t0, t1, y0, p, n_steps, embedded, out):
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
        _rhs(system, t, y, p, k[0])
        _dp_step(system, t, y, p, h, k, ytmp, ynew, yerr, 1.0, 1.0)
        for i in range(n):
            y[i] = ynew[i] - yerr[i] if embedded else ynew[i]
    out[:] = y


@numba.njit(cache=True, parallel=True)
def _dopri5_batch(system, t_eval, Y0, P, rtol, atol, max_steps, dense, OUT, STATS):
    # settings in parallel; sim/__init__ prefers Numba's workqueue layer, whose idle threads block instead of
    # spinning (OpenMP's spin slowed the PyTorch training in the same process ~20x on 2 cores)
    for b in numba.prange(Y0.shape[0]):
        dopri5(system, t_eval, Y0[b], P[b], rtol, atol, max_steps, dense, OUT[b], STATS[b])


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


def integrate(system: str, t_eval, y0, params, rtol=1e-8, atol=1e-10, max_steps=1_000_000,
              dense: bool = False) -> Solution:
    """Integrate dy/dt = rhs(t, y, p) of `system` (one of SYSTEMS) for a batch: y0 (B, n), params (B, n_p),
    every row on its own adaptive steps. dense=True fills the output times by interpolation instead of
    stepping onto them (`dopri5`). y0 and params: one row each per setting (a 1-D array is one setting); params
    in the layout of the system's *_params function, which `_check_system_params` checks entry by entry (the
    compiled right-hand sides index by it without bounds checks). Raises ValueError on bad input and
    RuntimeError if a setting fails to finish."""
    system = choice("system", system, SYSTEMS)
    t_eval = _real_array("t_eval", t_eval, ndim=1)
    if t_eval.size < 2 or np.any(np.diff(t_eval) <= 0):
        raise ValueError("t_eval: need a strictly increasing 1-D array of at least 2 times")
    y0 = np.atleast_2d(_real_array("y0", y0))
    params = np.atleast_2d(_real_array("params", params))
    if y0.ndim != 2 or params.ndim != 2:
        raise ValueError(f"y0, params: need 1-D or 2-D arrays (settings x values), got {y0.ndim}-D and "
                         f"{params.ndim}-D")
    if y0.shape[0] != params.shape[0]:
        raise ValueError(f"y0/params: batch sizes differ ({y0.shape[0]} vs {params.shape[0]})")
    if y0.shape[0] == 0:
        raise ValueError("y0, params: need at least one setting")
    n_state = _check_system_params(system, params)
    if y0.shape[1] != n_state:
        raise ValueError(f"y0: system {shown(system)} with these params has {n_state} state components, got "
                         f"{y0.shape[1]}")
    rtol = real_number("rtol", rtol, 0.0, open_low=True)
    atol = real_number("atol", atol, 0.0, open_low=True)
    max_steps = count("max_steps", max_steps, 1)
    if not isinstance(dense, (bool, np.bool_)):
        raise ValueError(f"dense={shown(dense)}: must be True or False")
    y0, params = np.ascontiguousarray(y0), np.ascontiguousarray(params)
    out = np.empty((y0.shape[0], t_eval.size, y0.shape[1]))
    stats = np.zeros((y0.shape[0], 4), dtype=np.int64)
    _dopri5_batch(system_id(system), t_eval, y0, params, rtol, atol, max_steps, bool(dense), out, stats)
    if np.any(stats[:, 3] != 0):
        bad = int(np.flatnonzero(stats[:, 3])[0])
        raise RuntimeError(f"dopri5: setting {bad} stopped early (status {stats[bad, 3]}: 1 = max_steps, "
                           f"2 = step-size underflow; its solution diverges or is too stiff for rtol={rtol:g}, "
                           f"atol={atol:g} before t = {t_eval[-1]:g}, or max_steps={max_steps} is too few)")
    return Solution(t_eval, out, stats[:, 0], stats[:, 1], stats[:, 2])


def _check_system_params(system: str, params: np.ndarray) -> int:
    """Check every row of `params` against the layout of `system` and return the state size.

    reduced: [eta_Y, eta_Z, M, K, C0]; yz_flow: [eta_Y, eta_Z, M, K, n_q, query_row[K], next_token[K], P[K*M]];
    lemma4: the same without next_token."""
    if system == "reduced":
        if params.shape[1] != 5:
            raise ValueError(f"params: system 'reduced' needs 5 values per setting [eta_Y, eta_Z, M, K, C0], got "
                             f"{params.shape[1]}")
        _check_reduced_columns(params)
        return 4
    first = params[0]
    M, K, nq = first[2], first[3], first[4]
    layout = "[eta_Y, eta_Z, M, K, n_queries, query_row[K], " + ("next_token[K], " if system == "yz_flow" else "") \
        + "P[K*M]]"
    if not all(v == int(v) and v >= 1 for v in (M, K, nq)) or M < 2 or M > M_MAX:
        raise ValueError(f"params: system {shown(system)} needs {layout}, with integers M >= 2, K >= 1, "
                         f"n_queries >= 1; got M={M:g}, K={K:g}, n_queries={nq:g}")
    M, K, nq = int(M), int(K), int(nq)
    with_next = system == "yz_flow"
    width = 5 + K * (2 if with_next else 1) + K * M
    if params.shape[1] != width or np.any(params[:, 2:5] != params[0, 2:5]):
        raise ValueError(f"params: system {shown(system)} with M={M}, K={K} needs {width} values per setting "
                         f"{layout}, the same M, K, n_queries in every row; got {params.shape[1]}")
    if np.any((params[:, :2] < RATE_RANGE[0]) | (params[:, :2] > RATE_RANGE[1])):
        raise ValueError(f"params: eta_Y, eta_Z (columns 0, 1) must lie in [{RATE_RANGE[0]:g}, {RATE_RANGE[1]:g}]")
    rows = params[:, 5:5 + K]
    if np.any(rows != np.round(rows)) or np.any(rows < 0) or np.any(rows >= nq):
        raise ValueError(f"params: query_row (columns 5..{4 + K}) must be integers in [0, {nq})")
    if with_next:
        nxt = params[:, 5 + K:5 + 2 * K]
        if np.any(nxt != np.round(nxt)) or np.any(nxt < 0) or np.any(nxt >= M):
            raise ValueError(f"params: next_token (columns {5 + K}..{4 + 2 * K}) must be integers in [0, {M})")
    P = params[:, -K * M:].reshape(-1, K, M)
    if np.any(P < 0) or np.any(np.abs(P.sum(axis=-1) - 1) > 1e-9):
        raise ValueError("params: each class's P (the last K*M values) must be >= 0 and sum to 1")
    return M * M + nq * M if with_next else 1 + nq * M


def _check_reduced_columns(p: np.ndarray) -> None:
    low, high = RATE_RANGE
    for c, name in ((0, "eta_Y"), (1, "eta_Z"), (3, "K"), (4, "C0")):
        bad = (p[:, c] < low) | (p[:, c] > high)
        if np.any(bad):
            raise ValueError(f"reduced_params: eta_Y, eta_Z, K, C0 must lie in [{low:g}, {high:g}] and M > 1 "
                             f"({name}={shown(float(p[bad, c][0]))})")
    if np.any(p[:, 2] <= 1) or np.any(p[:, 2] > M_MAX):
        raise ValueError(f"reduced_params: need M > 1 and M <= {M_MAX:g}, got "
                         f"M={shown(float(p[(p[:, 2] <= 1) | (p[:, 2] > M_MAX), 2][0]))}")


# ---------------------------------------------------------------------------------------------------------
# (a) The reduced Sec. 6 system and its closed form
# ---------------------------------------------------------------------------------------------------------
@numba.njit(cache=True)
def reduced_rhs(t, y, p, dy):
    """(h(t/K), Gamma, z_common, B_n)' with p = (eta_Y, eta_Z, M, K, C_0); formulas from theory.reduced_rhs."""
    dy[0] = _reduced_rhs_0(y[0], y[1], y[2], y[3], p[0], p[1], p[2], p[3], p[4])
    dy[1] = _reduced_rhs_1(y[0], y[1], y[2], y[3], p[0], p[1], p[2], p[3], p[4])
    dy[2] = _reduced_rhs_2(y[0], y[1], y[2], y[3], p[0], p[1], p[2], p[3], p[4])
    dy[3] = _reduced_rhs_3(y[0], y[1], y[2], y[3], p[0], p[1], p[2], p[3], p[4])


def reduced_params(eta_Y, eta_Z, M, K, C0=1.0) -> np.ndarray:
    """Broadcast settings into the (B, 5) parameter array of `reduced_rhs`: eta_Y, eta_Z, K, C0 in RATE_RANGE
    and 1 < M <= M_MAX, at least one setting."""
    names = ("eta_Y", "eta_Z", "M", "K", "C0")
    values = [_real_array(name, v) for name, v in zip(names, (eta_Y, eta_Z, M, K, C0))]
    try:
        cols = np.broadcast_arrays(*values)
    except ValueError:
        raise ValueError("reduced_params: the shapes of eta_Y, eta_Z, M, K, C0 "
                         f"{tuple(v.shape for v in values)} do not broadcast") from None
    p = np.stack([np.ravel(c) for c in cols], axis=1)
    if p.shape[0] == 0:
        raise ValueError("reduced_params: need at least one setting")
    _check_reduced_columns(p)
    return p


def integrate_reduced(params, t_eval, rtol=1e-8, atol=1e-10) -> Solution:
    """Integrate the Sec. 6 system from h = Gamma = z = B = 0 for every row of `reduced_params`."""
    params = np.atleast_2d(_real_array("params", params))
    return integrate("reduced", t_eval, np.zeros((params.shape[0], 4)), params, rtol, atol)


@numba.njit(cache=True)
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


@numba.njit(cache=True)
def _decoder_scale_vec(tt, M, eta_Y, out):
    for i in range(tt.size):
        out[i] = _decoder_scale_one(tt[i], M, eta_Y)


def _check_lemma6(t, M, eta_Y, K=1.0) -> tuple:
    """t (times >= 0, at least 1-D), M in (1, M_MAX], eta_Y and K in RATE_RANGE, M eta_Y t / K < SCALE_TIME_MAX."""
    t = np.atleast_1d(_real_array("t", t, 0.0))
    M = real_number("M", M, 1.0, M_MAX, open_low=True)
    eta_Y = real_number("eta_Y", eta_Y, *RATE_RANGE)
    K = real_number("K", K, *RATE_RANGE)
    if t.size and M * eta_Y * (t.max() / K) >= SCALE_TIME_MAX:
        raise ValueError(f"t: max t = {t.max():g} puts M eta_Y t / K = {M * eta_Y * (t.max() / K):.3g} beyond "
                         f"{SCALE_TIME_MAX:g}, where Lemma 6's e^(Mh) = M eta_Y t / K + 1 - ... leaves float64")
    return t, M, eta_Y, K


def decoder_scale(t, M, eta_Y) -> np.ndarray:
    """h(t) of Lemma 6 (exact, from e^{Mh} + (M-1)Mh = M eta_Y t + 1), elementwise for times t >= 0 (any shape;
    a scalar gives a 1-element array)."""
    tt, M, eta_Y, _ = _check_lemma6(t, M, eta_Y)
    return _decoder_scale(tt, M, eta_Y)


def _decoder_scale(tt, M, eta_Y) -> np.ndarray:
    flat = np.ascontiguousarray(tt.ravel(), dtype=np.float64)
    out = np.empty_like(flat)
    _decoder_scale_vec(flat, M, eta_Y, out)
    return out.reshape(tt.shape)


def reduced_closed_form(t, eta_Y, eta_Z, M, K, C0=1.0) -> dict:
    """Exact solution of the Sec. 6 system: h(t/K) by Lemma 6, then Gamma, z_common, B_n (Eqns. 120-129), for
    times t >= 0 (flattened to 1-D). Raises ValueError if Gamma(t) = (eta_Z/eta_Y) K (M-1)^2 h^2 / 2 leaves
    float64's range."""
    tt, M, eta_Y, K = _check_lemma6(t, M, eta_Y, K)
    eta_Z = real_number("eta_Z", eta_Z, *RATE_RANGE)
    C0 = real_number("C0", C0, *RATE_RANGE)
    hh = _decoder_scale(tt.ravel() / K, M, eta_Y)
    G = np.array([_Gamma_of_h(x, eta_Y, eta_Z, M, K) for x in hh])
    if not np.isfinite(G).all() or not np.isfinite(4 * G / C0).all():
        raise ValueError(f"eta_Z={shown(eta_Z)}, eta_Y={shown(eta_Y)}, K={shown(K)}, M={shown(M)}, C0={shown(C0)}: "
                         "Gamma(t) / C0 = (eta_Z/eta_Y) K (M-1)^2 h^2 / (2 C0) exceeds float64's range")
    return {"h": hh, "Gamma": G, "z_common": np.array([_z_common_of_Gamma(g, C0) for g in G]),
            "B": np.array([_B_of_Gamma(g, C0) for g in G])}


def speed_coefficient(t, M, K, eta_Y) -> np.ndarray:
    """gamma(t) of Eqn. 85 with Lemma 6's exact h(t/K), for times t >= 0 (flattened to 1-D)."""
    tt, M, eta_Y, K = _check_lemma6(t, M, eta_Y, K)
    hh = _decoder_scale(tt.ravel() / K, M, eta_Y)
    return np.array([_speed_coefficient(M, x) for x in hh])


# ---------------------------------------------------------------------------------------------------------
# Long-sequence attention (Lemma 2 / Eqn. 5) on a class table
# ---------------------------------------------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
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
    """Numeric form of a theory.SequenceClasses: probabilities (K, M), query row of Z per class, next tokens.

    Checked on construction (the compiled flows index by these arrays without bounds checks): probabilities
    (K, M) finite, >= 0, each row summing to 1 (within 1e-9); query_rows (K,) integers in [0, n_queries);
    queries (n_queries,) distinct tokens in [0, M); next_tokens (K,) distinct tokens in [0, M)."""

    probabilities: np.ndarray
    query_rows: np.ndarray
    queries: np.ndarray
    next_tokens: np.ndarray

    def __post_init__(self):
        P = _real_array("probabilities", self.probabilities, 0.0, ndim=2)
        K, M = P.shape
        if K < 1 or M < 2 or M > M_MAX or np.any(np.abs(P.sum(axis=1) - 1) > 1e-9):
            raise ValueError(f"probabilities: need a (K, M) array with K >= 1, M >= 2 whose rows sum to 1, "
                             f"got shape {P.shape}")
        queries = _token_array("queries", self.queries, M, None)
        if len(set(queries.tolist())) != queries.size:
            raise ValueError(f"queries={queries.tolist()}: must be distinct tokens")
        next_tokens = _token_array("next_tokens", self.next_tokens, M, K)
        if len(set(next_tokens.tolist())) != K:
            raise ValueError(f"next_tokens={next_tokens.tolist()}: must be distinct")
        query_rows = _token_array("query_rows", self.query_rows, queries.size, K)
        for name, value in (("probabilities", P), ("query_rows", query_rows), ("queries", queries),
                            ("next_tokens", next_tokens)):
            object.__setattr__(self, name, np.ascontiguousarray(value))

    @classmethod
    def from_classes(cls, classes: th.SequenceClasses) -> "ClassTable":
        if not isinstance(classes, th.SequenceClasses):
            raise ValueError(f"classes={shown(classes)}: must be a theory.scan_snap.SequenceClasses")
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


def _token_array(name: str, value, limit: int, length) -> np.ndarray:
    """A 1-D array of integers in [0, limit) (of `length` entries unless None), as int64."""
    array = np.asarray(value) if not isinstance(value, (str, bytes)) else np.asarray([])
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu" or (
            length is not None and array.size != length) or array.min() < 0 or array.max() >= limit:
        size = "" if length is None else f"{length} "
        raise ValueError(f"{name}={shown(value)}: must be a 1-D array of {size}integers in [0, {limit})")
    return array.astype(np.int64)


def _check_table(table) -> ClassTable:
    if not isinstance(table, ClassTable):
        raise ValueError(f"table={shown(table)}: must be a ClassTable (ClassTable.from_classes)")
    return table


def _logit_rows(name: str, table: ClassTable, Z_rows) -> np.ndarray:
    """Query rows of Z, (..., n_queries, M): finite real numbers (any size: softmax is shift invariant)."""
    Z_rows = _real_array(name, Z_rows)
    if Z_rows.ndim < 2 or Z_rows.shape[-2:] != (table.n_queries, table.n_vocab):
        raise ValueError(f"{name}: need shape (..., n_queries, M) = (..., {table.n_queries}, {table.n_vocab}), "
                         f"got {Z_rows.shape}")
    return Z_rows


def attention_from_logits(table: ClassTable, Z_rows) -> np.ndarray:
    """c_n for every class from query rows of Z (..., n_queries, M) -> (..., K, M), by Eqn. 5."""
    Z_rows = _logit_rows("Z_rows", _check_table(table), Z_rows)
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
# The helpers below (and _class_attention) are inlined into their callers by Numba itself (inline="always"),
# so they take the caller's fastmath flags. Left to LLVM, each call passing arrays cost 10-20% of the flow's
# integration time (one-off A/B timings, 64 settings).


@numba.njit(cache=True, fastmath=_REORDER, inline="always")
def _class_forward(P, zrow, Y, c, f, alpha, support):
    """Long-sequence forward pass of one class: c (Eqn. 5), f = c/||c||, alpha = softmax(Y^T f).
    Writes the indices l with f_l != 0 (the support of P) to support[:ns] and returns ns: every term of
    Lemma 1 carries a factor f_l, so the flow only needs those rows of Y."""
    M = P.size
    norm = _class_attention(P, zrow, c)
    ns = 0
    for l in range(M):
        f[l] = _decoder_input(c[l], norm)
        if f[l] != 0.0:
            support[ns] = l
            ns += 1
    alpha[:] = 0.0
    for s in range(ns):  # rows of Y, contiguous in memory
        l = support[s]
        for j in range(M):
            alpha[j] += Y[l, j] * f[l]
    smax = -np.inf
    for j in range(M):
        smax = max(smax, alpha[j])
    total = 0.0
    for j in range(M):
        alpha[j] = _decoder_prob_score(alpha[j], smax)
        total += alpha[j]
    for j in range(M):
        alpha[j] /= total
    return ns


@numba.njit(cache=True, fastmath=_REORDER, inline="always")
def _decoder_row(Y, l, target, alpha, rate_Y, f_l, dY):
    """One pass over row l of Y: adds the decoder velocity of Lemma 1 (rate_Y, f_l) to dY[l] and returns
    sum_j Y_lj (e_j - alpha_j), the component g_l = (Y (e_n - alpha_n))_l of Theorem 1. One pass, not two:
    the loops are short (M), and fusing them took about 10% off the flow's integration (one-off A/B)."""
    acc = 0.0
    for j in range(Y.shape[1]):
        dY[l, j] += _decoder_velocity(rate_Y, f_l, target[j], alpha[j])
        acc += Y[l, j] * (target[j] - alpha[j])
    return acc


@numba.njit(cache=True, fastmath=_REORDER)
def yz_flow_rhs(t, y, p, dy):
    """E_n[Lemma 1] with classes uniform: state y = [Y (M x M, row-major), Z query rows (n_q x M)]."""
    eta_Y = p[0]
    eta_Z = p[1]
    M = int(p[2])
    K = int(p[3])
    off_P = 5 + 2 * K
    # the average over the K classes, folded into the rates (both velocities are linear in them)
    rate_Y = eta_Y / K
    rate_Z = eta_Z / K
    Y = y[:M * M].reshape((M, M))
    Z = y[M * M:]
    dY = dy[:M * M].reshape((M, M))
    dZ = dy[M * M:]
    dy[:] = 0.0
    c = np.empty(M)
    f = np.empty(M)
    alpha = np.empty(M)
    target = np.empty(M)
    g = np.empty(M)
    support = np.empty(M, dtype=np.int64)
    for k in range(K):
        row = int(p[5 + k])
        nxt = int(p[5 + K + k])
        P = p[off_P + k * M: off_P + (k + 1) * M]
        ns = _class_forward(P, Z[row * M:(row + 1) * M], Y, c, f, alpha, support)
        for j in range(M):
            target[j] = 1.0 if j == nxt else 0.0
        f_dot_g = 0.0
        for s in range(ns):  # off the support f_l = 0, and so are dY[l, :] and dz_l
            l = support[s]
            g[l] = _decoder_row(Y, l, target, alpha, rate_Y, f[l], dY)
            f_dot_g += f[l] * g[l]
        for s in range(ns):
            l = support[s]
            dZ[row * M + l] += _attention_velocity(rate_Z, f[l], g[l], f_dot_g)


def _flow_params(table: ClassTable, eta_Y, eta_Z, with_next_tokens: bool) -> np.ndarray:
    """(B, n_p) rows [eta_Y, eta_Z, M, K, n_q, query_row[K], (next_token[K]), P[K*M]], rates broadcast."""
    _check_table(table)
    eY, eZ = (np.atleast_1d(r) for r in _check_rates(eta_Y, eta_Z))
    parts = [[table.n_vocab, table.n_classes, table.n_queries], table.query_rows]
    parts += [table.next_tokens] if with_next_tokens else []
    fixed = np.concatenate(parts + [table.probabilities.ravel()]).astype(np.float64)
    return np.stack([np.concatenate([[a, b], fixed]) for a, b in zip(eY.ravel(), eZ.ravel())])


def yz_flow_params(table: ClassTable, eta_Y, eta_Z) -> np.ndarray:
    """Parameters of `yz_flow_rhs` for learning rates broadcast against each other."""
    return _flow_params(table, eta_Y, eta_Z, True)


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
    """Integrate Lemma 1's long-sequence flow from Y0, Z0 (zeros by default, the paper's Y(0) = Z(0) = 0).
    Y0: (M, M) for every setting or (B, M, M), entries |Y| <= 1e300 / M; Z0: (n_queries, M) or (B, n_queries, M)."""
    params = yz_flow_params(table, eta_Y, eta_Z)
    M, nq = table.n_vocab, table.n_queries
    y0 = np.zeros((params.shape[0], M * M + nq * M))
    for name, value, shape, columns in (("Y0", Y0, (M, M), slice(0, M * M)),
                                        ("Z0", Z0, (nq, M), slice(M * M, None))):
        if value is not None:
            array = _real_array(name, value, -1e300 / M if name == "Y0" else -np.inf,
                                high=1e300 / M if name == "Y0" else np.inf)
            if array.shape[-2:] != shape or array.ndim not in (2, 3) or array.size not in (
                    np.prod(shape), params.shape[0] * np.prod(shape)):
                raise ValueError(f"{name}: need shape {shape} or ({params.shape[0]}, {shape[0]}, {shape[1]}), "
                                 f"got {array.shape}")
            y0[:, columns] = array.reshape(-1, int(np.prod(shape)))
    sol = integrate("yz_flow", t_eval, y0, params, rtol, atol)
    Y = sol.y[:, :, :M * M].reshape(sol.y.shape[0], -1, M, M)
    Z = sol.y[:, :, M * M:].reshape(sol.y.shape[0], -1, nq, M)
    return YZTrajectory(sol.t, Y, Z, attention_from_logits(table, Z), sol)


# ---------------------------------------------------------------------------------------------------------
# Lemma 4 with the Sec. 6 closure (and h(t/K) from Lemma 6), for Theorem 3
# ---------------------------------------------------------------------------------------------------------
# parameter layout: [eta_Y, eta_Z, M, K, n_queries, query_row[K], P[K*M]]


@numba.njit(cache=True)
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
    """Parameters of `lemma4_rhs` for learning rates broadcast against each other."""
    return _flow_params(table, eta_Y, eta_Z, False)


def integrate_lemma4(table: ClassTable, eta_Y, eta_Z, t_eval, rtol=1e-9, atol=1e-12) -> dict:
    """Integrate Lemma 4 from h = 0, Z = 0; returns {'t', 'h', 'Z' (B, T, n_q, M), 'attention', 'solution'}."""
    params = lemma4_params(table, eta_Y, eta_Z)
    y0 = np.zeros((params.shape[0], 1 + table.n_queries * table.n_vocab))
    sol = integrate("lemma4", t_eval, y0, params, rtol, atol)
    Z = sol.y[:, :, 1:].reshape(sol.y.shape[0], -1, table.n_queries, table.n_vocab)
    return {"t": sol.t, "h": sol.y[:, :, 0], "Z": Z, "attention": attention_from_logits(table, Z),
            "solution": sol}


# ---------------------------------------------------------------------------------------------------------
# The back-propagated signal g_n = Y (e_n - alpha_n) of Theorem 1 (Eqn. 9), measured on any (Y, Z)
# ---------------------------------------------------------------------------------------------------------
@numba.njit(cache=True)
def _backprop_norms(P, query_rows, next_tokens, Y, Z, out):
    K, M = P.shape
    c = np.empty(M)
    f = np.empty(M)
    alpha = np.empty(M)
    target = np.empty(M)
    scratch = np.zeros((M, M))
    support = np.empty(M, dtype=np.int64)
    g = np.empty(M)
    for k in range(K):
        _class_forward(P[k], Z[query_rows[k]], Y, c, f, alpha, support)
        for j in range(M):
            target[j] = 1.0 if j == next_tokens[k] else 0.0
        sq = 0.0
        big = 0.0
        for l in range(M):  # every row: the norm of g_n, not only its support
            g[l] = _decoder_row(Y, l, target, alpha, 0.0, 0.0, scratch)  # rate 0: only g_l is wanted
            sq += g[l] * g[l]
            big = max(big, abs(g[l]))
        if big > 0.0 and not 1e-290 < sq < np.inf:  # the squares over- or underflow: sum them rescaled
            sq = 0.0
            for l in range(M):
                sq += (g[l] / big) ** 2
            out[k] = big * np.sqrt(sq)
        else:
            out[k] = np.sqrt(sq)


def backprop_norms(table: ClassTable, Y, Z_rows) -> np.ndarray:
    """||g_n|| = ||Y (e_n - alpha_n)|| per class (Theorem 1: g_n = gamma (iota_n f_n - ...), so it tracks
    gamma(t) of Eqn. 85), with f_n from Eqn. 5. Y (..., M, M) with |Y| <= 1e300 / M, Z_rows (..., n_q, M) with
    the same leading shape -> (..., K)."""
    M = _check_table(table).n_vocab
    Y = _real_array("Y", Y, -1e300 / M, high=1e300 / M)
    Z_rows = _logit_rows("Z_rows", table, Z_rows)
    if Y.ndim < 2 or Y.shape[-2:] != (M, M) or Y.shape[:-2] != Z_rows.shape[:-2]:
        raise ValueError(f"Y: need shape (..., {M}, {M}) with the leading shape of Z_rows {Z_rows.shape[:-2]}, got "
                         f"{Y.shape}")
    lead = Y.shape[:-2]
    Yf = Y.reshape(-1, table.n_vocab, table.n_vocab)
    Zf = Z_rows.reshape(-1, table.n_queries, table.n_vocab)
    out = np.empty((Yf.shape[0], table.n_classes))
    for b in range(Yf.shape[0]):
        _backprop_norms(table.probabilities, table.query_rows, table.next_tokens, np.ascontiguousarray(Yf[b]),
                        np.ascontiguousarray(Zf[b]), out[b])
    return out.reshape(lead + (table.n_classes,))



# ---------------------------------------------------------------------------------------------------------
# Right-hand sides by number (first-class function arguments would stop Numba's on-disk cache)
# ---------------------------------------------------------------------------------------------------------
SYSTEMS = ("reduced", "yz_flow", "lemma4")


def system_id(system: str) -> int:
    """The number `dopri5` dispatches `system` (one of SYSTEMS) by."""
    return SYSTEMS.index(choice("system", system, SYSTEMS))


@numba.njit(cache=True)
def _rhs(system, t, y, p, dy):
    if system == 0:
        reduced_rhs(t, y, p, dy)
    elif system == 1:
        yz_flow_rhs(t, y, p, dy)
    else:
        lemma4_rhs(t, y, p, dy)
