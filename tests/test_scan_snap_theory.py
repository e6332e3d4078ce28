"""theory.scan_snap: every derivation's symbolic check, and the data model against the authors' Dataset2."""
import pytest
import sympy as sp

from theory import scan_snap as th


def test_lemma1_components_equal_symbolic_gradient():
    res = th.verify_lemma1(3)
    assert all(r == 0 for r in res["dY"]) and len(res["dY"]) == 9
    assert all(r == 0 for r in res["dz"]) and len(res["dz"]) == 3


def test_lemma6_closed_form_derivation():
    dc = th.decoder_closed_form()
    assert all(dc["checks"].values()), dc["checks"]
    assert sp.simplify(dc["implicit"].lhs - dc["implicit"].rhs
                       - (sp.exp(th.M * th.h) + (th.M - 1) * th.M * th.h - th.M * th.eta_Y * th.t - 1)) == 0


def test_eqn98_and_theorem3_invariant():
    assert th.verify_eqn98()["residual"] == 0
    assert th.verify_theorem3_invariant()["derivative_of_invariant"] == 0


def test_snap_closed_forms():
    sc = th.snap_closed_forms()
    assert all(sc["checks"].values()), sc["checks"]


def test_theorem4_regimes():
    r = th.theorem4_regimes()
    assert r["limit B_scanning / ln t"] == sp.Rational(1, 2)
    assert r["limit B_snapping / ln ln t"] == sp.Rational(1, 2)
    assert r["limit B_exact(u) / ln ln t(u), u -> oo"] == sp.Rational(1, 2)
    assert r["limit ln(M eta_Y t / K) / u, u -> oo"] == 1
    assert r["limit t(u_peak) / (K ln M / eta_Y), M -> oo"] == 1
    assert r["peak condition holds"]
    assert r["B_scanning equals Eqn. 14 (first case, up to the constant ln(C_0)/4)"]
    assert r["B_snapping equals Eqn. 14 (second case, nu = eta_Y/eta_Z)"]
    assert r["dB(t0)/d eta_Z at fixed nu"] == 0
    assert sp.simplify(r["h_scanning"] - th.eta_Y * th.t / (th.K * th.M)) == 0


def test_syn_small_matches_authors_layout():
    d = th.syn_small()
    assert d.n_vocab == 34 and d.queries == (30, 31) and d.next_tokens == (32, 33)
    assert d.common_tokens() == tuple(range(10))
    assert d.distinct_tokens(0) == tuple(range(10, 20)) and d.distinct_tokens(1) == tuple(range(20, 30))
    # weights 1 (common) and linspace(0.1, 1, 10) (distinct), normalised: total 10 + 5.5 = 15.5
    assert d.probabilities[0][0] == sp.Rational(2, 31)
    assert d.probabilities[0][10] == sp.Rational(1, 155) and d.probabilities[0][19] == sp.Rational(2, 31)
    assert d.probabilities[0][25] == 0


@pytest.mark.parametrize("num_last", [1, 3, 5, 10])
def test_syn_medium_vocabulary(num_last):
    d = th.syn_medium(num_last)
    K = 2 * num_last
    assert d.n_classes == K and d.n_vocab == 10 + 10 * K + num_last + K
    assert len(set(d.queries)) == num_last and d.common_tokens() == tuple(range(10))


def test_long_sequence_attention_sums_to_one():
    c = th.long_sequence_attention([sp.Rational(1, 2), sp.Rational(1, 3), sp.Rational(1, 6)], [0, 1, -2])
    assert sp.simplify(sum(c) - 1) == 0


def test_bad_data_model_raises():
    with pytest.raises(ValueError, match="must sum to 1"):
        th.SequenceClasses(3, (0,), (1,), ((sp.Rational(1, 2), 0, 0),))
    with pytest.raises(ValueError, match="num_last"):
        th.dataset2_classes(0, 1)


def test_predicted_snap_times():
    times = th.predicted_snap_times(10, 1000, 0.5)
    assert times["t0_prime"] == pytest.approx(10 * 6.907755278982137 / 0.5)
    assert times["t0"] == pytest.approx(2 * times["t0_prime"])
