"""Tests of validate.geometry on synthetic trajectories of known structure (Xu 2026, section 3.3.1, and the null
models that calibrate it)."""
import numpy as np
import pytest

import validate.geometry as face
from validate._execution_manifold import geometry as g


def smooth_curve_in_subspace(k=3, ambient_dim=2000, n_snapshots=41, noise=1e-4, seed=0):
    """A smooth closed-form curve whose coordinates live in a random k-dim subspace, plus isotropic noise."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((ambient_dim, k)))
    t = np.linspace(0.0, 1.0, n_snapshots)
    coordinates = np.stack([np.sin((j + 1) * np.pi * t + j) / (j + 1) for j in range(k)], axis=1)
    return coordinates @ basis.T + noise * rng.standard_normal((n_snapshots, ambient_dim))


def random_walk(ambient_dim=2000, n_snapshots=41, seed=0):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.standard_normal((n_snapshots, ambient_dim)), axis=0)


# ---------------------------------------------------------------- dimension ------------------------------

def test_effective_dimension_of_smooth_curve_is_at_most_its_subspace_dimension():
    # noise 1e-4 per coordinate: its variance (2000 * 1e-8) is ~1e-4 of the curve's, far below the 10% a
    # q = 0.9 threshold tolerates, and its increment energy ~ 4e-5 against ~ 5e-3 per smooth increment.
    for k in (1, 2, 3, 4):
        X = smooth_curve_in_subspace(k=k)
        assert 1 <= g.effective_dimension(X, q=0.9) <= k
        assert 1 <= g.increment_dimension(X, q=0.9) <= k


def test_effective_dimension_exact_cases():
    line = np.outer(np.arange(10.0), np.ones(5))
    assert g.effective_dimension(line) == 1
    assert g.effective_dimension(np.ones((6, 4))) == 0  # nothing moves
    X = np.zeros((4, 3))
    X[1, 0], X[2, 1], X[3, 2] = 1.0, 1.0, 1.0  # simplex corners: 3 equal variances after centring
    assert g.effective_dimension(X, q=0.9) == 3
    assert g.effective_dimension(X, q=0.6) == 2
    assert g.effective_dimension(X, q=1.0) == 3


def test_r_q_is_invariant_to_permuting_snapshots():
    # the paper code's "shuffled-order control" permutes snapshots: PCA ignores sample order, so it cannot fail
    rng = np.random.default_rng(1)
    for X in (smooth_curve_in_subspace(k=3), random_walk()):
        permuted = X[rng.permutation(len(X))]
        assert g.effective_dimension(permuted) == g.effective_dimension(X)
        np.testing.assert_allclose(g.variance_spectrum(permuted), g.variance_spectrum(X), rtol=1e-9, atol=1e-9)
        assert g.participation_ratio(permuted) == pytest.approx(g.participation_ratio(X), rel=1e-9)


def test_spectrum_from_increment_gram_matches_direct_pca():
    for X in (smooth_curve_in_subspace(k=3), random_walk(ambient_dim=300, n_snapshots=25)):
        direct = g.variance_spectrum(X)
        via_increments = g.spectrum_from_increment_gram(g.increment_gram(X))
        np.testing.assert_allclose(via_increments, direct, rtol=1e-8, atol=1e-10 * direct.max())


def test_joint_trajectory_gram_is_sum_of_block_grams():
    a, b = random_walk(ambient_dim=200, seed=1), random_walk(ambient_dim=300, seed=2)
    joint = np.concatenate([a, b], axis=1)
    np.testing.assert_allclose(g.increment_gram(a) + g.increment_gram(b), g.increment_gram(joint),
                               rtol=1e-10, atol=1e-10)  # float64 summation order


def test_random_walk_looks_low_dimensional_by_r90_alone():
    # Antognini & Sohl-Dickstein 2018: PC variance fractions ~ 6/(pi^2 k^2), so r90 = 6 whatever n is. This is
    # why r90 must be compared with a null model rather than with a fixed number.
    r90 = [g.effective_dimension(random_walk(ambient_dim=5000, n_snapshots=41, seed=s)) for s in range(10)]
    assert 4 <= np.mean(r90) <= 8
    assert np.mean(r90) < 0.25 * 40


def test_increment_dimension_separates_random_walk_from_subspace_curve():
    # an isotropic walk in D >> n has nearly orthogonal increments: increment r90 ~ 0.9 (n - 1) = 36
    assert g.increment_dimension(random_walk(ambient_dim=5000, n_snapshots=41)) >= 30
    assert g.increment_dimension(smooth_curve_in_subspace(k=3)) <= 3


def test_capped_code_variant_and_entropy_rank():
    spectrum = 6 / (np.pi ** 2 * np.arange(1, 10001) ** 2)  # the random-walk limit (sum -> 1)
    assert g.rank_at_fraction(spectrum, 0.9) == 6
    assert g.capped_rank_at_fraction(spectrum, 0.9) == 6
    flat = np.ones(40)  # 8 components hold 20%: the code's measure saturates at 9
    assert g.capped_rank_at_fraction(flat, 0.9) == 9
    assert g.rank_at_fraction(flat, 0.9) == 36
    # the code's entropy effective rank of a random walk is ~ 23 for 41 snapshots (so the paper's figures must show r90)
    ranks = [g.entropy_effective_rank(random_walk(ambient_dim=5000, seed=s)) for s in range(5)]
    assert 18 <= np.mean(ranks) <= 27


def test_prefix_window_curves_and_collapse_index():
    X = smooth_curve_in_subspace(k=2)
    G = g.increment_gram(X)
    prefix = g.prefix_dimension_curve(G, min_snapshots=3)
    assert len(prefix) == len(X) - 2
    assert prefix[-1] == g.effective_dimension(X)
    window = g.window_dimension_curve(G, window=10)
    assert len(window) == len(X) - 9
    assert window[0] == g.effective_dimension(X[:10])
    assert g.collapse_index([9, 8, 7, 5, 4, 4, 6, 4, 5], final_value=4, slack=1) == 7
    assert g.collapse_index([3, 3, 3], final_value=3) == 0


# ---------------------------------------------------------------- null models -----------------------------

def test_bartlett_cosines_match_explicit_gaussian_vectors():
    # E[cos^2] = 1/D for independent isotropic vectors; the Bartlett path (D >= n) and the explicit path must
    # agree with it. 3000 draws of 45 pairs: relative s.e. of the mean ~ sqrt(2)/sqrt(3000*45) ~ 0.4%.
    rng = np.random.default_rng(0)
    n, dim = 10, 50
    off_diagonal = ~np.eye(n, dtype=bool)
    for ambient in (dim, n - 1):  # Bartlett, then the explicit fallback (D < n)
        values = np.concatenate([g._isotropic_cosines(n, ambient, rng)[off_diagonal] for _ in range(3000)])
        assert np.mean(values ** 2) == pytest.approx(1.0 / ambient, rel=0.03)
        assert abs(np.mean(values)) < 4 * np.std(values) / np.sqrt(values.size / 2)


def test_random_walk_null_matches_simulated_walks():
    # the Wishart-based null's r90 / PR distribution equals that of explicit walks in the same dimension
    dim, n = 400, 30
    explicit = [g.trajectory_statistics(g.increment_gram(random_walk(dim, n, seed=s))) for s in range(300)]
    G = g.increment_gram(random_walk(dim, n, seed=999))
    rng = np.random.default_rng(5)
    nulls = [g.trajectory_statistics(g.null_increment_gram(G, "random_walk", dim, rng)) for _ in range(300)]
    for key in ("r_q", "participation_ratio", "pc1_fraction"):
        a, b = np.array([e[key] for e in explicit]), np.array([e[key] for e in nulls])
        standard_error = np.sqrt(a.var() / a.size + b.var() / b.size)
        # matched norms remove the chi-square spread of step sizes, a small effect; 4 s.e. covers both
        assert abs(a.mean() - b.mean()) < 4 * standard_error + 0.02 * abs(a.mean()), key


def test_nulls_keep_increment_norms():
    G = g.increment_gram(smooth_curve_in_subspace(k=3))
    rng = np.random.default_rng(0)
    for kind in g.NULL_KINDS:
        null = g.null_increment_gram(G, kind, ambient_dim=2000, rng=rng)
        np.testing.assert_allclose(np.sort(np.diag(null)), np.sort(np.diag(G)), rtol=1e-12)
    with pytest.raises(ValueError, match="null kind"):
        g.null_increment_gram(G, "snapshots_shuffled", 2000, rng)


def persistent_trajectory(k=10, ambient_dim=2000, n_snapshots=41, width=3.0, seed=0):
    """Unit increments whose direction turns slowly through k orthonormal directions (a smooth drifting arc)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((ambient_dim, k)))
    t = np.arange(n_snapshots - 1)[:, None]
    weights = np.exp(-(t - np.linspace(0, n_snapshots - 2, k)[None]) ** 2 / (2 * width ** 2))
    increments = (weights / np.linalg.norm(weights, axis=1, keepdims=True)) @ basis.T
    return np.vstack([np.zeros(ambient_dim), np.cumsum(increments, axis=0)])


