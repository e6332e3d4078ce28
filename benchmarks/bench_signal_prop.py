"""Exponent grid: Numba parallel (sim.signal_prop.exponent_grid) against the same SymPy expressions
lambdified to NumPy and evaluated vectorized over the grid, and against a per-point Python loop.

All evaluate the same quadrature rule on the same integrands from theory/ and agree to 1e-12 (checked
here).  The main baselines use exponent_grid's algorithm (kernel integrals once per distinct
(sigma_w, sigma_2)), so the ratio measures compilation and parallelism, not the algorithm; a third row shows
naive NumPy vectorization that integrates at every point.
"""
import math
import time

import numpy as np
import sympy as sp

from sim import signal_prop as S
from theory import signal_prop as T
from theory.signal_prop import BlockParams


def _numpy_functions(activation="tanh"):
    kernel = T.mlp_kernel(activation)
    nodes, weights = S.gaussian_quadrature(S.QUADRATURE_PANELS_1D)
    integrands = sp.lambdify((T.z, T.sigma_w, T.sigma_2),
                             (kernel.integrands["diagonal"], kernel.integrands["slope_at_collapse"]),
                             modules="numpy", cse=True)
    exprs = tuple(e.subs(T.q, T.q_star_collapse) for e in (T.angle_multiplier, T.gradient_multiplier))
    multipliers = sp.lambdify(S._EXPONENT_ARGS, exprs, modules="numpy", cse=True)
    skip = sp.lambdify((T.alpha_A,), T.residual_coefficient(T.alpha_A, "normalized"), modules="numpy")
    return nodes, weights, integrands, multipliers, skip


def _scalar_functions(activation="tanh"):
    """The loop's versions: math-module lambdify for scalars (several times faster than NumPy scalars)."""
    nodes, weights, integrands, _, _ = _numpy_functions(activation)
    exprs = tuple(e.subs(T.q, T.q_star_collapse) for e in (T.angle_multiplier, T.gradient_multiplier))
    multipliers = sp.lambdify(S._EXPONENT_ARGS, exprs, modules="math", cse=True)
    skip = sp.lambdify((T.alpha_A,), T.residual_coefficient(T.alpha_A, "normalized"), modules="math")
    return nodes, weights, integrands, multipliers, skip


def numpy_grid(P, n_tokens, functions, dedupe=True, chunk=2048):
    """Vectorized over grid points.  dedupe=True: the kernel integrals once per distinct (sigma_w,
    sigma_2), the algorithm exponent_grid uses; False: at every point (chunks of points x nodes)."""
    nodes, weights, integrands, multipliers, skip = functions
    if dedupe:
        kernel_points, which = S._distinct_pairs(P[:, 4:6])
    else:
        kernel_points, which = P[:, 4:6], np.arange(len(P))
    q_m, chi = np.empty(len(kernel_points)), np.empty(len(kernel_points))
    for lo in range(0, len(kernel_points), chunk):
        k = kernel_points[lo:lo + chunk]
        diag_i, slope_i = integrands(nodes[None, :], k[:, 0:1], k[:, 1:2])
        q_m[lo:lo + chunk], chi[lo:lo + chunk] = diag_i @ weights, slope_i @ weights
    a, g = multipliers(1.0, q_m[which], chi[which], P[:, 0], P[:, 1], P[:, 2], P[:, 3], P[:, 4], P[:, 5],
                       skip(P[:, 0]), skip(P[:, 1]), n_tokens)
    return np.log(a), np.log(g)


def loop_grid(P, n_tokens, functions):
    """One point at a time, as a user would call a scalar function in a Python loop; the kernel
    integrals are cached per distinct (sigma_w, sigma_2), as exponent_grid does."""
    nodes, weights, integrands, multipliers, skip = functions
    cache, out = {}, []
    for row in P:
        key = (row[4], row[5])
        if key not in cache:
            diag_i, slope_i = integrands(nodes, row[4], row[5])
            cache[key] = float(diag_i @ weights), float(slope_i @ weights)
        a, g = multipliers(1.0, *cache[key], *row.tolist(), skip(row[0]), skip(row[1]), n_tokens)
        out.append((math.log(a), math.log(g)))
    return np.array(out).T


def _best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def run(quick: bool = False):
    side = 60 if quick else 200
    base = BlockParams()
    xs, ys = np.linspace(0.05, 0.95, side), np.linspace(0.5, 6.0, side)
    P = S.grid_points(base, "alpha", xs, "sigma_w", ys)
    functions = _numpy_functions()
    S.exponent_grid(base, "alpha", xs[:3], "sigma_w", ys[:3])          # compile outside the timing
    t_numba, (angle, gradient) = _best_of(lambda: S.exponent_grid(base, "alpha", xs, "sigma_w", ys), 20)
    t_numpy, (angle_np, gradient_np) = _best_of(lambda: numpy_grid(P, 32.0, functions), 20)
    t_naive, (angle_naive, _) = _best_of(lambda: numpy_grid(P, 32.0, functions, dedupe=False), 1)
    scalar_functions = _scalar_functions()
    t_loop, loop_result = _best_of(lambda: loop_grid(P, 32.0, scalar_functions), 1)
    for other in (angle_np, angle_naive, loop_result[0]):
        assert np.allclose(angle.ravel(), other, rtol=1e-12, atol=1e-13)
    assert np.allclose(gradient.ravel(), gradient_np, rtol=1e-12, atol=1e-13)
    detail = f"{side}x{side} grid (alpha x sigma_w), tanh, {S.QUADRATURE_PANELS_1D * S.QUADRATURE_ORDER} nodes"
    seconds = {"numba": t_numba, "numpy": t_numpy, "numpy_no_dedupe": t_naive, "loop": t_loop}
    rows = [
        {"name": "exponent grid: numba parallel", "baseline": "numpy vectorized, same algorithm",
         "ratio": t_numpy / t_numba, "detail": detail, "seconds": seconds},
        {"name": "exponent grid: numba parallel", "baseline": "per-point python loop, same algorithm",
         "ratio": t_loop / t_numba, "detail": detail, "seconds": seconds},
        {"name": "exponent grid: numba parallel", "baseline": "numpy vectorized, kernels at every point",
         "ratio": t_naive / t_numba, "detail": detail, "seconds": seconds},
    ]
    for r in rows:
        print(f"{r['name']} vs {r['baseline']}: {r['ratio']:.1f}x  ({r['detail']})")
    return rows


if __name__ == "__main__":
    run()
