"""SGD commutators: the SymPy expansion (theory.commutator), the measured commutator and its HVP form, the
alignment baselines (validate._execution_manifold.commutator); Xu 2026, section 3.3.2."""
import math
import os

import numpy as np
import pytest
import torch

from theory import commutator as theory
from validate._execution_manifold import commutator as comm
from validate._execution_manifold.modular import (MarkerTransformer, ModelConfig, TaskConfig, cross_entropy_and_accuracy,
                                                  sample_batch)

torch.set_num_threads(1)


# ---------------------------------------------------------------- theory ----------------------------------

def test_quadratic_expansion_is_exact_at_second_order():
    loss_a, loss_b, theta = theory.quadratic_losses(2)
    checks = theory.verify_expansion(loss_a, loss_b, theta)
    assert all(e == 0 for e in checks["order_2"])
    assert all(e == 0 for e in checks["after_leading"])  # nothing beyond eta^2 for quadratic losses


def test_quartic_expansion_needs_the_third_order_term():
    loss_a, loss_b, theta = theory.quartic_losses(2)
    checks = theory.verify_expansion(loss_a, loss_b, theta)
    assert all(e == 0 for e in checks["order_3"])
    assert all(e == 0 for e in checks["order_2"])
    assert theory.lowest_eta_power(checks["after_leading"]) == 3  # the eta^2 term alone misses an eta^3 piece
    assert theory.lowest_eta_power(checks["remainder"]) == 4


def test_leading_term_products():
    products = {(h, g): c for c, h, g in theory.bracket_products()}
    assert products == {("H_B", "g_A"): theory.eta ** 2, ("H_A", "g_B"): -theory.eta ** 2}


def test_random_subspace_expectations_against_known_values():
    # E[sqrt(Beta(1, 4))] for K=2, P=10 is Gamma(3/2) Gamma(5) / (Gamma(1) Gamma(11/2)) = 128/315
    e = comm.random_subspace_expectations(2, 10)
    assert e["norm_mean"] == pytest.approx(128 / 315, rel=1e-12)
    e = comm.random_subspace_expectations(60, 1_026_184)
    assert e["paper"] == pytest.approx(0.00765, abs=1e-5)  # sqrt(60 / 1,026,184): the paper's dashed line
    assert e["norm_mean"] == pytest.approx(e["paper"], rel=0.01)


# ---------------------------------------------------------------- measured commutator ---------------------

class Quadratic(torch.nn.Module):
    def __init__(self, n, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.theta = torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))


def _quadratic_batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    return {"H": M @ M.T / n, "b": torch.randn(n, generator=g, dtype=torch.float64)}


def _pure_quadratic_loss(model, batch):
    t = model.theta
    return 0.5 * t @ batch["H"] @ t - batch["b"] @ t


def _quadratic_loss(model, batch):
    model.calls += 1  # a buffer that the forward pass changes: must be restored too
    return _pure_quadratic_loss(model, batch)


def test_quadratic_loss_gives_the_lie_bracket_to_float_precision():
    n, lr = 7, 0.05
    model = Quadratic(n, 0)
    A, B = _quadratic_batch(n, 1), _quadratic_batch(n, 2)
    theta = model.theta.detach().clone()
    g_a, g_b = A["H"] @ theta - A["b"], B["H"] @ theta - B["b"]
    expected = lr ** 2 * (B["H"] @ g_a - A["H"] @ g_b)
    delta = comm.sgd_commutator(model, _quadratic_loss, A, B, lr)
    # exact for quadratics (theory); what remains is float64 round-off of O(1) numbers: ~1e-16 relative to
    # theta, i.e. ~1e-13 relative to delta = O(lr^2)
    assert torch.allclose(delta, expected, rtol=1e-9, atol=1e-14)
    hvp = comm.hvp_commutator(model, _pure_quadratic_loss, A, B, lr)
    assert torch.allclose(hvp, expected, rtol=1e-12, atol=1e-16)


def _small_model(dtype=torch.float32):
    torch.manual_seed(0)
    task = TaskConfig(batch_size=32)
    model = MarkerTransformer(ModelConfig.for_task(task, n_layers=1, d_model=16, n_heads=2)).to(dtype)
    g = torch.Generator().manual_seed(3)
    return model, sample_batch(task, 2, g), sample_batch(task, 3, g)