def test_null_calibration_flags_structure_and_not_a_random_walk():
    for X in (smooth_curve_in_subspace(k=2), persistent_trajectory()):
        structured = g.null_calibration(g.increment_gram(X), 2000, n_draws=200)
        assert structured["random_walk"]["r_q"].p_low < 0.05
        assert structured["random_walk"]["participation_ratio"].p_low < 0.05
        assert structured["random_walk"]["increment_r_q"].p_low < 0.05
        # shuffles and sign flips keep the set of increment directions: the increment dimension is unchanged
        for kind in ("shuffled_increments", "sign_flipped_increments"):
            assert structured[kind]["increment_r_q"].null_sd == 0.0
            assert structured[kind]["increment_r_q"].z == 0.0
    # shuffling the increments of a drifting arc lines its common drift up: the shuffled walk is straighter
    # than the arc itself, so N2 is no lower bound; a low r_q relative to N2 is a separate, stronger claim
    arc = g.null_calibration(g.increment_gram(persistent_trajectory()), 2000, n_draws=200)
    assert arc["shuffled_increments"]["r_q"].null_mean < arc["shuffled_increments"]["r_q"].observed
    # a real random walk is typical of all three nulls: p-values well away from 0 on every statistic
    walk = g.null_calibration(g.increment_gram(random_walk(2000, seed=3)), 2000, n_draws=200, seed=1)
    for kind in g.NULL_KINDS:
        assert walk[kind]["r_q"].p_low > 0.01
        assert walk[kind]["participation_ratio"].p_low > 0.01


def test_null_p_values_are_calibrated_for_random_walks():
    # under the null the one-sided p-value of r_q is (super-)uniform: P(p <= 0.1) <= 0.1 up to binomial noise
    # (60 walks: sd of the fraction ~ 0.04, so 0.1 + 2.5 sd = 0.2)
    p_values = [g.null_calibration(g.increment_gram(random_walk(500, 25, seed=s)), 500, n_draws=60,
                                   seed=100 + s, kinds=("random_walk",))["random_walk"]["participation_ratio"].p_low
                for s in range(60)]
    assert np.mean(np.array(p_values) <= 0.1) <= 0.2


def test_null_comparison_degenerate_null():
    assert g.NullComparison.of(3.0, [3.0, 3.0, 3.0]).z == 0.0
    assert g.NullComparison.of(2.0, [3.0, 3.0]).z == -np.inf
    comparison = g.NullComparison.of(0.0, np.arange(1.0, 100.0))
    assert comparison.p_low == pytest.approx(1 / 100)


