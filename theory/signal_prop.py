"""Token geometry through a deep random transformer, derived in SymPy.

Cowsik, Nebabu, Qi, Ganguli (2024), "Geometric dynamics of signal propagation predict trainability of
transformers", arXiv:2403.02579. Only the paper's abstract and a few quoted sentences (Secs. 3.3-3.4) were
available to us, not its body equations, so everything here is derived for the canonical block below: our
reconstruction of the paper's block (Sec. 2, Eq. 4 and Figure 1, as third-party re-implementations read them):

    H = LN(X);  S = (H W_Q)(H W_K)^T / sqrt(d);  A = softmax(S);   X <- a_A X + alpha_A A H W_V
    H = LN(X);                                                      X <- a_M X + alpha_M phi(H W_1) W_2

with LN(x) = sqrt(d) x / |x|, W_Q, W_K ~ N(0, sigma_A/d), W_V ~ N(0, sigma_V^2/d),
W_1 ~ N(0, sigma_w^2/d), W_2 ~ N(0, sigma_2^2/d_ff), and a = 1 ("plain") or sqrt(1 - alpha^2)
("normalized").  Two options widen the family to the blocks other analyses use: placement="post" puts LN
after each residual sum, X <- LN(a X + alpha F(X)) (the original transformer's order), and sigma_b > 0 adds
MLP biases, phi(H W_1 + b_1) W_2 + b_2 with b_1, b_2 ~ N(0, sigma_b^2) (`block_map`, `mlp_branch`).

State. Tokens form a permutation-symmetric simplex: q = |x_i|^2/d, p = x_i.x_j/d (i != j), rho = p/q.
Tangent (gradient) state: for a perturbation dX with E dX = 0, Qt = |dx_i|^2/d and Pt = dx_i.dx_j/d.

Limits every result here needs, stated once:
  [W]  width d -> infinity at fixed n (mean field): Gram matrices concentrate over the weights, cross
       terms x.(W v) vanish, logits become jointly Gaussian, and perturbations stay orthogonal to the
       states (gradient independence).
  [S]  the permutation-symmetric ansatz is preserved (true in expectation; the map tracks expectations).
  [N]  n -> infinity (only where a result says so): the softmax normaliser obeys the law of large
       numbers, valid while n >> exp(sigma_A^2 (1 - rho)).

Results at collapse (all tokens parallel, rho = 1), each derived here and checked by SymPy:
  * the exponents: `angle_multiplier`, `gradient_multiplier` (pre-LN), `collapse_multipliers(placement)`;
  * the sum rule (`sum_rule`): every sublayer is three numbers at collapse, its output norm q_F and its gains
    on common-mode and differential perturbations (`sublayer_at_collapse`); composing them gives
        lambda_g - lambda_a = lambda_q + log(1 + alpha_A^2 sigma_V^2/(a_A^2 q))      (q = 1 after a post-LN),
    because the MLP acts token by token and the uniform attention erases token differences.  Consequence:
    at a stationary or growing norm (normalized residual at q*, post-LN, plain) lambda_g > lambda_a, so the
    asymptotic zero curves never cross;
  * the Gaussian Poincare bound q_M <= chi_M for odd phi without bias (`poincare_gap`), which with
    `gradient_at_stationary_norm` (e^{lambda_g} - 1 proportional to chi_M - q_M there) leaves no
    vanishing-gradient phase; biases or a non-odd phi can break it;
  * finite depth (`finite_depth_exponents`): a depth-L network fed collapsed tokens of norm q0 follows the
    collapsed-norm recursion q[l+1] = norm_step(q[l]); its averaged exponents are sums of per-block gains
    along it, and where the norm contracts (q0 > q*, e.g. the normalized residual with sigma_V < 1) the
    zero curves of lambda_a^(L) and lambda_g^(L) do cross.

Everything a user needs is a module-level SymPy expression or a function returning one:

    >>> from theory import signal_prop as sp_theory
    >>> sp_theory.angle_multiplier            # e^{lambda_a} at collapse, as an expression
    >>> sp_theory.mlp_kernel("erf").value     # p_M(rho) in closed form
    >>> sp_theory.block_map(attention="large_n").p_out.subs(...)
    >>> print(sp_theory.sum_rule("post"))     # the sum rule, its parts and the limits it needs
    >>> sp_theory.finite_depth_exponents("pre").unrolled(16)["angle"]

`python -m theory.signal_prop` prints the main results (`--help` for the sections it can print).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
from dataclasses import dataclass

import sympy as sp

from theory._cli import choice, count, print_sections, real_number, section_parser, shown

# ----------------------------------------------------------------------------------------------------
# Symbols
# ----------------------------------------------------------------------------------------------------
q, p = sp.symbols("q p", positive=True)                       # residual-stream Gram entries (per dim)
rho = sp.Symbol("rho", real=True)                             # cosine between two tokens, p/q
eps = sp.Symbol("epsilon", nonnegative=True)                  # 1 - rho, the distance from collapse
# Gram of a branch's input (per dim): (1, rho) behind a pre-LN, the stream's (q, p) in a post-LN sublayer
branch_q, branch_p = sp.symbols("qhat phat", positive=True)
alpha_A, alpha_M = sp.symbols("alpha_A alpha_M", nonnegative=True)
sigma_A, sigma_V, sigma_w, sigma_2 = sp.symbols("sigma_A sigma_V sigma_w sigma_2", positive=True)
sigma_b = sp.Symbol("sigma_b", nonnegative=True)              # std of the MLP biases b_1, b_2
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
PLACEMENTS = ("pre", "post")                   # LN before each branch, or after each residual sum
NUMERIC_FIELDS = ("alpha_A", "alpha_M", "sigma_A", "sigma_V", "sigma_w", "sigma_2", "sigma_b")


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
    then a Gaussian quadrature of the compiled Lambda).  `placement` is where LN sits: "pre" (the canonical
    block, x <- a x + alpha F(LN x)) or "post" (x <- LN(a x + alpha F(x)) for each sublayer, as in the
    original transformer).  `sigma_b` is the std of the MLP biases, b_1 on the pre-activations and b_2 on the
    MLP output, both N(0, sigma_b^2) (0: no biases, the canonical block).
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
    placement: str = "pre"
    sigma_b: float = 0.0

    def __post_init__(self):
        # NumPy and SymPy scalars become the Python numbers they hold, so equality, hashing and JSON are
        # those of the Python value (a Python int stays an int, as before)
        for name in NUMERIC_FIELDS:
            object.__setattr__(self, name, real_number(name, getattr(self, name), 0.0, keep_int=True))
        object.__setattr__(self, "residual", choice("residual", self.residual, RESIDUALS))
        object.__setattr__(self, "placement", choice("placement", self.placement, PLACEMENTS))
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
                sigma_V: self.sigma_V, sigma_w: self.sigma_w, sigma_2: self.sigma_2, sigma_b: self.sigma_b,
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
# At a branch input of Gram (qhat, phat), R = phat J + (qhat - phat) I in `logit_covariance`: the same
# decomposition with these stds, which are the ones above at rho = phat/qhat and sigma_A -> sigma_A qhat
# (`branch_logit_scaling_check`).  So the softmax moments of a post-LN attention are those of rho = p/q with
# sigma_A q in place of sigma_A.
branch_logit_shared_std = sigma_A * sp.sqrt(branch_p * (branch_q - branch_p))
branch_logit_private_std = sigma_A * (branch_q - branch_p)


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


def branch_logit_scaling_check() -> tuple:
    """The branch logit stds minus the rho-form ones at rho = phat/qhat, sigma_A -> sigma_A qhat: (0, 0)."""
    scaled = {rho: branch_p / branch_q, sigma_A: sigma_A * branch_q}
    return tuple(sp.simplify(general - special.subs(scaled, simultaneous=True)) for general, special in (
        (branch_logit_shared_std, logit_shared_std), (branch_logit_private_std, logit_private_std)))


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
# sum_j A_ij = 1 turns the input Gram R = phat J + (qhat - phat) I into the two moments.
attention_branch_q = sigma_V**2 * (branch_p + (branch_q - branch_p) * attn_self)
attention_branch_p = sigma_V**2 * (branch_p + (branch_q - branch_p) * attn_cross)
# behind a pre-LN the input is LN'd: (qhat, phat) = (1, rho)
attention_q = attention_branch_q.subs({branch_q: 1, branch_p: rho})
attention_p = attention_branch_p.subs({branch_q: 1, branch_p: rho})


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


# MLP with biases.  u = h W_1 + b_1: b_1 is one vector shared by all tokens, so at a branch input of Gram
# (qhat, phat) the pre-activations have variance sigma_w^2 qhat + sigma_b^2 and covariance sigma_w^2 phat +
# sigma_b^2; y = phi(u) W_2 + b_2 adds sigma_b^2 to every Gram entry.  The bias-free kernel (`mlp_kernel`)
# evaluated at that std and correlation gives the rest: `bias_assembly` maps the placeholders q_M, p_M, chi_M,
# chi_M_off to the bias-free values K_* taken there.  The gains are per unit Gram of the branch input's
# perturbation: d p_M / d phat = (d K_p / d rho) * sigma_w^2 / (sigma_w^2 qhat + sigma_b^2) by the chain rule.
preactivation_variance = sigma_w**2 * branch_q + sigma_b**2
preactivation_covariance = sigma_w**2 * branch_p + sigma_b**2
preactivation_std = sp.sqrt(preactivation_variance)
preactivation_correlation = preactivation_covariance / preactivation_variance
kernel_diagonal, kernel_slope = sp.symbols("K_q K_chi", nonnegative=True)   # bias-free values at that std
kernel_value, kernel_derivative = sp.symbols("K_p K_chi_off", real=True)    # ... and that correlation
bias_assembly = {
    mlp_q: kernel_diagonal + sigma_b**2,
    mlp_p: kernel_value + sigma_b**2,
    mlp_slope: kernel_slope * sigma_w**2 / preactivation_variance,
    mlp_slope_off: kernel_derivative * sigma_w**2 / preactivation_variance,
}


@dataclass(frozen=True)
class MLPBranch:
    """The MLP branch Gram with biases, at a branch input of Gram (qhat on, phat off), limit [W]:
    diagonal = q_M, value = p_M(phat), derivative = d p_M / d phat (the branch's gain on the off-diagonal
    perturbation Gram), slope = chi_M = derivative at phat = qhat (its gain on the diagonal).  Expressions in
    qhat, phat, sigma_w, sigma_b, sigma_2 (unevaluated integrals for activations without a closed form)."""

    activation: str
    diagonal: sp.Expr
    value: sp.Expr
    slope: sp.Expr
    derivative: sp.Expr


def mlp_branch(activation="tanh") -> MLPBranch:
    """`mlp_kernel(activation)` with biases (`bias_assembly`); sigma_b = 0, qhat = 1 gives the kernel back."""
    kernel = mlp_kernel(activation)
    effective = {sigma_w: preactivation_std, rho: preactivation_correlation}
    values = {kernel_diagonal: kernel.diagonal.subs(sigma_w, preactivation_std),
              kernel_value: kernel.value.subs(effective, simultaneous=True),
              kernel_slope: mlp_slope_at_collapse(kernel).subs(sigma_w, preactivation_std),
              kernel_derivative: kernel.derivative.subs(effective, simultaneous=True)}
    return MLPBranch(kernel.activation, *(bias_assembly[m].subs(values) for m in
                                          (mlp_q, mlp_p, mlp_slope, mlp_slope_off)))


def mlp_branch_substitutions(branch: MLPBranch, q_in, p_in) -> dict:
    """Placeholders q_M, p_M, chi_M, chi_M_off -> the branch evaluated at its input Gram (q_in, p_in)."""
    if not isinstance(branch, MLPBranch):
        raise ValueError(f"branch={shown(branch)}: must be an MLPBranch (from mlp_branch)")
    at = {branch_q: q_in, branch_p: p_in}
    return {mlp_q: branch.diagonal.subs(at, simultaneous=True), mlp_p: branch.value.subs(at, simultaneous=True),
            mlp_slope: branch.slope.subs(at, simultaneous=True),
            mlp_slope_off: branch.derivative.subs(at, simultaneous=True)}


# ----------------------------------------------------------------------------------------------------
# One block: forward map and tangent map
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockMap:
    """One block in limits [W], [S]: (q, p) -> (q1, p1) after attention -> (q_out, p_out) after the MLP,
    and the tangent second moments (Qt, Pt) -> (Qt1, Pt1) -> (Qt_out, Pt_out).

    Free symbols: q, p, Qt, Pt, the hyperparameters, and placeholders the user or sim/ substitutes:
    the six attention moments and the MLP values q_M, p_M, chi_M, chi_M_off.  Each branch sees the input Gram
    `attention_input` and `mlp_input` (qhat, phat): (1, rho) behind a pre-LN, the stream's Gram in a post-LN
    block.  The moments are those at rho = phat/qhat with sigma_A qhat in place of sigma_A
    (`branch_logit_scaling_check`); the MLP values are `mlp_branch` at `mlp_input` (`mlp_branch_substitutions`;
    without biases, `mlp_substitutions` at rho = phat/qhat).
    """

    q1: sp.Expr
    p1: sp.Expr
    q_out: sp.Expr
    p_out: sp.Expr
    Qt1: sp.Expr
    Pt1: sp.Expr
    Qt_out: sp.Expr
    Pt_out: sp.Expr
    placement: str = "pre"
    attention_input: tuple = (sp.Integer(1), p / q)
    mlp_input: tuple = (sp.Integer(1), sp.Symbol("rho_1"))


def _attention_tangent(qh, ph, Qh, Ph):
    """Second moments of the attention branch's Jacobian applied to a perturbation with Gram (Qh on, Ph off)
    of input tokens with Gram (qh on, ph off), limit [W].

    dy_i = sum_j A_ij dh_j W_V (value path) + sum_j dA_ij h_j W_V (logit path); their cross terms vanish.
    Value path: sigma_V^2 [Ph + (Qh - Ph) sum_j A_ij A_kj].
    Logit path: dA_ij = A_ij (dS_ij - sum_m A_im dS_im), dS Gaussian and independent of A with
    Cov(dS_ij, dS_kl) = sigma_A^2 [G_ik R_jl + R_ik G_jl]; row-centring leaves
    sigma_A^2 kappa_ik delta_jl, kappa_ik = (qh - ph) G_ik + (Qh - Ph) R_ik, and the W_V sum leaves a
    factor (qh - ph).  Hence the moments sum A^2 - 2 sum A^3 + (sum A^2)^2 and their cross-row analogues.
    """
    gap = qh - ph
    kappa_self = gap * Qh + (Qh - Ph) * qh
    kappa_cross = gap * Ph + (Qh - Ph) * ph
    value_self = Ph + (Qh - Ph) * attn_self
    value_cross = Ph + (Qh - Ph) * attn_cross
    logit_self = gap * sigma_A**2 * kappa_self * (attn_self - 2 * attn_self3 + attn_self22)
    logit_cross = gap * sigma_A**2 * kappa_cross * (attn_cross - 2 * attn_cross21 + attn_cross22)
    return sigma_V**2 * (value_self + logit_self), sigma_V**2 * (value_cross + logit_cross)


def block_map(attention: str = "finite", placement: str = "pre") -> BlockMap:
    """The one-block map.  attention="finite": moments left as the symbols m_self, ... (exact at finite n
    under [W]); "large_n": moments replaced by their limit-[N] closed forms.  placement="pre" (the canonical
    block, x <- a x + alpha F(LN x)) or "post" (x <- LN(a x + alpha F(x)), each sublayer).

    Residual sums: cross terms x.(W y)/d vanish under [W], so Grams add.  LN(x) = sqrt(d) x/|x| maps the Gram
    to (1, rho) and, its Jacobian being (I - x x^T/|x|^2) sqrt(d)/|x|, a perturbation Gram to itself over q
    (the perturbations stay orthogonal to the states, [W]).
    """
    attention = choice("attention", attention, ("finite", "large_n"))
    placement = choice("placement", placement, PLACEMENTS)
    pre = placement == "pre"
    # Attention sublayer: its branch input and the perturbation Gram the branch sees
    qh, ph, Qh, Ph = (sp.Integer(1), p / q, Qt / q, Pt / q) if pre else (q, p, Qt, Pt)
    gram = {branch_q: qh, branch_p: ph}
    aq, ap = (e.subs(gram, simultaneous=True) for e in (attention_branch_q, attention_branch_p))
    tq_A, tp_A = _attention_tangent(qh, ph, Qh, Ph)
    sums = (a_A**2 * q + alpha_A**2 * aq, a_A**2 * p + alpha_A**2 * ap,
            a_A**2 * Qt + alpha_A**2 * tq_A, a_A**2 * Pt + alpha_A**2 * tp_A)
    q1, p1, Qt1, Pt1 = sums if pre else (e / sums[0] for e in sums)       # post: LN after the sum
    # MLP sublayer: phi'(u_i) phi'(u_k) weights, Price's theorem -> the kernel derivative (per unit Gram of
    # the branch input's perturbation, hence Qt1/q1 behind the LN)
    mlp_in = (sp.Integer(1), p1 / q1) if pre else (q1, p1)
    Qm, Pm = (Qt1 / q1, Pt1 / q1) if pre else (Qt1, Pt1)
    sums = (a_M**2 * q1 + alpha_M**2 * mlp_q, a_M**2 * p1 + alpha_M**2 * mlp_p,
            a_M**2 * Qt1 + alpha_M**2 * mlp_slope * Qm, a_M**2 * Pt1 + alpha_M**2 * mlp_slope_off * Pm)
    q_out, p_out, Qt_out, Pt_out = sums if pre else (e / sums[0] for e in sums)
    maps = [q1, p1, q_out, p_out, Qt1, Pt1, Qt_out, Pt_out]
    if attention == "large_n":
        scaled = {rho: ph / qh, sigma_A: sigma_A * qh}
        large = {m: e.subs(scaled, simultaneous=True) for m, e in attention_moments_large_n.items()}
        maps = [e.subs(large) for e in maps]
    return BlockMap(*maps, placement=placement, attention_input=(qh, ph), mlp_input=mlp_in)


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


# ----------------------------------------------------------------------------------------------------
# Both placements at collapse: the block map linearised
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CollapseMultipliers:
    """One block linearised at collapse (rho = 1) from input norm q, limits [W][S], any n and sigma_A.

    angle = e^{lambda_a} = d epsilon_out / d epsilon at epsilon = 0; gradient = e^{lambda_g}, the common-mode
    eigenvalue of the tangent map (Qt, Pt) -> (Qt_out, Pt_out); gradient_differential, its other
    (differential-mode) eigenvalue; norm_out = q_out at collapse (the collapsed-norm map).  Symbols: q, the
    hyperparameters, q_M, chi_M.
    """

    placement: str
    angle: sp.Expr
    gradient: sp.Expr
    gradient_differential: sp.Expr
    norm_out: sp.Expr


@functools.lru_cache(maxsize=None)
def collapse_multipliers(placement: str = "pre") -> CollapseMultipliers:
    """`block_map(placement=...)` linearised at collapse.  The attention moments enter only multiplied by the
    branch input's distance from collapse (qhat - phat, proportional to epsilon), so at first order they take
    their collapse values 1/n, 1/n^2; the MLP enters through p_M = q_M - chi_M (qhat - phat) at its input.
    For "pre" the results equal `angle_multiplier`, `gradient_multiplier` (tests)."""
    placement = choice("placement", placement, PLACEMENTS)
    bm = block_map(placement=placement)
    mlp_in_q, mlp_in_p = bm.mlp_input
    first_order = {mlp_p: mlp_q - mlp_slope * (mlp_in_q - mlp_in_p)}
    eps_out = ((bm.q_out - bm.p_out) / bm.q_out).subs(first_order).subs(p, q * (1 - eps))
    angle = sp.factor(sp.simplify(sp.diff(eps_out, eps).subs(eps, 0).subs(attention_moments_at_collapse)))
    at = {**attention_moments_at_collapse, mlp_slope_off: mlp_slope, mlp_p: mlp_q}
    rows = [sp.simplify(e.subs(p, q).subs(at)) for e in (bm.Qt_out, bm.Pt_out)]
    tangent = sp.Matrix([[sp.diff(r, Qt), sp.diff(r, Pt)] for r in rows])
    common, differential = _common_and_differential(tangent)
    norm_out = sp.simplify(bm.q_out.subs(p, q).subs(at))
    return CollapseMultipliers(placement, angle, common, differential, norm_out)


def _common_and_differential(tangent: sp.Matrix):
    """Eigenvalues of a 2x2 tangent map of (Qt, Pt) whose eigenvector (1, 1) is the common mode (the same
    perturbation on every token): its row sum; the differential mode's is the trace minus it."""
    image = tangent * sp.Matrix([1, 1])
    if sp.simplify(image[0] - image[1]) != 0:
        raise AssertionError("the common mode is not an eigenvector of the collapse tangent map")
    common = sp.factor(sp.simplify(image[0]))
    return common, sp.factor(sp.simplify(tangent.trace() - image[0]))


