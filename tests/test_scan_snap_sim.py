"""sim.scan_snap: compiled formulas against SymPy, the Dormand-Prince integrator (order, tolerance, batching),
closed forms against integration, Theorem 3's invariant, conservation laws of Lemma 1's flow."""
import numpy as np
import pytest
import sympy as sp

from sim import scan_snap as ss
from theory import scan_snap as th


@pytest.fixture(scope="module")
def compiled():
    return ss.compiled_formulas()


@pytest.mark.parametrize("name", [n for n, _, _ in ss.formula_specs()])
def test_compiled_formula_matches_sympy_at_30_digits(name, compiled):
    fn, expr, args = compiled[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    for _ in range(5):
        vals = []
        for a in args:
            if a in (th.M,):
                vals.append(float(rng.integers(3, 200)))
            elif a.is_nonnegative or a.is_positive:
                vals.append(float(rng.uniform(0.05, 2.0)))
            else:
                vals.append(float(rng.uniform(-2.0, 2.0)))
        exact = sp.N(expr.subs(dict(zip(args, [sp.Float(v, 30) for v in vals]))), 30)
        got = fn(*vals)
        # double precision evaluation of a few elementary operations: relative error ~1e-15
        assert abs(got - float(exact)) <= 1e-12 * max(1.0, abs(float(exact))), (name, vals, got, exact)


def _small_flow():
    table = ss.ClassTable.from_classes(th.dataset2_classes(2, 1, num_common=2, num_unique_per_next=3))
    p = ss.yz_flow_params(table, 3.0, 2.0)[0]
    return p, np.zeros(table.n_vocab ** 2 + table.n_queries * table.n_vocab)


@pytest.mark.parametrize("embedded, order", [(False, 5), (True, 4)])
def test_dopri5_convergence_order(embedded, order):
    # Lemma 1's flow on a 12-token case (a coupled nonlinear system, no special structure) from t = 0 to 20
    p, y0 = _small_flow()
    ref = np.empty_like(y0)
    ss.dopri5_fixed(ss.system_id("yz_flow"), 0.0, 20.0, y0, p, 4000, False, ref)
    steps = np.array([28, 40, 56, 80])  # asymptotic range: errors 1e-6..1e-9, far above the reference's ~1e-17
    errors = []
    for n in steps:
        out = np.empty_like(y0)
        ss.dopri5_fixed(ss.system_id("yz_flow"), 0.0, 20.0, y0, p, int(n), embedded, out)
        errors.append(np.max(np.abs(out - ref)))
    slope = np.polyfit(np.log(1.0 / steps), np.log(errors), 1)[0]
    # measured slopes here: 4.9 (5th order), ~4 (4th); +-0.4 allows the remaining pre-asymptotic curvature
    assert order - 0.4 <= slope <= order + 0.6, (slope, errors)


def test_continuous_extension_coefficients():
    # theta = 1 gives the 5th-order solution (rows sum to b5); the derivative in theta is h k_0 at theta = 0 and
    # h k_6 = h f(y_new) at theta = 1, so the interpolant is C1 across steps
    np.testing.assert_allclose(ss.DP_P.sum(axis=1), ss.DP_B5, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(ss.DP_P[:, 0], np.eye(7)[0])
    np.testing.assert_allclose(ss.DP_P @ np.arange(1, 5), np.eye(7)[6], rtol=0, atol=1e-14)


def test_continuous_extension_local_order():
    # one step of size h from y(0), interpolated at theta = 0.4: a 4th-order interpolant errs by O(h^5)
    p, y0 = _small_flow()
    system = ss.system_id("yz_flow")
    n = y0.size
    k, ytmp, ynew, yerr, out = np.empty((7, n)), np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    steps = np.array([0.8, 0.4, 0.2, 0.1])
    errors = []
    for h in steps:
        exact = np.empty(n)
        ss.dopri5_fixed(system, 0.0, 0.4 * h, y0, p, 50, False, exact)
        ss.yz_flow_rhs(0.0, y0, p, k[0])
        ss._dp_step(system, 0.0, y0, p, h, k, ytmp, ynew, yerr, 1.0, 1.0)
        ss._dense_output(y0, k, h, 0.4, out)
        errors.append(np.max(np.abs(out - exact)))
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert 4.5 <= slope <= 5.6, (slope, errors)  # local order 5; a wrong coefficient drops it to <= 2


def test_dense_output_matches_stepping_onto_outputs():
    # with 201 outputs, stepping onto each costs >= 200 steps; interpolating needs only the steps the error asks
    p, y0 = _small_flow()
    t_eval = np.linspace(0.0, 20.0, 201)
    onto = ss.integrate("yz_flow", t_eval, y0, p, rtol=1e-10, atol=1e-12)
    dense = ss.integrate("yz_flow", t_eval, y0, p, rtol=1e-7, atol=1e-9, dense=True)
    assert dense.steps[0] < 100 < onto.steps[0]
    # measured: 6e-8 of the largest component at rtol 1e-7, the error of the steps themselves; 1e-6 leaves 16x
    np.testing.assert_allclose(dense.y, onto.y, rtol=0, atol=1e-6 * np.max(np.abs(onto.y)))


def test_adaptive_error_tracks_tolerance_and_matches_closed_form():
    t_eval = np.linspace(0.0, 400.0, 41)
    p = ss.reduced_params(1.0, 0.5, 100, 5, 1.0)
    cf = ss.reduced_closed_form(t_eval, 1.0, 0.5, 100, 5, 1.0)
    errs = []
    for rtol in (1e-5, 1e-7, 1e-9, 1e-11):
        sol = ss.integrate_reduced(p, t_eval, rtol=rtol, atol=rtol * 1e-2)
        err = np.max(np.abs(sol.y[0, 1:, 3] - cf["B"][1:]) / cf["B"][1:])
        errs.append(err)
    errs = np.array(errs)
    # global error of an error-per-step controller stays within ~100x the local tolerance and falls with it
    assert errs[-1] < 1e-8
    assert np.all(np.diff(np.log10(errs)) < -1.0), errs
    sol = ss.integrate_reduced(p, t_eval, rtol=1e-11, atol=1e-13)
    for i, key in enumerate(("h", "Gamma", "z_common", "B")):
        np.testing.assert_allclose(sol.y[0, :, i], cf[key], rtol=1e-8, atol=1e-12, err_msg=key)


def test_batch_rows_are_independent():
    t_eval = np.linspace(0.0, 100.0, 11)
    p = ss.reduced_params([0.5, 1.0, 2.0, 5.0], [0.5, 0.1, 1.0, 0.3], [1000, 30, 200, 50], [10, 2, 5, 3], 1.0)
    batch = ss.integrate_reduced(p, t_eval)
    for b in range(p.shape[0]):
        single = ss.integrate_reduced(p[b:b + 1], t_eval)
        np.testing.assert_array_equal(single.y[0], batch.y[b])


def test_decoder_scale_solves_lemma6():
    t = np.array([0.0, 1e-3, 0.5, 10.0, 1e3, 1e7])
    for M, eta in ((34, 1.0), (1000, 0.5)):
        hh = ss.decoder_scale(t, M, eta)
        res = np.exp(M * hh) + (M - 1) * M * hh - (M * eta * t + 1)
        assert np.all(np.abs(res) <= 1e-12 * (M * eta * t + 1)), res


@pytest.fixture(scope="module")
def syn_small_table():
    return ss.ClassTable.from_classes(th.syn_small())


def test_theorem3_invariant_along_lemma4(syn_small_table):
    tab = syn_small_table
    t_eval = np.linspace(0.0, 200.0, 41)
    run = ss.integrate_lemma4(tab, [1.0, 3.0], [1.0, 0.5], t_eval, rtol=1e-10, atol=1e-13)
    distinct = th.syn_small().distinct_tokens(0)
    P = tab.probabilities[0]
    for b in range(2):
        z = run["Z"][b, :, tab.query_rows[0]]
        c = run["attention"][b, :, 0]
        l0 = distinct[-1]
        assert z[-1, l0] - z[0, l0] > 0.1  # the trajectory actually moves
        for l in distinct[:-1]:
            r = (c[:, l0] / c[:, l]) ** 2 - 1.0
            # Eqn. 11: r_{l0/l}(t) = r(0) e^{2 (z_l0(t) - z_l0(0))}, with r(0) = (P_l0/P_l)^2 - 1 since Z(0) = 0;
            # rtol 1e-7: the integrator runs at rtol 1e-10 over ~100 steps, r involves exp of logits of size ~1
            np.testing.assert_allclose(r, ((P[l0] / P[l]) ** 2 - 1.0) * np.exp(2 * (z[:, l0] - z[0, l0])),
                                       rtol=1e-7)


def test_yz_flow_conserves_row_sums(syn_small_table):
    # Lemma 1: dY 1 = 0 and dZ 1 = 0, so zero row sums stay zero
    tr = ss.integrate_yz_flow(syn_small_table, [2.0], [1.0], np.linspace(0.0, 50.0, 6), rtol=1e-9, atol=1e-12)
    assert np.max(np.abs(tr.Y[0, -1].sum(axis=1))) < 1e-8
    assert np.max(np.abs(tr.Z[0, -1].sum(axis=1))) < 1e-8
    assert np.max(np.abs(tr.Y[0, -1])) > 0.1


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="t_eval"):
        ss.integrate_reduced(ss.reduced_params(1.0, 1.0, 10, 2), np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="M > 1"):
        ss.reduced_params(1.0, 1.0, 1.0, 2)
    with pytest.raises(ValueError, match="eta_Y"):
        ss.yz_flow_params(ss.ClassTable.from_classes(th.syn_small()), -1.0, 1.0)


def test_generated_formulas_module_is_current():
    # sim/_scan_snap_formulas.py is committed; it must have been generated from the current theory file and generator
    from sim import _scan_snap_formulas as generated
    assert generated.SOURCE_SHA256 == ss._source_digest()


def test_user_baseline_rhs_equals_compiled(syn_small_table):
    # benchmarks/bench_scan_snap.py times solve_ivp on these NumPy right-hand sides: they must be the same
    # equations as the compiled ones, so a speed ratio compares like with like. 1e-13 relative: both are float64
    # sums of a few dozen terms of size <= 1, in different orders.
    from benchmarks import numpy_scan_snap as user_rhs
    tab = syn_small_table
    rng = np.random.default_rng(3)
    M, nq = tab.n_vocab, tab.n_queries
    red = ss.reduced_params(1.3, 0.4, 1000.0, 10.0, 1.0)[0]
    cases = [(ss.reduced_rhs, red, user_rhs.reduced_rhs(red), np.abs(rng.standard_normal(4)) * 0.01),
             (ss.lemma4_rhs, ss.lemma4_params(tab, 1.3, 0.4)[0], user_rhs.lemma4_rhs(tab, 1.3, 0.4),
              np.concatenate([[0.02], rng.standard_normal(nq * M)])),
             (ss.yz_flow_rhs, ss.yz_flow_params(tab, 1.3, 0.4)[0], user_rhs.yz_flow_rhs(tab, 1.3, 0.4),
              rng.standard_normal(M * M + nq * M))]
    for compiled_rhs, params, numpy_rhs, y in cases:
        dy = np.empty_like(y)
        compiled_rhs(0.0, y, params, dy)
        assert np.all(np.isfinite(dy)) and np.count_nonzero(dy) > dy.size // 4  # a state where the flow moves
        np.testing.assert_allclose(numpy_rhs(0.0, y), dy, rtol=1e-13, atol=1e-13 * np.max(np.abs(dy)))