# ---------------------------------------------------------------- orientation -----------------------------

def test_subspace_overlap_limits_and_random_expectation():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((500, 3)))
    assert g.subspace_overlap(U, U) == pytest.approx(1.0)
    assert g.subspace_overlap(U, U[:, ::-1] @ np.diag([1, -1, 1])) == pytest.approx(1.0)  # basis-invariant
    E = np.eye(500)
    assert g.subspace_overlap(E[:, :3], E[:, 3:6]) == 0.0
    overlaps = g.random_subspace_overlaps(500, 3, n_draws=2000, seed=1)
    # mean K/D = 0.006; its s.e. over 2000 draws is ~ (sqrt(2)/D)/sqrt(2000) ~ 6e-5, 4 s.e. ~ 4% of the mean
    assert overlaps.mean() == pytest.approx(3 / 500, rel=0.05)


def test_principal_directions_recover_the_subspace():
    X = smooth_curve_in_subspace(k=3, noise=1e-6, seed=4)
    rng = np.random.default_rng(4)
    true_basis, _ = np.linalg.qr(rng.standard_normal((2000, 3)))  # the same draw as inside the generator
    U = g.principal_directions(X, 3)
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-8)
    assert g.subspace_overlap(U, true_basis) > 0.999
    assert g.pc_coordinates(X, 2).shape == (len(X), 2)


# ---------------------------------------------------------------- attention and routing -------------------

def test_attention_concentration_metrics():
    T = 16
    uniform = np.full((5, T), 1.0 / T)
    np.testing.assert_allclose(g.attention_entropy(uniform), np.log(T), rtol=1e-7)
    np.testing.assert_allclose(g.top_k_mass(uniform, 4), 4 / T)
    one_hot = np.eye(T)[[3, 7]]
    np.testing.assert_allclose(g.attention_entropy(one_hot), 0.0, atol=1e-7)
    mask = np.zeros((2, T))
    mask[0, 3] = mask[1, 7] = 1
    np.testing.assert_allclose(g.target_mass(one_hot, mask), 1.0)
    with pytest.raises(ValueError):
        g.top_k_mass(uniform, 0)


def softmax_entropy_along_a_ray(n_snapshots=41, n_keys=16, r=None):
    """Logits s_j = r u_j for a fixed u with r swept linearly (or given): the entropy falls and saturates near 0."""
    rng = np.random.default_rng(0)
    u = rng.standard_normal(n_keys)
    r = np.linspace(0.0, 12.0, n_snapshots) if r is None else r
    logits = np.outer(r, u)
    A = np.exp(logits - logits.max(axis=1, keepdims=True))
    A /= A.sum(axis=1, keepdims=True)
    return r, g.attention_entropy(A)


def test_saturation_fit_on_a_softmax_ray():
    r, H = softmax_entropy_along_a_ray()
    fit = g.fit_saturation(r, H)
    # H(r) along a ray is sigmoid-like but not exactly logistic; the measured R^2 is 0.99+, and the late slope
    # is ~1% of the peak slope (saturation). Orientation of r must not matter:
    assert fit.r_squared > 0.97
    assert fit.late_slope_ratio < 0.1
    assert fit.h_min < fit.h_max
    flipped = g.fit_saturation(-r, H)
    assert flipped.r_squared == pytest.approx(fit.r_squared, abs=1e-3)
    assert flipped.late_slope_ratio == pytest.approx(fit.late_slope_ratio, abs=1e-3)
    # a straight decline (no saturation) has a late slope close to the peak slope
    linear = g.fit_saturation(r, 3.0 - 0.2 * r)
    assert linear.late_slope_ratio > 0.5


def test_saturation_fit_respects_entropy_bounds_and_resolution():
    # an exponential decay seen only in its tail: unbounded, the upper plateau runs off to huge values
    r = np.linspace(0.0, 4.0, 30)
    H = 0.5 + 2.0 * np.exp(-r)
    fit = g.fit_saturation(r, H, h_bounds=(0.0, np.log(16)))
    assert 0.0 <= fit.h_min <= fit.h_max <= np.log(16)
    # a single jump between two snapshots cannot be fitted as an unresolvably sharp step
    jump = np.where(r < 2.0, 2.5, 0.5)
    step_fit = g.fit_saturation(r, jump)
    assert abs(step_fit.tau) >= np.ptp(r) / (len(r) - 1) * (1 - 1e-9)
    with pytest.raises(ValueError, match="h_bounds"):
        g.fit_saturation(r, H, h_bounds=(1.0, 2.0))


def test_routing_coordinate_finds_the_tracking_coordinate():
    """The entropy along a ray whose length r drifts and fluctuates (a random walk on a linear trend): the
    candidate -r + noise is found, and its p-value is small because the entropy follows r's fluctuations, which
    no smooth surrogate reproduces."""
    rng = np.random.default_rng(2)
    r = 0.5 * np.abs(np.cumsum(rng.standard_normal(41))) + np.linspace(0.0, 8.0, 41)
    _, H = softmax_entropy_along_a_ray(r=r)
    candidates = rng.standard_normal((len(r), 6))
    candidates[:, 4] = -r + 0.05 * rng.standard_normal(len(r))
    result = g.routing_coordinate(candidates, H, n_permutations=500, seed=0)
    assert result.index == 4
    assert result.rho > 0.95  # -r rises while H falls
    assert result.p_value < 0.01