def _loss(model, batch):
    return cross_entropy_and_accuracy(model, batch)[0]


def test_model_state_is_restored_exactly_and_the_same_batch_gives_zero():
    model, A, B = _small_model()
    quadratic = Quadratic(5, 0)
    before_q = (quadratic.theta.detach().clone(), quadratic.calls.clone())
    comm.sgd_commutator(quadratic, _quadratic_loss, _quadratic_batch(5, 1), _quadratic_batch(5, 2), 0.1)
    assert torch.equal(quadratic.theta, before_q[0]) and torch.equal(quadratic.calls, before_q[1])
    params = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    delta = comm.sgd_commutator(model, _loss, A, B, 1e-3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert torch.equal(torch.get_rng_state(), rng)
    assert delta.shape == (comm.total_parameters(model),) and delta.norm() > 0
    assert torch.count_nonzero(comm.sgd_commutator(model, _loss, A, A, 1e-3)) == 0  # same batch: exactly 0


def test_finite_difference_error_against_hvp_shrinks_as_first_order():
    """||delta_fd - delta_hvp|| / ||delta_hvp|| = O(eta) (the eta^3 term of theory.commutator); fitted over
    eta, float64 so that round-off stays far below the truncation error."""
    model, A, B = _small_model(torch.float64)
    etas = np.array([0.2, 0.1, 0.05, 0.025, 0.0125])
    errors = []
    for eta in etas:
        fd = comm.sgd_commutator(model, _loss, A, B, float(eta))
        hvp = comm.hvp_commutator(model, _loss, A, B, float(eta))
        errors.append(float((fd - hvp).norm() / hvp.norm()))
    order = np.polyfit(np.log(etas), np.log(errors), 1)[0]
    assert 0.85 < order < 1.15, (order, errors)  # an O(eta^2) or O(1) error would give 2 or 0
    ratio = comm.measure_commutator(model, _loss, A, B, 1e-3).delta.norm() / \
        comm.measure_commutator(model, _loss, A, B, 5e-4).delta.norm()
    assert float(ratio) == pytest.approx(4.0, rel=0.01)  # ||delta|| ~ eta^2


class DropoutNet(torch.nn.Module):
    """A float64 tanh network with dropout after its hidden layer (p = 0.3), in train mode."""

    def __init__(self, with_batch_norm: bool = False):
        super().__init__()
        torch.manual_seed(0)
        layers = [torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 1)]
        if with_batch_norm:
            layers.insert(1, torch.nn.BatchNorm1d(32))
        self.net = torch.nn.Sequential(*layers).double()

    def forward(self, x):
        return self.net(x)


def _regression_batches():
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randn(16, 1, generator=g,
                                                                             dtype=torch.float64)) for _ in range(2)]


def _mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _one_rng_state_for_both_batches(model, loss_fn, batch_a, batch_b, lr):
    """The former paths: each started from the same RNG state, so the first batch of either path drew the
    same dropout mask (A's on path AB, B's on path BA)."""
    params = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    ends = []
    for first, second in ((batch_a, batch_b), (batch_b, batch_a)):
        with torch.no_grad():
            for p, saved in zip(model.parameters(), params):
                p.copy_(saved)
        torch.set_rng_state(rng)
        for batch in (first, second):
            grads = torch.autograd.grad(loss_fn(model, batch), list(model.parameters()))
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads):
                    p.sub_(lr * g)
        ends.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    with torch.no_grad():
        for p, saved in zip(model.parameters(), params):
            p.copy_(saved)
    torch.set_rng_state(rng)
    return ends[0] - ends[1]


