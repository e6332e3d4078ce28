"""Calibration of the two statistics that decide the execution-manifold verdicts C3 (orientation across seeds) and
C4 (routing coordinate), at the paper's sizes (Xu 2026: 20,000 steps with a snapshot every 500, so 41 snapshots;
5 seeds; d = 128, so each attention block has d^2 coordinates). A valid test flags about 5% of null replicates
at p < 0.05 and still flags a planted effect."""
import numpy as np
import pytest

from validate._execution_manifold import geometry as geo

N_SNAPSHOTS = 41       # 20,000 steps / 500 + 1
BLOCK_DIM = 128 ** 2   # an attention block W_Q, W_K, W_V or W_O of the d = 128 model
N_SEEDS = 5            # the paper's Figure 1 seeds (part one's default)
ORIENTATION_K = 3      # top PCs per block compared across seeds (part_one.ORIENTATION_K)
ALPHA = 0.05


# ---------------------------------------------------------------- C4: the routing coordinate ---------------

def random_walk_candidates(rng) -> np.ndarray:
    """What part one hands routing_coordinate for one layer: the top-r90 principal coordinates of its W_Q and
    W_K trajectories, here isotropic random walks in R^{d^2} (the package's random-walk null, drawn as the
    Gram matrix of unit increments): about 6 + 6 cosine-like curves (the Lissajous curves of a random walk)."""
    columns = []
    for _ in ("W_Q", "W_K"):
        gram = geo.null_increment_gram(np.eye(N_SNAPSHOTS - 1), "random_walk", BLOCK_DIM, rng)
        k = geo.rank_at_fraction(geo.spectrum_from_increment_gram(gram), 0.9)
        columns.append(geo.pc_coordinates_of_increment_gram(gram, k))
    return np.hstack(columns)


def fall_then_rebound_entropy(rng) -> np.ndarray:
    """A readout entropy like part one's: from ln 16 it falls fast to ~0.8, with its minimum at a random 20-50%
    of training, then rebounds by 0.2-0.7 (README's 2.73 -> 0.78 -> 1.24), plus probe noise of 0.02."""
    t = np.linspace(0.0, 1.0, N_SNAPSHOTS)
    minimum_at = rng.uniform(0.2, 0.5)
    entropy = 0.78 + (np.log(16) - 0.78) * np.exp(-3 * t / minimum_at)
    entropy += rng.uniform(0.2, 0.7) * np.clip((t - minimum_at) / (1 - minimum_at), 0, None) ** rng.uniform(0.5, 1.5)
    return entropy + 0.02 * rng.standard_normal(N_SNAPSHOTS)


def random_walk_entropy(rng) -> np.ndarray:
    return np.cumsum(rng.standard_normal(N_SNAPSHOTS))


def _rate(p_values) -> float:
    return float(np.mean(np.asarray(p_values) < ALPHA))


@pytest.mark.parametrize("entropy_of", [fall_then_rebound_entropy, random_walk_entropy],
                         ids=["fall-then-rebound entropy", "random-walk entropy"])
def test_routing_p_value_is_valid_for_unrelated_smooth_series(entropy_of):
    """Candidates unrelated to the entropy reach p < 0.05 in at most 10% of trials (nominal 5%). 100 trials:
    binomial s.e. of a 5% rate 0.022, so 10% is 2.3 s.e. above nominal. Measured with the default null: 0 of
    these 100 trials for either entropy (and 0 and 5 of 300 other trials); the former block-permutation null
    (blocks of 4 snapshots): 97 and 66 of these 100."""
    rng = np.random.default_rng(17)
    p_values = [geo.routing_coordinate(random_walk_candidates(rng), entropy_of(rng), seed=trial).p_value
                for trial in range(100)]
    assert _rate(p_values) <= 0.10


def test_routing_p_value_detects_an_entropy_that_follows_a_coordinate():
    """Entropy = a noisy monotone function of one candidate, a random-walk principal coordinate with
    fluctuations of its own (0.3 of its s.d., as SGD noise gives a trained coordinate) that the entropy follows,
    among the other 11 candidates: detected (p < 0.05) in most trials (measured 1.00 over 40 trials)."""
    rng = np.random.default_rng(18)
    detected = []
    for trial in range(40):
        candidates = random_walk_candidates(rng)
        column = rng.integers(candidates.shape[1])
        coordinate = candidates[:, column] + 0.3 * candidates[:, column].std() * rng.standard_normal(N_SNAPSHOTS)
        candidates[:, column] = coordinate
        entropy = np.exp(-coordinate / coordinate.std())
        entropy += 0.05 * entropy.std() * rng.standard_normal(N_SNAPSHOTS)
        found = geo.routing_coordinate(candidates, entropy, seed=trial)
        detected.append(found.p_value < ALPHA and found.index == column)
    assert np.mean(detected) >= 0.8


# ---------------------------------------------------------------- C3: orientation across seeds --------------

def _random_basis(rng, lean=0.0, shared=None):
    """An orthonormal (d^2, K) basis: uniformly random, or leaning towards `shared` with weight `lean`."""
    gaussian = rng.standard_normal((BLOCK_DIM, ORIENTATION_K)) / np.sqrt(BLOCK_DIM)
    return np.linalg.qr(gaussian if shared is None else lean * shared + gaussian)[0]


