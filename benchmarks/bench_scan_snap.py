"""Numba Dormand-Prince (sim.scan_snap) against scipy.integrate.solve_ivp(method="RK45") on a batch of settings.

Both integrators are Dormand-Prince 5(4) with the same error norm, run at the same rtol/atol, and both fill
the output times from the method's 4th-order continuous extension (solve_ivp's t_eval; dense=True here). solve_ivp gets
two right-hand sides, one row each:
  - the same compiled right-hand side (solve_ivp calls the @njit function from Python): the ratio measures
    the integrator alone, the strictest comparison;
  - the right-hand side a user without sim/ would write: theory's formulas lambdified to NumPy, sums over
    tokens and classes as array operations (benchmarks/numpy_scan_snap.py, tested equal to the compiled one).
Accuracy: max |y - y_ref| / (|y_ref| + atol) over the batch and output times,
against a tight reference (sim at rtol 1e-12); the detail also gives the ratio at equal accuracy (the loosest
Numba tolerance whose error stays at or below scipy's). Rows: the Sec. 6 reduced system (4 states), Lemma 4 on Syn-Small
(69 states) and the exact Lemma 1 flow on Syn-Small (1224 states), each on 64 (eta_Y, eta_Z) settings.
"""
from __future__ import annotations

import time

import numpy as np
from scipy.integrate import solve_ivp

from benchmarks import numpy_scan_snap as user_rhs
from sim import scan_snap as ss
from theory import scan_snap as th

RTOL, ATOL = 1e-7, 1e-9


