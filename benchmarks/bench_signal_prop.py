"""Exponent grid: Numba parallel (sim.signal_prop.exponent_grid) against what a user would otherwise run.

Baselines, every one timed from the two axes to the two maps in the same run:
  - a per-point loop over the public scalar API, sim.signal_prop.exponents (what a user without
    exponent_grid writes);
  - the same SymPy expressions lambdified to NumPy, vectorized by broadcasting the axes, with
    exponent_grid's algorithm (kernel integrals once per distinct (sigma_w, sigma_2)): the ratio then
    measures compilation and parallelism, not the algorithm;
  - a scalar Python loop with that algorithm (math-module lambdified, kernels cached): the loop at its best;
  - NumPy that integrates the kernels at every point (naive vectorization).
All evaluate the same quadrature rule on the same integrands from theory/ and agree to 1e-12 (checked here).
The finite-depth grid (depth=16 from q0 = 1: a loop over the collapsed-norm recursion at every point, three
maps) is timed against the per-point loop over sim.signal_prop.exponents(h, depth=16, q0=1.0), and agrees
with it to 1e-12.
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


# the BlockParams fields the multipliers take (sim.signal_prop.PARAM_SYMBOLS before the skips and n)
MULTIPLIER_FIELDS = tuple(str(s) for s in S.PARAM_SYMBOLS[:6])


def _multiplier_fields(values):
    """The entries of a row of T.NUMERIC_FIELDS that the compiled multipliers take, in their order."""
    return [values[T.NUMERIC_FIELDS.index(name)] for name in MULTIPLIER_FIELDS]


def _broadcast_columns(axes):
    """The numeric fields as arrays that broadcast to the (ny, nx) grid, without building it."""
    base_row, xs, x_columns, ys, y_columns = axes
    columns = [np.float64(v) for v in base_row]
    for c in x_columns:
        columns[c] = xs[None, :]
    for c in y_columns:
        columns[c] = ys[:, None]
    return columns


def numpy_grid(axes, n_tokens, functions, dedupe=True, chunk=2048):
    """Vectorized over the grid by broadcasting the two axes.  dedupe=True: the kernel integrals once per
    distinct (sigma_w, sigma_2) (sim's _kernel_pairs), the algorithm exponent_grid uses; False: at every
    point (chunks of points x nodes)."""
    nodes, weights, integrands, multipliers, skip = functions
    base_row, xs, _, ys, _ = axes
    columns = _broadcast_columns(axes)
    if dedupe:
        kernel_points, stride = S._kernel_pairs(*axes)
        which = np.arange(ys.size)[:, None] * stride[0] + np.arange(xs.size)[None, :] * stride[1]
    else:
        kernel_points = np.column_stack([np.broadcast_to(columns[c], (ys.size, xs.size)).ravel()
                                         for c in S._KERNEL_COLUMNS])
        which = np.arange(ys.size * xs.size).reshape(ys.size, xs.size)
    q_m, chi = np.empty(len(kernel_points)), np.empty(len(kernel_points))
    for lo in range(0, len(kernel_points), chunk):
        k = kernel_points[lo:lo + chunk]
        diag_i, slope_i = integrands(nodes[None, :], k[:, 0:1], k[:, 1:2])
        q_m[lo:lo + chunk], chi[lo:lo + chunk] = diag_i @ weights, slope_i @ weights
    a, g = multipliers(1.0, q_m[which], chi[which], *_multiplier_fields(columns), skip(columns[0]), skip(columns[1]),
                       n_tokens)
    return np.log(a), np.log(g)


def scalar_loop_grid(base, xs, ys, functions):
    """One point at a time with scalar (math-module) versions of the same expressions, the kernel
    integrals cached per distinct (sigma_w, sigma_2) as exponent_grid does: the loop at its best."""
    nodes, weights, integrands, multipliers, skip = functions
    cache, angle, gradient = {}, np.empty((ys.size, xs.size)), np.empty((ys.size, xs.size))
    row = [getattr(base, f) for f in T.NUMERIC_FIELDS]
    for i, sigma_w in enumerate(ys):
        for j, alpha in enumerate(xs):
            row[0] = row[1] = alpha
            row[4] = sigma_w
            key = (row[4], row[5])
            if key not in cache:
                diag_i, slope_i = integrands(nodes, row[4], row[5])
                cache[key] = float(diag_i @ weights), float(slope_i @ weights)
            a, g = multipliers(1.0, *cache[key], *_multiplier_fields(row), skip(row[0]), skip(row[1]),
                               float(base.n_tokens))
            angle[i, j], gradient[i, j] = math.log(a), math.log(g)
    return angle, gradient


def api_loop_grid(base, xs, ys):
    """What a user without exponent_grid writes: the public scalar API, sim.signal_prop.exponents, once
    per point."""
    angle, gradient = np.empty((ys.size, xs.size)), np.empty((ys.size, xs.size))
    for i, sigma_w in enumerate(ys):
        for j, alpha in enumerate(xs):
            ex = S.exponents(base.replace(alpha_A=float(alpha), alpha_M=float(alpha), sigma_w=float(sigma_w)))
            angle[i, j], gradient[i, j] = ex.angle, ex.gradient
    return angle, gradient


def api_loop_finite_depth(base, xs, ys, depth, q0):
    """The per-point loop for the finite-depth exponents: sim.signal_prop.exponents(h, depth=depth, q0=q0)."""
    maps = [np.empty((ys.size, xs.size)) for _ in range(3)]
    for i, sigma_w in enumerate(ys):
        for j, sigma_V in enumerate(xs):
            ex = S.exponents(base.replace(sigma_V=float(sigma_V), sigma_w=float(sigma_w)), depth=depth, q0=q0)
            maps[0][i, j], maps[1][i, j], maps[2][i, j] = ex.angle, ex.gradient, ex.gradient_frobenius
    return maps


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
    functions, scalar_functions = _numpy_functions(), _scalar_functions()
    S.exponent_grid(base, "alpha", xs[:3], "sigma_w", ys[:3])          # compile outside the timing
    S.exponents(base)
    # every timing starts from the axes (validation included) and ends with the two (side x side) maps
    t_numba, (angle, gradient) = _best_of(lambda: S.exponent_grid(base, "alpha", xs, "sigma_w", ys), 20)
    t_numpy, (angle_np, gradient_np) = _best_of(
        lambda: numpy_grid(S._grid_axes(base, "alpha", xs, "sigma_w", ys), 32.0, functions), 20)
    t_naive, (angle_naive, _) = _best_of(
        lambda: numpy_grid(S._grid_axes(base, "alpha", xs, "sigma_w", ys), 32.0, functions, dedupe=False), 1)
    t_scalar, (angle_scalar, _) = _best_of(lambda: scalar_loop_grid(base, xs, ys, scalar_functions), 1)
    t_api, (angle_api, gradient_api) = _best_of(lambda: api_loop_grid(base, xs, ys), 1)
    for other in (angle_np, angle_naive, angle_scalar, angle_api):
        assert np.allclose(angle, other, rtol=1e-12, atol=1e-13)
    for other in (gradient_np, gradient_api):
        assert np.allclose(gradient, other, rtol=1e-12, atol=1e-13)
    detail = f"{side}x{side} grid (alpha x sigma_w), tanh, {S.QUADRATURE_PANELS_1D * S.QUADRATURE_ORDER} nodes"
    seconds = {"numba": t_numba, "numpy": t_numpy, "numpy_no_dedupe": t_naive, "scalar_loop": t_scalar,
               "api_loop": t_api}
    rows = [
        {"name": "exponent grid: numba parallel", "baseline": "per-point loop over sim.signal_prop.exponents",
         "ratio": t_api / t_numba, "detail": detail, "seconds": seconds},
        {"name": "exponent grid: numba parallel", "baseline": "numpy vectorized (broadcast), same algorithm",
         "ratio": t_numpy / t_numba, "detail": detail, "seconds": seconds},
        {"name": "exponent grid: numba parallel", "baseline": "scalar python loop, same algorithm",
         "ratio": t_scalar / t_numba, "detail": detail, "seconds": seconds},
        {"name": "exponent grid: numba parallel", "baseline": "numpy vectorized, kernels at every point",
         "ratio": t_naive / t_numba, "detail": detail, "seconds": seconds},
    ]
    # finite depth: the crossing plane (sigma_V x sigma_w) of the normalized block at alpha = 0.25, n = 8
    depth, q0 = 16, 1.0
    crossing = BlockParams(alpha_A=0.25, alpha_M=0.25, n_tokens=8)
    xs_v, ys_w = np.linspace(0.2, 1.4, side), np.linspace(0.75, 4.5, side)
    S.exponent_grid(crossing, "sigma_V", xs_v[:3], "sigma_w", ys_w[:3], depth=depth, q0=q0)   # compile
    S.exponents(crossing, depth=depth, q0=q0)
    t_depth, maps = _best_of(lambda: S.exponent_grid(crossing, "sigma_V", xs_v, "sigma_w", ys_w, depth=depth,
                                                    q0=q0), 20)
    t_depth_api, maps_api = _best_of(lambda: api_loop_finite_depth(crossing, xs_v, ys_w, depth, q0), 1)
    for got, other in zip(maps, maps_api):
        assert np.allclose(got, other, rtol=1e-12, atol=1e-13)
    rows.append({"name": f"exponent grid, depth {depth} from q0 = {q0:g}: numba parallel",
                 "baseline": f"per-point loop over sim.signal_prop.exponents(h, depth={depth}, q0={q0:g})",
                 "ratio": t_depth_api / t_depth,
                 "detail": f"{side}x{side} grid (sigma_V x sigma_w), tanh, three maps",
                 "seconds": {"numba": t_depth, "api_loop": t_depth_api}})
    for r in rows:
        print(f"{r['name']} vs {r['baseline']}: {r['ratio']:.1f}x  ({r['detail']}; "
              f"numba {r['seconds']['numba'] * 1e3:.2f} ms)")
    return rows


if __name__ == "__main__":  # the flags of `python -m benchmarks`, for this benchmark alone
    import sys

    from benchmarks.__main__ import main as run_benchmarks
    sys.exit(run_benchmarks(only="signal_prop"))
