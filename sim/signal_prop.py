"""Numerics of the signal-propagation map, compiled from theory.signal_prop's SymPy expressions.

Nothing here retypes a formula: every map, kernel, integrand and exponent is `sympy.lambdify`-ed with
`modules="math"` and `cse=True`, then `numba.njit`-ed (`compile_expression`).  What sim/ adds is numerical
procedure: composite Gauss-Legendre quadrature of Gaussian integrals, Monte Carlo of the finite-n softmax
expectations, iteration over depth (the block map, the collapsed-norm recursion), root finding, and
Numba-parallel grids.  Both LN placements (BlockParams.placement) and the MLP biases (sigma_b) run through
the same compiled expressions.

Public API (other code relies on these names and signatures):
    propagate(h, depth, q0=1.0, rho0=0.5)  -> Trajectory(q, p, rho, jacobian)
    exponents(h, q=None, depth=None, q0=None) -> Exponents(angle, gradient, gradient_frobenius, q)
        depth=None: asymptotic, one block at collapse (gradient_frobenius == gradient);
        depth=L: the (1/L)-averaged finite-depth exponents from collapsed tokens of norm q0 (default 1)
    exponent_grid(base, x_field, x_values, y_field, y_values, q=None, depth=None, q0=None)
        -> (angle, gradient) for depth=None; ExponentMaps(angle, gradient, gradient_frobenius) for depth=L
    critical_point(base, free=("alpha", "sigma_w"), bounds=None, tol=1e-8, depth=None, q0=None,
                   gradient="common")  -> CriticalPoint(params, angle, gradient, exact, ...)
    attention_moments(n_tokens, rho, sigma_A)  (Monte Carlo of the six softmax expectations)

Every public function checks its inputs before computing and raises a one-line ValueError naming the input
and what is allowed; NumPy scalars are accepted wherever Python numbers are.  Besides BlockParams' own rules,
sim evaluates only the ranges its float64 numerics are made for (`check_params`; tests/test_api_inputs.py
evaluates their corners):

* each numeric field is 0 or lies in FIELD_RANGE = [1e-15, 1e15].  The block map and the multipliers are
  rational functions whose terms multiply up to twelve field values (ReLU's q_M = sigma_2^2 sigma_w^2 / 2
  enters the angle multiplier squared and times alpha_M^4), so inside this range every intermediate stays a
  normal float64, with the norms q, q0 in Q_RANGE = [1e-100, 1e100];
* sigma_w <= QUADRATURE_SIGMA_W_MAX = 16 for kernels computed by quadrature (tanh, a sympy.Lambda): the
  composite rule resolves phi(sigma_w z) to a relative error below 2e-7 up to there (measured against
  30-digit integrals: 1e-10 at 12, 1e-3 at 40, useless at 1000);
* with sigma_b > 0 the kernel is evaluated at the pre-activation std sqrt(sigma_w^2 + sigma_b^2), which
  obeys the same QUADRATURE_SIGMA_W_MAX for kernels by quadrature;
* sigma_A <= LARGE_N_SIGMA_A_MAX = 14 with attention="large_n": its moments grow as e^{3 sigma_A^2}/n^2;
* the normalized residual must not zero the residual stream (alpha_A = 1 with sigma_V = 0, or alpha_M = 1
  with an MLP whose output is zero): LN(0) is undefined;
* the arrays a call allocates must fit in this machine's memory: the finite-n attention moments (`propagate`,
  `attention_moments`) hold 3 x n_samples x n_tokens float64 common random numbers, so n_tokens is refused
  where those cannot be held (above ~60,000 at the default n_samples on a 24 GB machine).
The results are then finite, except where a multiplier is exactly zero (an exponent of -inf, documented at
`exponents`); `propagate` and the finite-depth exponents raise a ValueError naming depth if the norm (or
the Jacobian) itself leaves float64's range.
"""
from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import numba
import numpy as np
import sympy as sp
from numpy.polynomial.legendre import leggauss

from sim.machine import physical_memory
from theory import signal_prop as T
from theory._cli import choice, count, real_number, shown
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

# The ranges sim's numerics are made for (module docstring; `check_params`)
FIELD_RANGE = (1e-15, 1e15)           # every numeric BlockParams field: 0 or in here
Q_RANGE = (1e-100, 1e100)             # the norm q of `exponents` and q0 of `propagate`
QUADRATURE_SIGMA_W_MAX = 16.0         # sigma_w of kernels by quadrature (tanh, sympy.Lambda)
LARGE_N_SIGMA_A_MAX = 14.0            # sigma_A with attention="large_n"
QUADRATURE_LOGIT_VARIANCE_MAX = 9.0   # sigma_A^2 (1 - rho) of `attention_moments_quadrature`


def compile_expression(expr, args):
    """lambdify(args, expr, modules="math", cse=True) then numba.njit.  A tuple expr returns a tuple.
    expr: a SymPy expression or a tuple of them; args: a sequence of the SymPy symbols it depends on."""
    if not all(isinstance(e, sp.Expr) for e in (expr if isinstance(expr, tuple) else (expr,))):
        raise ValueError(f"expr={shown(expr)}: must be a SymPy expression or a tuple of them")
    if isinstance(args, (str, sp.Basic)) or not all(isinstance(a, sp.Symbol) for a in args):
        raise ValueError(f"args={shown(args)}: must be a sequence of SymPy symbols")
    missing = set().union(*(e.free_symbols for e in (expr if isinstance(expr, tuple) else (expr,)))) - set(args)
    if missing:
        raise ValueError(f"args={shown(args)}: the expression also depends on {sorted(map(str, missing))}")
    return numba.njit(sp.lambdify(args, expr, modules="math", cse=True))


def _field_limits(field: str, activation) -> tuple:
    """(low, high, why) of the nonzero values of one numeric field that sim evaluates."""
    low, high = FIELD_RANGE
    why = "the range sim's float64 numerics are made for"
    if field == "sigma_w" and not (isinstance(activation, str) and activation in T.CLOSED_FORM_ACTIVATIONS):
        high, why = QUADRATURE_SIGMA_W_MAX, "beyond it the kernel quadrature of tanh or a sympy.Lambda loses accuracy"
    return low, high, why


def _check_field_values(field: str, values, activation, label: str) -> None:
    """Each value of `field` is 0 or within `_field_limits`; a ValueError naming `label` otherwise."""
    low, high, why = _field_limits(field, activation)
    if isinstance(values, (int, float)) and (values == 0 or low <= values <= high):
        return                                  # one number, in range: no NumPy (exponents calls this often)
    values = np.asarray(values, dtype=float).ravel()
    bad = (values != 0) & ~((values >= low) & (values <= high))
    if bad.any():
        raise ValueError(f"{label}={shown(float(values[bad][0]))}: sim evaluates 0 or values in "
                         f"[{low:g}, {high:g}] ({why})")