_post = collapse_multipliers("post")
angle_multiplier_post = _post.angle              # e^{lambda_a} of the post-LN block from input norm q
gradient_multiplier_post = _post.gradient        # e^{lambda_g} (common mode)
gradient_multiplier_differential_post = _post.gradient_differential


# ----------------------------------------------------------------------------------------------------
# The sum rule: each sublayer by three numbers, composed
# ----------------------------------------------------------------------------------------------------
# One sublayer x <- a x + alpha F(LN x) (pre) or LN(a x + alpha F(x)) (post) at collapse, and its branch F:
# output norm q_F, gain chi_c on a common-mode perturbation Gram, gain chi_d on a differential one (both per
# unit Gram of the branch input's perturbation).
skip_weight, branch_weight = sp.symbols("a alpha", nonnegative=True)
branch_norm, branch_common_gain, branch_differential_gain = sp.symbols("q_F chi_c chi_d", nonnegative=True)
common_gram, difference_gram = sp.symbols("C D", positive=True)


@dataclass(frozen=True)
class SublayerAtCollapse:
    """One sublayer at collapse from input norm q, [W]: its output norm, the growth G_c of a common-mode
    perturbation's Gram (the same dx on every token), the growth G_d of the token differences' Gram (for
    tokens near collapse q - p is that Gram, so epsilon = (q - p)/q), and epsilon'/epsilon = G_d q/q'."""

    placement: str
    norm_out: sp.Expr
    common_gain: sp.Expr
    differential_gain: sp.Expr
    angle_ratio: sp.Expr

    def subs(self, *args, **kwargs) -> "SublayerAtCollapse":
        return SublayerAtCollapse(self.placement, *(getattr(self, f).subs(*args, **kwargs) for f in
                                                    ("norm_out", "common_gain", "differential_gain", "angle_ratio")))


