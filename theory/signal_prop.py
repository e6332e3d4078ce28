"""Token geometry through a deep random transformer, derived in SymPy.

Cowsik, Nebabu, Qi, Ganguli (2024), "Geometric dynamics of signal propagation predict trainability of
transformers", arXiv:2403.02579. Only the paper's abstract and a few quoted sentences (Secs. 3.3-3.4) were
available to us, not its body equations, so everything here is derived for the canonical block below: our
reconstruction of the paper's block (Sec. 2, Eq. 4 and Figure 1, as third-party re-implementations read them):

    H = LN(X);  S = (H W_Q)(H W_K)^T / sqrt(d);  A = softmax(S);   X <- a_A X + alpha_A A H W_V
    H = LN(X);                                                      X <- a_M X + alpha_M phi(H W_1) W_2

with LN(x) = sqrt(d) x / |x|, W_Q, W_K ~ N(0, sigma_A/d), W_V ~ N(0, sigma_V^2/d),
W_1 ~ N(0, sigma_w^2/d), W_2 ~ N(0, sigma_2^2/d_ff), and a = 1 ("plain") or sqrt(1 - alpha^2)
("normalized").

State. Tokens form a permutation-symmetric simplex: q = |x_i|^2/d, p = x_i.x_j/d (i != j), rho = p/q.
Tangent (gradient) state: for a perturbation dX with E dX = 0, Qt = |dx_i|^2/d and Pt = dx_i.dx_j/d.

Limits every result here needs, stated once:
  [W]  width d -> infinity at fixed n (mean field): Gram matrices concentrate over the weights, cross
       terms x.(W v) vanish, logits become jointly Gaussian, and perturbations stay orthogonal to the
       states (gradient independence).
  [S]  the permutation-symmetric ansatz is preserved (true in expectation; the map tracks expectations).
  [N]  n -> infinity (only where a result says so): the softmax normaliser obeys the law of large
       numbers, valid while n >> exp(sigma_A^2 (1 - rho)).

Everything a user needs is a module-level SymPy expression or a function returning one:

    >>> from theory import signal_prop as sp_theory
    >>> sp_theory.angle_multiplier            # e^{lambda_a} at collapse, as an expression
    >>> sp_theory.mlp_kernel("erf").value     # p_M(rho) in closed form
    >>> sp_theory.block_map(attention="large_n").p_out.subs(...)

`python -m theory.signal_prop` prints the main results (`--help` for the sections it can print).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import sympy as sp

from theory._cli import choice, count, print_sections, real_number, section_parser, shown

# ----------------------------------------------------------------------------------------------------
# Symbols
# ----------------------------------------------------------------------------------------------------
q, p = sp.symbols("q p", positive=True)                       # residual-stream Gram entries (per dim)
rho = sp.Symbol("rho", real=True)                             # cosine between two tokens, p/q
eps = sp.Symbol("epsilon", nonnegative=True)                  # 1 - rho, the distance from collapse
alpha_A, alpha_M = sp.symbols("alpha_A alpha_M", nonnegative=True)
sigma_A, sigma_V, sigma_w, sigma_2 = sp.symbols("sigma_A sigma_V sigma_w sigma_2", positive=True)
n = sp.Symbol("n", positive=True, integer=True)
a_A, a_M = sp.symbols("a_A a_M", nonnegative=True)            # residual (skip) coefficients
Qt, Pt = sp.symbols("Qt Pt", real=True)                       # tangent Gram entries (per dim)
z, z1, z2 = sp.symbols("z z1 z2", real=True)                  # standard normal integration variables

# Expectations of softmax polynomials over the Gaussian logits (finite n; see `attention_moment_integral`).
# Row i and row k != i of the attention matrix A:
attn_self = sp.Symbol("m_self", positive=True)      # E sum_j A_ij^2
attn_cross = sp.Symbol("m_cross", positive=True)    # E sum_j A_ij A_kj
attn_self3 = sp.Symbol("m_self3", positive=True)    # E sum_j A_ij^3
attn_self22 = sp.Symbol("m_self22", positive=True)  # E (sum_j A_ij^2)^2
attn_cross21 = sp.Symbol("m_cross21", positive=True)  # E sum_j A_ij^2 A_kj
attn_cross22 = sp.Symbol("m_cross22", positive=True)  # E (sum_j A_ij A_kj)^2
ATTENTION_MOMENTS = (attn_self, attn_cross, attn_self3, attn_self22, attn_cross21, attn_cross22)

ACTIVATIONS = ("tanh", "erf", "relu")
CLOSED_FORM_ACTIVATIONS = ("erf", "relu")      # mlp_kernel has closed forms for these; the rest are integrals
RESIDUALS = ("plain", "normalized")
NUMERIC_FIELDS = ("alpha_A", "alpha_M", "sigma_A", "sigma_V", "sigma_w", "sigma_2")


def check_activation(activation):
    """`activation` if it names a built-in phi ("tanh", "erf", "relu"; a NumPy string becomes a str) or is a
    one-variable sympy.Lambda with no other free symbol; otherwise a ValueError saying what is allowed."""
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return str(activation)
    if not (isinstance(activation, sp.Lambda) and len(activation.variables) == 1):
        raise ValueError(f"activation={shown(activation)}: allowed values are {ACTIVATIONS} or a one-variable "
                         "sympy.Lambda")
    free = activation.expr.free_symbols - set(activation.variables)
    if free:
        raise ValueError(f"activation={shown(activation)}: phi may depend on its variable only, not on "
                         f"{sorted(map(str, free))} (substitute numbers for them first)")
    return activation


def standard_normal_density(x):
    """The N(0, 1) density as a SymPy expression in x."""
    return sp.exp(-x**2 / 2) / sp.sqrt(2 * sp.pi)


# ----------------------------------------------------------------------------------------------------
# Hyperparameters
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockParams:
    """Initialisation hyperparameters of the canonical block (module docstring), validated on construction.

    `activation` is "tanh", "erf", "relu", or a one-variable `sympy.Lambda` (any phi; its MLP kernel is
    then a Gaussian quadrature of the compiled Lambda).
    """

    alpha_A: float = 0.5
    alpha_M: float = 0.5
    sigma_A: float = 1.0
    sigma_V: float = 1.0
    sigma_w: float = 2.0
    sigma_2: float = 1.0
    n_tokens: int = 32
    activation: object = "tanh"
    residual: str = "normalized"

    def __post_init__(self):
        # NumPy and SymPy scalars become the Python numbers they hold, so equality, hashing and JSON are
        # those of the Python value (a Python int stays an int, as before)
        for name in NUMERIC_FIELDS:
            object.__setattr__(self, name, real_number(name, getattr(self, name), 0.0, keep_int=True))
        object.__setattr__(self, "residual", choice("residual", self.residual, RESIDUALS))
        if self.residual == "normalized":
            for name in ("alpha_A", "alpha_M"):
                if getattr(self, name) > 1:
                    raise ValueError(f"{name}={shown(getattr(self, name))}: must lie in [0, 1] with "
                                     "residual='normalized' (the skip weight is sqrt(1 - alpha^2))")
        object.__setattr__(self, "n_tokens", count("n_tokens", self.n_tokens, 2))
        object.__setattr__(self, "activation", check_activation(self.activation))

    def replace(self, **changes) -> "BlockParams":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def skip_A(self) -> float:
        return 1.0 if self.residual == "plain" else (1.0 - self.alpha_A**2) ** 0.5

    @property
    def skip_M(self) -> float:
        return 1.0 if self.residual == "plain" else (1.0 - self.alpha_M**2) ** 0.5

    def substitutions(self) -> dict:
        """Symbol -> value for every hyperparameter symbol of this module."""
        return {alpha_A: self.alpha_A, alpha_M: self.alpha_M, sigma_A: self.sigma_A,
                sigma_V: self.sigma_V, sigma_w: self.sigma_w, sigma_2: self.sigma_2,
                n: self.n_tokens, a_A: self.skip_A, a_M: self.skip_M}


FIELDS = tuple(f.name for f in dataclasses.fields(BlockParams))


def residual_coefficient(alpha, residual: str):
    """Skip weight a of x <- a x + alpha F(LN x): 1 ("plain", Eq. 4 as read) or sqrt(1 - alpha^2)."""
    residual = choice("residual", residual, RESIDUALS)
    return sp.Integer(1) if residual == "plain" else sp.sqrt(1 - alpha**2)


# ----------------------------------------------------------------------------------------------------
# Attention sublayer
# ----------------------------------------------------------------------------------------------------
def logit_covariance(i, j, k, l):
    """Cov(S_ij, S_kl) over W_Q, W_K in limit [W]: sigma_A^2 R_ik R_jl, R the LN'd Gram (1 on, rho off).

    S_ij = sum_c (h_i W_Q)_c (h_j W_K)_c / sqrt(d) is a sum of d iid products, so by the CLT it is
    Gaussian with E[S_ij S_kl] = d * (sigma_A R_ik)(sigma_A R_jl) / d.
    """
    def gram(a, b):
        return sp.Integer(1) if a == b else rho
    return sigma_A**2 * gram(i, k) * gram(j, l)


# Within one query row the logits are  c_i + s a_j + t b_ij  with a_j (shared by all rows) and b_ij iid
# N(0, 1); c_i cancels in the softmax.  Derivation: `logit_decomposition_check()`.
logit_shared_std = sigma_A * sp.sqrt(rho * (1 - rho))
logit_private_std = sigma_A * (1 - rho)


def logit_decomposition_check() -> dict:
    """Show that S_ij = sigma_A[rho c + sqrt(rho(1-rho))(a_j + e_i) + (1-rho) b_ij] has the covariance
    `logit_covariance` for all index patterns; each entry of the returned dict simplifies to 0."""
    def decomposition_cov(same_row, same_col):
        # c common to all; e_i per row; a_j per column; b_ij per entry (all N(0, 1)).
        cov = rho**2 + (rho * (1 - rho) if same_row else 0) + (rho * (1 - rho) if same_col else 0)
        cov += (1 - rho) ** 2 if (same_row and same_col) else 0
        return sigma_A**2 * cov
    patterns = {"S_ij,S_ij": (0, 1, 0, 1), "S_ij,S_il": (0, 1, 0, 2), "S_ij,S_kj": (0, 1, 2, 1),
                "S_ij,S_kl": (0, 1, 2, 3)}
    return {name: sp.simplify(decomposition_cov(i == k, j == l) - logit_covariance(i, j, k, l))
            for name, (i, j, k, l) in patterns.items()}


def attention_moment_integral(n_value: int, moment=attn_self):
    """One finite-n softmax moment as the (n + 2n)-dimensional Gaussian integral it is.

    Logits of rows i and k: l_j = s a_j + t b_j, l'_j = s a_j + t b'_j (s, t: `logit_shared_std`,
    `logit_private_std`).  Returned unevaluated; sim/ evaluates the same expectations numerically
    (Monte Carlo, and a 1-D Laplace-transform quadrature for the self moment).  Use a small n to print.
    """
    if moment not in ATTENTION_MOMENTS:
        raise ValueError(f"moment={shown(moment)}: allowed values are {ATTENTION_MOMENTS}")
    n_value = count("n_value", n_value, 1)
    a = sp.symbols(f"a1:{n_value + 1}", real=True)
    b = sp.symbols(f"b1:{n_value + 1}", real=True)
    c = sp.symbols(f"c1:{n_value + 1}", real=True)
    s, t = logit_shared_std, logit_private_std
    row_i = [sp.exp(s * a[j] + t * b[j]) for j in range(n_value)]
    row_k = [sp.exp(s * a[j] + t * c[j]) for j in range(n_value)]
    Zi, Zk = sum(row_i), sum(row_k)
    Ai = [e / Zi for e in row_i]
    Ak = [e / Zk for e in row_k]
    integrand = {
        attn_self: sum(x**2 for x in Ai),
        attn_cross: sum(x * y for x, y in zip(Ai, Ak)),
        attn_self3: sum(x**3 for x in Ai),
        attn_self22: sum(x**2 for x in Ai) ** 2,
        attn_cross21: sum(x**2 * y for x, y in zip(Ai, Ak)),
        attn_cross22: sum(x * y for x, y in zip(Ai, Ak)) ** 2,
    }[moment]
    density = sp.Mul(*[standard_normal_density(v) for v in (*a, *b, *c)])
    return sp.Integral(integrand * density, *[(v, -sp.oo, sp.oo) for v in (*a, *b, *c)])


# Limit [N]: Z_i ~ n E e^{l} and sums over keys by the law of large numbers (leading order in 1/n).
_v_row = logit_shared_std**2 + logit_private_std**2          # variance of one row's logits
attention_moments_large_n = {
    attn_self: sp.exp(sp.expand(_v_row)) / n,
    attn_cross: sp.exp(sp.expand(logit_shared_std**2)) / n,
    attn_self3: sp.exp(3 * sp.expand(_v_row)) / n**2,
    attn_self22: sp.exp(2 * sp.expand(_v_row)) / n**2,
    attn_cross21: sp.exp(sp.expand(_v_row + 2 * logit_shared_std**2)) / n**2,
    attn_cross22: sp.exp(2 * sp.expand(logit_shared_std**2)) / n**2,
}
# At collapse (rho = 1) the logits are constant along each row, so A = 1/n exactly, at any n.
attention_moments_at_collapse = {
    attn_self: 1 / n, attn_cross: 1 / n, attn_self3: 1 / n**2, attn_self22: 1 / n**2,
    attn_cross21: 1 / n**2, attn_cross22: 1 / n**2,
}

# Attention branch Gram, [W]: W_V is independent of A, so y_i.y_k/d = sigma_V^2 sum_jm A_ij A_km R_jm, and
# sum_j A_ij = 1 turns R = rho J + (1 - rho) I into the two moments.
attention_q = sigma_V**2 * (rho + (1 - rho) * attn_self)
attention_p = sigma_V**2 * (rho + (1 - rho) * attn_cross)


# ----------------------------------------------------------------------------------------------------
# MLP sublayer: Gaussian kernels
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GaussianKernel:
    """MLP branch Gram, [W]:  q_M = diagonal, p_M(rho) = value,  d p_M / d rho = derivative.

    u_1, u_2 ~ N(0, sigma_w^2 [[1, rho], [rho, 1]]) are the pre-activations of two tokens;
    value = sigma_2^2 E[phi(u_1) phi(u_2)]; derivative = sigma_2^2 sigma_w^2 E[phi'(u_1) phi'(u_2)]
    (Price's theorem).  For activations without a closed form the fields are unevaluated `Integral`s over
    standard normals z1, z2 (or z); `integrands` holds the bare integrands sim/ compiles for quadrature.
    """

    activation: str
    diagonal: sp.Expr
    value: sp.Expr
    derivative: sp.Expr
    closed_form: bool
    integrands: dict


def _gaussian_pair(x):
    """(u_1, u_2) in terms of standard normals with correlation rho and variance sigma_w^2."""
    return sigma_w * z1, sigma_w * (rho * z1 + sp.sqrt(1 - rho**2) * z2)


def _activation_function(activation):
    if isinstance(activation, sp.Lambda):
        return activation
    x = sp.Symbol("x", real=True)
    return {"tanh": sp.Lambda(x, sp.tanh(x)), "erf": sp.Lambda(x, sp.erf(x)),
            "relu": sp.Lambda(x, sp.Max(0, x))}[activation]


def mlp_kernel(activation="tanh") -> GaussianKernel:
    """The MLP Gaussian kernel of phi; closed forms for erf (arcsine kernel) and ReLU (arc-cosine kernel),
    the 2-D Gaussian integral for tanh or any one-variable sympy.Lambda."""
    activation = check_activation(activation)
    if activation == "erf":
        value = sigma_2**2 * 2 / sp.pi * sp.asin(2 * sigma_w**2 * rho / (1 + 2 * sigma_w**2))
        diagonal = value.subs(rho, 1)
        # d value / d rho = sigma_2^2 (2/pi) c / sqrt((1 + c)^2 - c^2 rho^2), c = 2 sigma_w^2, with the radicand
        # factored: expanded, it cancels catastrophically as rho -> 1 at large sigma_w (nothing is left of it
        # at sigma_w = 1e8), while each factor is a sum of non-negative terms
        c = 2 * sigma_w**2
        derivative = sigma_2**2 * 2 / sp.pi * c / sp.sqrt((1 + c * (1 - rho)) * (1 + c * (1 + rho)))
        if sp.simplify(derivative - sp.diff(value, rho)) != 0:
            raise AssertionError("the factored erf kernel derivative differs from d value / d rho")
        return GaussianKernel("erf", diagonal, value, derivative, True, {})
    if activation == "relu":
        value = sigma_2**2 * sigma_w**2 / (2 * sp.pi) * (sp.sqrt(1 - rho**2) + rho * (sp.pi - sp.acos(rho)))
        diagonal = sigma_2**2 * sigma_w**2 / 2
        return GaussianKernel("relu", diagonal, value, sp.simplify(sp.diff(value, rho)), True, {})
    phi = _activation_function(activation)
    x = phi.variables[0]
    dphi = sp.Lambda(x, sp.diff(phi.expr, x))
    u1, u2 = _gaussian_pair(rho)
    gauss2 = standard_normal_density(z1) * standard_normal_density(z2)
    value_integrand = sigma_2**2 * phi(u1) * phi(u2)
    derivative_integrand = sigma_2**2 * sigma_w**2 * dphi(u1) * dphi(u2)
    diagonal_integrand = sigma_2**2 * phi(sigma_w * z) ** 2
    slope_integrand = sigma_2**2 * sigma_w**2 * dphi(sigma_w * z) ** 2   # derivative at rho = 1
    both = ((z1, -sp.oo, sp.oo), (z2, -sp.oo, sp.oo))
    name = activation if isinstance(activation, str) else str(phi)
    return GaussianKernel(
        name,
        diagonal=sp.Integral(diagonal_integrand * standard_normal_density(z), (z, -sp.oo, sp.oo)),
        value=sp.Integral(value_integrand * gauss2, *both),
        derivative=sp.Integral(derivative_integrand * gauss2, *both),
        closed_form=False,
        integrands={"diagonal": diagonal_integrand, "slope_at_collapse": slope_integrand,
                    "value": value_integrand, "derivative": derivative_integrand},
    )


def _check_kernel(kernel, name="kernel"):
    if not isinstance(kernel, GaussianKernel):
        raise ValueError(f"{name}={shown(kernel)}: must be a GaussianKernel (from mlp_kernel)")


def mlp_slope_at_collapse(kernel: GaussianKernel):
    """chi_M = d p_M / d rho at rho = 1 = sigma_2^2 sigma_w^2 E[phi'(sigma_w z)^2]."""
    _check_kernel(kernel)
    if kernel.closed_form:
        slope = sp.limit(kernel.derivative, rho, 1, dir="-")
        # Factor under square roots so sqrt((2 s^2 + 1)^2) simplifies.
        slope = slope.replace(lambda e: e.is_Pow and e.exp == sp.Rational(1, 2),
                              lambda e: sp.sqrt(sp.factor(e.base)))
        return sp.simplify(slope)
    return sp.Integral(kernel.integrands["slope_at_collapse"] * standard_normal_density(z),
                       (z, -sp.oo, sp.oo))


# Placeholders for kernel values inside the block map (sim/ fills them by closed form or quadrature).
mlp_q, mlp_p, mlp_slope, mlp_slope_off = sp.symbols("q_M p_M chi_M chi_M_off", positive=True)


# ----------------------------------------------------------------------------------------------------
# One block: forward map and tangent map
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockMap:
    """One block in limits [W], [S]: (q, p) -> (q1, p1) after attention -> (q_out, p_out) after the MLP,
    and the tangent second moments (Qt, Pt) -> (Qt1, Pt1) -> (Qt_out, Pt_out).

    Free symbols: q, p, Qt, Pt, the hyperparameters, and placeholders the user or sim/ substitutes:
    the six attention moments (evaluated at rho = p/q) and the MLP kernel values q_M, p_M, chi_M,
    chi_M_off (evaluated at rho1 = p1/q1): see `mlp_substitutions`.
    """

    q1: sp.Expr
    p1: sp.Expr
    q_out: sp.Expr
    p_out: sp.Expr
    Qt1: sp.Expr
    Pt1: sp.Expr
    Qt_out: sp.Expr
    Pt_out: sp.Expr


def _attention_tangent(rho_expr, Qh, Ph):
    """Second moments of the attention branch's Jacobian applied to a perturbation of LN'd tokens with
    Gram (Qh on, Ph off), limit [W].

    dy_i = sum_j A_ij dh_j W_V (value path) + sum_j dA_ij h_j W_V (logit path); their cross terms vanish.
    Value path: sigma_V^2 [Ph + (Qh - Ph) sum_j A_ij A_kj].
    Logit path: dA_ij = A_ij (dS_ij - sum_m A_im dS_im), dS Gaussian and independent of A with
    Cov(dS_ij, dS_kl) = sigma_A^2 [G_ik R_jl + R_ik G_jl]; row-centring leaves
    sigma_A^2 kappa_ik delta_jl, kappa_ik = (1 - rho) G_ik + (Qh - Ph) R_ik, and the W_V sum leaves a
    factor (1 - rho).  Hence the moments sum A^2 - 2 sum A^3 + (sum A^2)^2 and their cross-row analogues.
    """
    one_minus = 1 - rho_expr
    kappa_self = one_minus * Qh + (Qh - Ph)
    kappa_cross = one_minus * Ph + (Qh - Ph) * rho_expr
    value_self = Ph + (Qh - Ph) * attn_self
    value_cross = Ph + (Qh - Ph) * attn_cross
    logit_self = one_minus * sigma_A**2 * kappa_self * (attn_self - 2 * attn_self3 + attn_self22)
    logit_cross = one_minus * sigma_A**2 * kappa_cross * (attn_cross - 2 * attn_cross21 + attn_cross22)
    return sigma_V**2 * (value_self + logit_self), sigma_V**2 * (value_cross + logit_cross)


def block_map(attention: str = "finite") -> BlockMap:
    """The one-block map.  attention="finite": moments left as the symbols m_self, ... (exact at finite n
    under [W]); "large_n": moments replaced by their limit-[N] closed forms."""
    attention = choice("attention", attention, ("finite", "large_n"))
    rho0 = p / q
    aq, ap = attention_q.subs(rho, rho0), attention_p.subs(rho, rho0)
    # Residual composition: cross terms x.(W y)/d vanish under [W].
    q1 = a_A**2 * q + alpha_A**2 * aq
    p1 = a_A**2 * p + alpha_A**2 * ap
    q_out = a_M**2 * q1 + alpha_M**2 * mlp_q
    p_out = a_M**2 * p1 + alpha_M**2 * mlp_p
    # Tangent map. LN's Jacobian is (I - x x^T/|x|^2)/sqrt(q): perturbation Gram / q under [W].
    tq_A, tp_A = _attention_tangent(rho0, Qt / q, Pt / q)
    Qt1 = a_A**2 * Qt + alpha_A**2 * tq_A
    Pt1 = a_A**2 * Pt + alpha_A**2 * tp_A
    # MLP Jacobian second moments: phi'(u_i) phi'(u_k) weights, Price's theorem -> kernel derivative.
    Qt_out = a_M**2 * Qt1 + alpha_M**2 * mlp_slope * Qt1 / q1
    Pt_out = a_M**2 * Pt1 + alpha_M**2 * mlp_slope_off * Pt1 / q1
    maps = [q1, p1, q_out, p_out, Qt1, Pt1, Qt_out, Pt_out]
    if attention == "large_n":
        large = {m: e.subs(rho, rho0) for m, e in attention_moments_large_n.items()}
        maps = [e.subs(large) for e in maps]
    return BlockMap(*maps)


def mlp_substitutions(kernel: GaussianKernel, rho_in) -> dict:
    """Placeholders q_M, p_M, chi_M, chi_M_off -> the kernel evaluated at the MLP's input cosine."""
    _check_kernel(kernel)
    return {mlp_q: kernel.diagonal, mlp_p: kernel.value.subs(rho, rho_in),
            mlp_slope: mlp_slope_at_collapse(kernel), mlp_slope_off: kernel.derivative.subs(rho, rho_in)}


# ----------------------------------------------------------------------------------------------------
# Fixed points and exponents (the linearisation at collapse)
# ----------------------------------------------------------------------------------------------------
def collapse_is_fixed_point(kernel: GaussianKernel | None = None) -> sp.Expr:
    """p_out - q_out at p = q with the collapse moments and p_M(1) = q_M: simplifies to 0 (any n)."""
    bm = block_map()
    at_collapse = {**attention_moments_at_collapse, p: q}
    gap = (bm.p_out - bm.q_out).subs(at_collapse)
    kernel = mlp_kernel("erf") if kernel is None else kernel
    _check_kernel(kernel)
    gap = gap.subs({mlp_p: kernel.value.subs(rho, 1), mlp_q: kernel.diagonal})
    return sp.simplify(gap)


# The collapsed state's norm: q1 and q_out at p = q.
q1_collapse = a_A**2 * q + alpha_A**2 * sigma_V**2
q_out_collapse = a_M**2 * q1_collapse + alpha_M**2 * mlp_q
# The normalized residual has a fixed norm at collapse; the plain one grows without bound.
q_star_collapse = sp.solve(sp.Eq(q_out_collapse.subs({a_A: sp.sqrt(1 - alpha_A**2),
                                                      a_M: sp.sqrt(1 - alpha_M**2)}), q), q)[0]


def _q_star_collapse_stable() -> sp.Expr:
    """q* kept in the skip weights, (a_M^2 alpha_A^2 sigma_V^2 + alpha_M^2 q_M) / (alpha_A^2 + a_A^2 alpha_M^2):
    every term is positive, so floating point evaluates it without cancellation.  (q_star_collapse's expanded
    numerator alpha_A^2 sigma_V^2 - alpha_A^2 alpha_M^2 sigma_V^2 + alpha_M^2 q_M loses every digit when
    alpha_M -> 1 and alpha_A sigma_V >> q_M.)  The denominator 1 - a_A^2 a_M^2 of the solution is rewritten
    with a_M^2 = 1 - alpha_M^2 and 1 - a_A^2 = alpha_A^2, and the rewriting checked."""
    numerator, denominator = sp.fraction(sp.together(sp.solve(sp.Eq(q_out_collapse, q), q)[0]))
    positive = alpha_A**2 + a_A**2 * alpha_M**2
    sign = sp.simplify((denominator / positive).subs({a_A: sp.sqrt(1 - alpha_A**2),
                                                      a_M: sp.sqrt(1 - alpha_M**2)}))
    if sign not in (1, -1):
        raise AssertionError(f"1 - a_A^2 a_M^2 != +-(alpha_A^2 + a_A^2 alpha_M^2): ratio {sign}")
    return sp.expand(numerator / sign) / positive


q_star_collapse_stable = _q_star_collapse_stable()      # equals q_star_collapse for the normalized residual


def simplex_fixed_point_equations(attention: str = "finite"):
    """The non-collapsed fixed point (q*, p* < q*) of the normalized residual, [W][S]: q_out = q and
    p_out = p, with the MLP kernel placeholders still to be substituted at rho1 = p1/q1
    (`mlp_substitutions`).  Transcendental through p_M; it exists where lambda_a > 0 (collapse unstable)
    and sim.signal_prop.simplex_fixed_point solves it.  The plain residual has none: q grows."""
    bm = block_map(attention)
    normalized = {a_A: sp.sqrt(1 - alpha_A**2), a_M: sp.sqrt(1 - alpha_M**2)}
    return sp.Eq(bm.q_out.subs(normalized), q), sp.Eq(bm.p_out.subs(normalized), p)


def _angle_multiplier() -> sp.Expr:
    """e^{lambda_a} = d epsilon_out / d epsilon at epsilon = 0 (epsilon = 1 - p/q), derived.

    The attention moments enter only through (1 - rho)(m_self - m_cross), and m_self = m_cross = 1/n at
    collapse, so they drop out at first order; the MLP enters through p_M(rho1) ~ q_M - chi_M (1 - rho1).
    """
    bm = block_map()
    # Step 1, attention: epsilon1 = (q1 - p1)/q1 with p = q (1 - eps).
    at = {p: q * (1 - eps)}
    eps1 = sp.simplify((bm.q1 - bm.p1) / bm.q1).subs(at)
    d_eps1 = sp.diff(eps1, eps).subs(eps, 0).subs(attention_moments_at_collapse)
    q1c = bm.q1.subs(at).subs(eps, 0).subs(attention_moments_at_collapse)
    # Step 2, MLP: q_out - p_out = a_M^2 (q1 - p1) + alpha_M^2 (q_M - p_M(rho1)), p_M = q_M - chi_M eps1.
    eps1_sym = sp.Symbol("epsilon_1", nonnegative=True)
    q1_sym = sp.Symbol("q_1", positive=True)
    eps_out = (a_M**2 * q1_sym * eps1_sym + alpha_M**2 * mlp_slope * eps1_sym) / (
        a_M**2 * q1_sym + alpha_M**2 * mlp_q)
    d_eps_out = sp.diff(eps_out, eps1_sym)
    return sp.simplify(d_eps_out.subs(q1_sym, q1c) * d_eps1)


angle_multiplier = _angle_multiplier()          # e^{lambda_a}; symbols q, a_A, a_M, alpha's, sigma_V, q_M, chi_M


def _tangent_matrix_at_collapse() -> sp.Matrix:
    """The linear map (Qt, Pt) -> (Qt_out, Pt_out) of one block at collapse (p = q, rho1 = 1)."""
    bm = block_map()
    at = {**attention_moments_at_collapse, p: q, mlp_slope_off: mlp_slope}
    rows = [sp.simplify(e.subs(at)) for e in (bm.Qt_out, bm.Pt_out)]
    return sp.Matrix([[sp.diff(r, Qt), sp.diff(r, Pt)] for r in rows])


tangent_matrix_at_collapse = _tangent_matrix_at_collapse()


def _tangent_eigenvalues():
    """Eigenvalues of the collapse tangent matrix: the common mode (Qt = Pt, the same perturbation on
    every token) is an eigenvector, so its eigenvalue is a row sum; the other (the differential mode) is
    the trace minus it.  The common mode is the larger: it sets the growth of E|dX_L/dX_0|_F^2."""
    image = tangent_matrix_at_collapse * sp.Matrix([1, 1])
    if sp.simplify(image[0] - image[1]) != 0:
        raise AssertionError("the common mode is not an eigenvector of the collapse tangent map")
    common = sp.factor(sp.simplify(image[0]))
    differential = sp.factor(sp.simplify(tangent_matrix_at_collapse.trace() - image[0]))
    return common, differential


gradient_multiplier, gradient_multiplier_differential = _tangent_eigenvalues()   # e^{lambda_g}, ...


def collapse_substitutions(params: BlockParams, q_value=None) -> dict:
    """Every symbol of `angle_multiplier` and `gradient_multiplier` except the kernel values q_M, chi_M,
    for params at the collapse state: q = q* (normalized residual) or q_value (default 1, plain)."""
    if not isinstance(params, BlockParams):
        raise ValueError(f"params={shown(params)}: must be a BlockParams")
    subs = params.substitutions()
    if q_value is None:
        q_value = q_star_collapse if params.residual == "normalized" else sp.Integer(1)
    elif not isinstance(q_value, sp.Basic):
        q_value = real_number("q_value", q_value, 0.0, open_low=True)
    elif q_value.is_number and not (q_value.is_positive and q_value.is_finite):  # symbols pass as given
        raise ValueError(f"q_value={shown(q_value)}: must be positive and finite")
    subs[q] = q_value
    return subs


angle_boundary = sp.Eq(angle_multiplier, 1)            # lambda_a = 0
gradient_boundary = sp.Eq(gradient_multiplier, 1)      # lambda_g = 0


def no_mlp_contraction():
    """Without the MLP, epsilon contracts strictly every block for every alpha_A > 0 (any n, any rho).

    epsilon1/epsilon - 1 = -alpha_A^2 sigma_V^2 [m_cross + (1 - epsilon)(1 - m_self)] / q1, exactly.
    Returns (the ratio minus one, its reparametrised factored form, and SymPy's sign verdict, True,
    under the facts m_cross > 0, 0 < m_self <= 1, 0 <= epsilon < 1, alpha_A > 0).
    """
    bm = block_map()
    at = {p: q * (1 - eps)}
    ratio = sp.simplify(((bm.q1 - bm.p1) / bm.q1 / eps).subs(at))
    excess = sp.simplify(ratio - 1)
    # Reparametrise so every fact is a sign assumption SymPy can use: epsilon = e/(1 + e) covers [0, 1),
    # m_self = 1/(1 + w) covers (0, 1], alpha_A > 0; then let the assumption system decide the sign.
    e, w = sp.symbols("e w", nonnegative=True)
    alpha_pos = sp.Symbol("alpha_A", positive=True)
    signed = sp.factor(sp.simplify(excess.subs({eps: e / (1 + e), attn_self: 1 / (1 + w),
                                                alpha_A: alpha_pos})))
    return excess, signed, signed.is_negative


# ----------------------------------------------------------------------------------------------------
# Printing
# ----------------------------------------------------------------------------------------------------
def _print_attention(args):
    print("Logit covariance check (all zero):", logit_decomposition_check())
    print("Logit std within a row: shared", logit_shared_std, ", private", logit_private_std, "\n")
    print("Attention branch Gram [W], finite n:")
    print("  q_A =", attention_q, "\n  p_A =", attention_p)
    print("  limit [N]: m_self ->", attention_moments_large_n[attn_self],
          ", m_cross ->", attention_moments_large_n[attn_cross], "\n")


def _print_mlp(args):
    for act in args.activation:
        print(f"MLP kernel ({act}): p_M(rho) =")
        print(sp.pretty(mlp_kernel(act).value), "\n")


def _print_exponents(args):
    print("Collapse rho = 1 is a fixed point: p_out - q_out =", collapse_is_fixed_point(), "\n")
    print("Angle exponent, e^{lambda_a} at collapse [W][S], any n:")
    print(sp.pretty(angle_multiplier), "\n")
    print("Gradient exponent, e^{lambda_g} (common mode) at collapse [W][S], any n:")
    print(sp.pretty(gradient_multiplier), "\n")
    print("Normalized residual: collapsed norm q* =", sp.pretty(q_star_collapse), "\n")


def _print_no_mlp(args):
    excess, signed, negative = no_mlp_contraction()
    print("No MLP: epsilon1/epsilon - 1 =", signed, " negative:", negative)


# name -> (what it prints, printer), in printing order
SECTIONS = {
    "attention": ("the logit covariance and the attention branch Gram", _print_attention),
    "mlp": ("the MLP kernels p_M(rho) of the --activation functions", _print_mlp),
    "exponents": ("collapse as a fixed point, the angle and gradient exponents, the collapsed norm",
                  _print_exponents),
    "no-mlp": ("the contraction of every angle without the MLP", _print_no_mlp),
}


def _parser() -> argparse.ArgumentParser:
    parser = section_parser("signal_prop", __doc__, SECTIONS)
    parser.add_argument("--activation", nargs="+", choices=ACTIVATIONS, default=list(ACTIVATIONS),
                        metavar="PHI",
                        help=f"activations of the mlp section, from {', '.join(ACTIVATIONS)} "
                             f"(default: {' '.join(ACTIVATIONS)})")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    sp.init_printing(use_unicode=True)
    print("Canonical block (module docstring); limits: [W] d -> oo, [S] symmetric simplex, [N] n -> oo.\n")
    print_sections(SECTIONS, args)


if __name__ == "__main__":
    main()