def _check_stream_nonzero(residual, alpha_A, alpha_M, sigma_V, q_M, label: str) -> None:
    """The normalized residual with alpha = 1 keeps no skip path: a branch whose output is zero then zeroes
    every token and the next LN divides by zero.  Arguments broadcast (the grid checks all its points)."""
    if residual != "normalized" or (isinstance(alpha_A, (int, float)) and isinstance(alpha_M, (int, float))
                                    and alpha_A != 1 and alpha_M != 1):
        return
    for alpha, zero, what in ((alpha_A, sigma_V, "alpha_A=1 and sigma_V=0"),
                              (alpha_M, q_M, "alpha_M=1 and an MLP output of zero (q_M = 0: sigma_2 = 0, or "
                                             "sigma_w = 0 with phi(0) = 0)")):
        if np.any((np.asarray(alpha) == 1) & (np.asarray(zero) == 0)):
            raise ValueError(f"{label}: {what} with residual='normalized' map every token to 0, and LN(0) is "
                             "undefined")


def _check_preactivation_std(sigma_w, sigma_b, activation, label: str) -> None:
    """With biases a kernel is evaluated at the pre-activation std sqrt(sigma_w^2 + sigma_b^2) (LN'd input,
    theory.signal_prop.preactivation_std): by quadrature (tanh, a sympy.Lambda) it must stay within
    QUADRATURE_SIGMA_W_MAX like sigma_w itself.  Arguments broadcast (the grid checks all its points)."""
    if isinstance(activation, str) and activation in T.CLOSED_FORM_ACTIVATIONS:
        return
    std = np.hypot(np.asarray(sigma_w, float), np.asarray(sigma_b, float))
    if np.any(std > QUADRATURE_SIGMA_W_MAX):
        worst = np.unravel_index(np.argmax(std), std.shape) if std.ndim else ()
        sw, sb = (float(np.broadcast_to(v, std.shape)[worst]) for v in (sigma_w, sigma_b))
        raise ValueError(f"{label}: sigma_w={shown(sw)}, sigma_b={shown(sb)}: the pre-activation std "
                         f"sqrt(sigma_w^2 + sigma_b^2) = {float(std[worst]):.6g} exceeds {QUADRATURE_SIGMA_W_MAX:g} "
                         "(beyond it the kernel quadrature of tanh or a sympy.Lambda loses accuracy)")


def check_params(h, name: str = "h", attention: str = "finite") -> BlockParams:
    """`h` if it is a BlockParams whose values sim evaluates (module docstring); a ValueError otherwise.
    The condition on the MLP's output (q_M = 0) is checked where q_M is computed."""
    if not isinstance(h, BlockParams):
        raise ValueError(f"{name}={shown(h)}: must be a theory.signal_prop.BlockParams")
    for field in T.NUMERIC_FIELDS:
        _check_field_values(field, getattr(h, field), h.activation, f"{name}.{field}")
    if attention == "large_n" and h.sigma_A > LARGE_N_SIGMA_A_MAX:
        raise ValueError(f"{name}.sigma_A={shown(h.sigma_A)}: attention='large_n' evaluates sigma_A <= "
                         f"{LARGE_N_SIGMA_A_MAX:g} (its moments grow as exp(3 sigma_A^2))")
    if h.sigma_b != 0:
        _check_preactivation_std(h.sigma_w, h.sigma_b, h.activation, name)
    _check_stream_nonzero(h.residual, h.alpha_A, h.alpha_M, h.sigma_V, 1.0, name)
    return h


def _check_q(name: str, value) -> float:
    return real_number(name, value, *Q_RANGE)


def _check_fits(inputs: str, what: str, size: int) -> None:
    """A ValueError naming `inputs` when arrays of `size` bytes (`what`) exceed this machine's memory: numpy would
    raise MemoryError at the allocation, or the system would start swapping."""
    limit = physical_memory()
    if limit is not None and size > limit:
        raise ValueError(f"{inputs}: {what} would take {size / 2 ** 30:.3g} GiB, more than this machine's memory "
                         f"({limit / 2 ** 30:.3g} GiB)")


def _check_monte_carlo_fits(n_tokens: int, n_samples: int, name: str = "n_tokens") -> None:
    """The finite-n attention moments hold 3 (n_samples, n_tokens) float64 arrays of common random numbers (and
    6 partial sums per sample): they must fit in memory."""
    _check_fits(f"{name}={n_tokens}, n_samples={n_samples}",
                "the common random numbers of the softmax Monte Carlo (3 x n_samples x n_tokens float64)",
                8 * n_samples * (3 * n_tokens + 6))


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
    panels, order = count("panels", panels, 1), count("order", order, 1)
    half_width = real_number("half_width", half_width, 0.0, open_low=True)
    x, w = leggauss(order)
    edges = np.linspace(-half_width, half_width, panels + 1)
    width = edges[1] - edges[0]
    nodes = (edges[:-1, None] + width * (x[None, :] + 1) / 2).ravel()
    weights = np.tile(w * width / 2, panels) * np.exp(-nodes**2 / 2) / math.sqrt(2 * math.pi)
    return nodes, weights


def compiled_kernel(activation) -> CompiledKernel:
    """The MLP Gaussian kernel of `activation` (a name or a sympy.Lambda) as njit functions."""
    return _compiled_kernel(T.check_activation(activation))


@functools.lru_cache(maxsize=None)
def _compiled_kernel(activation) -> CompiledKernel:
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
    """The six expectations of theory.signal_prop.ATTENTION_MOMENTS at cosine rho in [0, 1].

    method="monte_carlo": exact at finite n up to Monte Carlo error (common random numbers, `seed`);
    method="large_n": the limit-[N] closed forms (sigma_A <= LARGE_N_SIGMA_A_MAX: they grow as
    exp(3 sigma_A^2)).
    """
    n_tokens = count("n_tokens", n_tokens, 1)
    rho = real_number("rho", rho, 0.0, 1.0)
    method = choice("method", method, ("monte_carlo", "large_n"))
    sigma_A = real_number("sigma_A", sigma_A, 0.0,
                          LARGE_N_SIGMA_A_MAX if method == "large_n" else FIELD_RANGE[1])
    n_samples, seed = count("n_samples", n_samples, 1), count("seed", seed, 0)
    if method == "monte_carlo":
        _check_monte_carlo_fits(n_tokens, n_samples)
    return _attention_moments(n_tokens, rho, sigma_A, method, n_samples, seed)


def _attention_moments(n_tokens, rho, sigma_A, method, n_samples, seed) -> np.ndarray:
    """`attention_moments` without the checks, rho clipped to [0, 1] (a ratio p/q may round past 1)."""
    r = min(1.0, max(0.0, float(rho)))
    if method == "large_n":
        return np.array(_large_n_moments(r, sigma_A, n_tokens))
    s, t = _logit_stds(r, sigma_A)
    return _softmax_moments(*_common_random_numbers(n_tokens, n_samples, seed), s, t)