@dataclass(frozen=True)
class BranchAtCollapse:
    """A branch at collapse: output norm q_F and its gains chi_c (common mode), chi_d (differential)."""

    name: str
    norm: sp.Expr
    common_gain: sp.Expr
    differential_gain: sp.Expr


def sublayer_at_collapse(placement: str = "pre") -> SublayerAtCollapse:
    """Derived from three facts, [W]: Grams add over the residual sum (cross terms vanish); the branch scales a
    perturbation Gram of its input by chi_c or chi_d; LN maps norm q to 1 and a perturbation Gram G to G/q.
    pre: q' = a^2 q + alpha^2 q_F, G = a^2 + alpha^2 chi/q.  post: q' = 1, G = (a^2 + alpha^2 chi)/(a^2 q +
    alpha^2 q_F)."""
    placement = choice("placement", placement, PLACEMENTS)
    a, alpha, q_F = skip_weight, branch_weight, branch_norm
    seen = (lambda gram: gram / q) if placement == "pre" else (lambda gram: gram)   # what the branch sees
    sums = (a**2 * q + alpha**2 * q_F,
            a**2 * common_gram + alpha**2 * branch_common_gain * seen(common_gram),
            a**2 * difference_gram + alpha**2 * branch_differential_gain * seen(difference_gram))
    q_out, c_out, d_out = sums if placement == "pre" else (e / sums[0] for e in sums)
    return SublayerAtCollapse(placement, sp.simplify(q_out), sp.simplify(c_out / common_gram),
                              sp.simplify(d_out / difference_gram),
                              sp.simplify((d_out / q_out) / (difference_gram / q)))


