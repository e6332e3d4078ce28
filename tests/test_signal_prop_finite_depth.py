"""The sum rule, the finite-depth exponents and critical_point: sim (compiled) against theory (SymPy at 30
digits), convergence to the asymptotic exponents, true crossings, and the Gaussian Poincare bound."""
import math

import mpmath
import numpy as np
import pytest
import sympy as sp

from sim import signal_prop as S
from theory import signal_prop as T
from theory.signal_prop import BlockParams

# Compiled float64 against 30-digit SymPy: measured worst relative error over every setting and rate below
# 6e-16 (the kernel quadrature alone reaches ~1e-11 at sigma_w = 8), so 1e-10 is a wide margin, and a wrong
# formula still misses by orders of magnitude.
RTOL = 1e-10
DIGITS = 30
# where the finite-depth curves cross (normalized residual, alpha = 0.25, depth 16, q0 = 1)
CROSSING_BASE = BlockParams(alpha_A=0.25, alpha_M=0.25, sigma_A=1.0, sigma_V=1.0, sigma_w=2.0, sigma_2=1.0)
CROSSING_PLANE = dict(free=("sigma_V", "sigma_w"), bounds=((0.2, 1.4), (0.75, 4.5)))

SETTINGS = [
    BlockParams(alpha_A=0.25, alpha_M=0.25, sigma_V=0.6, sigma_w=2.0, n_tokens=8),
    BlockParams(alpha_A=0.5, alpha_M=0.7, sigma_V=1.3, sigma_w=1.5, sigma_2=0.8, n_tokens=32, activation="erf",
                residual="plain", sigma_b=0.4),
    BlockParams(alpha_A=0.6, alpha_M=0.4, sigma_V=0.9, sigma_w=3.0, n_tokens=8, placement="post", sigma_b=0.7),
    BlockParams(alpha_A=0.3, alpha_M=0.8, sigma_V=1.1, sigma_w=1.2, sigma_2=1.4, n_tokens=16, activation="relu",
                residual="plain", placement="post"),
]


def _exact(value):
    return sp.Rational(repr(float(value)))


def _mlp_at_collapse(h):
    """(q_M, chi_M) of h's MLP at collapse (input Gram (1, 1)) at 30 digits, from theory.signal_prop.mlp_branch:
    closed forms evaluated by SymPy, integrals (tanh) by mpmath.quad."""
    mpmath.mp.dps = DIGITS
    branch = T.mlp_branch(h.activation)
    at = {T.branch_q: 1, T.branch_p: 1, T.sigma_w: _exact(h.sigma_w), T.sigma_2: _exact(h.sigma_2),
          T.sigma_b: _exact(h.sigma_b)}
    breaks = [-mpmath.inf, -2, -0.5, -0.1, 0, 0.1, 0.5, 2, mpmath.inf]

    def integrate(integral):
        (variable, *_), = integral.limits
        return sp.Float(mpmath.quad(sp.lambdify(variable, integral.function, "mpmath"), breaks), DIGITS)

    return tuple(sp.N(e.subs(at).replace(lambda x: isinstance(x, sp.Integral), integrate), DIGITS)
                 for e in (branch.diagonal, branch.slope))


def _substitutions(h):
    """Every symbol of the collapse multipliers at 30 digits, skips sqrt(1 - alpha^2) included."""
    alpha_a, alpha_m = _exact(h.alpha_A), _exact(h.alpha_M)
    q_m, chi = _mlp_at_collapse(h)
    return {T.alpha_A: alpha_a, T.alpha_M: alpha_m, T.sigma_V: _exact(h.sigma_V), T.n: h.n_tokens,
            T.a_A: T.residual_coefficient(alpha_a, h.residual), T.a_M: T.residual_coefficient(alpha_m, h.residual),
            T.mlp_q: q_m, T.mlp_slope: chi}


def _asymptotic_norm(h, subs):
    if h.placement == "post" or h.residual == "plain":
        return sp.Integer(1)
    return T.q_star_collapse_stable.subs(subs)


def _close(got, exact):
    exact = float(exact)
    return abs(got - exact) <= RTOL * max(abs(exact), 1.0)


@pytest.mark.parametrize("h", SETTINGS, ids=lambda h: f"{h.placement}-{h.residual}-{h.activation}-b{h.sigma_b}")
def test_sum_rule_at_30_digits_and_in_sim(h):
    """At each setting: theory's composed multipliers at 30 digits satisfy e^{lambda_g} = e^{lambda_a}
    (q_out/q) (1 + alpha_A^2 sigma_V^2/(a_A^2 q)) (q = 1 after a post-LN) to 1e-25, sim's exponents equal their
    logs within RTOL, and sim's numbers satisfy the rule within RTOL."""
    subs = _substitutions(h)
    q_value = _asymptotic_norm(h, subs)
    rule = T.sum_rule(h.placement)
    at = {**subs, T.q: q_value}
    angle, gradient, norm_ratio, attention = (sp.N(e.subs(at), DIGITS) for e in (
        rule.angle_multiplier, rule.gradient_multiplier, rule.norm_ratio, rule.stated_attention_term))
    assert abs(gradient / (angle * norm_ratio * attention) - 1) < 1e-25
    ex = S.exponents(h)
    assert _close(ex.angle, sp.log(angle)) and _close(ex.gradient, sp.log(gradient))
    assert ex.gradient_frobenius == ex.gradient and _close(ex.q, q_value)
    rule_gap = ex.gradient - ex.angle - math.log(float(norm_ratio)) - math.log(float(attention))
    assert abs(rule_gap) <= RTOL * max(1.0, abs(ex.gradient))
    # a stationary norm (normalized pre-LN at q*, post-LN at 1) leaves only the attention term: lambda_g > lambda_a
    if h.residual == "normalized" or h.placement == "post":
        assert abs(float(norm_ratio) - 1) < 1e-25 and ex.gradient > ex.angle


