"""validate.scan_snap: torch Y/Z gradients equal Lemma 1, the data sampler, the transformer's Z, the CLIs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from theory import scan_snap as th
from validate import scan_snap_analysis as an
from validate.scan_snap_models import OneLayerTransformer, SyntheticSequences, TrainConfig, YZModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_yz_gradients_equal_lemma1():
    # one sequence: Lemma 1 (Eqn. 3) holds at finite T with X^T b_T, which is Eqn. 5 with P(l|n) replaced by the
    # empirical token frequencies of the sequence; so theory's formulas evaluated there must equal autograd
    torch.manual_seed(0)
    M, query, nxt = 6, 4, 5
    model = YZModel(M, init="default").double()
    context = [0, 1, 1, 2, 3, 0, 1]
    x = torch.tensor([context + [query]])
    loss = F.cross_entropy(model(x), torch.tensor([nxt]))
    loss.backward()
    freq = [context.count(l) / len(context) for l in range(M)]
    Y = model.decoder.weight.detach().T.numpy()
    z = model.attention.weight.detach()[query].numpy()
    dY, dz = th.lemma1_gradients_numeric(Y.tolist(), z.tolist(), freq, nxt)
    dY = np.array(dY, dtype=float)
    dz = np.array(dz, dtype=float)
    # loss = -J and decoder.weight = Y^T; float64 autograd vs 30-digit SymPy: agreement to ~1e-15
    np.testing.assert_allclose(model.decoder.weight.grad.numpy(), -dY.T, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(model.attention.weight.grad[query].numpy(), -dz, rtol=1e-10, atol=1e-13)
    others = [m for m in range(M) if m != query]
    assert torch.all(model.attention.weight.grad[others] == 0)  # Eqn. 4: only the query's row moves


def test_sampler_matches_class_probabilities():
    classes = th.syn_small()
    data = SyntheticSequences(classes, seq_len=129, seed=3)
    x, y = data.sample(2000)
    assert torch.all(x[:, -1] == torch.where(y == 32, 30, 31))  # query psi(n) last
    ctx = x[y == 32, :-1].reshape(-1)
    freq = torch.bincount(ctx, minlength=34).double() / ctx.numel()
    P = torch.tensor([float(p) for p in classes.probabilities[0]], dtype=torch.float64)
    # binomial standard error of a frequency from ctx.numel() draws; 5 sigma keeps this deterministic test robust
    se = torch.sqrt(P * (1 - P) / ctx.numel())
    assert torch.all(torch.abs(freq - P) <= 5 * se + 1e-12)


def test_transformer_attention_logits_match_forward():
    torch.manual_seed(1)
    model = OneLayerTransformer(10, d_model=16).double()
    Z = model.attention_logits()
    x = torch.tensor([[1, 2, 3, 2, 7]])
    u = model.embed(x)
    scores = model.W_Q(u[:, -1]) @ model.W_K(u[:, :-1]).transpose(1, 2) / 4.0
    np.testing.assert_allclose(scores.detach().numpy().ravel(), Z[7, [1, 2, 3, 2]].numpy(), rtol=1e-12)


def test_drop_order_tau_counts_censored_pairs():
    P = [0.1, 0.2, 0.3, 0.4]
    assert an.drop_order_tau(P, [1.0, 2.0, np.inf, np.inf]) == (1.0, 5)
    assert an.drop_order_tau(P, [2.0, 1.0, np.inf, np.inf])[0] == pytest.approx(3 / 5)
    assert np.isnan(an.drop_order_tau(P, [np.inf] * 4)[0])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="lr_z"):
        TrainConfig(lr_z=-1.0)
    with pytest.raises(ValueError, match="init='zero' with model='transformer'"):
        TrainConfig(model="transformer", init="zero")


def _cli(*args, module="validate.scan_snap"):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("args, message", [
    (["--lr-ratio", "-1"], "lr_ratio"),
    (["--dataset", "syn-medium", "--next-tokens", "3"], "even"),
    (["--model", "transformer"], "init='zero'"),
    (["--seeds", "a,b"], "comma-separated integers"),
])
def test_cli_bad_input_exits_2(args, message):
    res = _cli(*args, "--out", "/nonexistent/never-written")
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_cli_quick_writes_json_and_figures(tmp_path):
    res = _cli("--quick", "--quiet", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    rec = json.loads((tmp_path / "scan_snap.json").read_text())
    for key in ("final_entropy_distinct", "final_entropy_distinct_sem", "kendall_tau_drop_order",
                "common_tokens_fall", "ode_comparison", "snap"):
        assert key in rec["metrics"]
    assert {v["verdict"] for v in rec["verdicts"]} <= {"PASS", "FAIL", "INFO"}
    for name in rec["figures"]:
        assert (tmp_path / name).stat().st_size > 10_000
    assert "PASS" in res.stdout or "FAIL" in res.stdout