def attention_at_collapse(placement: str = "pre") -> BranchAtCollapse:
    """The attention branch at collapse, from `attention_branch_q` and `_attention_tangent` with the collapse
    moments (A = 11^T/n exactly): q_F = sigma_V^2 qhat, chi_c = sigma_V^2, chi_d = 0.  Every token's output is
    the mean of the inputs (value path) and the logit path moves each row uniformly, which the softmax ignores:
    token differences are erased."""
    placement = choice("placement", placement, PLACEMENTS)
    qh = sp.Integer(1) if placement == "pre" else q
    norm = sp.simplify(attention_branch_q.subs({branch_q: qh, branch_p: qh}).subs(attention_moments_at_collapse))
    rows = [sp.expand(e.subs(attention_moments_at_collapse)) for e in _attention_tangent(qh, qh, Qt, Pt)]
    common, differential = _common_and_differential(sp.Matrix([[sp.diff(r, v) for v in (Qt, Pt)] for r in rows]))
    return BranchAtCollapse("attention", norm, common, differential)


def mlp_at_collapse() -> BranchAtCollapse:
    """The MLP branch at collapse (input Gram (1, 1) behind either LN): tangent diag(chi_M, chi_M_off) with
    chi_M_off = chi_M at phat = qhat, so chi_c = chi_d = chi_M (it acts token by token)."""
    common, differential = _common_and_differential(sp.diag(mlp_slope, mlp_slope_off).subs(mlp_slope_off, mlp_slope))
    return BranchAtCollapse("mlp", mlp_q, common, differential)