@pytest.mark.parametrize("h", SETTINGS, ids=lambda h: f"{h.placement}-{h.residual}-{h.activation}-b{h.sigma_b}")
@pytest.mark.parametrize("q0", [1.0, 3.0])
def test_finite_depth_exponents_at_30_digits(h, q0):
    """sim's exponents(h, depth=16, q0) against theory's finite-depth expressions unrolled over 16 blocks at
    30 digits (the three rates; the Frobenius one at n = h.n_tokens)."""
    subs = {**_substitutions(h), T.q_input: _exact(q0)}
    fd = T.finite_depth_exponents(h.placement)
    numeric = T.FiniteDepthExponents(h.placement, *(getattr(fd, f).subs(subs) for f in (
        "norm_step", "norm_at", "common_gain", "differential_gain", "angle", "gradient", "gradient_frobenius",
        "angle_from_sums", "gradient_from_sums", "gradient_frobenius_from_sums")))
    exact = {name: sp.N(value.subs(subs), DIGITS) for name, value in numeric.unrolled(16).items()}
    ex = S.exponents(h, depth=16, q0=q0)
    for name in ("angle", "gradient", "gradient_frobenius"):
        assert _close(getattr(ex, name), exact[name]), (name, getattr(ex, name), exact[name])
    assert ex.q == q0


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_finite_depth_grid_equals_exponents(placement):
    base = CROSSING_BASE.replace(placement=placement, sigma_b=0.3)
    xs, ys = np.linspace(0.2, 1.4, 4), np.array([0.0, 0.5, 1.5])
    maps = S.exponent_grid(base, "sigma_V", xs, "sigma_b", ys, depth=16, q0=2.0)
    assert isinstance(maps, S.ExponentMaps) and len(maps) == 3
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            e = S.exponents(base.replace(sigma_V=x, sigma_b=y), depth=16, q0=2.0)
            assert (maps.angle[i, j], maps.gradient[i, j], maps.gradient_frobenius[i, j]) == pytest.approx(
                (e.angle, e.gradient, e.gradient_frobenius), rel=1e-12, abs=1e-14)
    angle, gradient = S.exponent_grid(base, "sigma_V", xs, "sigma_b", ys)      # depth=None: two maps as before
    assert angle[2, 1] == pytest.approx(S.exponents(base.replace(sigma_V=xs[1], sigma_b=1.5)).angle, rel=1e-12)


@pytest.mark.parametrize("h", [SETTINGS[0], SETTINGS[2]], ids=["pre", "post"])
def test_finite_depth_from_the_stationary_norm_is_one_block(h):
    """Fed tokens of the stationary collapsed norm (q* for normalized pre-LN, 1 after a post-LN), every block
    is the same: angle and gradient equal the asymptotic exponents at any depth."""
    asymptotic = S.exponents(h)
    for depth in (1, 7, 50):
        finite = S.exponents(h, depth=depth, q0=asymptotic.q)
        assert finite.angle == pytest.approx(asymptotic.angle, rel=1e-10, abs=1e-14)
        assert finite.gradient == pytest.approx(asymptotic.gradient, rel=1e-10, abs=1e-14)


def test_finite_depth_converges_to_the_asymptotic_exponents_as_one_over_depth():
    """From q0 = 1 != q* the norm relaxes geometrically, so sum_l log G(q_l) = L log G(q*) + O(1) and each rate
    misses its asymptotic value by C/L (the Frobenius one also by log(1/n)/L): the fitted order of
    log|error| against log L is -1."""
    h = SETTINGS[0]
    asymptotic = S.exponents(h)
    depths = np.array([100, 200, 400, 800, 1600])
    for name in ("angle", "gradient", "gradient_frobenius"):
        target = asymptotic.gradient if name == "gradient_frobenius" else getattr(asymptotic, name)
        errors = np.array([abs(getattr(S.exponents(h, depth=int(L), q0=1.0), name) - target) for L in depths])
        order = np.polyfit(np.log(depths), np.log(errors), 1)[0]
        assert order == pytest.approx(-1.0, abs=0.02), (name, errors)