def attention_moments_quadrature(n_tokens: int, rho: float, sigma_A: float, nodes: int = 480):
    """(E sum_j A_ij^2, E sum_j A_ij A_kj) at finite n by quadrature, an independent check of the Monte
    Carlo.  With 1/Z = int_0^oo e^{-uZ} du the n-key expectations factorise over keys:
        m_self  = n int u F_2(u) F_0(u)^{n-1} du,          F_k(u) = E_l[e^{k l - u e^l}], l ~ N(0, s^2 + t^2)
        m_cross = n int int H_11(u, w) H_00(u, w)^{n-1} du dw,
        H_ab(u, w) = E_a[f_a(u; a) f_b(w; a)],  f_k(u; a) = E_b[e^{k(s a + t b) - u e^{s a + t b}}],
    with u = e^y, w = e^x on composite Gauss-Legendre grids around the scale u ~ 1/(n E e^l).

    The fixed window of u holds the mass of 1/Z while the variance of a row's logits, sigma_A^2 (1 - rho),
    is at most QUADRATURE_LOGIT_VARIANCE_MAX = 9 (it then agrees with the Monte Carlo within its noise; at
    16 it is 7% off for n = 2); larger variances raise a ValueError.  nodes >= 8: nodes // 8 panels of 8."""
    n_tokens = count("n_tokens", n_tokens, 1)
    r = real_number("rho", rho, 0.0, 1.0)
    sigma_A = real_number("sigma_A", sigma_A, 0.0)
    if sigma_A**2 * (1 - r) > QUADRATURE_LOGIT_VARIANCE_MAX:
        raise ValueError(f"sigma_A={shown(sigma_A)}, rho={shown(rho)}: the quadrature holds for logit variances "
                         f"sigma_A^2 (1 - rho) <= {QUADRATURE_LOGIT_VARIANCE_MAX:g}, not "
                         f"{sigma_A**2 * (1 - r):.4g} (attention_moments' Monte Carlo has no such limit)")
    nodes = count("nodes", nodes, QUADRATURE_ORDER)
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
# MLP values with biases (theory.signal_prop.bias_assembly): the bias-free kernel at the pre-activation std
# ----------------------------------------------------------------------------------------------------
_preactivation = compile_expression((T.preactivation_std, T.preactivation_correlation),
                                    (T.branch_q, T.branch_p, T.sigma_w, T.sigma_b))
_bias_assembly = compile_expression(
    tuple(T.bias_assembly[m] for m in (T.mlp_q, T.mlp_p, T.mlp_slope, T.mlp_slope_off)),
    (T.kernel_diagonal, T.kernel_value, T.kernel_slope, T.kernel_derivative, T.sigma_w, T.sigma_b, T.branch_q))


@functools.lru_cache(maxsize=None)
def _collapse_values(activation):
    """njit (sigma_w, sigma_2, sigma_b) -> (q_M, chi_M) of the MLP at collapse (its input is LN'd, Gram
    (1, 1), in both placements).  sigma_b = 0 is the bias-free kernel itself, bit for bit."""
    diagonal_and_slope = compiled_kernel(activation).diagonal_and_slope

    @numba.njit
    def collapse_values(sigma_w, sigma_2, sigma_b):
        if sigma_b == 0.0:
            return diagonal_and_slope(sigma_w, sigma_2)
        std, _ = _preactivation(1.0, 1.0, sigma_w, sigma_b)
        k_q, k_chi = diagonal_and_slope(std, sigma_2)
        q_m, _, chi, _ = _bias_assembly(k_q, 0.0, k_chi, 0.0, sigma_w, sigma_b, 1.0)
        return q_m, chi
    return collapse_values


def _mlp_values(h: BlockParams, rho_in: float, kernel: CompiledKernel) -> tuple:
    """(q_M, p_M, chi_M, chi_M_off) of h's MLP at an LN'd input of cosine rho_in (Gram (1, rho_in))."""
    if h.sigma_b == 0:
        return (kernel.diagonal(h.sigma_w, h.sigma_2), kernel.value(rho_in, h.sigma_w, h.sigma_2),
                kernel.slope(h.sigma_w, h.sigma_2), kernel.derivative(rho_in, h.sigma_w, h.sigma_2))
    std, corr = _preactivation(1.0, rho_in, h.sigma_w, h.sigma_b)
    corr = min(1.0, max(-1.0, corr))
    return _bias_assembly(kernel.diagonal(std, h.sigma_2), kernel.value(corr, std, h.sigma_2),
                          kernel.slope(std, h.sigma_2), kernel.derivative(corr, std, h.sigma_2),
                          h.sigma_w, h.sigma_b, 1.0)


# ----------------------------------------------------------------------------------------------------
# The block map over depth
# ----------------------------------------------------------------------------------------------------
_ARGS = STATE_SYMBOLS + T.ATTENTION_MOMENTS + KERNEL_SYMBOLS + PARAM_SYMBOLS


@dataclass(frozen=True)
class _CompiledBlock:
    """One placement's block map: the attention step (q1, p1), the whole block (q_out, p_out, Qt_out, Pt_out),
    and the attention's input Gram (qhat, phat) as a function of (q, p)."""

    attention_step: object
    block_step: object
    attention_input: object


def _compile_block(placement: str) -> _CompiledBlock:
    bm = T.block_map(placement=placement)
    return _CompiledBlock(compile_expression((bm.q1, bm.p1), _ARGS),
                          compile_expression((bm.q_out, bm.p_out, bm.Qt_out, bm.Pt_out), _ARGS),
                          compile_expression(tuple(sp.sympify(e) for e in bm.attention_input), (T.q, T.p)))


_BLOCKS = {placement: _compile_block(placement) for placement in T.PLACEMENTS}
_attention_step = _BLOCKS["pre"].attention_step      # the canonical (pre-LN) block, as before
_block_step = _BLOCKS["pre"].block_step


@dataclass(frozen=True)
class Trajectory:
    """Order parameters after each block (index 0 = input).  jacobian[l] = E|dX_l/dX_0|_F^2 / (n d)."""

    q: np.ndarray
    p: np.ndarray
    rho: np.ndarray
    jacobian: np.ndarray


def _block_forward(h, state, kernel, method, n_samples, seed):
    """One block of h's map from state (q, p, Qt, Pt): the attention moments at its branch input (rho =
    phat/qhat, sigma_A qhat: theory.signal_prop.branch_logit_scaling_check), the MLP values at the LN'd
    cosine after the attention sublayer."""
    q, p, Qt, Pt = state
    block = _BLOCKS[h.placement]
    params = _params_vector(h)
    q_hat, p_hat = block.attention_input(q, p)
    moments = _attention_moments(h.n_tokens, p_hat / q_hat, h.sigma_A * q_hat, method, n_samples, seed)
    q1, p1 = block.attention_step(q, p, Qt, Pt, *moments, 0.0, 0.0, 0.0, 0.0, *params)
    rho1 = min(1.0, p1 / q1)
    return block.block_step(q, p, Qt, Pt, *moments, *_mlp_values(h, rho1, kernel), *params)


