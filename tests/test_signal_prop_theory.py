"""SymPy identities of theory.signal_prop (exact: each assertion is a simplification to 0 or a sign)."""
import importlib

import sympy as sp
import pytest

from theory import signal_prop as T


def test_logit_covariance_decomposition_is_exact():
    assert all(v == 0 for v in T.logit_decomposition_check().values())


@pytest.mark.parametrize("activation", ["erf", "relu", "tanh"])
def test_collapse_is_a_fixed_point(activation):
    kernel = T.mlp_kernel(activation)
    if kernel.closed_form:
        assert T.collapse_is_fixed_point(kernel) == 0
    else:
        # Integral form: at rho = 1 the two pre-activations coincide and the z2 integral is 1.
        value_at_collapse = kernel.integrands["value"].subs(T.rho, 1)
        assert sp.simplify(value_at_collapse - kernel.integrands["diagonal"].subs(T.z, T.z1)) == 0


@pytest.mark.parametrize("residual", ["plain", "normalized"])
def test_alpha_to_zero_is_the_identity(residual):
    """alpha_A, alpha_M -> 0: the block is the identity, both exponents vanish."""
    bm = T.block_map()
    subs = {T.a_A: T.residual_coefficient(T.alpha_A, residual),
            T.a_M: T.residual_coefficient(T.alpha_M, residual)}
    for expr, state in ((bm.q_out, T.q), (bm.p_out, T.p), (bm.Qt_out, T.Qt), (bm.Pt_out, T.Pt)):
        limit = sp.limit(sp.limit(expr.subs(subs), T.alpha_A, 0), T.alpha_M, 0)
        assert sp.simplify(limit - state) == 0
    for mult in (T.angle_multiplier, T.gradient_multiplier):
        m = mult.subs(subs)
        assert sp.simplify(sp.limit(sp.limit(m, T.alpha_A, 0), T.alpha_M, 0) - 1) == 0


def test_relu_is_angle_neutral_at_collapse():
    """ReLU: chi_M = q_M, so the MLP factor of e^{lambda_a} is exactly 1 (no chaotic phase)."""
    relu = T.mlp_kernel("relu")
    assert sp.simplify(T.mlp_slope_at_collapse(relu) - relu.diagonal) == 0
    mlp_factor = T.angle_multiplier.subs(T.alpha_A, 0).subs(T.a_A, 1)
    assert sp.simplify(mlp_factor.subs(T.mlp_slope, T.mlp_q) - 1) == 0


def test_erf_closed_form_slope():
    """chi_M for erf equals the Price's-theorem integral sigma_2^2 sigma_w^2 E[erf'(sigma_w z)^2]."""
    erf = T.mlp_kernel("erf")
    x = sp.Symbol("x", real=True)
    generic = T.mlp_kernel(sp.Lambda(x, sp.erf(x)))
    integral = T.mlp_slope_at_collapse(generic).doit()
    assert sp.simplify(integral - T.mlp_slope_at_collapse(erf)) == 0


def test_closed_form_derivatives_are_prices_theorem():
    """d p_M/d rho equals sigma_2^2 sigma_w^2 E[phi'(u1) phi'(u2)]: for erf in closed form,
    E[erf'(u1) erf'(u2)] = (4/pi) / sqrt((1 + 2 s^2)^2 - 4 s^4 rho^2)."""
    erf = T.mlp_kernel("erf")
    s = T.sigma_w
    price = T.sigma_2**2 * s**2 * 4 / sp.pi / sp.sqrt((1 + 2 * s**2) ** 2 - 4 * s**4 * T.rho**2)
    assert sp.simplify(erf.derivative - price) == 0


def test_no_mlp_collapses_to_a_line():
    excess, signed, negative = T.no_mlp_contraction()
    assert negative is True
    # and the contraction is exact algebra, not an approximation: it vanishes only when alpha_A = 0
    assert sp.simplify(excess.subs(T.alpha_A, 0)) == 0


