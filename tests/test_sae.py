"""Sparse autoencoders, routing capture, execution isolation and ablations (validate._execution_manifold.sae;
Xu 2026, section 3.3.3)."""
import numpy as np
import pytest
import torch

from validate._execution_manifold import sae as saes
from validate._execution_manifold.modular import MarkerTransformer, ModelConfig, TaskConfig, sample_batch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def planted():
    return saes.planted_data(n=8192, d=64, n_sparse=12, modulus=8, seed=0)


def test_l1_sae_recovers_the_planted_sparse_features(planted):
    """The paper text's ReLU + L1 SAE finds every planted sparse direction (|cos| >= 0.9: each
    recovered decoder direction within 26 degrees of its planted feature). Measured minimum over the 12 features: 0.96 (l1 0.3) and 0.97 (l1 1.0), seed 0."""
    sae = saes.train_sae(planted.vectors, saes.SAEConfig(kind="relu_l1", d_sae=128, l1=0.3, steps=1500))
    cosines = saes.max_cosine_to(planted.sparse_directions, sae.W_dec.detach())
    assert cosines.min() >= 0.9, cosines
    assert saes.fraction_of_variance_unexplained(sae, planted.vectors) < 0.1
    Z = sae.encode(planted.vectors).detach()
    _assert_no_single_latent_isolates_the_dense_code(Z, planted.labels)


def test_topk_sae_does_not_isolate_the_dense_code(planted):
    """TopK (k = 8): reconstructs well, and again no single latent carries the 3-D rotation code of y.
    (Its recovery of the sparse features is weaker on this data, min |cos| 0.7-0.9 depending on k and d_sae;
    the report says so rather than this test tuning it.)"""
    sae = saes.train_sae(planted.vectors, saes.SAEConfig(kind="topk", d_sae=128, k=8, steps=1000))
    assert saes.fraction_of_variance_unexplained(sae, planted.vectors) < 0.1
    assert saes.mean_active_latents(sae, planted.vectors) == pytest.approx(8.0)
    assert 0.0 <= saes.dead_latent_fraction(sae, planted.vectors) < 0.5
    _assert_no_single_latent_isolates_the_dense_code(sae.encode(planted.vectors).detach(), planted.labels)


def _assert_no_single_latent_isolates_the_dense_code(Z, labels):
    # chance is 1/8; the all-latent probe reads y almost perfectly (measured >= 0.99), the best single latent
    # 0.30-0.41 over the SAE settings tried: a bound of 0.5 separates the two by many binomial s.e. (~0.01)
    single = saes.single_latent_probe_accuracy(Z, labels)
    assert saes.linear_probe_accuracy(Z, labels) >= 0.9
    assert single.max() <= 0.5


def test_correlation_scores():
    rng = np.random.default_rng(0)
    categories = rng.integers(0, 4, 2000)
    determined = np.stack([categories * 1.0, rng.standard_normal(2000)], axis=1)
    eta = saes.correlation_ratio(determined, categories)
    assert eta[0] == pytest.approx(1.0) and eta[1] < 0.1
    r = saes.absolute_pearson(determined, -categories)
    assert r[0] == pytest.approx(1.0)
    capture = saes.routing_capture({"m": eta, "position": r}, ("m", "position"))
    assert capture["n_routing_latents"] == 1 and capture["best_latent"]["m"] == 0


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    task = TaskConfig(seq_len=16, markers=(1, 2, 3), batch_size=64)
    model = MarkerTransformer(ModelConfig.for_task(task, n_layers=2, d_model=32, n_heads=2))
    return model, task