def propagate(h: BlockParams, depth: int, q0: float = 1.0, rho0: float = 0.5,
              attention: str = "finite", n_samples: int = MONTE_CARLO_SAMPLES, seed: int = 0
              ) -> Trajectory:
    """Iterate the one-block map `depth` times from a simplex (q0, q0 rho0), with the tangent map started
    from an isotropic probe (Qt = 1, Pt = 0) so that `jacobian` tracks E|dX_l/dX_0|_F^2 / (n d).

    attention="finite" uses the Monte Carlo softmax moments at n = h.n_tokens (exact in limit [W]);
    "large_n" their limit-[N] closed forms.  h.placement="post" normalises after every sublayer (q = 1 from
    the first block on); h.sigma_b adds the MLP biases (theory.signal_prop.mlp_branch).

    The pre-LN map is invariant under q0 -> c q0, sigma_V -> sqrt(c) sigma_V, sigma_2 -> sqrt(c) sigma_2,
    sigma_b -> sqrt(c) sigma_b (q and p scale by c, rho and jacobian do not), but not under q0 alone: the
    branches see LN'd tokens while the skip path carries the norm.  q0 must lie in Q_RANGE; h in sim's ranges
    (`check_params`; for post-LN with attention="large_n" also sigma_A q0 <= LARGE_N_SIGMA_A_MAX, the
    first block's logits scaling with q0).  A Jacobian that grows past float64's largest number before
    `depth` (a gradient exponent times depth beyond ~709) raises a ValueError naming the deepest depth that
    is computable.
    """
    h = check_params(h, attention=attention)
    depth = count("depth", depth, 0)
    q0 = _check_q("q0", q0)
    rho0 = real_number("rho0", rho0, 0.0, 1.0)
    attention = choice("attention", attention, ("finite", "large_n"))
    n_samples, seed = count("n_samples", n_samples, 1), count("seed", seed, 0)
    if attention == "large_n" and h.placement == "post" and h.sigma_A * q0 > LARGE_N_SIGMA_A_MAX:
        raise ValueError(f"q0={shown(q0)}: with placement='post' and attention='large_n' the first block's logits "
                         f"have std sigma_A q0 = {h.sigma_A * q0:.4g}, and the large-n moments hold up to "
                         f"{LARGE_N_SIGMA_A_MAX:g}")
    method = "monte_carlo" if attention == "finite" else "large_n"
    if method == "monte_carlo":
        _check_monte_carlo_fits(h.n_tokens, n_samples, "h.n_tokens")
    _check_fits(f"depth={depth}", "the trajectory ((depth + 1) x 4 float64)", 32 * (depth + 1))
    kernel = compiled_kernel(h.activation)
    q_M, _ = _collapse_values(h.activation)(h.sigma_w, h.sigma_2, h.sigma_b)
    _check_stream_nonzero(h.residual, h.alpha_A, h.alpha_M, h.sigma_V, q_M, "h")
    state = (q0, q0 * rho0, 1.0, 0.0)
    out = np.empty((depth + 1, 4))
    out[0] = q0, q0 * rho0, rho0, 1.0
    for layer in range(1, depth + 1):
        state = _block_forward(h, state, kernel, method, n_samples, seed)
        q, p, Qt, Pt = state
        if not (sys.float_info.min <= q < math.inf and all(math.isfinite(v) for v in (p, Qt, Pt))):
            raise ValueError(f"depth={depth}: the norm q ({q:.3g}) or the Jacobian E|dX_l/dX_0|^2 ({Qt:.3g}) of "
                             f"this h and q0={shown(q0)} leaves float64's range at block {layer}; depths up to "
                             f"{layer - 1} are computable")
        out[layer] = q, p, p / q, Qt
    return Trajectory(q=out[:, 0], p=out[:, 1], rho=out[:, 2], jacobian=out[:, 3])


# ----------------------------------------------------------------------------------------------------
# Exponents at collapse: asymptotic (one block at a norm) and finite depth (the collapsed-norm recursion)
# ----------------------------------------------------------------------------------------------------
_EXPONENT_ARGS = (T.q, T.mlp_q, T.mlp_slope) + PARAM_SYMBOLS
_multipliers_at_q = compile_expression((T.angle_multiplier, T.gradient_multiplier), _EXPONENT_ARGS)
_multipliers_normalized = compile_expression(
    tuple(e.subs(T.q, T.q_star_collapse_stable) for e in (T.angle_multiplier, T.gradient_multiplier)),
    _EXPONENT_ARGS)
_multipliers_post = compile_expression((T.angle_multiplier_post, T.gradient_multiplier_post), _EXPONENT_ARGS)
_skip_normalized = compile_expression(T.residual_coefficient(T.alpha_A, "normalized"), (T.alpha_A,))
_q_star_collapse = compile_expression(T.q_star_collapse_stable, (T.mlp_q,) + PARAM_SYMBOLS)
# one block at collapse from input norm q: (q_next, G_c, G_d)
_collapse_steps = {placement: compile_expression(
    tuple(getattr(T.finite_depth_exponents(placement), f) for f in ("norm_step", "common_gain", "differential_gain")),
    _EXPONENT_ARGS) for placement in T.PLACEMENTS}
_FINITE_DEPTH_SUMS = (T.log_common_sum, T.log_differential_sum, T.q_input, T.q_final, T.depth_symbol, T.n)
_finite_depth_from_sums = compile_expression(
    tuple(getattr(T.finite_depth_exponents("pre"), f"{name}_from_sums")
          for name in ("angle", "gradient", "gradient_frobenius")), _FINITE_DEPTH_SUMS)
MAX_DEPTH = 100_000        # finite-depth exponents: a loop over blocks per point


@dataclass(frozen=True)
class Exponents:
    """Per-block Lyapunov exponents (natural log) at collapse.

    Asymptotic (depth=None), one block linearised at the collapsed state of norm q:
    angle:    growth rate of epsilon = 1 - rho (the squared inter-token angle), T.angle_multiplier
              (T.angle_multiplier_post for placement="post");
    gradient: growth rate of E|dX_L/dX_0|_F^2 (its dominant, common mode), T.gradient_multiplier;
    gradient_frobenius: equal to gradient (the common mode dominates as depth -> infinity).
    Finite depth (depth=L), T.finite_depth_exponents: the (1/L)-averaged rates of a depth-L network fed
    collapsed tokens of norm q0: angle (epsilon_L/epsilon_0), gradient (common-mode probe) and
    gradient_frobenius (E|J_L|_F^2/(nd), an isotropic probe, at n = h.n_tokens).
    q: the collapsed norm at which the asymptotic exponents are evaluated; the input norm q0 at finite depth.
    """

    angle: float
    gradient: float
    gradient_frobenius: float
    q: float


class ExponentMaps(tuple):
    """The three finite-depth maps of `exponent_grid`: (angle, gradient, gradient_frobenius), also by name."""

    def __new__(cls, angle, gradient, gradient_frobenius):
        return super().__new__(cls, (angle, gradient, gradient_frobenius))

    angle = property(lambda self: self[0])
    gradient = property(lambda self: self[1])
    gradient_frobenius = property(lambda self: self[2])


