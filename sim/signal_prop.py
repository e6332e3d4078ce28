"""Numerics of the signal-propagation map, compiled from theory.signal_prop's SymPy expressions.

Nothing here retypes a formula: every map, kernel, integrand and exponent is `sympy.lambdify`-ed with
`modules="math"` and `cse=True`, then `numba.njit`-ed (`compile_expression`).  What sim/ adds is numerical
procedure: composite Gauss-Legendre quadrature of Gaussian integrals, Monte Carlo of the finite-n softmax
expectations, iteration over depth, root finding, and Numba-parallel grids.

Public API (other code relies on these names and signatures):
    propagate(h, depth, q0=1.0, rho0=0.5)  -> Trajectory(q, p, rho, jacobian)
    exponents(h)                           -> Exponents(angle, gradient)
    exponent_grid(base, x_field, x_values, y_field, y_values) -> (angle, gradient) 2-D arrays
    critical_point(base, free=("alpha", "sigma_w"))
    attention_moments(n_tokens, rho, sigma_A)  (Monte Carlo of the six softmax expectations)
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
import sympy as sp
from numpy.polynomial.legendre import leggauss

from theory import signal_prop as T
from theory.signal_prop import BlockParams

# Argument order shared by every compiled block function.
PARAM_SYMBOLS = (T.alpha_A, T.alpha_M, T.sigma_A, T.sigma_V, T.sigma_w, T.sigma_2, T.a_A, T.a_M, T.n)
STATE_SYMBOLS = (T.q, T.p, T.Qt, T.Pt)
KERNEL_SYMBOLS = (T.mlp_q, T.mlp_p, T.mlp_slope, T.mlp_slope_off)

# Composite Gauss-Legendre on [-9, 9] (the N(0, 1) mass outside is 2e-19): steep activations such as
# tanh(8 z) have poles near the real axis that ruin Gauss-Hermite, while 8-point panels of width 0.12
# reach ~1e-11 relative error at sigma_w = 8 (convergence test in tests/test_signal_prop_sim.py).
QUADRATURE_PANELS_1D = 150
QUADRATURE_PANELS_2D = 100    # per dimension
QUADRATURE_ORDER = 8
QUADRATURE_HALF_WIDTH = 9.0
MONTE_CARLO_SAMPLES = 16384   # softmax samples for the finite-n attention moments


def compile_expression(expr, args):
    """lambdify(args, expr, modules="math", cse=True) then numba.njit.  A tuple expr returns a tuple."""
    return numba.njit(sp.lambdify(args, expr, modules="math", cse=True))


def _params_vector(h: BlockParams) -> tuple:
    return (h.alpha_A, h.alpha_M, h.sigma_A, h.sigma_V, h.sigma_w, h.sigma_2, h.skip_A, h.skip_M,
            h.n_tokens)


# ----------------------------------------------------------------------------------------------------
# MLP kernels: closed forms compiled, or quadrature of compiled integrands
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompiledKernel:
    """njit functions diagonal(sw, s2), slope(sw, s2), value(rho, sw, s2), derivative(rho, sw, s2), and
    diagonal_and_slope(sw, s2) -> (q_M, chi_M) in one pass (the integrands share phi, e.g. one tanh)."""

    diagonal: object
    slope: object
    value: object
    derivative: object
    diagonal_and_slope: object


def gaussian_quadrature(panels: int, order: int = QUADRATURE_ORDER, half_width: float = QUADRATURE_HALF_WIDTH):
    """Nodes and weights of E_{z ~ N(0,1)} f(z): composite Gauss-Legendre on [-half_width, half_width]."""
    x, w = leggauss(order)
    edges = np.linspace(-half_width, half_width, panels + 1)
    width = edges[1] - edges[0]
    nodes = (edges[:-1, None] + width * (x[None, :] + 1) / 2).ravel()
    weights = np.tile(w * width / 2, panels) * np.exp(-nodes**2 / 2) / math.sqrt(2 * math.pi)
    return nodes, weights


@functools.lru_cache(maxsize=None)
def compiled_kernel(activation) -> CompiledKernel:
    """The MLP Gaussian kernel of `activation` (a name or a sympy.Lambda) as njit functions."""
    kernel = T.mlp_kernel(activation)
    sw, s2 = T.sigma_w, T.sigma_2
    if kernel.closed_form:
        return CompiledKernel(
            diagonal=compile_expression(kernel.diagonal, (sw, s2)),
            slope=compile_expression(T.mlp_slope_at_collapse(kernel), (sw, s2)),
            value=compile_expression(kernel.value, (T.rho, sw, s2)),
            derivative=compile_expression(kernel.derivative, (T.rho, sw, s2)),
            diagonal_and_slope=compile_expression((kernel.diagonal, T.mlp_slope_at_collapse(kernel)),
                                                  (sw, s2)),
        )
    x1, w1 = gaussian_quadrature(QUADRATURE_PANELS_1D)
    x2, w2 = gaussian_quadrature(QUADRATURE_PANELS_2D)
    f_diag = compile_expression(kernel.integrands["diagonal"], (T.z, sw, s2))
    f_slope = compile_expression(kernel.integrands["slope_at_collapse"], (T.z, sw, s2))
    f_value = compile_expression(kernel.integrands["value"], (T.z1, T.z2, T.rho, sw, s2))
    f_deriv = compile_expression(kernel.integrands["derivative"], (T.z1, T.z2, T.rho, sw, s2))

    def one_d(f):
        @numba.njit
        def integral(sigma_w, sigma_2):
            acc = 0.0
            for i in range(x1.size):
                acc += w1[i] * f(x1[i], sigma_w, sigma_2)
            return acc
        return integral

    def two_d(f):
        @numba.njit
        def integral(rho, sigma_w, sigma_2):
            r = min(1.0, max(-1.0, rho))
            acc = 0.0
            for i in range(x2.size):
                inner = 0.0
                for j in range(x2.size):
                    inner += w2[j] * f(x2[i], x2[j], r, sigma_w, sigma_2)
                acc += w2[i] * inner
            return acc
        return integral

    f_both = compile_expression((kernel.integrands["diagonal"], kernel.integrands["slope_at_collapse"]),
                                (T.z, sw, s2))

    @numba.njit
    def diagonal_and_slope(sigma_w, sigma_2):
        diag = slope = 0.0
        for i in range(x1.size):
            d, c = f_both(x1[i], sigma_w, sigma_2)
            diag += w1[i] * d
            slope += w1[i] * c
        return diag, slope

    return CompiledKernel(one_d(f_diag), one_d(f_slope), two_d(f_value), two_d(f_deriv), diagonal_and_slope)


# ----------------------------------------------------------------------------------------------------
# Attention: finite-n softmax expectations by Monte Carlo (theory.signal_prop.attention_moment_integral)
# ----------------------------------------------------------------------------------------------------
@numba.njit(parallel=True)
def _softmax_moments(shared, private_i, private_k, s, t):
    """Monte Carlo of the six softmax moments of T.ATTENTION_MOMENTS for logits s a_j + t b_j (row i)
    and s a_j + t c_j (row k); both rows are used for the single-row moments (same law)."""
    n_samples, n = shared.shape
    partial = np.zeros((n_samples, 6))
    for m in numba.prange(n_samples):
        max_i, max_k = -np.inf, -np.inf
        for j in range(n):
            max_i = max(max_i, s * shared[m, j] + t * private_i[m, j])
            max_k = max(max_k, s * shared[m, j] + t * private_k[m, j])
        ai, ak = np.empty(n), np.empty(n)
        z_i, z_k = 0.0, 0.0
        for j in range(n):
            ai[j] = math.exp(s * shared[m, j] + t * private_i[m, j] - max_i)
            ak[j] = math.exp(s * shared[m, j] + t * private_k[m, j] - max_k)
            z_i += ai[j]
            z_k += ak[j]
        self_i = self_k = cross = cube = cross21 = 0.0
        for j in range(n):
            x, y = ai[j] / z_i, ak[j] / z_k
            self_i += x * x
            self_k += y * y
            cross += x * y
            cube += 0.5 * (x * x * x + y * y * y)
            cross21 += 0.5 * (x * x * y + y * y * x)
        partial[m, 0] = 0.5 * (self_i + self_k)
        partial[m, 1] = cross
        partial[m, 2] = cube
        partial[m, 3] = 0.5 * (self_i * self_i + self_k * self_k)
        partial[m, 4] = cross21
        partial[m, 5] = cross * cross
    means = np.zeros(6)
    for c in range(6):
        means[c] = partial[:, c].mean()
    return means


@functools.lru_cache(maxsize=8)
def _common_random_numbers(n_tokens: int, n_samples: int, seed: int):
    """Fixed standard normals, so the moments are smooth deterministic functions of (rho, sigma_A)."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((n_samples, n_tokens)) for _ in range(3))