def test_dropout_commutator_is_second_order_in_the_step():
    """Each batch keeps its own dropout mask on both paths, so ||delta|| = O(eta^2): the log-log slope of
    ||delta|| over eta is 2 (fitted over 5 halvings; measured 2.00) and ||delta|| / eta^2 settles (the last two
    halvings change it by < 5%). The former paths, which handed A's mask to B, give slope 1 (||delta|| / eta^2
    grows as 1 / eta; measured 1.02). The HVP leading term uses the same masks: the relative difference is
    O(eta) (slope 1, measured 0.99, as for the deterministic model above)."""
    model, (A, B) = DropoutNet(), _regression_batches()
    model.train()
    etas = np.array([0.08, 0.04, 0.02, 0.01, 0.005])
    rng, params = torch.get_rng_state(), [p.detach().clone() for p in model.parameters()]
    norms, former, errors = [], [], []
    for eta in etas:
        delta = comm.sgd_commutator(model, _mse, A, B, float(eta))
        hvp = comm.hvp_commutator(model, _mse, A, B, float(eta))
        norms.append(float(delta.norm()))
        errors.append(float((delta - hvp).norm() / hvp.norm()))
        former.append(float(_one_rng_state_for_both_batches(model, _mse, A, B, float(eta)).norm()))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    slope = np.polyfit(np.log(etas), np.log(norms), 1)[0]
    assert 1.9 < slope < 2.1, (slope, norms)
    scaled = np.array(norms) / etas ** 2
    assert abs(scaled[-1] / scaled[-2] - 1) < 0.05 and abs(scaled[-2] / scaled[-3] - 1) < 0.05, scaled
    former_slope = np.polyfit(np.log(etas), np.log(former), 1)[0]
    assert 0.85 < former_slope < 1.15, (former_slope, former)  # the test tells the two apart
    error_order = np.polyfit(np.log(etas), np.log(errors), 1)[0]
    assert 0.85 < error_order < 1.15, (error_order, errors)


def test_buffers_written_in_the_forward_pass():
    """BatchNorm in train mode updates its running statistics in every forward pass: hvp_commutator refuses it
    with one ValueError naming the buffers and leaves the model as it was; sgd_commutator restores them (and
    parameters and RNG state) exactly, as its contract says. In eval mode BatchNorm only reads them: both work
    and agree to O(eta)."""
    model, (A, B) = DropoutNet(with_batch_norm=True), _regression_batches()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match=r"net\.1\.running_mean.*BatchNorm in train mode"):
        comm.hvp_commutator(model, _mse, A, B, 0.01)
    delta = comm.sgd_commutator(model, _mse, A, B, 0.01)
    assert bool(delta.isfinite().all()) and delta.norm() > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(torch.get_rng_state(), rng)
    model.eval()
    fd, hvp = comm.sgd_commutator(model, _mse, A, B, 0.01), comm.hvp_commutator(model, _mse, A, B, 0.01)
    assert float((fd - hvp).norm() / hvp.norm()) < 0.05
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_float32_in_place_and_float64_copy_agree_roughly():
    model, A, B = _small_model()
    s32 = comm.measure_commutator(model, _loss, A, B, 1e-2)
    s64 = comm.measure_commutator(model, _loss, A, B, 1e-2, dtype=torch.float64)
    assert float((s32.delta.double() - s64.delta).norm() / s64.delta.norm()) < 0.05
    assert math.isfinite(s64.defect) and s64.defect > 0


def test_defect_is_nan_where_gradients_vanish():
    zero = torch.zeros(4)
    assert math.isnan(comm.normalized_defect(zero, zero, torch.ones(4), 1e-3))
    assert comm.normalized_defect(torch.ones(4), torch.ones(4), torch.ones(4), 0.1) == pytest.approx(
        2.0 / (0.1 * 2.0 * 0.1 * 2.0))


# ---------------------------------------------------------------- alignment -------------------------------

def _toy_basis(rng, sizes=(400, 300, 300), extra=2000, k=3):
    """Blocks of the given sizes at offsets 0.. inside a vector with `extra` unused coordinates."""
    slices, offset = [], 0
    for i, size in enumerate(sizes):
        slices.append(comm.BlockSlice(f"b{i}", offset, size))
        offset += size
    trajectories = {s.name: np.cumsum(rng.standard_normal((12, s.size)), axis=0) for s in slices}
    return comm.ExecutionBasis.from_trajectories(trajectories, slices, offset + extra, k, "final"), offset