def _settings(n):
    g = int(np.sqrt(n))
    eY, eZ = np.meshgrid(np.geomspace(0.25, 4.0, g), np.geomspace(0.1, 1.0, n // g))
    return eY.ravel()[:n], eZ.ravel()[:n]


def _problems(n):
    eY, eZ = _settings(n)
    table = ss.ClassTable.from_classes(th.syn_small())
    red = ss.reduced_params(eY, eZ, 1000.0, 10.0, 1.0)
    l4 = ss.lemma4_params(table, eY, eZ)
    yz = ss.yz_flow_params(table, eY, eZ)
    n_l4 = 1 + table.n_queries * table.n_vocab
    n_yz = table.n_vocab ** 2 + table.n_queries * table.n_vocab
    # (name, system, compiled rhs, params, y0, t_eval, the user's NumPy rhs for setting b)
    return [("reduced Sec. 6 system", "reduced", ss.reduced_rhs, red, np.zeros((n, 4)), np.linspace(0, 2000, 21),
             lambda b: user_rhs.reduced_rhs(red[b])),
            ("Lemma 4, Syn-Small", "lemma4", ss.lemma4_rhs, l4, np.zeros((n, n_l4)), np.linspace(0, 200, 21),
             lambda b: user_rhs.lemma4_rhs(table, eY[b], eZ[b])),
            ("Lemma 1 flow, Syn-Small", "yz_flow", ss.yz_flow_rhs, yz, np.zeros((n, n_yz)), np.linspace(0, 100, 21),
             lambda b: user_rhs.yz_flow_rhs(table, eY[b], eZ[b]))]


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _rel_error(y, ref) -> float:
    """max over settings, times and components of |y - ref| / (|ref| + ATOL)."""
    return float(np.max(np.abs(y - ref) / (np.abs(ref) + ATOL)))


def _compiled(rhs, p):
    def f(t, y):
        dy = np.empty_like(y)
        rhs(t, y, p, dy)
        return dy
    return f


def _scipy_batch(rhs_of, y0, t_eval):
    """solve_ivp on every setting b, one after another, with rhs_of(b) as f(t, y)."""
    out = np.empty((y0.shape[0], t_eval.size, y0.shape[1]))
    nfev = 0
    for b in range(y0.shape[0]):
        f = rhs_of(b)
        sol = solve_ivp(f, (t_eval[0], t_eval[-1]), y0[b], method="RK45", t_eval=t_eval, rtol=RTOL, atol=ATOL)
        if not sol.success:
            raise RuntimeError(sol.message)
        out[b] = sol.y.T
        nfev += sol.nfev
    return out, nfev


def _numba(system, t_eval, y0, params, rtol):
    return ss.integrate(system, t_eval, y0, params, rtol, rtol * ATOL / RTOL, dense=True)


def _equal_accuracy_rtol(system, t_eval, y0, params, ref, err_scipy) -> float:
    """The loosest Numba tolerance on a ladder around RTOL whose error is <= scipy's at RTOL (errors are
    deterministic, so this needs no timing)."""
    best = None
    for rtol in (1e-8, 3e-8, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4):
        if _rel_error(_numba(system, t_eval, y0, params, rtol).y, ref) > err_scipy:
            if best is not None:
                break
            continue
        best = rtol
    if best is None:
        raise RuntimeError(f"{system}: no Numba tolerance down to 1e-8 is as accurate as solve_ivp")
    return best


def run(quick: bool = False) -> list[dict]:
    n = 16 if quick else 64
    # On this shared virtual machine the speed of memory-bound work drifts by 20-50% over seconds to minutes.
    # So the two sides are timed in alternation, `repeats` rounds of one solve_ivp batch against five Numba
    # runs at each tolerance, and each side keeps its minimum (the least disturbed): a drift then slows
    # both sides' rounds alike instead of whichever side happened to run during it.
    repeats = 1 if quick else 5
    rows = []
    for name, system, rhs, params, y0, t_eval, numpy_rhs_of in _problems(n):
        _numba(system, t_eval, y0[:1], params[:1], RTOL)  # compile (or load the cache) first
        ref = ss.integrate(system, t_eval, y0, params, 1e-12, 1e-14).y
        mine = _numba(system, t_eval, y0, params, RTOL)
        err_n = _rel_error(mine.y, ref)
        rhs(0.0, y0[0].copy(), params[0], np.empty_like(y0[0]))  # warm the Python-side dispatch too
        numpy_rhs_of(0)(0.0, y0[0])                                # and the lambdified formulas
        baselines = [("same compiled rhs", lambda b: _compiled(rhs, params[b])),
                     ("theory lambdified to NumPy", numpy_rhs_of)]
        for label, rhs_of in baselines:
            theirs, nfev = _scipy_batch(rhs_of, y0, t_eval)
            err_s = _rel_error(theirs, ref)
            rtol_equal = _equal_accuracy_rtol(system, t_eval, y0, params, ref, err_s)
            t_scipy = t_numba = t_equal = float("inf")
            for _ in range(repeats):
                t_scipy = min(t_scipy, _seconds(lambda: _scipy_batch(rhs_of, y0, t_eval)))
                for _ in range(5):
                    t_numba = min(t_numba, _seconds(lambda: _numba(system, t_eval, y0, params, RTOL)))
                    t_equal = min(t_equal, _seconds(lambda: _numba(system, t_eval, y0, params, rtol_equal)))
            rows.append({"name": f"scan_snap: {name}, {n} settings, equal accuracy",
                         "baseline": f"solve_ivp RK45 rtol={RTOL:g}, {label}",
                         "ratio": t_scipy / t_equal,
                         "detail": f"numba {t_equal:.3f} s at rtol={rtol_equal:g} (at rtol={RTOL:g}: {t_numba:.3f} s, "
                                   f"{int(mine.nfev.sum())} rhs evals, max err {err_n:.1e}, {t_scipy / t_numba:.1f}x); "
                                   f"scipy {t_scipy:.3f} s ({nfev} rhs evals, max err {err_s:.1e}); "
                                   f"state size {y0.shape[1]}"})
    for r in rows:
        print(f"{r['name']}: {r['ratio']:.1f}x faster than {r['baseline']} -- {r['detail']}")
    return rows


if __name__ == "__main__":  # the flags of `python -m benchmarks`, for this benchmark alone
    import sys

    from benchmarks.__main__ import main as run_benchmarks
    sys.exit(run_benchmarks(only="scan_snap"))