@numba.njit
def _log(x):
    """log x, and -inf for an exact 0 (see `exponents`)."""
    return math.log(x) if x > 0.0 else -math.inf


@numba.njit
def _pre_at_q_star(q_M, chi, alpha_A, alpha_M, sigma_A, sigma_V, sigma_w, sigma_2, skip_A, skip_M, n):
    """(angle multiplier, gradient multiplier, q) of the normalized pre-LN block at its collapsed norm q*.
    The identity block (both alphas 0), and blocks whose branches both output zero (q* = 0), take the
    multipliers at q = 1: they are functions of q alone there, homogeneous of degree 0 (tests)."""
    if alpha_A == 0.0 and alpha_M == 0.0:
        a, g = _multipliers_at_q(1.0, q_M, chi, alpha_A, alpha_M, sigma_A, sigma_V, sigma_w, sigma_2, skip_A, skip_M, n)
        return a, g, 1.0
    q_star = _q_star_collapse(q_M, alpha_A, alpha_M, sigma_A, sigma_V, sigma_w, sigma_2, skip_A, skip_M, n)
    if q_star == 0.0:
        a, g = _multipliers_at_q(1.0, q_M, chi, alpha_A, alpha_M, sigma_A, sigma_V, sigma_w, sigma_2, skip_A, skip_M, n)
    else:
        a, g = _multipliers_normalized(q_star, q_M, chi, alpha_A, alpha_M, sigma_A, sigma_V, sigma_w, sigma_2,
                                       skip_A, skip_M, n)
    return a, g, q_star


def _make_finite_depth(step):
    """njit (q0, depth, q_M, chi, params...) -> (angle, gradient, gradient_frobenius, q_L): the recursion
    q[l+1] = norm_step(q[l]) with Lambda_c, Lambda_d accumulated, then theory's *_from_sums.  A norm that
    leaves float64's normal range returns q_L = 0 or inf (the caller raises)."""
    @numba.njit
    def finite_depth(q0, depth, q_M, chi, alpha_A, alpha_M, sigma_A, sigma_V, sigma_w, sigma_2, skip_A, skip_M, n):
        q = q0
        log_common = 0.0
        log_differential = 0.0
        for _ in range(depth):
            q_next, common, differential = step(q, q_M, chi, alpha_A, alpha_M, sigma_A, sigma_V, sigma_w, sigma_2,
                                                skip_A, skip_M, n)
            log_common += _log(common)
            log_differential += _log(differential)
            q = q_next
            if not (q >= 2.2250738585072014e-308 and q < math.inf):
                return math.nan, math.nan, math.nan, q
        angle, gradient, frobenius = _finite_depth_from_sums(log_common, log_differential, q0, q, float(depth), n)
        if log_common == -math.inf:       # G_c = 0 somewhere: both modes vanish (G_d <= G_c)
            frobenius = -math.inf
        return angle, gradient, frobenius, q
    return finite_depth


_FINITE_DEPTH = {placement: _make_finite_depth(_collapse_steps[placement]) for placement in T.PLACEMENTS}


def _make_point(placement: str, normalized: bool, mode: str):
    """njit (q_value, depth, q_M, chi, params...) -> (angle, gradient, gradient_frobenius, q): one point's
    exponents, shared by `exponents` and `exponent_grid`.  mode: "q_star" (normalized pre-LN at q*),
    "at_q" (one block at norm q_value), "finite" (depth blocks from q0 = q_value)."""
    finite = _FINITE_DEPTH[placement]
    multipliers = _multipliers_post if placement == "post" else _multipliers_at_q

    @numba.njit
    def point(q_value, depth, q_M, chi, alpha_A, alpha_M, sigma_A, sigma_V, sigma_w, sigma_2, n):
        skip_A = _skip_normalized(alpha_A) if normalized else 1.0
        skip_M = _skip_normalized(alpha_M) if normalized else 1.0
        if mode == "finite":
            return finite(q_value, depth, q_M, chi, alpha_A, alpha_M, sigma_A, sigma_V, sigma_w, sigma_2,
                          skip_A, skip_M, n)
        if mode == "q_star":
            a, g, q_used = _pre_at_q_star(q_M, chi, alpha_A, alpha_M, sigma_A, sigma_V, sigma_w, sigma_2,
                                          skip_A, skip_M, n)
        else:
            a, g = multipliers(q_value, q_M, chi, alpha_A, alpha_M, sigma_A, sigma_V, sigma_w, sigma_2,
                               skip_A, skip_M, n)
            q_used = q_value
        return _log(a), _log(g), _log(g), q_used
    return point


_POINTS: dict = {}


def _point_function(placement: str, normalized: bool, mode: str):
    key = (placement, normalized, mode)
    if key not in _POINTS:
        _POINTS[key] = _make_point(*key)
    return _POINTS[key]


def _exponent_mode(h_or_base: BlockParams, q, depth, q0) -> tuple:
    """Validated (mode, q_value, depth) of `exponents`/`exponent_grid`: depth=None gives the asymptotic
    exponents at q (default: q* for the normalized pre-LN block, 1 otherwise), depth=L the finite-depth ones
    from q0 (default 1)."""
    if depth is None:
        if q0 is not None:
            raise ValueError(f"q0={shown(q0)}: the input norm of the finite-depth exponents; give depth too "
                             "(or q for the asymptotic ones)")
        if q is not None:
            return "at_q", _check_q("q", q), 0
        if h_or_base.placement == "pre" and h_or_base.residual == "normalized":
            return "q_star", 1.0, 0
        return "at_q", 1.0, 0
    depth = count("depth", depth, 1, MAX_DEPTH)
    if q is not None:
        raise ValueError(f"q={shown(q)}: the finite-depth exponents start from the input norm q0, not q")
    return "finite", 1.0 if q0 is None else _check_q("q0", q0), depth


def _too_deep(depth, q0, q_last) -> ValueError:
    return ValueError(f"depth={depth}: the collapsed norm from q0={shown(q0)} leaves float64's range "
                      f"(q_L = {q_last:.3g}); use a smaller depth or q0")