def test_basis_is_orthonormal_and_rho_is_one_inside_zero_outside():
    rng = np.random.default_rng(0)
    basis, used = _toy_basis(rng)
    dense = np.zeros((basis.total_size, basis.dimension))
    col = 0
    for s, d in zip(basis.slices, basis.directions):
        dense[s.offset:s.offset + s.size, col:col + d.shape[1]] = d
        col += d.shape[1]
    assert np.allclose(dense.T @ dense, np.eye(basis.dimension), atol=1e-10)
    inside = dense @ rng.standard_normal(basis.dimension)
    assert basis.rho(inside) == pytest.approx(1.0, abs=1e-12)
    outside = rng.standard_normal(basis.total_size)
    outside -= dense @ (dense.T @ outside)
    assert basis.rho(outside) == pytest.approx(0.0, abs=1e-7)


def test_random_delta_gives_ratio_about_one():
    """A delta isotropic over all P coordinates is no more aligned with B than a random K-subspace: the mean
    ratio over draws is 1 within its Monte Carlo error (3 standard errors)."""
    rng = np.random.default_rng(1)
    basis, _ = _toy_basis(rng)
    ratios = []
    for _ in range(300):
        delta = torch.tensor(rng.standard_normal(basis.total_size))
        sample = comm.CommutatorSample(delta, delta, delta, 1e-3)
        ratios.append(comm.alignment(basis, sample, rng, n_random=10)["ratio_energy_block"])
    ratios = np.array(ratios)
    assert abs(ratios.mean() - 1.0) < 3 * ratios.std(ddof=1) / np.sqrt(ratios.size)
    # the paper's whole-vector baseline and rho_exec agree for a random delta too (norm ratio, E[rho] exact)
    e = comm.random_subspace_expectations(basis.dimension, basis.total_size)
    rho = np.array([basis.rho(rng.standard_normal(basis.total_size)) for _ in range(300)])
    assert abs(rho.mean() / e["norm_mean"] - 1.0) < 3 * rho.std(ddof=1) / np.sqrt(rho.size) / e["norm_mean"]


def test_paper_qr_baseline_matches_its_expectation_and_the_beta_law():
    rng = np.random.default_rng(2)
    P, K = 2000, 12
    delta = rng.standard_normal(P)
    qr = comm.random_subspace_rho_qr(delta, K, 100, rng)
    beta = comm.random_subspace_rho_draws(K, P, 20000, rng)
    expected = comm.random_subspace_expectations(K, P)["norm_mean"]
    assert qr.mean() == pytest.approx(expected, rel=0.1)  # the analytic mean, within 10% of it (100 draws)
    assert abs(qr.mean() - beta.mean()) < 3 * qr.std(ddof=1) / np.sqrt(qr.size)


def test_block_matched_expectation_is_k_over_n_for_a_delta_inside_one_block():
    """delta random inside block b only, B covering k of its n_b directions: E[rho^2] = k / n_b."""
    rng = np.random.default_rng(3)
    basis, _ = _toy_basis(rng)
    s, d = basis.slices[1], basis.directions[1]
    energies = []
    for _ in range(400):
        delta = np.zeros(basis.total_size)
        delta[s.offset:s.offset + s.size] = rng.standard_normal(s.size)
        assert comm.block_matched_energy(basis, delta) == pytest.approx(d.shape[1] / s.size)
        energies.append(basis.rho(delta) ** 2)
    energies = np.array(energies)
    assert abs(energies.mean() - d.shape[1] / s.size) < 3 * energies.std(ddof=1) / np.sqrt(energies.size)


def test_support_matched_baseline_removes_the_dilution_of_unused_coordinates():
    rng = np.random.default_rng(4)
    basis, used = _toy_basis(rng, extra=20000)
    delta = np.zeros(basis.total_size)
    delta[:used] = rng.standard_normal(used)
    sample = comm.CommutatorSample(torch.tensor(delta), torch.tensor(delta), torch.tensor(delta), 1e-3)
    a = comm.alignment(basis, sample, rng, n_random=200)
    assert a["P_support"] == used
    assert a["ratio_paper"] / a["ratio_support"] == pytest.approx(math.sqrt(basis.total_size / used), rel=0.1)
    assert a["ratio_support"] == pytest.approx(1.0, rel=0.2)