_logit_stds = compile_expression((T.logit_shared_std, T.logit_private_std), (T.rho, T.sigma_A))
_large_n_moments = compile_expression(tuple(T.attention_moments_large_n[m] for m in T.ATTENTION_MOMENTS),
                                      (T.rho, T.sigma_A, T.n))


def attention_moments(n_tokens: int, rho: float, sigma_A: float, method: str = "monte_carlo",
                      n_samples: int = MONTE_CARLO_SAMPLES, seed: int = 0) -> np.ndarray:
    """The six expectations of theory.signal_prop.ATTENTION_MOMENTS at cosine rho.

    method="monte_carlo": exact at finite n up to Monte Carlo error (common random numbers, `seed`);
    method="large_n": the limit-[N] closed forms.
    """
    r = min(1.0, max(0.0, float(rho)))
    if method == "large_n":
        return np.array(_large_n_moments(r, sigma_A, n_tokens))
    if method != "monte_carlo":
        raise ValueError(f"method={method!r}: allowed values are ('monte_carlo', 'large_n')")
    s, t = _logit_stds(r, sigma_A)
    return _softmax_moments(*_common_random_numbers(n_tokens, n_samples, seed), s, t)


def attention_moments_quadrature(n_tokens: int, rho: float, sigma_A: float, nodes: int = 480):
    """(E sum_j A_ij^2, E sum_j A_ij A_kj) at finite n by quadrature, an independent check of the Monte
    Carlo.  With 1/Z = int_0^oo e^{-uZ} du the n-key expectations factorise over keys:
        m_self  = n int u F_2(u) F_0(u)^{n-1} du,          F_k(u) = E_l[e^{k l - u e^l}], l ~ N(0, s^2 + t^2)
        m_cross = n int int H_11(u, w) H_00(u, w)^{n-1} du dw,
        H_ab(u, w) = E_a[f_a(u; a) f_b(w; a)],  f_k(u; a) = E_b[e^{k(s a + t b) - u e^{s a + t b}}],
    with u = e^y, w = e^x on composite Gauss-Legendre grids around the scale u ~ 1/(n E e^l)."""
    r = min(1.0, max(0.0, float(rho)))
    s, t = _logit_stds(r, sigma_A)
    z, wz = gaussian_quadrature(60)
    log_scale = -math.log(n_tokens) - 0.5 * (s * s + t * t)
    y, wy = _legendre_interval(log_scale - 40.0, log_scale + 12.0, nodes)
    u = np.exp(y)

    def f(k, shift):                           # f_k(u; a) for logits shift + t b, shape (len(u), len(shift))
        logits = shift[None, :, None] + t * z[None, None, :]
        vals = np.exp(k * logits - u[:, None, None] * np.exp(logits))
        return vals @ wz

    a_nodes = np.array([0.0]) if s == 0.0 else z
    a_weights = np.array([1.0]) if s == 0.0 else wz
    f0, f1, f2 = (f(k, s * a_nodes) for k in (0, 1, 2))
    F0, F2 = f0 @ a_weights, f2 @ a_weights
    m_self = n_tokens * np.sum(wy * u**2 * F2 * F0 ** (n_tokens - 1))
    H00 = (f0 * a_weights) @ f0.T
    H11 = (f1 * a_weights) @ f1.T
    jac = np.outer(wy * u, wy * u)
    m_cross = n_tokens * np.sum(jac * H11 * H00 ** (n_tokens - 1))
    return float(m_self), float(m_cross)