def exponents(h: BlockParams, q: float | None = None, depth: int | None = None,
              q0: float | None = None) -> Exponents:
    """Angle and gradient exponents of `h` at collapse (rho = 1).

    depth=None (asymptotic): one block linearised at the collapsed state of norm q.  q=None: the collapsed
    fixed point q* for the normalized pre-LN block; q = 1 for "plain" (whose norm grows without bound: no
    fixed point, power-law rather than exponential dynamics; q = 1 is the first block of a network fed
    unit-norm tokens) and for placement="post" (every post-LN block outputs norm 1).  Also q = 1 for the
    normalized residual with alpha_A = alpha_M = 0: that block is the identity, every norm is fixed, and both
    exponents are 0 at any q.  gradient_frobenius then equals gradient.

    depth=L (an integer in [1, MAX_DEPTH]): the finite-depth exponents of a depth-L network fed collapsed
    tokens of norm q0 (default 1.0), averaged over the L blocks (theory.signal_prop.finite_depth_exponents):
    angle, gradient (common mode) and gradient_frobenius (E|J_L|_F^2/(nd) at n = h.n_tokens).  Give q0, not q.

    q, q0 must lie in Q_RANGE, and h in sim's ranges (`check_params`).  Neither exponent depends on sigma_A
    (at collapse the attention is exactly uniform); only gradient_frobenius depends on n.

    An exponent is -inf exactly where its multiplier is exactly 0, and then it is the right value.  With the
    normalized residual, alpha_A = 1 removes the attention's skip path, and the uniform attention at collapse
    maps every simplex onto collapse in one block (angle); alpha_M = 1 with chi_M = 0 (sigma_w = 0 and an
    activation with phi(0) != 0, whose MLP then outputs a constant) does the same in the MLP (angle) and
    zeroes the block's Jacobian at collapse (gradient).
    """
    h = check_params(h)
    mode, q_value, depth = _exponent_mode(h, q, depth, q0)
    q_M, chi = _collapse_values(h.activation)(h.sigma_w, h.sigma_2, h.sigma_b)
    _check_stream_nonzero(h.residual, h.alpha_A, h.alpha_M, h.sigma_V, q_M, "h")
    point = _point_function(h.placement, h.residual == "normalized", mode)
    angle, gradient, frobenius, q_used = point(q_value, depth, q_M, chi, h.alpha_A, h.alpha_M, h.sigma_A,
                                               h.sigma_V, h.sigma_w, h.sigma_2, float(h.n_tokens))
    if mode == "finite":
        if not (sys.float_info.min <= q_used < math.inf):
            raise _too_deep(depth, q_value, q_used)
        q_used = q_value
    if any(math.isnan(v) or v == math.inf for v in (angle, gradient, frobenius)):   # a safety net
        raise ValueError(f"h={shown(h)}, q={shown(q)}: the exponents ({angle}, {gradient}, {frobenius}) leave "
                         "float64's range")
    return Exponents(angle=float(angle), gradient=float(gradient), gradient_frobenius=float(frobenius),
                     q=float(q_used))


GRID_FIELDS = T.NUMERIC_FIELDS + ("alpha",)     # "alpha" sets alpha_A = alpha_M together


_KERNEL_COLUMNS = tuple(T.NUMERIC_FIELDS.index(f) for f in ("sigma_w", "sigma_2", "sigma_b"))


def _grid_kernels(activation, point):
    """Two Numba-parallel passes: the MLP values (q_M, chi_M) at collapse once per distinct (sigma_w,
    sigma_2, sigma_b) of the grid, then the exponents at every point (`_make_point`).  The second pass
    builds each point's parameters from the two axes as it goes, so no (points x fields) array is stored."""
    collapse_values = _collapse_values(activation)

    @numba.njit(parallel=True)
    def kernel_values(triples, q_m_out, chi_out):
        for k in numba.prange(triples.shape[0]):
            q_m_out[k], chi_out[k] = collapse_values(triples[k, 0], triples[k, 1], triples[k, 2])

    @numba.njit(parallel=True)
    def grid(base_row, xs, x_columns, ys, y_columns, kernel_stride, q_m, chi, q_value, depth, n_tokens,
             angle_out, gradient_out, frobenius_out, q_last_out):
        # kernel index of point (i, j): i * kernel_stride[0] + j * kernel_stride[1] (see _kernel_pairs)
        for i in numba.prange(ys.size):
            row = base_row.copy()
            for c in y_columns:
                row[c] = ys[i]
            for j in range(xs.size):
                for c in x_columns:
                    row[c] = xs[j]
                k = i * kernel_stride[0] + j * kernel_stride[1]
                a, g, f, q_used = point(q_value, depth, q_m[k], chi[k], row[0], row[1], row[2], row[3], row[4],
                                        row[5], n_tokens)
                angle_out[i, j], gradient_out[i, j], frobenius_out[i, j], q_last_out[i, j] = a, g, f, q_used
    return kernel_values, grid


_GRID_KERNELS: dict = {}


def _field_columns(field: str) -> np.ndarray:
    """Columns of T.NUMERIC_FIELDS that one grid axis sets ("alpha" sets alpha_A and alpha_M)."""
    return np.array([0, 1] if field == "alpha" else [T.NUMERIC_FIELDS.index(field)], dtype=np.int64)


def _axis_values(name: str, values) -> np.ndarray:
    """A non-empty 1-D sequence of finite real numbers (Python, NumPy or SymPy) as a float array."""
    allowed = f"{name}: must be a non-empty 1-D sequence of finite real numbers"
    try:
        array = np.asarray(values)
        if array.dtype.kind == "O" and array.ndim == 1:
            array = np.array([real_number(name, v) for v in array], dtype=float)
    except ValueError:
        raise ValueError(allowed) from None
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iuf":
        raise ValueError(allowed)
    array = array.astype(float)
    if not np.isfinite(array).all():
        raise ValueError(f"{allowed}, got {shown(float(array[~np.isfinite(array)][0]))}")
    return array


def _grid_axes(base: BlockParams, x_field: str, x_values, y_field: str, y_values):
    """Validated (base_row, xs, x_columns, ys, y_columns) of a grid: the numeric fields of `base` and
    each axis with the columns it sets.  Checking the axes checks every grid point (each point's value
    of a field is either the base's, already checked by BlockParams, or an axis value)."""
    check_params(base, "base")
    x_field, y_field = (choice(name, field, GRID_FIELDS) for name, field in (("x_field", x_field),
                                                                                ("y_field", y_field)))
    xs, ys = _axis_values("x_values", x_values), _axis_values("y_values", y_values)
    x_columns, y_columns = _field_columns(x_field), _field_columns(y_field)
    if np.isin(x_columns, y_columns).any():
        raise ValueError(f"x_field={shown(x_field)}, y_field={shown(y_field)}: the two axes must set different fields")
    for name, values, columns in (("x_values", xs, x_columns), ("y_values", ys, y_columns)):
        column = T.NUMERIC_FIELDS[int(columns[0])]
        if base.residual == "normalized" and columns[0] < 2 and values.max() > 1:
            raise ValueError(f"{name}: {column}={shown(float(values.max()))}: must lie in [0, 1] with "
                             "residual='normalized' (the skip weight is sqrt(1 - alpha^2))")
        _check_field_values(column, values, base.activation, f"{name}: {column}")
    base_row = np.array([getattr(base, f) for f in T.NUMERIC_FIELDS], float)
    axes = base_row, xs, x_columns, ys, y_columns
    sigma_w, sigma_b = (_grid_field(axes, T.NUMERIC_FIELDS.index(f)) for f in ("sigma_w", "sigma_b"))
    if np.any(sigma_b != 0):
        _check_preactivation_std(sigma_w, sigma_b, base.activation, "a grid point")
    return axes


def _grid_field(axes, column: int) -> np.ndarray:
    """The values of one numeric field at every grid point, shape (ny, nx) by broadcasting."""
    base_row, xs, x_columns, ys, y_columns = axes
    if column in x_columns:
        return xs[None, :]
    if column in y_columns:
        return ys[:, None]
    return np.full((1, 1), base_row[column])