def test_a_monotone_entropy_against_a_monotone_coordinate_is_a_clock():
    """Entropy along a linear ray and the candidate -r: |rho| = 1, but so is the clock's, and any smooth
    surrogate of a monotone series is nearly monotone too: not significant (the former block permutation gave
    p = 0.002 here)."""
    r, H = softmax_entropy_along_a_ray()
    rng = np.random.default_rng(2)
    candidates = rng.standard_normal((len(r), 6))
    candidates[:, 4] = -r + 0.05 * rng.standard_normal(len(r))
    result = g.routing_coordinate(candidates, H, n_permutations=500, seed=0)
    assert result.index == 4 and abs(result.rho) == pytest.approx(abs(result.time_rho), abs=0.01)
    assert result.p_value > 0.2
    legacy = g.routing_coordinate(candidates, H, n_permutations=500, block_length=4, seed=0,
                                  null="block_permutation")
    assert legacy.p_value < 0.01 and legacy.rho == result.rho


def test_routing_coordinate_p_value_is_calibrated_on_noise():
    # independent white-noise candidates and entropy: P(p <= 0.1) ~ 0.1 (100 trials, binomial sd 0.03)
    rng = np.random.default_rng(3)
    p_values = [g.routing_coordinate(rng.standard_normal((30, 5)), rng.standard_normal(30), n_permutations=200,
                                     seed=s).p_value for s in range(100)]
    assert 0.02 <= np.mean(np.array(p_values) <= 0.1) <= 0.2


def test_block_length_belongs_to_the_block_permutation_null():
    X = np.random.default_rng(4).standard_normal((12, 3))
    with pytest.warns(UserWarning, match="block_length=3 is ignored"):
        warned = g.routing_coordinate(X, _H, n_permutations=50, block_length=3, seed=1)
    plain = g.routing_coordinate(X, _H, n_permutations=50, seed=1)
    assert (warned.index, warned.p_value) == (plain.index, plain.p_value)


def test_dct_sign_flip_surrogates_keep_the_mean_and_every_modes_power():
    from scipy.fft import dct
    series = np.cumsum(np.random.default_rng(5).standard_normal(41)) + 3.0
    surrogates = g.dct_sign_flip_surrogates(series, 200, 0)
    assert surrogates.shape == (41, 200)
    np.testing.assert_allclose(surrogates.mean(axis=0), series.mean(), rtol=1e-12)
    amplitudes = np.abs(dct(surrogates - surrogates.mean(axis=0), axis=0, norm="ortho"))
    expected = np.abs(dct(series - series.mean(), norm="ortho"))
    np.testing.assert_allclose(amplitudes, np.broadcast_to(expected[:, None], amplitudes.shape), atol=1e-9)
    assert np.unique(np.round(surrogates[5], 9)).size > 100  # the signs differ between surrogates
    np.testing.assert_array_equal(surrogates, g.dct_sign_flip_surrogates(series, 200, np.random.default_rng(0)))


def test_a_centred_random_walk_is_diagonal_in_the_dct_basis():
    """Why sign-flip surrogates are exact for a random-walk entropy: the covariance of a mean-centred walk of n
    steps is diagonal in the orthonormal DCT-II basis, eigenvalues 1 / (4 sin^2(pi k / 2n))."""
    from scipy.fft import dct
    n = 41
    walk = np.tril(np.ones((n, n - 1)), k=-1)
    centred = walk - walk.mean(axis=0)
    basis = dct(np.eye(n), axis=0, norm="ortho")
    rotated = basis @ centred @ centred.T @ basis.T
    np.testing.assert_allclose(rotated, np.diag(np.diag(rotated)), atol=1e-10)
    k = np.arange(1, n)
    np.testing.assert_allclose(np.diag(rotated)[1:], 1 / (4 * np.sin(np.pi * k / (2 * n)) ** 2), rtol=1e-10)


def test_spearman_and_block_permutation():
    assert g.spearman(np.arange(10.0), np.arange(10.0) ** 3) == pytest.approx(1.0)
    order = g.block_permutation(10, 3, np.random.default_rng(0))
    assert sorted(order) == list(range(10))


def test_principal_coordinates_from_the_increment_gram_match_those_of_the_trajectory():
    X = random_walk(ambient_dim=300, n_snapshots=21, seed=4)
    from_gram = g.pc_coordinates_of_increment_gram(g.increment_gram(X), 5)
    direct = g.pc_coordinates(X, 5)
    signs = np.sign(np.sum(from_gram * direct, axis=0))
    np.testing.assert_allclose(from_gram * signs, direct, atol=1e-9 * np.abs(direct).max())


def test_derived_seeds_are_reproducible_and_distinct():
    seeds = [g.derived_seed(0, block) for block in range(20)] + [g.derived_seed(1, block) for block in range(20)]
    assert len(set(seeds)) == 40 and all(0 <= s < 2 ** 63 for s in seeds)
    assert g.derived_seed(0, 3) == g.derived_seed(np.int64(0), np.int64(3))
    assert g.derived_seed(0, "routing", 2) != g.derived_seed(0, 2)


def test_mean_overlap_null_matches_explicit_random_subspaces():
    """random_mean_pairwise_overlaps (Bartlett-sampled Wishart) against explicit QR bases: equal mean and s.d.
    within 4 Monte Carlo s.e. (4000 Bartlett and 1000 explicit draws); for two subspaces, the law of a single
    pair's overlap (random_subspace_overlaps)."""
    rng = np.random.default_rng(6)
    for dimension in (400, 10):  # Bartlett (D >= S K) and the small-D path that draws G itself
        explicit = np.array([g.mean_pairwise_overlap([np.linalg.qr(rng.standard_normal((dimension, 3)))[0]
                                                      for _ in range(5)]) for _ in range(1000)])
        drawn = g.random_mean_pairwise_overlaps(dimension, 3, 5, 4000, seed=1)
        assert drawn.mean() == pytest.approx(3 / dimension, rel=0.02)
        se = np.sqrt(explicit.var() / explicit.size + drawn.var() / drawn.size)
        assert abs(explicit.mean() - drawn.mean()) < 4 * se
        assert explicit.std() == pytest.approx(drawn.std(), rel=0.1)  # s.e. of an s.d. over 1000 draws ~ 3%
    pairs = g.random_mean_pairwise_overlaps(500, 3, 2, 4000, seed=2)
    single = g.random_subspace_overlaps(500, 3, 4000, seed=3)
    np.testing.assert_allclose(np.quantile(pairs, [0.1, 0.5, 0.9]), np.quantile(single, [0.1, 0.5, 0.9]), rtol=0.08)