@dataclass(frozen=True)
class BlockAtCollapse:
    """Attention then MLP sublayer at collapse from input norm q: the sublayers (with their branches
    substituted; the MLP's input norm is norm_after_attention), the block's norm_out, common_gain
    (= e^{lambda_g}), differential_gain and angle_multiplier (= e^{lambda_a} = prod G_d * q/q_out)."""

    placement: str
    attention: SublayerAtCollapse
    mlp: SublayerAtCollapse
    norm_after_attention: sp.Expr
    norm_out: sp.Expr
    common_gain: sp.Expr
    differential_gain: sp.Expr
    angle_multiplier: sp.Expr


@functools.lru_cache(maxsize=None)
def block_at_collapse(placement: str = "pre") -> BlockAtCollapse:
    """`sublayer_at_collapse` twice, with `attention_at_collapse` and `mlp_at_collapse` substituted."""
    placement = choice("placement", placement, PLACEMENTS)
    generic = sublayer_at_collapse(placement)

    def sublayer(a, alpha, branch):
        return generic.subs({skip_weight: a, branch_weight: alpha, branch_norm: branch.norm,
                             branch_common_gain: branch.common_gain,
                             branch_differential_gain: branch.differential_gain}, simultaneous=True)

    attention = sublayer(a_A, alpha_A, attention_at_collapse(placement))
    q1 = attention.norm_out
    mlp = sublayer(a_M, alpha_M, mlp_at_collapse()).subs(q, q1)
    return BlockAtCollapse(placement, attention, mlp, q1, mlp.norm_out,
                           sp.factor(attention.common_gain * mlp.common_gain),
                           sp.factor(attention.differential_gain * mlp.differential_gain),
                           sp.factor(sp.simplify(attention.angle_ratio * mlp.angle_ratio)))


SUM_RULE_LIMITS = (
    "[W] width -> infinity (Grams concentrate; residual cross terms and the perturbations' overlap with the "
    "states vanish); linearisation at exact collapse, where A = 11^T/n at every n and sigma_A; q > 0 and "
    "a_A > 0 (with a_A = 0, the normalized residual at alpha_A = 1, the attention erases every token "
    "difference and lambda_a = -inf).  Any activation, MLP biases, n, sigma_A, residual; LN without gain or "
    "centring (this block's).")