def test_basis_kinds_and_r90_components():
    rng = np.random.default_rng(5)
    slices = [comm.BlockSlice("b0", 0, 200)]
    plane = np.linalg.qr(rng.standard_normal((200, 2)))[0]
    t = np.linspace(0, 1, 20)[:, None]
    trajectories = {"b0": np.hstack([np.cos(3 * t), np.sin(3 * t)]) @ plane.T}  # a curve in a 2-D plane
    r90 = comm.ExecutionBasis.from_trajectories(trajectories, slices, 500, "r90", "final")
    assert r90.dimension <= 2 and np.allclose(plane @ plane.T @ r90.directions[0], r90.directions[0])
    window = comm.ExecutionBasis.from_trajectories(trajectories, slices, 500, 3, "window", upto=9, window=4)
    assert window.dimension == 2  # 4 snapshots of a planar curve: rank 2, the third singular value ~ 0 skipped
    with pytest.raises(ValueError, match="basis kind"):
        comm.ExecutionBasis.from_trajectories(trajectories, slices, 500, 3, "latest")


def test_perpendicular_fractions():
    f = comm.perpendicular_fractions(0.128)  # the paper's worst point: its 1 - rho dips to 0.872
    assert f["perp_complement_frac"] == pytest.approx(0.872)
    assert f["perp_norm_frac"] == pytest.approx(math.sqrt(1 - 0.128 ** 2))
    assert f["perp_energy_frac"] == pytest.approx(1 - 0.128 ** 2)


def test_block_slices_of_the_marker_transformer():
    model, _, _ = _small_model()
    slices = comm.block_slices(model, model.attention_weights())
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for s in slices:
        assert torch.equal(flat[s.offset:s.offset + s.size], model.attention_weights()[s.name].reshape(-1))
    with pytest.raises(ValueError):
        comm.block_slices(model, {"not a view": torch.zeros(3)})


# ---------------------------------------------------------------- part two, end to end --------------------

def test_run_part_two_smoke(tmp_path):
    """End to end on a tiny run: verdict rows, the three bases, both figures, the same numbers again."""
    from validate._execution_manifold.claims import part_two_claims
    from validate._execution_manifold.figures import part_two_figures
    from validate._execution_manifold.part_two import PartTwoConfig, run_part_two
    from validate._execution_manifold.trajectory import RunConfig
    run = RunConfig(steps=60, snapshot_every=6, n_layers=2, d_model=16, n_heads=2, batch_size=32, mlp="unused")
    config = PartTwoConfig(run=run, commutator_samples=2, sae_steps=30, sae_examples=256, sae_d=16, sae_k=4,
                           ablation_sizes=(1, 2), random_ablation_draws=1, n_random=3)
    metrics = run_part_two(config)
    rows = part_two_claims(config, metrics)
    claims = [r for r in rows if r.claim != "runs"]  # "runs": the divergence count (0 of 1 here: PASS)
    assert [(r.claim, r.verdict) for r in rows if r.claim == "runs"] == [("runs", "PASS")]
    assert {r.verdict for r in rows} <= {"PASS", "FAIL", "INFO"} and {r.measure for r in claims} == {"paper", "null"}
    c = metrics["commutators"]
    assert c["accumulated"]["P"] > c["accumulated"]["P_support"]  # the unused MLPs dilute the paper's P
    assert len(c["final"]["ratio_energy_block"]) == len(c["accumulated"]["ratio_paper"]["steps"])
    assert len(metrics["sae"]) == 3
    figures = part_two_figures(config, metrics, str(tmp_path))
    assert all(os.path.exists(p) for p in figures) and len(figures) == 2
    again = run_part_two(config)
    assert again["commutators"]["defect"] == c["defect"]  # same seed, same numbers


def test_part_two_alone_rejects_too_few_snapshots(capsys):
    from validate.execution_manifold import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--part", "two", "--steps", "400", "--snapshot-every", "50", "--window", "4"])
    assert exit_info.value.code == 2
    assert "part two:" in capsys.readouterr().err