# ---------------------------------------------------------------- bad input -------------------------------
# Every function validate.geometry re-exports, given bad inputs (non-finite, wrong shapes, empty, q outside
# (0, 1], wrong kinds of numbers): a ValueError naming the input, never a NaN, a TypeError or a wrong number.

_rng = np.random.default_rng(0)
_X = np.cumsum(_rng.standard_normal((12, 30)), axis=0)
_G = g.increment_gram(_X)
_S = g.variance_spectrum(_X)
_A = np.full((3, 8), 1 / 8)
_U = np.linalg.qr(_rng.standard_normal((30, 3)))[0]
_r = np.linspace(0.0, 1.0, 12)
_H = 2.0 - np.tanh(4 * (_r - 0.5))
_NAN_X = np.where(np.arange(_X.size).reshape(_X.shape) == 40, np.nan, _X)


def _commutator_case(lr=1e-3, loss=None, model=None):
    import torch
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1) if model is None else model
    loss = (lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()) if loss is None else loss
    a, b = (torch.randn(4, 3), torch.randn(4, 1)), (torch.randn(4, 3), torch.randn(4, 1))
    return face.sgd_commutator(model, loss, a, b, lr)


def _nan_loss(model, batch):
    return model(batch[0]).sum() * float("nan")


BAD_API_INPUT = [  # (function, input, call, what the ValueError must say)
    ("effective_dimension", "NaN in X", lambda: face.effective_dimension(_NAN_X), "X contains NaN"),
    ("effective_dimension", "inf in X", lambda: face.effective_dimension(np.nan_to_num(_NAN_X, nan=np.inf)),
     "X contains NaN"),
    ("effective_dimension", "1-D X", lambda: face.effective_dimension(_X[0]), "2-D"),
    ("effective_dimension", "3-D X", lambda: face.effective_dimension(_X[None]), "2-D"),
    ("effective_dimension", "no rows", lambda: face.effective_dimension(np.zeros((0, 5))), "at least 2 rows"),
    ("effective_dimension", "one row", lambda: face.effective_dimension(np.zeros((1, 5))), "at least 2 rows"),
    ("effective_dimension", "no columns", lambda: face.effective_dimension(np.zeros((5, 0))), "one column"),
    ("effective_dimension", "strings", lambda: face.effective_dimension([["a", "b"], ["c", "d"]]), "X must be"),
    ("effective_dimension", "q = 0", lambda: face.effective_dimension(_X, q=0), "q="),
    ("effective_dimension", "q = 1.01", lambda: face.effective_dimension(_X, q=1.01), "q="),
    ("effective_dimension", "q = NaN", lambda: face.effective_dimension(_X, q=float("nan")), "q="),
    ("effective_dimension", "q = 'x'", lambda: face.effective_dimension(_X, q="x"), "q="),
    ("effective_dimension", "q = True", lambda: face.effective_dimension(_X, q=True), "q="),
    ("variance_spectrum", "NaN", lambda: face.variance_spectrum(_NAN_X), "X contains NaN"),
    ("variance_spectrum", "X * 1e200 (overflows)", lambda: face.variance_spectrum(_X * 1e200), "overflows"),
    ("participation_ratio", "NaN", lambda: face.participation_ratio(_NAN_X), "X contains NaN"),
    ("entropy_effective_rank", "1-D", lambda: face.entropy_effective_rank(_X[0]), "2-D"),
    ("increment_dimension", "q = 2", lambda: face.increment_dimension(_X, 2), "q="),
    ("increment_gram", "one row", lambda: face.increment_gram(_X[:1]), "at least 2 rows"),
    ("increment_gram", "X * 1e200 (overflows)", lambda: face.increment_gram(_X * 1e200), "overflows"),
    ("rank_at_fraction", "NaN", lambda: face.rank_at_fraction([1.0, np.nan]), "spectrum contains NaN"),
    ("rank_at_fraction", "inf", lambda: face.rank_at_fraction([np.inf, 1.0]), "spectrum contains NaN"),
    ("rank_at_fraction", "negative", lambda: face.rank_at_fraction([1.0, -5.0]), "negative"),
    ("rank_at_fraction", "empty", lambda: face.rank_at_fraction([]), "non-empty 1-D"),
    ("rank_at_fraction", "2-D", lambda: face.rank_at_fraction(np.ones((2, 2))), "non-empty 1-D"),
    ("capped_rank_at_fraction", "n_components = 0", lambda: face.capped_rank_at_fraction(_S, 0.9, 0),
     "n_components"),
    ("capped_rank_at_fraction", "n_components = 2.5", lambda: face.capped_rank_at_fraction(_S, 0.9, 2.5),
     "n_components=2.5: must be an integer"),
    ("pc1_fraction_of_spectrum", "NaN", lambda: face.pc1_fraction_of_spectrum([np.nan, 1.0]), "NaN"),
    ("pc1_fraction_of_spectrum", "empty", lambda: face.pc1_fraction_of_spectrum([]), "non-empty"),
    ("spectrum_from_increment_gram", "not square", lambda: face.spectrum_from_increment_gram(np.ones((3, 4))),
     "square"),
    ("spectrum_from_increment_gram", "0 x 0", lambda: face.spectrum_from_increment_gram(np.zeros((0, 0))),
     "square"),
    ("spectrum_from_increment_gram", "not symmetric",
     lambda: face.spectrum_from_increment_gram(np.triu(np.ones((3, 3)))), "Gram matrix"),
    ("spectrum_from_increment_gram", "NaN", lambda: face.spectrum_from_increment_gram(np.full((3, 3), np.nan)),
     "NaN"),
    ("trajectory_statistics", "q = 0", lambda: face.trajectory_statistics(_G, 0), "q="),
    ("prefix_dimension_curve", "min_snapshots = 1", lambda: face.prefix_dimension_curve(_G, 0.9, 1),
     "min_snapshots"),
    ("window_dimension_curve", "window = 2.5", lambda: face.window_dimension_curve(_G, 2.5), "window"),
    ("window_dimension_curve", "window > n", lambda: face.window_dimension_curve(np.eye(4), window=9), "window"),
    ("collapse_index", "empty", lambda: face.collapse_index([], 1.0), "curve must be"),
    ("collapse_index", "NaN", lambda: face.collapse_index([np.nan, 1.0], 1.0), "curve contains NaN"),
    ("collapse_index", "final_value NaN", lambda: face.collapse_index([3.0, 1.0], np.nan), "final_value"),
    ("collapse_index", "slack < 0", lambda: face.collapse_index([3.0, 1.0], 1.0, -1), "slack"),
    ("collapse_index", "never settles", lambda: face.collapse_index([1.0, 5.0], 1.0), "never settles"),
    ("null_increment_gram", "ambient_dim = 0", lambda: face.null_increment_gram(_G, "random_walk", 0, 1),
     "ambient_dim"),
    ("null_increment_gram", "ambient_dim = 2.5", lambda: face.null_increment_gram(_G, "random_walk", 2.5, 1),
     "ambient_dim"),
    ("null_increment_gram", "rng = None", lambda: face.null_increment_gram(_G, "shuffled_increments", 30, None),
     "rng"),
    ("null_increment_gram", "unknown kind", lambda: face.null_increment_gram(_G, "snapshots", 30, 1), "null kind"),
    ("null_calibration", "ambient_dim < 0", lambda: face.null_calibration(_G, -1, n_draws=5), "ambient_dim"),
    ("null_calibration", "seed < 0", lambda: face.null_calibration(_G, 30, n_draws=5, seed=-1), "seed"),
    ("null_calibration", "n_draws = 1", lambda: face.null_calibration(_G, 30, n_draws=1), "n_draws"),
    ("null_calibration", "n_draws = 2.5", lambda: face.null_calibration(_G, 30, n_draws=2.5), "n_draws"),
    ("null_calibration", "unknown kinds", lambda: face.null_calibration(_G, 30, n_draws=5, kinds=("x",)), "kinds"),
    ("null_calibration", "no kinds", lambda: face.null_calibration(_G, 30, n_draws=5, kinds=()), "kinds"),
    ("NullComparison.of", "empty null", lambda: face.NullComparison.of(1.0, []), "null_values"),
    ("NullComparison.of", "NaN observed", lambda: face.NullComparison.of(np.nan, [1.0, 2.0]), "observed"),
    ("NullComparison.of", "NaN in the null", lambda: face.NullComparison.of(1.0, [np.nan, 2.0]), "null_values"),
    ("principal_directions", "k = 0", lambda: face.principal_directions(_X, 0), "k="),
    ("principal_directions", "k = 1.5", lambda: face.principal_directions(_X, 1.5), ": must be an integer"),
    ("principal_directions", "k > n - 1", lambda: face.principal_directions(np.ones((3, 3)), 5), "k="),
    ("principal_directions", "k > D", lambda: face.principal_directions(_X[:, :2], 3), "k="),
    ("pc_coordinates", "k > n - 1", lambda: face.pc_coordinates(_X, 50), "k="),
    ("subspace_overlap", "K = 0", lambda: face.subspace_overlap(np.zeros((5, 0)), np.zeros((5, 0))), "1 <= K"),
    ("subspace_overlap", "NaN", lambda: face.subspace_overlap(_U * np.nan, _U), "U contains NaN"),
    ("subspace_overlap", "not orthonormal", lambda: face.subspace_overlap(_U * 3, _U), "orthonormal"),
    ("subspace_overlap", "shapes differ", lambda: face.subspace_overlap(_U, _U[:, :2]), "equal shape"),
    ("random_subspace_overlaps", "k = 0", lambda: face.random_subspace_overlaps(10, 0, 5), "k="),
    ("random_subspace_overlaps", "k > D", lambda: face.random_subspace_overlaps(3, 5, 5), "k="),
    ("random_subspace_overlaps", "n_draws = 0", lambda: face.random_subspace_overlaps(10, 2, 0), "n_draws"),
    ("attention_entropy", "NaN", lambda: face.attention_entropy(_A * np.nan), "A contains NaN"),
    ("attention_entropy", "negative weights", lambda: face.attention_entropy(-_A), ">= 0"),
    ("attention_entropy", "eps < 0", lambda: face.attention_entropy(_A, -1), "eps"),
    ("attention_entropy", "0-d", lambda: face.attention_entropy(0.5), "last axis"),
    ("top_k_mass", "k = 0", lambda: face.top_k_mass(_A, 0), "k="),
    ("top_k_mass", "k = 2.5", lambda: face.top_k_mass(_A, 2.5), ": must be an integer"),
    ("top_k_mass", "0-d A", lambda: face.top_k_mass(1.0, 1), "last axis"),
    ("top_k_mass", "NaN", lambda: face.top_k_mass(_A * np.nan, 1), "A contains NaN"),
    ("target_mass", "shapes do not broadcast", lambda: face.target_mass(_A, np.ones((2, 5))), "target_mask"),
    ("target_mass", "NaN", lambda: face.target_mass(_A * np.nan, np.ones(8)), "A contains NaN"),
    ("spearman", "length 1", lambda: face.spearman([1.0], [2.0]), "length >= 2"),
    ("spearman", "empty", lambda: face.spearman([], []), "length >= 2"),
    ("spearman", "NaN", lambda: face.spearman([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]), "a contains NaN"),
    ("routing_coordinate", "NaN entropy", lambda: face.routing_coordinate(_X[:, :3], _H * np.nan), "entropy"),
    ("routing_coordinate", "no candidates", lambda: face.routing_coordinate(np.zeros((12, 0)), _H), "c >= 1"),
    ("routing_coordinate", "lengths differ", lambda: face.routing_coordinate(np.ones((5, 2)), np.ones(4)),
     "candidates"),
    ("routing_coordinate", "n_permutations = 0", lambda: face.routing_coordinate(_X[:, :3], _H, n_permutations=0),
     "n_permutations"),
    ("routing_coordinate", "block_length = 0", lambda: face.routing_coordinate(_X[:, :3], _H, 10, 0),
     "block_length"),
    ("routing_coordinate", "unknown null", lambda: face.routing_coordinate(_X[:, :3], _H, null="shuffle"), "null="),
    ("dct_sign_flip_surrogates", "2-D series", lambda: face.dct_sign_flip_surrogates(_X, 5, 0), "1-D"),
    ("dct_sign_flip_surrogates", "NaN", lambda: face.dct_sign_flip_surrogates(_H * np.nan, 5, 0), "series"),
    ("dct_sign_flip_surrogates", "0 surrogates", lambda: face.dct_sign_flip_surrogates(_H, 0, 0), "n_surrogates"),
    ("dct_sign_flip_surrogates", "rng = None", lambda: face.dct_sign_flip_surrogates(_H, 5, None), "rng"),
    ("derived_seed", "run_seed < 0", lambda: face.derived_seed(-1, 0), "run_seed"),
    ("derived_seed", "key 1.5", lambda: face.derived_seed(0, 1.5), "keys"),
    ("mean_pairwise_overlap", "one basis", lambda: face.mean_pairwise_overlap([_U]), "at least 2"),
    ("mean_pairwise_overlap", "not orthonormal", lambda: face.mean_pairwise_overlap([_U, _U * 2]), "orthonormal"),
    ("random_mean_pairwise_overlaps", "1 subspace", lambda: face.random_mean_pairwise_overlaps(10, 2, 1, 5),
     "n_subspaces"),
    ("random_mean_pairwise_overlaps", "k > D", lambda: face.random_mean_pairwise_overlaps(3, 5, 2, 5), "k="),
    ("random_mean_pairwise_overlaps", "n_draws = 0", lambda: face.random_mean_pairwise_overlaps(10, 2, 2, 0),
     "n_draws"),
    ("orientation_comparison", "one basis", lambda: face.orientation_comparison([_U]), "at least 2"),
    ("orientation_comparison", "NaN basis", lambda: face.orientation_comparison([_U, _U * np.nan]), "V contains NaN"),
    ("orientation_comparison", "n_draws = 0", lambda: face.orientation_comparison([_U, _U], 0), "n_draws"),
    ("pc_coordinates_of_increment_gram", "k = 0", lambda: face.pc_coordinates_of_increment_gram(_G, 0), "k="),
    ("pc_coordinates_of_increment_gram", "not a Gram", lambda: face.pc_coordinates_of_increment_gram(_X, 2),
     "square"),
    ("saturation_curve", "tau = 0", lambda: face.saturation_curve(_r, 0.0, 1.0, 0.5, 0.0), "tau"),
    ("saturation_curve", "h_min NaN", lambda: face.saturation_curve(_r, np.nan, 1.0, 0.5, 0.1), "h_min"),
    ("fit_saturation", "NaN entropy", lambda: face.fit_saturation(_r, _H * np.nan), "entropy contains NaN"),
    ("fit_saturation", "constant r", lambda: face.fit_saturation(np.ones(12), _H), "r is constant"),
    ("fit_saturation", "constant entropy", lambda: face.fit_saturation(_r, np.ones(12)), "entropy is constant"),
    ("fit_saturation", "h_bounds NaN", lambda: face.fit_saturation(_r, _H, (np.nan, 5.0)), "h_bounds"),
    ("fit_saturation", "h_bounds too narrow", lambda: face.fit_saturation(_r, _H, (1.5, 2.0)), "h_bounds"),
    ("fit_saturation", "4 points", lambda: face.fit_saturation(_r[:4], _H[:4]), "length >= 5"),
    ("sgd_commutator", "lr = inf", lambda: _commutator_case(float("inf")), "lr="),
    ("sgd_commutator", "lr = NaN", lambda: _commutator_case(float("nan")), "lr="),
    ("sgd_commutator", "lr = 0", lambda: _commutator_case(0.0), "lr="),
    ("sgd_commutator", "lr = -1", lambda: _commutator_case(-1.0), "lr="),
    ("sgd_commutator", "lr = 'x'", lambda: _commutator_case("x"), "lr="),
    ("sgd_commutator", "lr = 1e200 (no float32 step)", lambda: _commutator_case(1e200), "lr"),
    ("sgd_commutator", "lr = 1e30 (the steps overflow)", lambda: _commutator_case(1e30), "smaller lr"),
    ("sgd_commutator", "loss not a scalar", lambda: _commutator_case(loss=lambda m, b: m(b[0])), "scalar tensor"),
    ("sgd_commutator", "NaN loss", lambda: _commutator_case(loss=_nan_loss), "finite loss"),
    ("sgd_commutator", "no parameters", lambda: _commutator_case(model=__import__("torch").nn.ReLU()),
     "no parameters"),
]