@dataclass(frozen=True)
class SumRule:
    """lambda_g - lambda_a = lambda_q + sum over sublayers of log(G_c / G_d), derived (see `sum_rule`).

    angle_multiplier, gradient_multiplier: e^{lambda_a}, e^{lambda_g} composed from the sublayers;
    norm_ratio = q_out/q = e^{lambda_q}; gain_ratios: G_c/G_d per sublayer (the MLP's is 1);
    stated_attention_term: 1 + alpha_A^2 sigma_V^2/(a_A^2 q), with q = 1 (the stationary norm) for "post";
    identity: the rule as an equation of logs; residual: lambda_g - lambda_a - lambda_q - log(stated term),
    simplified (0); matches_block_map: the composed multipliers equal `collapse_multipliers` (the block map
    linearised); limits: what the derivation needs.
    """

    placement: str
    angle_multiplier: sp.Expr
    gradient_multiplier: sp.Expr
    norm_ratio: sp.Expr
    gain_ratios: dict
    stated_attention_term: sp.Expr
    identity: sp.Eq
    residual: sp.Expr
    matches_block_map: bool
    limits: str = SUM_RULE_LIMITS

    def __str__(self) -> str:
        lines = [f"Sum rule at collapse, placement={self.placement!r}:",
                 f"  e^lambda_a = {self.angle_multiplier}", f"  e^lambda_g = {self.gradient_multiplier}",
                 f"  e^lambda_q = q_out/q = {self.norm_ratio}"]
        lines += [f"  G_c/G_d of the {name} sublayer = {ratio}" for name, ratio in self.gain_ratios.items()]
        lines += [f"  identity: {self.identity.lhs} = {self.identity.rhs}",
                  f"  lambda_g - lambda_a - lambda_q - log({self.stated_attention_term}) = {self.residual}",
                  f"  composed multipliers equal the block map's linearisation: {self.matches_block_map}",
                  f"  limits: {self.limits}"]
        return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def sum_rule(placement: str = "pre") -> SumRule:
    """The sum rule of one block at collapse, derived from each sublayer's (q_F, chi_c, chi_d).

    Per sublayer epsilon'/epsilon = G_d q/q' (`sublayer_at_collapse`), so over the block the norms telescope:
    e^{lambda_a} = prod G_d * q/q_out, while e^{lambda_g} = prod G_c.  Hence
        lambda_g - lambda_a = lambda_q + sum over sublayers log(G_c/G_d),   lambda_q = log(q_out/q).
    The MLP acts token by token (chi_c = chi_d): its term is 0.  The attention erases differences (chi_d = 0):
    its term is log(1 + alpha_A^2 sigma_V^2/(a_A^2 q)) before a pre-LN, and log(1 + alpha_A^2 sigma_V^2/a_A^2)
    at any input norm after a post-LN (the pre form at its stationary norm q = 1).  Consequences: wherever the
    collapsed norm is stationary (normalized residual at q*, post-LN) or grows (plain), lambda_g > lambda_a as
    soon as alpha_A sigma_V > 0, so the asymptotic zero curves cannot cross; see
    `gradient_at_stationary_norm` for the sign of lambda_g itself and `finite_depth_exponents` for curves that
    do cross (a norm that contracts, lambda_q < 0).
    """
    placement = choice("placement", placement, PLACEMENTS)
    block = block_at_collapse(placement)
    ratios = {name: sp.factor(sp.simplify(part.common_gain / part.differential_gain))
              for name, part in (("attention", block.attention), ("mlp", block.mlp))}
    norm_ratio = sp.simplify(block.norm_out / q)
    stated = 1 + alpha_A**2 * sigma_V**2 / (a_A**2 * (q if placement == "pre" else 1))
    gap = sp.log(block.common_gain) - sp.log(block.angle_multiplier)
    identity = sp.Eq(gap, sp.log(norm_ratio) + sum(sp.log(r) for r in ratios.values()))
    # every argument of a log is positive under the limits, so the logs combine into one log of a ratio
    residual = sp.simplify(sp.logcombine(gap - sp.log(norm_ratio) - sp.log(stated), force=True))
    linearised = collapse_multipliers(placement)
    matches = all(sp.simplify(x - y) == 0 for x, y in ((block.angle_multiplier, linearised.angle),
                                                         (block.common_gain, linearised.gradient),
                                                         (block.differential_gain, linearised.gradient_differential),
                                                         (block.norm_out, linearised.norm_out)))
    return SumRule(placement, block.angle_multiplier, block.common_gain, norm_ratio, ratios, stated, identity,
                   residual, matches)


def gradient_at_stationary_norm(placement: str = "pre") -> sp.Expr:
    """e^{lambda_g} - 1 where the collapsed norm is stationary (the normalized residual at q* for "pre";
    q = 1 for "post"), factored: alpha_M^2 (chi_M - q_M)/q* and alpha_M^2 (chi_M - q_M)/(a_M^2 + alpha_M^2 q_M).
    So lambda_g has the sign of chi_M - q_M there, and with `poincare_gap` (q_M <= chi_M for odd phi without
    bias) there is no vanishing-gradient phase at all; a bias or a non-odd phi can make chi_M < q_M."""
    placement = choice("placement", placement, PLACEMENTS)
    gain = collapse_multipliers(placement).gradient
    if placement == "pre":
        normalized = {a_A: sp.sqrt(1 - alpha_A**2), a_M: sp.sqrt(1 - alpha_M**2)}
        excess = gain.subs(normalized).subs(q, q_star_collapse) - 1
        stated = alpha_M**2 * (mlp_slope - mlp_q) / q_star_collapse_stable     # q* with positive terms only
    else:
        excess = gain.subs(q, 1) - 1
        stated = alpha_M**2 * (mlp_slope - mlp_q) / (a_M**2 + alpha_M**2 * mlp_q)
    if sp.simplify(excess - stated.subs({a_A: sp.sqrt(1 - alpha_A**2), a_M: sp.sqrt(1 - alpha_M**2)}
                                        if placement == "pre" else {})) != 0:
        raise AssertionError("e^{lambda_g} - 1 at the stationary norm differs from its factored form")
    return stated


