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
    (dict(placement="middle"), "placement"), (dict(placement=None), "placement"),
    (dict(sigma_b=-0.5), "sigma_b"), (dict(sigma_b=float("inf")), "sigma_b"), (dict(sigma_b="1"), "sigma_b"),
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


# ----------------------------------------------------------------------------------------------------------
# Placement, biases, the sum rule, the Poincare bound and the finite-depth exponents
# ----------------------------------------------------------------------------------------------------------
def test_branch_logits_scale_with_the_input_norm():
    assert T.branch_logit_scaling_check() == (0, 0)


def test_pre_ln_block_map_is_the_post_ln_one_without_the_lns():
    """The two placements share every branch formula: post-LN with its two LNs removed (the sums not divided by
    their norms) and the branches fed LN'd inputs is the pre-LN map.  Checked through the collapse multipliers
    of the block map, which both derive: pre-LN's equal the canonical angle_multiplier, gradient_multiplier."""
    pre = T.collapse_multipliers("pre")
    assert sp.simplify(pre.angle - T.angle_multiplier) == 0
    assert sp.simplify(pre.gradient - T.gradient_multiplier) == 0
    assert sp.simplify(pre.gradient_differential - T.gradient_multiplier_differential) == 0


def test_post_ln_block_outputs_unit_norm_and_keeps_collapse():
    post = T.block_map(placement="post")
    assert sp.simplify(post.q1 - 1) == 0 and sp.simplify(post.q_out - 1) == 0
    at_collapse = {**T.attention_moments_at_collapse, T.p: T.q, T.mlp_p: T.mlp_q}
    assert sp.simplify(post.p_out.subs(at_collapse) - 1) == 0
    # with both branches off the block is LN itself: rho is kept, the norm reset to 1
    off = post.p_out.subs({T.alpha_A: 0, T.alpha_M: 0, T.a_A: 1, T.a_M: 1})
    assert sp.simplify(off - T.p / T.q) == 0


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_branches_at_collapse(placement):
    """Attention at collapse: output norm sigma_V^2 qhat, common-mode gain sigma_V^2, differential gain 0 (it
    erases token differences); the MLP: q_M and chi_M on both modes."""
    attention = T.attention_at_collapse(placement)
    q_hat = 1 if placement == "pre" else T.q
    assert sp.simplify(attention.norm - T.sigma_V**2 * q_hat) == 0
    assert sp.simplify(attention.common_gain - T.sigma_V**2) == 0 and attention.differential_gain == 0
    mlp = T.mlp_at_collapse()
    assert (mlp.norm, mlp.common_gain, mlp.differential_gain) == (T.mlp_q, T.mlp_slope, T.mlp_slope)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_sum_rule_is_an_identity(placement):
    """lambda_g - lambda_a - lambda_q - log(1 + alpha_A^2 sigma_V^2/(a_A^2 q)) = 0 (q = 1 for post-LN), composed
    from the sublayers and equal to the block map's linearisation; without the attention term it fails."""
    rule = T.sum_rule(placement)
    assert rule.residual == 0 and rule.matches_block_map is True
    assert rule.gain_ratios["mlp"] == 1
    assert sp.simplify(rule.gain_ratios["attention"] - rule.stated_attention_term) == 0
    product = rule.angle_multiplier * rule.norm_ratio * rule.stated_attention_term
    assert sp.simplify(rule.gradient_multiplier - product) == 0
    assert sp.simplify(rule.gradient_multiplier - rule.angle_multiplier * rule.norm_ratio) != 0
    assert "limits:" in str(rule) and "a_A > 0" in rule.limits


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_gradient_at_a_stationary_norm_has_the_sign_of_chi_minus_q(placement):
    excess = T.gradient_at_stationary_norm(placement)          # checked against the multiplier inside
    assert sp.simplify(excess.subs(T.mlp_slope, T.mlp_q)) == 0
    positive = {T.mlp_slope: T.mlp_q + sp.Symbol("g", positive=True), T.alpha_M: sp.Symbol("m", positive=True),
                T.alpha_A: sp.Symbol("A", positive=True)}
    assert sp.simplify(excess.subs(positive)).is_positive