def test_critical_point_finds_the_finite_depth_crossing():
    """On the crossing plane the finite-depth zero curves cross: critical_point returns exact=True for both
    gradient definitions, the exponents vanish there, and the crossing is transversal (the Jacobian of
    (lambda_a, lambda_g) in the plane is non-singular), so it is a true crossing, not a touch."""
    found = {}
    for n_tokens in (8, 32):
        base = CROSSING_BASE.replace(n_tokens=n_tokens)
        for gradient in S.GRADIENT_DEFINITIONS:
            cp = S.critical_point(base, **CROSSING_PLANE, depth=16, q0=1.0, gradient=gradient)
            assert cp.exact is True and (cp.depth, cp.q0, cp.gradient_definition) == (16, 1.0, gradient)
            name = "gradient" if gradient == "common" else "gradient_frobenius"
            e = S.exponents(cp.params, depth=16, q0=1.0)
            assert abs(e.angle) < 1e-9 and abs(getattr(e, name)) < 1e-9
            step, jacobian = 1e-5, []
            for field in CROSSING_PLANE["free"]:
                up = S.exponents(cp.params.replace(**{field: getattr(cp.params, field) + step}), depth=16, q0=1.0)
                down = S.exponents(cp.params.replace(**{field: getattr(cp.params, field) - step}), depth=16, q0=1.0)
                jacobian.append([(up.angle - down.angle) / (2 * step),
                                 (getattr(up, name) - getattr(down, name)) / (2 * step)])
            assert abs(np.linalg.det(jacobian)) > 1e-3
            found[n_tokens, gradient] = (cp.params.sigma_V, cp.params.sigma_w)
    # the common mode does not see n; the Frobenius crossing moves with n (its 1/n common-mode weight)
    assert found[8, "common"] == pytest.approx(found[32, "common"], rel=1e-8)
    assert abs(found[8, "frobenius"][0] - found[32, "frobenius"][0]) > 0.05


@pytest.mark.parametrize("base", [CROSSING_BASE, CROSSING_BASE.replace(placement="post"),
                                  CROSSING_BASE.replace(sigma_b=0.5)], ids=["pre", "post", "bias"])
def test_critical_point_of_the_asymptotic_exponents_is_not_exact(base):
    """The sum rule keeps the asymptotic curves apart on the same plane (lambda_g - lambda_a = the attention
    term > 0 at the stationary norm): exact=False, and the gap is that term at every grid point."""
    cp = S.critical_point(base, **CROSSING_PLANE)
    assert cp.exact is False and max(abs(cp.angle), abs(cp.gradient)) > 1e-3
    xs, ys = np.linspace(0.2, 1.4, 9), np.linspace(0.75, 4.5, 9)
    angle, gradient = S.exponent_grid(base, "sigma_V", xs, "sigma_w", ys)
    q = np.array([[S.exponents(base.replace(sigma_V=x, sigma_w=y)).q for x in xs] for y in ys])
    a_A2 = 1 - base.alpha_A**2
    scale = q if base.placement == "pre" else 1.0
    attention_term = np.log1p(base.alpha_A**2 * xs[None, :] ** 2 / (a_A2 * scale)) * np.ones_like(q)
    np.testing.assert_allclose(gradient - angle, attention_term, rtol=1e-10)


@pytest.mark.parametrize("activation", ["tanh", "erf", "sin", "atan"])
def test_gaussian_poincare_bound(activation):
    """q_M <= chi_M for odd phi without bias (theory.signal_prop.poincare_gap), with chi_M/q_M -> 1 where phi is
    linear (small sigma_w); at a stationary norm the gradient exponent is then >= 0 everywhere."""
    x = sp.Symbol("x", real=True)
    phi = {"sin": sp.Lambda(x, sp.sin(x)), "atan": sp.Lambda(x, sp.atan(x))}.get(activation, activation)
    values = S._collapse_values(T.check_activation(phi))
    for sigma_w in np.geomspace(0.05, 12.0, 25):
        q_m, chi = values(sigma_w, 1.0, 0.0)
        assert q_m <= chi * (1 + 1e-12), (sigma_w, q_m, chi)
    q_m, chi = values(0.01, 1.0, 0.0)
    assert chi / q_m == pytest.approx(1.0, abs=1e-3)
    if activation == "tanh":                  # the grid kernels of the other activations would compile for this
        for placement in ("pre", "post"):
            _, gradient = S.exponent_grid(BlockParams(placement=placement), "alpha", np.linspace(0.05, 0.95, 7),
                                          "sigma_w", np.linspace(0.2, 6.0, 7))
            assert (gradient >= -1e-14).all()


def test_poincare_bound_needs_an_odd_phi_without_bias():
    """A bias or an even part breaks q_M <= chi_M, and a vanishing-gradient phase (lambda_g < 0 at the
    stationary norm) appears, as gradient_at_stationary_norm says it must."""
    q_m, chi = S._collapse_values("tanh")(0.5, 1.0, 1.0)
    assert q_m > chi
    x = sp.Symbol("x", real=True)
    shifted = T.check_activation(sp.Lambda(x, 1 + sp.tanh(x)))
    q_m, chi = S._collapse_values(shifted)(0.5, 1.0, 0.0)
    assert q_m > chi
    biased = BlockParams(sigma_b=1.0, sigma_w=0.5)
    assert S.exponents(biased).gradient < 0 and S.exponents(biased.replace(placement="post")).gradient < 0