# ----------------------------------------------------------------------------------------------------
# The Gaussian Poincare bound q_M <= chi_M (odd phi, no bias)
# ----------------------------------------------------------------------------------------------------
def poincare_gap(degree: int = 6):
    """Var f(Z) <= E f'(Z)^2 for Z ~ N(0, 1) (Gaussian Poincare inequality), shown for every polynomial f of
    `degree`: with f = sum_k c_k He_k/sqrt(k!) (probabilists' Hermite polynomials, orthonormal under N(0, 1))
    and He_k' = k He_{k-1}, E f'^2 - Var f = sum_k (k - 1) c_k^2 >= 0, equality iff f is affine.

    Proof sketch for phi in general: polynomials are dense in the Gaussian Sobolev space, and both sides are
    continuous there.  Take f(z) = phi(sigma_w z) with phi odd: E phi(sigma_w Z) = 0, so
    q_M = sigma_2^2 E phi(sigma_w Z)^2 = sigma_2^2 Var f <= sigma_2^2 E f'^2 = sigma_2^2 sigma_w^2 E phi'(sigma_w Z)^2
    = chi_M.  A bias breaks it: the pre-activation std becomes s = sqrt(sigma_w^2 + sigma_b^2) while chi_M keeps
    the factor sigma_w^2 (not s^2), and b_2 adds sigma_b^2 to q_M only.

    Returns (E f'^2 - Var f as computed from f, the sum of squares, their difference simplified: 0).
    """
    degree = count("degree", degree, 1, 20)
    coefficients = sp.symbols(f"c0:{degree + 1}", real=True)
    f = sum(c * sp.hermite_prob(k, z) / sp.sqrt(sp.factorial(k)) for k, c in enumerate(coefficients))

    def expectation(polynomial):
        poly = sp.Poly(sp.expand(polynomial), z)
        return sum(coefficient * (sp.factorial2(power - 1) if power % 2 == 0 else 0)
                   for (power,), coefficient in poly.terms())

    gap = sp.expand(expectation(sp.diff(f, z) ** 2) - (expectation(f**2) - expectation(f) ** 2))
    squares = sum((k - 1) * c**2 for k, c in enumerate(coefficients) if k >= 1)
    return gap, squares, sp.simplify(gap - squares)


# ----------------------------------------------------------------------------------------------------
# Finite depth: the collapsed-norm recursion
# ----------------------------------------------------------------------------------------------------
depth_symbol = sp.Symbol("L", positive=True, integer=True)
layer_index = sp.Symbol("l", nonnegative=True, integer=True)
q_input = sp.Symbol("q_0", positive=True)                   # norm of the tokens fed to the network
collapsed_norms = sp.IndexedBase("q")                         # q[l]: the collapsed norm entering block l
log_common_sum, log_differential_sum = sp.symbols("Lambda_c Lambda_d", real=True)
q_final = sp.Symbol("q_L", positive=True)


@dataclass(frozen=True)
class FiniteDepthExponents:
    """The (1/L)-averaged exponents of a depth-L network fed collapsed tokens of norm q0, along the collapse
    manifold, limits [W][S] (any n, sigma_A):

        q[l+1] = norm_step(q[l]), q[0] = q_0                       (the collapsed-norm recursion)
        lambda_a^(L) = (1/L) [sum_l log G_d(q[l]) + log(q_0/q[L])]  (epsilon_L/epsilon_0, epsilon_0 -> 0)
        lambda_g^(L) = (1/L) sum_l log G_c(q[l])                    (common-mode probe)
        lambda_F^(L) = (1/L) log[(1/n) prod_l G_c(q[l]) + (1 - 1/n) prod_l G_d(q[l])]
                                                                     (E|J_L|_F^2/(nd), isotropic probe)

    The isotropic probe puts 1/n of its Gram in the common mode and 1 - 1/n in the differential one, which
    the tangent map keeps apart at collapse.  Fields: norm_step, common_gain, differential_gain (in q); norm_at
    (q[l] in closed form, in l and q_0); angle, gradient, gradient_frobenius (Sum/Product over l, in L, q_0,
    q[l]); and the same three in terms of the sums Lambda_c = sum log G_c, Lambda_d = sum log G_d and q_L, which
    is what sim compiles (`*_from_sums`; the Frobenius one rewritten so exp cannot overflow, G_c >= G_d).
    With q_0 at a fixed point of norm_step every q[l] = q_0 and the three reduce to one block's exponents
    (lambda_F^(L) -> lambda_g as L -> infinity when G_c > G_d).
    """

    placement: str
    norm_step: sp.Expr
    norm_at: sp.Expr
    common_gain: sp.Expr
    differential_gain: sp.Expr
    angle: sp.Expr
    gradient: sp.Expr
    gradient_frobenius: sp.Expr
    angle_from_sums: sp.Expr
    gradient_from_sums: sp.Expr
    gradient_frobenius_from_sums: sp.Expr

    def unrolled(self, depth: int) -> dict:
        """angle, gradient, gradient_frobenius for a given depth with every q[l] written out from q_0 by the
        recursion: explicit expressions in q_0, the hyperparameters, q_M, chi_M and n."""
        depth = count("depth", depth, 1)
        norms = [q_input]
        for _ in range(depth):
            norms.append(self.norm_step.subs(q, norms[-1]))
        common = sum(sp.log(self.common_gain.subs(q, v)) for v in norms[:-1])
        differential = sum(sp.log(self.differential_gain.subs(q, v)) for v in norms[:-1])
        sums = {log_common_sum: common, log_differential_sum: differential, q_final: norms[-1],
                depth_symbol: depth}
        return {name: getattr(self, f"{name}_from_sums").subs(sums)
                for name in ("angle", "gradient", "gradient_frobenius")}