@pytest.mark.parametrize("function, case, call, message", BAD_API_INPUT,
                         ids=[f"{f}: {c}" for f, c, _, _ in BAD_API_INPUT])
def test_bad_input_raises_a_value_error_naming_it(function, case, call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()


def test_every_reexported_function_has_bad_input_cases():
    import validate.geometry as public
    tried = {f.split(".")[0] for f, _, _, _ in BAD_API_INPUT}
    functions = {name for name in public.__all__ if callable(getattr(public, name))}
    untried = functions - tried - {"RoutingCoordinate", "SaturationFit", "OverlapComparison"}  # result records
    assert not untried, untried


# ---------------------------------------------------------------- the right answer at every scale ----------

@pytest.mark.parametrize("scale", [1e-200, 1e-100, 1e-8, 1.0, 1e8, 1e100, 1e200])
def test_ratio_measures_do_not_depend_on_the_scale_of_x(scale):
    """r_q, PR, the code's entropy rank, increment r_q and every null statistic are ratios of variances: X * c
    gives what X gives (the old code underflowed to 0 at 1e-200 and did not converge at 1e200)."""
    X = smooth_curve_in_subspace(k=3, ambient_dim=200, n_snapshots=21)
    assert face.effective_dimension(X * scale) == face.effective_dimension(X) >= 1
    assert face.participation_ratio(X * scale) == pytest.approx(face.participation_ratio(X), rel=1e-9)
    # singular values (not their squares) of the round-off directions change at 1e-8 when X * c rounds
    assert face.entropy_effective_rank(X * scale) == pytest.approx(face.entropy_effective_rank(X), rel=1e-6)
    assert face.increment_dimension(X * scale) == face.increment_dimension(X)
    U, V = face.principal_directions(X * scale, 3), face.principal_directions(X, 3)
    assert face.subspace_overlap(U, V) == pytest.approx(1.0)
    G = face.increment_gram(X) * min(scale, 1e100)  # a Gram matrix is X's scale squared: keep it representable
    assert face.trajectory_statistics(G) == pytest.approx(face.trajectory_statistics(face.increment_gram(X)))
    r, H = softmax_entropy_along_a_ray()
    fit = face.fit_saturation(r * scale, H)
    assert fit.r_squared == pytest.approx(face.fit_saturation(r, H).r_squared, rel=1e-6)
    assert fit.tau / scale == pytest.approx(face.fit_saturation(r, H).tau, rel=1e-6)


def test_degenerate_inputs_have_documented_answers():
    still = np.zeros((5, 3))  # nothing moves: dimension 0 (the docstring's value), not a ValueError
    assert face.effective_dimension(still) == 0 and face.participation_ratio(still) == 0.0
    assert face.increment_dimension(still) == 0 and face.entropy_effective_rank(still) == 0.0
    U = face.principal_directions(still, 2)  # every direction has variance 0: an orthonormal completion
    np.testing.assert_allclose(U.T @ U, np.eye(2), atol=1e-12)
    line = np.outer(np.arange(6.0), [1.0, 0.0, 0.0])  # one direction moves; the others complete it
    U = face.principal_directions(line, 3)
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-12)
    assert abs(U[0, 0]) == pytest.approx(1.0)
    assert face.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0  # a constant series has no order: 0
    assert face.rank_at_fraction([0.0, 0.0]) == 0 and face.pc1_fraction_of_spectrum([0.0, 0.0]) == 0.0
    assert face.attention_entropy([[1.0, 0.0]], eps=0.0)[0] == 0.0  # 0 log 0 = 0