def test_poincare_gap_is_a_sum_of_squares():
    gap, squares, difference = T.poincare_gap(7)
    assert difference == 0
    assert all(coefficient >= 0 for coefficient in sp.Poly(squares).coeffs())
    assert sp.Poly(squares).coeffs()[0] > 0 and gap.free_symbols     # not vacuous


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_bias_kernel_reduces_to_the_kernel_and_obeys_the_chain_rule(activation):
    """sigma_b = 0 at an LN'd input is mlp_kernel; the off-diagonal gain is d p_M/d phat (Price's theorem with
    the chain rule through the pre-activation correlation), and chi_M is it at phat = qhat."""
    branch, kernel = T.mlp_branch(activation), T.mlp_kernel(activation)
    no_bias = {T.sigma_b: 0, T.branch_q: 1, T.branch_p: T.rho}

    def same(got, expected):
        """Equal: SymPy simplifies the difference to 0, or (square roots SymPy cannot split without knowing the
        radicands' signs) it vanishes to 1e-25 at 30 digits at points inside the domain."""
        difference = sp.simplify(got - expected)
        if difference == 0:
            return True
        exact = [[sp.Rational(str(v)) for v in row] for row in ((0.3, 0.7, 1.3, 0.4, 1.2), (-0.8, 2.5, 0.6, 1.1, 0.7),
                                                                (0.95, 1.0, 1.0, 0.0, 1.0))]
        points = [{T.rho: r, T.sigma_w: w, T.sigma_2: s2, T.sigma_b: b, T.branch_q: qh, T.branch_p: qh * r}
                  for r, w, s2, b, qh in exact]
        return all(abs(sp.N(difference.subs(point), 30)) < 1e-25 for point in points)

    for got, expected in ((branch.diagonal, kernel.diagonal), (branch.value, kernel.value),
                          (branch.derivative, kernel.derivative), (branch.slope, T.mlp_slope_at_collapse(kernel))):
        assert same(got.subs(no_bias), expected)
    assert same(branch.derivative, sp.diff(branch.value, T.branch_p))
    assert same(branch.slope, branch.derivative.subs(T.branch_p, T.branch_q))
    assert not same(branch.slope, branch.derivative)                       # the check can fail
    # the output bias adds sigma_b^2 to the Gram: at sigma_w = 0 the branch is b_2 plus a constant phi(b_1) W_2
    assert sp.simplify(branch.diagonal.subs(T.sigma_w, 0) - branch.value.subs(T.sigma_w, 0)) == 0


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_finite_depth_exponents_unroll_their_sums(placement):
    """The Sum/Product definitions at L = 3 equal the unrolled expressions; at a fixed point of the
    collapsed-norm recursion every block is the same, so the finite-depth exponents are one block's."""
    fd = T.finite_depth_exponents(placement)
    depth = 3
    norms = [T.q_input]
    for _ in range(depth):
        norms.append(fd.norm_step.subs(T.q, norms[-1]))
    unrolled = fd.unrolled(depth)
    for name in ("angle", "gradient", "gradient_frobenius"):
        summed = getattr(fd, name).subs(T.depth_symbol, depth).doit()
        summed = summed.subs({T.collapsed_norms[l]: v for l, v in enumerate(norms)})
        point = {T.q_input: sp.Rational(3, 2), T.a_A: sp.Rational(4, 5), T.a_M: sp.Rational(3, 5),
                 T.alpha_A: sp.Rational(3, 5), T.alpha_M: sp.Rational(4, 5), T.sigma_V: sp.Rational(7, 10),
                 T.mlp_q: sp.Rational(1, 3), T.mlp_slope: sp.Rational(5, 4), T.n: 8}
        assert abs(sp.N(summed.subs(point) - unrolled[name].subs(point), 30)) < 1e-25
    fixed = sp.solve(sp.Eq(fd.norm_step, T.q), T.q) if placement == "pre" else [1]
    one_block = T.collapse_multipliers(placement)
    at_fixed = {T.q_input: fixed[0]}
    values = {name: e.subs(at_fixed) for name, e in fd.unrolled(2).items()}
    assert sp.simplify(sp.exp(values["angle"]) - one_block.angle.subs(T.q, fixed[0])) == 0
    assert sp.simplify(sp.exp(values["gradient"]) - one_block.gradient.subs(T.q, fixed[0])) == 0


def test_post_ln_norm_recursion_resets_to_one():
    fd = T.finite_depth_exponents("post")
    assert fd.norm_step == 1 and fd.norm_at.subs(T.layer_index, 0) == T.q_input
    assert fd.norm_at.subs(T.layer_index, 5) == 1


def test_theory_signal_prop_prints_the_new_sections(capsys):
    T.main(["--section", "sum-rule", "poincare"])
    out = capsys.readouterr().out
    assert out.count("= 0\n") >= 2 and "linearisation: True" in out and "(computed minus stated: 0 )" in out