@functools.lru_cache(maxsize=None)
def finite_depth_exponents(placement: str = "pre") -> FiniteDepthExponents:
    """`FiniteDepthExponents` of the block at `placement`, from `collapse_multipliers` (the block map
    linearised at collapse from input norm q).  The pre-LN recursion q -> a_A^2 a_M^2 q + const is affine, so
    `norm_at` is its solution (sympy.rsolve); post-LN returns every norm to 1 after the first block."""
    placement = choice("placement", placement, PLACEMENTS)
    block = collapse_multipliers(placement)
    step = block.norm_out
    l = layer_index
    if placement == "pre":
        norm = sp.Function("q")
        closed = sp.rsolve(norm(l + 1) - step.subs(q, norm(l)), norm(l), {norm(0): q_input})
        if sp.simplify(closed.subs(l, l + 1) - step.subs(q, closed)) != 0 or sp.simplify(
                closed.subs(l, 0) - q_input) != 0:
            raise AssertionError("the closed-form collapsed norm does not solve the recursion")
    else:
        closed = sp.Piecewise((q_input, sp.Eq(l, 0)), (step, True))
    G_c, G_d = block.gradient, block.angle * block.norm_out / q     # G_d = e^{lambda_a} q_out/q (telescoping)
    G_d = sp.factor(sp.simplify(G_d))
    if sp.simplify(G_d - block.gradient_differential) != 0:
        raise AssertionError("the angle multiplier is not G_d q/q_out")
    L, n_tok = depth_symbol, n
    at_l = {q: collapsed_norms[l]}
    sum_c = sp.Sum(sp.log(G_c.subs(at_l)), (l, 0, L - 1))
    sum_d = sp.Sum(sp.log(G_d.subs(at_l)), (l, 0, L - 1))
    prod_c = sp.Product(G_c.subs(at_l), (l, 0, L - 1))
    prod_d = sp.Product(G_d.subs(at_l), (l, 0, L - 1))
    angle = (sum_d + sp.log(q_input / collapsed_norms[L])) / L
    gradient = sum_c / L
    frobenius = sp.log(prod_c / n_tok + (1 - 1 / n_tok) * prod_d) / L
    Lc, Ld = log_common_sum, log_differential_sum
    angle_s = (Ld + sp.log(q_input) - sp.log(q_final)) / L
    gradient_s = Lc / L
    frobenius_s = (Lc + sp.log(1 / n_tok + (1 - 1 / n_tok) * sp.exp(Ld - Lc))) / L
    if sp.simplify(sp.exp(L * frobenius_s) - (sp.exp(Lc) / n_tok + (1 - 1 / n_tok) * sp.exp(Ld))) != 0:
        raise AssertionError("the overflow-free Frobenius form differs from the definition")
    return FiniteDepthExponents(placement, step, closed, G_c, G_d, angle, gradient, frobenius,
                                angle_s, gradient_s, frobenius_s)


def collapse_substitutions(params: BlockParams, q_value=None) -> dict:
    """Every symbol of the collapse multipliers (`collapse_multipliers(params.placement)`) except the kernel
    values q_M, chi_M, for params at the collapse state: q = q_value, by default q* (normalized pre-LN) or 1
    (plain, whose norm has no fixed point; post-LN, whose every block outputs norm 1)."""
    if not isinstance(params, BlockParams):
        raise ValueError(f"params={shown(params)}: must be a BlockParams")
    subs = params.substitutions()
    if q_value is None:
        stationary = params.residual == "normalized" and params.placement == "pre"
        q_value = q_star_collapse if stationary else sp.Integer(1)
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


def _print_placement(args):
    post = block_map(placement="post")
    print("Post-LN block, x <- LN(a x + alpha F(x)): q1 =", post.q1, ", q_out =", post.q_out)
    print("  p_out =", sp.pretty(post.p_out), "\n")
    multipliers = collapse_multipliers("post")
    print("Post-LN at collapse from input norm q: e^{lambda_a} =")
    print(sp.pretty(multipliers.angle), "\n")
    print("  e^{lambda_g} (common mode) =")
    print(sp.pretty(multipliers.gradient), "\n")
    print("MLP biases: pre-activation std", preactivation_std, ", correlation", preactivation_correlation)
    print("  q_M, p_M, chi_M, chi_M_off from the bias-free kernel K_* at that std:", bias_assembly)


def _print_sum_rule(args):
    for placement in PLACEMENTS:
        print(sum_rule(placement), "\n")
        print(f"  e^lambda_g - 1 at the stationary norm ({placement}):", gradient_at_stationary_norm(placement), "\n")


def _print_poincare(args):
    gap, squares, difference = poincare_gap()
    print("Gaussian Poincare, f a polynomial of degree 6 in Hermite form: E f'^2 - Var f =", squares,
          "  (computed minus stated:", difference, ")")
    print("  so q_M <= chi_M for odd phi without bias (`poincare_gap` docstring for the general case)")


def _print_finite_depth(args):
    for placement in PLACEMENTS:
        fd = finite_depth_exponents(placement)
        print(f"Finite depth, placement={placement!r}: q[l+1] =", fd.norm_step.subs(q, collapsed_norms[layer_index]),
              ", q[l] =", fd.norm_at)
        print("  lambda_a^(L) =", fd.angle)
        print("  lambda_g^(L) =", fd.gradient)
        print("  lambda_F^(L) =", fd.gradient_frobenius, "\n")


# name -> (what it prints, printer), in printing order
SECTIONS = {
    "attention": ("the logit covariance and the attention branch Gram", _print_attention),
    "mlp": ("the MLP kernels p_M(rho) of the --activation functions", _print_mlp),
    "exponents": ("collapse as a fixed point, the angle and gradient exponents, the collapsed norm",
                  _print_exponents),
    "no-mlp": ("the contraction of every angle without the MLP", _print_no_mlp),
    "placement": ("the post-LN block and its exponents, and the MLP with biases", _print_placement),
    "sum-rule": ("the sum rule lambda_g - lambda_a = lambda_q + attention term, derived, for both placements",
                 _print_sum_rule),
    "poincare": ("the Gaussian Poincare bound behind q_M <= chi_M", _print_poincare),
    "finite-depth": ("the finite-depth exponents along the collapsed-norm recursion", _print_finite_depth),
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