def test_numpy_scalars_are_accepted_where_python_numbers_are():
    X, G = _X, _G
    assert face.effective_dimension(X, q=np.float32(0.9)) == face.effective_dimension(X, q=float(np.float32(0.9)))
    assert face.principal_directions(X, np.int64(2)).shape == (30, 2)
    assert face.pc_coordinates(X, np.int32(2)).shape == (12, 2)
    assert len(face.window_dimension_curve(G, np.int64(4), q=np.float64(0.9))) == 9
    assert len(face.prefix_dimension_curve(G, min_snapshots=np.int16(3))) == 10
    assert face.capped_rank_at_fraction(_S, np.float32(0.9), np.int64(8)) >= 1
    nulls = face.null_calibration(G, np.int64(30), n_draws=np.int64(5), seed=np.uint8(1))
    assert nulls == face.null_calibration(G, 30, n_draws=5, seed=1)
    assert face.random_subspace_overlaps(np.int64(10), np.int64(2), np.int64(3)).shape == (3,)
    assert face.top_k_mass(_A, np.int64(2)) == pytest.approx(np.full(3, 0.25))
    assert face.routing_coordinate(X[:, :3], _H, np.int64(10), seed=np.int64(0)).index in (0, 1, 2)
    assert face.routing_coordinate(X[:, :3], _H, np.int64(10), np.int64(2), np.int64(0),
                                   null="block_permutation").index in (0, 1, 2)
    assert face.derived_seed(np.uint8(3), np.int16(2)) == face.derived_seed(3, 2)
    assert face.random_mean_pairwise_overlaps(np.int64(10), np.int32(2), np.int8(3), np.int64(4)).shape == (4,)
    assert face.pc_coordinates_of_increment_gram(G, np.int64(2)).shape == (12, 2)
    assert face.null_increment_gram(G, "random_walk", np.int64(30), np.int64(3)).shape == G.shape
    delta = _commutator_case(np.float32(1e-3))
    assert delta.shape == (4,) and bool(delta.isfinite().all())


def test_sgd_commutator_leaves_frozen_parameters_where_they_are():
    import torch
    torch.manual_seed(0)
    frozen = torch.nn.Linear(3, 3).requires_grad_(False)
    model = torch.nn.Sequential(frozen, torch.nn.Linear(3, 1))
    delta = _commutator_case(model=model)
    assert delta.shape == (16,) and torch.count_nonzero(delta[:12]) == 0 and bool(delta.isfinite().all())


def test_public_face_reexports_the_api_other_code_relies_on():
    """validate.geometry is the public face: effective_dimension and sgd_commutator are the implementations."""
    import validate.geometry as face
    from validate._execution_manifold import commutator
    assert face.sgd_commutator is commutator.sgd_commutator
    assert face.effective_dimension is g.effective_dimension
    assert set(face.__all__) <= set(dir(face))