def test_orientation_null_flags_about_five_percent_of_random_seeds():
    """5 seeds' top-3 subspaces drawn uniformly at random (explicit QR, independent of the Bartlett null): with
    400 null draws per replicate the p-value (1 + #)/(1 + 400) < 0.05 has probability exactly 20/401 = 0.0499.
    300 replicates: binomial s.e. 0.0126; allowed 3 s.e. either side, [0.012, 0.088]. Measured 0.053. The
    former comparison (the mean over 10 pairs against a single pair's overlap, whose 95% point is 1.93x the
    expectation while the mean's spread is sqrt(10) times narrower) flagged 0 of 300."""
    rng = np.random.default_rng(21)
    p_high = [geo.orientation_comparison([_random_basis(rng) for _ in range(N_SEEDS)], n_draws=400,
                                         seed=replicate).p_high for replicate in range(300)]
    rate = _rate(p_high)
    assert 0.012 <= rate <= 0.088, rate


def test_orientation_null_flags_a_planted_overlap_of_twice_the_random_expectation():
    """Each seed's basis leans towards one shared subspace V: qr(c V + G / sqrt(D)) with c = (K / D)^(1/4) gives
    an expected overlap c^4 + K / D = 2 K / D (measured 2.00x, s.d. 0.26 over replicates). Flagged in most
    replicates: measured 1.00 of 100 (the former single-pair comparison: 0.47)."""
    rng = np.random.default_rng(22)
    shared = np.linalg.qr(rng.standard_normal((BLOCK_DIM, ORIENTATION_K)))[0]
    lean = (ORIENTATION_K / BLOCK_DIM) ** 0.25
    comparisons = [geo.orientation_comparison([_random_basis(rng, lean, shared) for _ in range(N_SEEDS)],
                                              n_draws=400, seed=replicate) for replicate in range(100)]
    ratio = np.mean([c.observed / c.expectation for c in comparisons])
    assert 1.8 <= ratio <= 2.2  # the planted size: 2.00 measured, s.e. of the mean 0.026
    assert _rate([c.p_high for c in comparisons]) >= 0.9


# ---------------------------------------------------------------- the claims read the stored runs again -----

def _stored_run(tmp_path, seed=0, n_layers=1):
    """A stored per-seed result as part one wrote it before per-block null seeds and the sign-flip routing
    null (no "null_seed", no routing "null"), with its arrays file."""
    from validate._execution_manifold.part_one import block_names
    rng = np.random.default_rng(seed)
    arrays, blocks = {}, {}
    for name in block_names(n_layers):
        X = np.cumsum(rng.standard_normal((N_SNAPSHOTS, 200)), axis=0)
        arrays[f"gram:{name}"] = geo.increment_gram(X)
        arrays[f"dir:{name}"] = geo.principal_directions(X, ORIENTATION_K).astype(np.float32)
        blocks[name] = {"r_q": float(geo.effective_dimension(X)), "nulls": "drawn with the run's seed"}
    np.savez(tmp_path / f"s{seed}.npz", **arrays)
    entropy = fall_then_rebound_entropy(rng)
    return {"seed": seed, "arrays": f"s{seed}.npz", "blocks": blocks,
            "attention": {"entropy": [entropy.tolist()] * n_layers},
            "routing": [{"layer": layer, "p_value": 0.001} for layer in range(n_layers)]}


def test_stored_runs_get_per_block_null_seeds_and_the_routing_null_once(tmp_path):
    from types import SimpleNamespace

    from validate._execution_manifold.claims import orientation_overlaps, refresh_stored_nulls
    from validate._execution_manifold.part_one import block_names
    config = SimpleNamespace(run=SimpleNamespace(n_layers=1), q=0.9, null_draws=20)
    results = [_stored_run(tmp_path, seed) for seed in (0, 1)]
    refresh_stored_nulls(config, {"main": results}, str(tmp_path))
    names = block_names(1)
    arrays = np.load(tmp_path / "s0.npz")
    for index, name in enumerate(names):
        block = results[0]["blocks"][name]
        assert block["null_seed"] == geo.derived_seed(0, index)
        expected = geo.null_calibration(arrays[f"gram:{name}"], 200, n_draws=20, seed=block["null_seed"])
        assert block["nulls"]["random_walk"]["r_q"] == expected["random_walk"]["r_q"].as_dict()
    assert len({results[s]["blocks"][n]["null_seed"] for s in (0, 1) for n in names}) == 2 * len(names)
    routing = results[0]["routing"][0]
    assert routing["p_value_as_stored"] == 0.001 and routing["null"] == "dct_sign_flips"
    assert routing["p_value"] > 0.05  # random-walk coordinates against a fall-then-rebound entropy
    before = [dict(r["routing"][0]) for r in results]
    refresh_stored_nulls(config, {"main": results}, str(tmp_path))  # refreshed rows are left as they are
    assert [r["routing"][0] for r in results] == before
    comparisons = orientation_overlaps(results, names, str(tmp_path))
    assert all(0.0 < c.observed < 1.0 and 0.0 < c.p_high <= 1.0 for c in comparisons.values())
    assert len({c.p_high for c in comparisons.values()}) > 1  # own observed values and own null draws