def _legendre_interval(lo, hi, nodes, order=QUADRATURE_ORDER):
    x, w = leggauss(order)
    edges = np.linspace(lo, hi, nodes // order + 1)
    width = edges[1] - edges[0]
    return (edges[:-1, None] + width * (x[None, :] + 1) / 2).ravel(), np.tile(w * width / 2, nodes // order)


# ----------------------------------------------------------------------------------------------------
# The block map over depth
# ----------------------------------------------------------------------------------------------------
_BLOCK = T.block_map()
_ARGS = STATE_SYMBOLS + T.ATTENTION_MOMENTS + KERNEL_SYMBOLS + PARAM_SYMBOLS
_attention_step = compile_expression((_BLOCK.q1, _BLOCK.p1), _ARGS)
_block_step = compile_expression((_BLOCK.q_out, _BLOCK.p_out, _BLOCK.Qt_out, _BLOCK.Pt_out), _ARGS)


@dataclass(frozen=True)
class Trajectory:
    """Order parameters after each block (index 0 = input).  jacobian[l] = E|dX_l/dX_0|_F^2 / (n d)."""

    q: np.ndarray
    p: np.ndarray
    rho: np.ndarray
    jacobian: np.ndarray


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}")


def propagate(h: BlockParams, depth: int, q0: float = 1.0, rho0: float = 0.5,
              attention: str = "finite", n_samples: int = MONTE_CARLO_SAMPLES, seed: int = 0
              ) -> Trajectory:
    """Iterate the one-block map `depth` times from a simplex (q0, q0 rho0), with the tangent map started
    from an isotropic probe (Qt = 1, Pt = 0) so that `jacobian` tracks E|dX_l/dX_0|_F^2 / (n d).

    attention="finite" uses the Monte Carlo softmax moments at n = h.n_tokens (exact in limit [W]);
    "large_n" their limit-[N] closed forms.
    """
    if not isinstance(h, BlockParams):
        raise ValueError(f"h={h!r}: must be a theory.signal_prop.BlockParams")
    _check_positive_int("depth", depth, 0)
    if not (isinstance(q0, (int, float)) and q0 > 0 and math.isfinite(q0)):
        raise ValueError(f"q0={q0!r}: must be a finite number > 0")
    if not (isinstance(rho0, (int, float)) and 0.0 <= rho0 <= 1.0):
        raise ValueError(f"rho0={rho0!r}: must lie in [0, 1]")
    if attention not in ("finite", "large_n"):
        raise ValueError(f"attention={attention!r}: allowed values are ('finite', 'large_n')")
    method = "monte_carlo" if attention == "finite" else "large_n"
    kernel = compiled_kernel(h.activation)
    params = _params_vector(h)
    q_M = kernel.diagonal(h.sigma_w, h.sigma_2)
    slope = kernel.slope(h.sigma_w, h.sigma_2)
    q, p, Qt, Pt = float(q0), float(q0 * rho0), 1.0, 0.0
    out = np.empty((depth + 1, 4))
    out[0] = q, p, p / q, Qt
    for layer in range(1, depth + 1):
        moments = attention_moments(h.n_tokens, p / q, h.sigma_A, method, n_samples, seed)
        q1, p1 = _attention_step(q, p, Qt, Pt, *moments, 0.0, 0.0, 0.0, 0.0, *params)
        rho1 = min(1.0, p1 / q1)
        kernel_values = (q_M, kernel.value(rho1, h.sigma_w, h.sigma_2), slope,
                         kernel.derivative(rho1, h.sigma_w, h.sigma_2))
        q, p, Qt, Pt = _block_step(q, p, Qt, Pt, *moments, *kernel_values, *params)
        out[layer] = q, p, p / q, Qt
    return Trajectory(q=out[:, 0], p=out[:, 1], rho=out[:, 2], jacobian=out[:, 3])


# ----------------------------------------------------------------------------------------------------
# Exponents at collapse
# ----------------------------------------------------------------------------------------------------
_EXPONENT_ARGS = (T.q, T.mlp_q, T.mlp_slope) + PARAM_SYMBOLS
_multipliers_at_q = compile_expression((T.angle_multiplier, T.gradient_multiplier), _EXPONENT_ARGS)
_multipliers_normalized = compile_expression(
    tuple(e.subs(T.q, T.q_star_collapse) for e in (T.angle_multiplier, T.gradient_multiplier)),
    _EXPONENT_ARGS)
_skip_normalized = compile_expression(T.residual_coefficient(T.alpha_A, "normalized"), (T.alpha_A,))
_q_star_collapse = compile_expression(T.q_star_collapse, (T.mlp_q,) + PARAM_SYMBOLS)


@dataclass(frozen=True)
class Exponents:
    """Per-block Lyapunov exponents (natural log) of the linearisation at collapse.

    angle:    growth rate of epsilon = 1 - rho (the squared inter-token angle), T.angle_multiplier.
    gradient: growth rate of E|dX_L/dX_0|_F^2 (its dominant, common mode), T.gradient_multiplier.
    q:        the collapsed norm at which they are evaluated.
    """

    angle: float
    gradient: float
    q: float


def exponents(h: BlockParams, q: float | None = None) -> Exponents:
    """Angle and gradient exponents of `h` at the collapsed state (rho = 1) with norm q.

    q=None: the collapsed fixed point q* for residual="normalized"; for "plain", whose norm grows without
    bound (no fixed point, power-law rather than exponential dynamics), q = 1, the norm of LN'd inputs,
    i.e. the first block of a network fed unit-norm tokens.  Neither exponent depends on n or sigma_A:
    at collapse the attention is exactly uniform.
    """
    if not isinstance(h, BlockParams):
        raise ValueError(f"h={h!r}: must be a theory.signal_prop.BlockParams")
    kernel = compiled_kernel(h.activation)
    q_M = kernel.diagonal(h.sigma_w, h.sigma_2)
    slope = kernel.slope(h.sigma_w, h.sigma_2)
    params = _params_vector(h)
    if q is None and h.residual == "normalized":
        q_value = _q_star_collapse(q_M, *params)
        angle, gradient = _multipliers_normalized(q_value, q_M, slope, *params)
    else:
        q_value = 1.0 if q is None else float(q)
        if not q_value > 0:
            raise ValueError(f"q={q!r}: must be > 0")
        angle, gradient = _multipliers_at_q(q_value, q_M, slope, *params)
    # alpha = 1 with the normalized residual removes the skip path: one block collapses exactly (-inf).
    return Exponents(angle=_log(angle), gradient=_log(gradient), q=q_value)


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


GRID_FIELDS = T.NUMERIC_FIELDS + ("alpha",)     # "alpha" sets alpha_A = alpha_M together


_KERNEL_COLUMNS = (T.NUMERIC_FIELDS.index("sigma_w"), T.NUMERIC_FIELDS.index("sigma_2"))


def _grid_kernels(activation, normalized: bool):
    """Two Numba-parallel passes: the MLP kernel integrals (q_M, chi_M) once per distinct (sigma_w,
    sigma_2) of the grid, then both multipliers at every point.  The second pass builds each point's
    parameters from the two axes as it goes, so no (points x fields) array is ever stored."""
    diagonal_and_slope = compiled_kernel(activation).diagonal_and_slope
    multipliers = _multipliers_normalized if normalized else _multipliers_at_q
    skip = _skip_normalized

    @numba.njit(parallel=True)
    def kernel_values(pairs, q_m_out, chi_out):
        for k in numba.prange(pairs.shape[0]):
            q_m_out[k], chi_out[k] = diagonal_and_slope(pairs[k, 0], pairs[k, 1])

    @numba.njit(parallel=True)
    def grid(base_row, xs, x_columns, ys, y_columns, kernel_stride, q_m, chi, q_value, n_tokens,
             angle_out, gradient_out):
        # kernel index of point (i, j): i * kernel_stride[0] + j * kernel_stride[1] (see _kernel_pairs)
        for i in numba.prange(ys.size):
            row = base_row.copy()
            for c in y_columns:
                row[c] = ys[i]
            for j in range(xs.size):
                for c in x_columns:
                    row[c] = xs[j]
                k = i * kernel_stride[0] + j * kernel_stride[1]
                if normalized:
                    skip_a, skip_m = skip(row[0]), skip(row[1])
                else:
                    skip_a, skip_m = 1.0, 1.0
                a, g = multipliers(q_value, q_m[k], chi[k], row[0], row[1], row[2], row[3], row[4], row[5],
                                   skip_a, skip_m, n_tokens)
                angle_out[i, j] = math.log(a)
                gradient_out[i, j] = math.log(g)
    return kernel_values, grid


_GRID_KERNELS: dict = {}


def _field_columns(field: str) -> np.ndarray:
    """Columns of T.NUMERIC_FIELDS that one grid axis sets ("alpha" sets alpha_A and alpha_M)."""
    return np.array([0, 1] if field == "alpha" else [T.NUMERIC_FIELDS.index(field)], dtype=np.int64)


def _grid_axes(base: BlockParams, x_field: str, x_values, y_field: str, y_values):
    """Validated (base_row, xs, x_columns, ys, y_columns) of a grid: the numeric fields of `base` and
    each axis with the columns it sets.  Checking the axes checks every grid point (each point's value
    of a field is either the base's, already checked by BlockParams, or an axis value)."""
    for name, field in (("x_field", x_field), ("y_field", y_field)):
        if field not in GRID_FIELDS:
            raise ValueError(f"{name}={field!r}: allowed values are {GRID_FIELDS}")
    xs, ys = np.asarray(x_values, float), np.asarray(y_values, float)
    if xs.ndim != 1 or ys.ndim != 1 or xs.size == 0 or ys.size == 0:
        raise ValueError("x_values and y_values must be non-empty 1-D sequences")
    x_columns, y_columns = _field_columns(x_field), _field_columns(y_field)
    if np.isin(x_columns, y_columns).any():
        raise ValueError(f"x_field={x_field!r}, y_field={y_field!r}: the two axes must set different fields")
    for values, columns in ((xs, x_columns), (ys, y_columns)):
        bad = ~np.isfinite(values) | (values < 0)
        if base.residual == "normalized" and columns[0] < 2:
            bad |= values > 1
        if bad.any():
            column = T.NUMERIC_FIELDS[int(columns[0])]
            raise ValueError(f"grid value of {column} outside its allowed range (>= 0, finite"
                             + (", <= 1 for alpha with residual='normalized')" if base.residual ==
                                "normalized" else ")"))
    base_row = np.array([getattr(base, f) for f in T.NUMERIC_FIELDS], float)
    return base_row, xs, x_columns, ys, y_columns


def _kernel_pairs(base_row, xs, x_columns, ys, y_columns):
    """The (sigma_w, sigma_2) pairs the grid needs, from its axes, and the strides (over y, over x) that
    give point (i, j) its pair i * stride_y + j * stride_x: one pair if neither axis is a kernel field,
    one per value of the axis that is, one per point if both are."""
    x_kernel = bool(np.isin(x_columns, _KERNEL_COLUMNS).any())
    y_kernel = bool(np.isin(y_columns, _KERNEL_COLUMNS).any())
    ny, nx = (ys.size if y_kernel else 1), (xs.size if x_kernel else 1)
    rows = np.tile(base_row, (ny, nx, 1))
    if x_kernel:
        rows[:, :, x_columns] = xs[None, :, None]
    if y_kernel:
        rows[:, :, y_columns] = ys[:, None, None]
    pairs = np.ascontiguousarray(rows[:, :, list(_KERNEL_COLUMNS)].reshape(-1, 2))
    stride = np.array([nx if y_kernel else 0, 1 if x_kernel else 0], dtype=np.int64)
    return pairs, stride


def exponent_grid(base: BlockParams, x_field: str, x_values, y_field: str, y_values,
                  q: float | None = None):
    """Both exponents on the grid y_values x x_values of two BlockParams fields (Numba parallel).

    Returns (angle, gradient), arrays of shape (len(y_values), len(x_values)); same convention for q as
    `exponents`.
    """
    axes = _grid_axes(base, x_field, x_values, y_field, y_values)
    normalized = base.residual == "normalized" and q is None
    key = (base.activation, normalized)
    if key not in _GRID_KERNELS:
        _GRID_KERNELS[key] = _grid_kernels(base.activation, normalized)
    kernel_values, grid = _GRID_KERNELS[key]
    pairs, stride = _kernel_pairs(*axes)
    q_m, chi = np.empty(len(pairs)), np.empty(len(pairs))
    kernel_values(pairs, q_m, chi)
    q_value = 1.0 if q is None else float(q)
    if not q_value > 0:
        raise ValueError(f"q={q!r}: must be > 0")
    base_row, xs, x_columns, ys, y_columns = axes
    angle, gradient = np.empty((ys.size, xs.size)), np.empty((ys.size, xs.size))
    grid(base_row, xs, x_columns, ys, y_columns, stride, q_m, chi, q_value, float(base.n_tokens),
         angle, gradient)
    return angle, gradient


# ----------------------------------------------------------------------------------------------------
# Critical initialisation and the simplex fixed point
# ----------------------------------------------------------------------------------------------------
def _with_field(h: BlockParams, field: str, value: float) -> BlockParams:
    if field == "alpha":
        return h.replace(alpha_A=float(value), alpha_M=float(value))
    return h.replace(**{field: float(value)})


def edge_of_chaos(base: BlockParams, field: str = "sigma_w", bracket=(1e-3, 20.0)) -> BlockParams:
    """The value of one field at which the angle exponent vanishes (lambda_a = 0), the others fixed.

    Raises ValueError if lambda_a does not change sign on `bracket` (no edge of chaos along that line).
    """
    from scipy.optimize import brentq

    if field not in GRID_FIELDS:
        raise ValueError(f"field={field!r}: allowed values are {GRID_FIELDS}")
    lo, hi = bracket
    if field == "alpha" or (field in ("alpha_A", "alpha_M") and base.residual == "normalized"):
        hi = min(hi, 1.0 - 1e-9)

    def angle(x):
        return exponents(_with_field(base, field, x)).angle

    a_lo, a_hi = angle(lo), angle(hi)
    if not (np.isfinite(a_lo) and np.isfinite(a_hi)) or a_lo * a_hi > 0:
        raise ValueError(f"lambda_a keeps one sign for {field} in [{lo}, {hi}] "
                         f"({a_lo:+.3g} .. {a_hi:+.3g}): no edge of chaos along this line")
    return _with_field(base, field, brentq(angle, lo, hi, xtol=1e-13, rtol=1e-13))


@dataclass(frozen=True)
class CriticalPoint:
    """Where both exponents vanish, or the closest point to it inside the bounds.

    exact=False means lambda_a = lambda_g = 0 has no solution inside the bounds; params then minimise
    lambda_a^2 + lambda_g^2 there (see theory: in the canonical block lambda_g >= lambda_a, so with a
    tanh MLP the gradient exponent vanishes only where the MLP or the attention switches off).
    """

    params: BlockParams
    angle: float
    gradient: float
    exact: bool


def critical_point(base: BlockParams, free=("alpha", "sigma_w"), bounds=None, tol: float = 1e-8
                   ) -> CriticalPoint:
    """Hyperparameters `free` (two fields) at which lambda_a = lambda_g = 0, the other fields of `base`
    held fixed; bounded least squares from a coarse grid search.  Initialise a network there with
    `CanonicalTransformer(critical_point(base).params, depth, width)`."""
    from scipy.optimize import least_squares

    if len(free) != 2 or any(f not in GRID_FIELDS for f in free) or free[0] == free[1]:
        raise ValueError(f"free={free!r}: two distinct fields from {GRID_FIELDS}")
    if bounds is None:
        upper = {"alpha": 1.0, "alpha_A": 1.0, "alpha_M": 1.0} if base.residual == "normalized" else {}
        bounds = tuple((1e-3, upper.get(f, 10.0)) for f in free)
    (x_lo, x_hi), (y_lo, y_hi) = bounds
    xs, ys = np.linspace(x_lo, x_hi, 41), np.linspace(y_lo, y_hi, 41)
    angle, gradient = exponent_grid(base, free[0], xs, free[1], ys)
    cost = np.where(np.isfinite(angle), angle**2 + gradient**2, np.inf)
    i, j = np.unravel_index(np.argmin(cost), cost.shape)

    def point(v):
        return _with_field(_with_field(base, free[0], v[0]), free[1], v[1])

    def residual(v):
        e = exponents(point(v))
        return [e.angle if np.isfinite(e.angle) else -1e3, e.gradient]

    fit = least_squares(residual, [xs[j], ys[i]], bounds=([x_lo, y_lo], [x_hi, y_hi]), xtol=1e-14,
                        ftol=1e-14, gtol=1e-14)
    best = point(fit.x)
    e = exponents(best)
    return CriticalPoint(best, e.angle, e.gradient, bool(max(abs(e.angle), abs(e.gradient)) < tol))


def simplex_fixed_point(h: BlockParams, rho_start: float = 0.5, attention: str = "finite",
                        n_samples: int = MONTE_CARLO_SAMPLES):
    """The non-collapsed fixed point (q*, rho* < 1) of the normalized-residual map, or None if the map
    flows to collapse (lambda_a < 0: the simplex fixed point does not exist).  Solved with scipy's root
    finder on (q_out - q, p_out - p) from the end of a 40-block trajectory."""
    from scipy.optimize import root

    if h.residual != "normalized":
        raise ValueError("residual='plain' has no fixed point: its norm q grows without bound")
    if exponents(h).angle <= 0:
        return None
    traj = propagate(h, 40, 1.0, rho_start, attention, n_samples)
    kernel = compiled_kernel(h.activation)
    params = _params_vector(h)
    method = "monte_carlo" if attention == "finite" else "large_n"

    def gap(state):
        q, p = state
        moments = attention_moments(h.n_tokens, p / q, h.sigma_A, method, n_samples)
        q1, p1 = _attention_step(q, p, 0.0, 0.0, *moments, 0.0, 0.0, 0.0, 0.0, *params)
        rho1 = min(1.0, p1 / q1)
        kv = (kernel.diagonal(h.sigma_w, h.sigma_2), kernel.value(rho1, h.sigma_w, h.sigma_2), 0.0, 0.0)
        q_out, p_out, _, _ = _block_step(q, p, 0.0, 0.0, *moments, *kv, *params)
        return [q_out - q, p_out - p]

    sol = root(gap, [traj.q[-1], traj.p[-1]], tol=1e-12)
    q_star, p_star = sol.x
    if not sol.success or not p_star / q_star < 1 - 1e-6:
        return None
    return q_star, p_star / q_star