def _kernel_pairs(base_row, xs, x_columns, ys, y_columns):
    """The (sigma_w, sigma_2, sigma_b) triples the grid needs, from its axes, and the strides (over y, over
    x) that give point (i, j) its triple i * stride_y + j * stride_x: one triple if neither axis is a kernel
    field, one per value of the axis that is, one per point if both are."""
    x_kernel = bool(np.isin(x_columns, _KERNEL_COLUMNS).any())
    y_kernel = bool(np.isin(y_columns, _KERNEL_COLUMNS).any())
    ny, nx = (ys.size if y_kernel else 1), (xs.size if x_kernel else 1)
    rows = np.tile(base_row, (ny, nx, 1))
    if x_kernel:
        rows[:, :, x_columns] = xs[None, :, None]
    if y_kernel:
        rows[:, :, y_columns] = ys[:, None, None]
    triples = np.ascontiguousarray(rows[:, :, list(_KERNEL_COLUMNS)].reshape(-1, len(_KERNEL_COLUMNS)))
    stride = np.array([nx if y_kernel else 0, 1 if x_kernel else 0], dtype=np.int64)
    return triples, stride


def exponent_grid(base: BlockParams, x_field: str, x_values, y_field: str, y_values,
                  q: float | None = None, depth: int | None = None, q0: float | None = None):
    """The exponents on the grid y_values x x_values of two BlockParams fields (Numba parallel).

    depth=None: returns (angle, gradient), arrays of shape (len(y_values), len(x_values)), the asymptotic
    exponents at q (same convention as `exponents`).  depth=L: returns ExponentMaps(angle, gradient,
    gradient_frobenius), a 3-tuple of such arrays, the finite-depth exponents from q0 (default 1).  Either
    way the grid equals `exponents` point by point, including the cells of -inf (multipliers exactly 0).
    Every axis value must lie in sim's range of its field (`check_params`), and no point may zero the
    residual stream; both are checked before the exponents are computed.
    """
    axes = _grid_axes(base, x_field, x_values, y_field, y_values)
    mode, q_value, depth_value = _exponent_mode(base, q, depth, q0)
    key = (base.activation, base.placement, base.residual == "normalized", mode)
    if key not in _GRID_KERNELS:
        _GRID_KERNELS[key] = _grid_kernels(base.activation, _point_function(*key[1:]))
    kernel_values, grid = _GRID_KERNELS[key]
    triples, stride = _kernel_pairs(*axes)
    q_m, chi = np.empty(len(triples)), np.empty(len(triples))
    kernel_values(triples, q_m, chi)
    base_row, xs, x_columns, ys, y_columns = axes
    point_q_m = q_m[np.add.outer(np.arange(ys.size) * stride[0], np.arange(xs.size) * stride[1])]
    _check_stream_nonzero(base.residual, *(_grid_field(axes, c) for c in (0, 1, 3)), point_q_m,
                          "a grid point")
    maps = [np.empty((ys.size, xs.size)) for _ in range(4)]
    grid(base_row, xs, x_columns, ys, y_columns, stride, q_m, chi, q_value, depth_value, float(base.n_tokens),
         *maps)
    angle, gradient, frobenius, q_last = maps
    if mode == "finite":
        bad = ~((q_last >= sys.float_info.min) & (q_last < math.inf))
        if bad.any():
            raise _too_deep(depth_value, q_value, float(q_last[bad][0]))
        return ExponentMaps(angle, gradient, frobenius)
    return angle, gradient


# ----------------------------------------------------------------------------------------------------
# Critical initialisation and the simplex fixed point
# ----------------------------------------------------------------------------------------------------
def _with_field(h: BlockParams, field: str, value: float) -> BlockParams:
    if field == "alpha":
        return h.replace(alpha_A=float(value), alpha_M=float(value))
    return h.replace(**{field: float(value)})


def _bracket(name: str, pair, base: BlockParams, field: str) -> tuple:
    """A pair (low, high) of values of `field` with low < high, both in sim's range of the field."""
    if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
        raise ValueError(f"{name}={shown(pair)}: must be a pair (low, high)")
    low, high = (real_number(f"{name}[{i}]", v) for i, v in enumerate(pair))
    if not low < high:
        raise ValueError(f"{name}={shown(pair)}: needs low < high")
    column = T.NUMERIC_FIELDS[int(_field_columns(field)[0])]
    if base.residual == "normalized" and column.startswith("alpha") and high > 1:
        raise ValueError(f"{name}={shown(pair)}: {column} must lie in [0, 1] with residual='normalized'")
    _check_field_values(column, [low, high], base.activation, f"{name}: {column}")
    return low, high


def edge_of_chaos(base: BlockParams, field: str = "sigma_w", bracket=None) -> BlockParams:
    """The value of one field at which the angle exponent vanishes (lambda_a = 0), the others fixed.

    bracket: (low, high) to search, both in sim's range of the field; default (1e-3, 20), its upper end
    lowered to 1 - 1e-9 for alpha with the normalized residual (alpha = 1 collapses in one block) and to
    QUADRATURE_SIGMA_W_MAX for sigma_w of a kernel by quadrature.  Raises ValueError if lambda_a does not
    change sign on the bracket (no edge of chaos along that line).
    """
    from scipy.optimize import brentq

    check_params(base, "base")
    field = choice("field", field, GRID_FIELDS)
    normalized_alpha = field == "alpha" or (field in ("alpha_A", "alpha_M") and base.residual == "normalized")
    if bracket is None:
        high = min(20.0, _field_limits(field, base.activation)[1]) if field in T.NUMERIC_FIELDS else 20.0
        bracket = (1e-3, min(high, 1.0) if normalized_alpha else high)
    lo, hi = _bracket("bracket", bracket, base, field)
    if normalized_alpha:
        hi = min(hi, 1.0 - 1e-9)

    def angle(x):
        return exponents(_with_field(base, field, x)).angle

    a_lo, a_hi = angle(lo), angle(hi)
    if not (np.isfinite(a_lo) and np.isfinite(a_hi)) or a_lo * a_hi > 0:
        raise ValueError(f"lambda_a keeps one sign for {field} in [{lo}, {hi}] "
                         f"({a_lo:+.3g} .. {a_hi:+.3g}): no edge of chaos along this line")
    return _with_field(base, field, brentq(angle, lo, hi, xtol=1e-13, rtol=1e-13))


GRADIENT_DEFINITIONS = ("common", "frobenius")


@dataclass(frozen=True)
class CriticalPoint:
    """Where both exponents vanish, or the closest point to it inside the bounds.

    angle, gradient: the exponents at params (gradient: the definition `gradient_definition`, "common" or
    "frobenius"); depth, q0: the finite-depth setting (None: asymptotic).  exact=False means lambda_a =
    lambda_g = 0 has no solution inside the bounds; params then minimise lambda_a^2 + lambda_g^2 there.  For
    the asymptotic exponents that is the rule, not an accident: by theory's sum rule lambda_g - lambda_a =
    lambda_q + (an attention term > 0), with lambda_q >= 0 at the default norms, so the two zero curves
    cannot cross unless the attention switches off (alpha_A sigma_V = 0).
    """

    params: BlockParams
    angle: float
    gradient: float
    exact: bool
    gradient_definition: str = "common"
    depth: int | None = None
    q0: float | None = None