def test_angle_multiplier_factorises_into_sublayers():
    """e^{lambda_a} = (a_A^2 q / q1) * (a_M^2 q1 + alpha_M^2 chi_M) / (a_M^2 q1 + alpha_M^2 q_M)."""
    q1 = T.q1_collapse
    expected = (T.a_A**2 * T.q / q1) * (T.a_M**2 * q1 + T.alpha_M**2 * T.mlp_slope) / (
        T.a_M**2 * q1 + T.alpha_M**2 * T.mlp_q)
    assert sp.simplify(T.angle_multiplier - expected) == 0


def test_gradient_exceeds_angle_for_normalized_residual():
    """At the normalized collapse fixed point e^{lambda_g}/e^{lambda_a} = q1/(a_A^2 q*) >= 1: the two
    boundaries cannot cross for alpha_A, sigma_V > 0 (a structural result of the canonical block)."""
    subs = {T.a_A: sp.sqrt(1 - T.alpha_A**2), T.a_M: sp.sqrt(1 - T.alpha_M**2)}
    ratio = sp.simplify((T.gradient_multiplier / T.angle_multiplier).subs(subs).subs(T.q, T.q_star_collapse))
    q_star = T.q_star_collapse
    expected = ((1 - T.alpha_A**2) * q_star + T.alpha_A**2 * T.sigma_V**2) / ((1 - T.alpha_A**2) * q_star)
    assert sp.simplify(ratio - expected) == 0


def test_large_n_attention_maps_tokens_to_their_mean():
    """n -> infinity: q_A = p_A = sigma_V^2 rho (limit [N])."""
    for expr in (T.attention_q, T.attention_p):
        limit = sp.limit(expr.subs(T.attention_moments_large_n), T.n, sp.oo)
        assert sp.simplify(limit - T.sigma_V**2 * T.rho) == 0


def test_attention_moment_integral_is_printable_and_valid():
    integral = T.attention_moment_integral(2, T.attn_cross)
    assert isinstance(integral, sp.Integral) and len(integral.limits) == 6
    with pytest.raises(ValueError, match="moment"):
        T.attention_moment_integral(2, sp.Symbol("x"))


@pytest.mark.parametrize("bad, field", [
    (dict(sigma_w=-1.0), "sigma_w"), (dict(sigma_A=float("nan")), "sigma_A"),
    (dict(alpha_A=1.5), "alpha_A"), (dict(alpha_M=-0.1), "alpha_M"), (dict(n_tokens=1), "n_tokens"),
    (dict(activation="gelu"), "activation"), (dict(residual="pre"), "residual"),
])
def test_block_params_validation_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        T.BlockParams(**bad)


def test_plain_residual_allows_alpha_above_one():
    assert T.BlockParams(alpha_A=1.5, residual="plain").skip_A == 1.0


@pytest.mark.parametrize("module, section, printed", [
    ("signal_prop", "no-mlp", "negative: True"),
    ("scan_snap", "eqn85", "(h evaluated at t/K)"),
    ("commutator", "expansion", "(paper: sqrt(K)/sqrt(P))"),
])
def test_theory_command_line(module, section, printed, capsys):
    """Every `python -m theory.<name>` (tested once, here): --help exits 0 and names each section, an unknown
    flag exits 2 with one line, and --section prints the section named."""
    theory = importlib.import_module(f"theory.{module}")
    for argv, code in ((["--help"], 0), (["--bogus"], 2)):
        with pytest.raises(SystemExit) as stop:
            theory.main(argv)
        assert stop.value.code == code
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: python -m theory.{module}")
    assert all(name in out for name in theory.SECTIONS)
    assert err.count("\n") == 1 and "--bogus" in err
    theory.main(["--section", section])
    assert printed in capsys.readouterr().out


def test_stable_collapsed_norm_equals_the_solved_one():
    """q_star_collapse_stable (every term positive, what sim evaluates) is q_star_collapse once the skip
    weights are the normalized residual's sqrt(1 - alpha^2)."""
    normalized = {T.a_A: sp.sqrt(1 - T.alpha_A**2), T.a_M: sp.sqrt(1 - T.alpha_M**2)}
    assert sp.simplify(T.q_star_collapse_stable.subs(normalized) - T.q_star_collapse) == 0
    numerator, denominator = sp.fraction(T.q_star_collapse_stable)
    assert all(term.could_extract_minus_sign() is False for term in sp.Add.make_args(sp.expand(numerator))
               + sp.Add.make_args(sp.expand(denominator)))