def test_ablation_where_the_readout_does_not_look_changes_nothing(small_model):
    """The head reads the last position after the last block; the residual at T-2 there is never read, so
    any edit leaves the logits exactly unchanged (the paper code's inert splice)."""
    model, task = small_model
    batch = sample_batch(task, 3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = model(batch.tokens).logits
    last = len(model.blocks) - 1
    unread = saes.logits_with_edit(model, batch.tokens, last, task.seq_len - 2, lambda x: torch.zeros_like(x))
    assert torch.equal(unread, clean)
    # the same edit one layer earlier is read by the last block's attention: it does change the logits
    read = saes.logits_with_edit(model, batch.tokens, 0, task.seq_len - 2, lambda x: torch.zeros_like(x))
    assert not torch.allclose(read, clean)


def test_latent_ablation_keeps_the_error_term(small_model):
    model, task = small_model
    acts = saes.collect_residuals(model, task, layer=0, site="readout", n_examples=1024, seed=0)
    assert acts.vectors.shape == (3 * (1024 // 3), 32)  # one readout vector per sequence, m = 1, 2, 3
    assert set(np.unique(acts.variables["m"])) == {1, 2, 3}
    sae = saes.train_sae(acts.vectors, saes.SAEConfig(kind="topk", d_sae=64, k=4, steps=200))
    x = acts.vectors[:50]
    assert torch.equal(saes.latent_ablation_edit(sae, [])(x), x)  # nothing ablated: the vector itself
    everything = list(range(64))
    with torch.no_grad():
        z = sae.encode(x)
        ablated = saes.latent_ablation_edit(sae, everything)(x)
        # all latents removed: x - (x_hat - decode(0)), i.e. the error term plus the decoder's offset
        expected = x - (sae.decode(z) - sae.decode(torch.zeros_like(z)))
    assert torch.allclose(ablated, expected, atol=1e-5)


def test_paper_code_splice_is_inert_unless_a_value_sits_at_the_readout(small_model):
    model, task = small_model
    acts = saes.collect_residuals(model, task, layer=1, site="targets", n_examples=512, seed=0)
    sae = saes.train_sae(acts.vectors, saes.SAEConfig(kind="topk", d_sae=64, k=4, steps=100))
    generator = torch.Generator().manual_seed(5)
    for _ in range(20):  # a batch whose shared marker positions leave T-1 a distractor
        batch = sample_batch(task, 3, generator)
        if int(batch.marker_positions[0, -1]) + 1 != task.seq_len - 1:
            break
    captured = {}

    def keep(module, inputs, output):
        captured["h"] = output

    handle = model.ln_final.register_forward_hook(keep)
    with torch.no_grad():
        logits = model(batch.tokens).logits
    handle.remove()
    rows = torch.arange(len(batch.labels))[:, None]
    with torch.no_grad():
        h = captured["h"].clone()
        h[rows, batch.marker_positions + 1] = 0.0  # the most destructive splice at the value positions
        assert torch.equal(model.head(h[:, -1]), logits)
    before, after = saes.paper_code_ablation(model, batch, sae, list(range(6)))
    assert before == after


@pytest.mark.parametrize("fields, message", [
    ({"kind": "jumprelu"}, "kind"), ({"d_sae": 8, "k": 16}, "k <= d_sae"), ({"d_sae": 0}, "d_sae"),
    ({"k": 0}, "k"), ({"k": 2.5}, "k"), ({"l1": -0.1}, "l1"), ({"l1": float("nan")}, "l1"),
    ({"lr": float("inf")}, "lr"), ({"lr": 0.0}, "lr"), ({"steps": 0}, "steps"), ({"batch_size": 0}, "batch_size"),
    ({"seed": -1}, "seed"),
])
def test_bad_config_is_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        saes.SAEConfig(**fields)


def test_config_takes_numpy_numbers_as_python_ones():
    config = saes.SAEConfig(d_sae=np.int64(32), k=np.int32(4), l1=np.float32(0.5), steps=np.int64(3))
    assert (type(config.d_sae), type(config.k), type(config.l1)) == (int, int, float)
    assert config == saes.SAEConfig(d_sae=32, k=4, l1=float(np.float32(0.5)), steps=3)