CRITICAL_POINT_STARTS = 6     # least-squares starts: the grid cells nearest a crossing


def critical_point(base: BlockParams, free=("alpha", "sigma_w"), bounds=None, tol: float = 1e-8,
                   depth: int | None = None, q0: float | None = None, gradient: str = "common"
                   ) -> CriticalPoint:
    """Hyperparameters `free` (two fields) at which lambda_a = lambda_g = 0, the other fields of `base`
    held fixed: bounded least squares started from the cells of a 41 x 41 grid (`exponent_grid`) where both
    exponents change sign (and the cell of least lambda_a^2 + lambda_g^2), the best end kept.

    depth=None: the asymptotic exponents, which the sum rule keeps apart (exact=False, see CriticalPoint).
    depth=L, q0 (default 1): the finite-depth exponents, whose zero curves do cross where the collapsed norm
    contracts (e.g. normalized residual, sigma_V < 1, free=("sigma_V", "sigma_w")).  gradient: "common"
    (common-mode probe) or "frobenius" (E|J|_F^2/(nd), an isotropic probe at n = base.n_tokens; equal to
    "common" when depth is None).  exact=True when both exponents are below tol in magnitude.  Initialise a
    network there with `CanonicalTransformer(critical_point(base).params, depth, width)`.
    """
    from scipy.optimize import least_squares

    check_params(base, "base")
    if isinstance(free, str) or not isinstance(free, (tuple, list)) or len(free) != 2 or any(
            not isinstance(f, str) or f not in GRID_FIELDS for f in free) or free[0] == free[1]:
        raise ValueError(f"free={shown(free)}: two distinct fields from {GRID_FIELDS}")
    gradient = choice("gradient", gradient, GRADIENT_DEFINITIONS)
    _exponent_mode(base, None, depth, q0)                   # checks depth and q0
    if bounds is None:
        upper = {"alpha": 1.0, "alpha_A": 1.0, "alpha_M": 1.0} if base.residual == "normalized" else {}
        bounds = tuple((1e-3, upper.get(f, 10.0)) for f in free)
    if isinstance(bounds, str) or not hasattr(bounds, "__len__") or len(bounds) != 2:
        raise ValueError(f"bounds={shown(bounds)}: must be two pairs (low, high), one per free field")
    (x_lo, x_hi), (y_lo, y_hi) = (_bracket(f"bounds[{i}]", pair, base, f)
                                  for i, (pair, f) in enumerate(zip(bounds, free)))
    tol = real_number("tol", tol, 0.0, open_low=True)
    xs, ys = np.linspace(x_lo, x_hi, 41), np.linspace(y_lo, y_hi, 41)
    maps = exponent_grid(base, free[0], xs, free[1], ys, depth=depth, q0=q0)
    which = 2 if (gradient == "frobenius" and depth is not None) else 1

    def point(v):
        return _with_field(_with_field(base, free[0], v[0]), free[1], v[1])

    def values(v):
        e = exponents(point(v), depth=depth, q0=q0)
        return e.angle, (e.gradient, e.gradient, e.gradient_frobenius)[which]

    def residual(v):
        a, g = values(v)
        return [a if np.isfinite(a) else -1e3, g if np.isfinite(g) else -1e3]

    angle, grad = maps[0], maps[which]
    cost = np.where(np.isfinite(angle) & np.isfinite(grad), angle**2 + grad**2, np.inf)
    starts = [np.unravel_index(np.argmin(cost), cost.shape)]
    crossing = _sign_change(angle) & _sign_change(grad)
    for k in np.argsort(np.where(crossing, cost, np.inf), axis=None)[:CRITICAL_POINT_STARTS]:
        cell = np.unravel_index(k, cost.shape)
        if crossing[cell] and cell not in starts:
            starts.append(cell)
    best = None
    for i, j in starts:
        fit = least_squares(residual, [xs[j], ys[i]], bounds=([x_lo, y_lo], [x_hi, y_hi]), xtol=1e-14,
                            ftol=1e-14, gtol=1e-14)
        a, g = values(fit.x)
        size = max(abs(a), abs(g)) if np.isfinite(a) and np.isfinite(g) else np.inf
        if best is None or size < best[0]:
            best = (size, fit.x, a, g)
    size, x, a, g = best
    return CriticalPoint(point(x), float(a), float(g), bool(size < tol), gradient, depth,
                         None if depth is None else (1.0 if q0 is None else float(q0)))


def _sign_change(values: np.ndarray) -> np.ndarray:
    """True at grid cells where `values` changes sign towards a neighbour (4-neighbourhood)."""
    sign = np.sign(np.where(np.isfinite(values), values, -1.0))
    change = np.zeros(values.shape, bool)
    for axis in (0, 1):
        step = np.diff(sign, axis=axis) != 0
        lead = [slice(None)] * 2
        trail = [slice(None)] * 2
        lead[axis], trail[axis] = slice(None, -1), slice(1, None)
        change[tuple(lead)] |= step
        change[tuple(trail)] |= step
    return change


def simplex_fixed_point(h: BlockParams, rho_start: float = 0.5, attention: str = "finite",
                        n_samples: int = MONTE_CARLO_SAMPLES):
    """The non-collapsed fixed point (q*, rho* < 1) of the map, or None if the map flows to collapse
    (lambda_a < 0: the simplex fixed point does not exist).  Solved with scipy's root finder on
    (q_out - q, p_out - p) from the end of a 40-block trajectory.  The pre-LN block needs the normalized
    residual (the plain one's norm grows without bound); the post-LN one has q* = 1 with either."""
    from scipy.optimize import root

    check_params(h, attention=attention)
    rho_start = real_number("rho_start", rho_start, 0.0, 1.0)
    attention = choice("attention", attention, ("finite", "large_n"))
    n_samples = count("n_samples", n_samples, 1)
    if h.residual != "normalized" and h.placement == "pre":
        raise ValueError("residual='plain' has no fixed point: its norm q grows without bound")
    if exponents(h).angle <= 0:
        return None
    traj = propagate(h, 40, 1.0, rho_start, attention, n_samples)
    kernel = compiled_kernel(h.activation)
    method = "monte_carlo" if attention == "finite" else "large_n"

    def gap(state):
        q, p = state
        q_out, p_out, _, _ = _block_forward(h, (q, p, 0.0, 0.0), kernel, method, n_samples, 0)
        return [q_out - q, p_out - p]

    sol = root(gap, [traj.q[-1], traj.p[-1]], tol=1e-12)
    q_star, p_star = sol.x
    if not sol.success or not p_star / q_star < 1 - 1e-6:
        return None
    return q_star, p_star / q_star
