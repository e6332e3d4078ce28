"""validate/: the torch block's parametrisation, theory-vs-torch convergence in width, and the CLI."""
import json
import math
import numpy as np
import pytest
import torch

from sim.signal_prop import critical_point, exponents, propagate
from theory.signal_prop import BlockParams
from validate import signal_prop as V
from validate._signal_prop import random_networks
from validate._signal_prop.propagation_experiment import (FINITE_DEPTH_BASE, FINITE_DEPTH_SETTINGS, SETTINGS,
                                                          SignalPropConfig, same_experiment)
from validate._signal_prop.random_networks import (collapsed_input, measure_exponents, measure_finite_depth,
                                                   measure_network)
from validate._signal_prop.transformer import (CanonicalBlock, CanonicalTransformer, gram_order_parameters,
                                              layer_norm, simplex_tokens)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread: at these widths two threads only add OpenMP's waits, which on a shared 2-core machine made
    measure_finite_depth 15x slower (measured at width 128)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_block_initialisation_matches_block_params():
    """Empirical weight standard deviations equal those BlockParams specifies (relative SE of a std over N entries is
    1/sqrt(2N) ~ 1e-3 at d = 512, so 1% is > 5 SE)."""
    h = BlockParams(sigma_A=2.0, sigma_V=0.7, sigma_w=3.0, sigma_2=1.5)
    d, d_ff = 512, 256
    block = CanonicalBlock(h, d, d_ff)
    block.reset_parameters(torch.Generator().manual_seed(0))
    expected = {"W_Q": math.sqrt(2.0 / d), "W_K": math.sqrt(2.0 / d), "W_V": 0.7 / math.sqrt(d),
                "W_1": 3.0 / math.sqrt(d), "W_2": 1.5 / math.sqrt(d_ff)}
    for name, std in expected.items():
        assert getattr(block, name).std().item() == pytest.approx(std, rel=0.01)


def test_simplex_inputs_have_the_requested_geometry():
    x = simplex_tokens(16, 4096, q0=2.0, rho0=0.3, batch=8, generator=torch.Generator().manual_seed(1))
    q, p, rho = gram_order_parameters(x)
    # SE of q over 8 x 16 tokens of d = 4096 is ~0.004 and of rho ~0.02/sqrt(8): 5 SE bounds.
    assert q.mean().item() == pytest.approx(2.0, abs=0.02)
    assert rho.mean().item() == pytest.approx(0.3, abs=0.05)


def test_no_mlp_torch_network_collapses():
    h = BlockParams(alpha_A=0.8, alpha_M=0.0)
    net = CanonicalTransformer(h, depth=12, width=256)
    net.reset_parameters(torch.Generator().manual_seed(2))
    x = simplex_tokens(8, 256, 1.0, 0.2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        rhos = [gram_order_parameters(s)[2].item() for s in net(x, return_all=True)]
    assert rhos[-1] > 0.97 and all(b > a - 0.01 for a, b in zip(rhos, rhos[1:]))


def test_theory_torch_gap_shrinks_with_width():
    """Mean squared deviation of torch (q, rho) trajectories from the d -> infinity map, fitted against
    width: fluctuations and finite-width bias both scale as 1/d, so the log-log slope should be near -1.
    We require slope < -0.5 and the fitted slope's 3-SE interval to exclude 0."""
    h = BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=2.5, sigma_2=2.5, n_tokens=8)
    depth, widths, seeds = 4, (32, 64, 128, 256), 6
    theory = propagate(h, depth, 1.0, 0.5)
    msd = []
    for d in widths:
        sq = []
        for s in range(seeds):
            gen = torch.Generator().manual_seed(1000 * d + s)
            net = CanonicalTransformer(h, depth, d)
            net.reset_parameters(gen)
            x = simplex_tokens(8, d, 1.0, 0.5, batch=2, generator=gen)
            with torch.no_grad():
                states = net(x, return_all=True)
            q = np.array([gram_order_parameters(st)[0].numpy() for st in states[1:]])
            rho = np.array([gram_order_parameters(st)[2].numpy() for st in states[1:]])
            sq.append(np.mean((rho - theory.rho[1:, None]) ** 2 + (q / theory.q[1:, None] - 1) ** 2))
        msd.append(np.mean(sq))
    X = np.log(widths)
    Y = np.log(msd)
    A = np.vstack([X, np.ones_like(X)]).T
    coef, res, *_ = np.linalg.lstsq(A, Y, rcond=None)
    slope = coef[0]
    sigma2 = res[0] / (len(X) - 2) if res.size else 0.0
    slope_se = math.sqrt(sigma2 / np.sum((X - X.mean()) ** 2))
    assert slope < -0.5 and slope + 3 * slope_se < 0, (slope, slope_se, msd)


def test_cli_rejects_bad_input_with_one_line(capsys):
    for args in (["--width", "0"], ["--settings", "nope"], ["--rho0", "1.5"], ["--device", "tpu"],
                 ["--networks", "0"], ["--seeds", "1", "1"], ["--seeds", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            V.main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("python -m validate.signal_prop: error:")


def test_seed_values_each_draw_the_networks_of_a_setting():
    """--networks N per seed value, pooled; one seed value draws exactly the networks the command always drew
    (seed s * 100003 + k), so the default run and --quick keep their numbers."""
    assert V.parse_config([])[0].network_seeds() == list(range(8))
    assert V.parse_config(["--quick"])[0].network_seeds() == list(range(4))
    assert V.parse_config(["--quick", "--networks", "3"])[0].network_seeds() == [0, 1, 2]   # explicit flag wins
    assert V.parse_config(["--networks", "2", "--seeds", "0", "5"])[0].network_seeds() == [0, 1, 500015, 500016]


def test_help_shows_every_flag_its_default_and_quick_value():
    text = V.build_parser().format_help()
    for flag in ("--width", "--n-tokens", "--depth", "--networks", "--probes", "--q0", "--rho0", "--settings",
                 "--seeds", "--seed", "--out", "--quick", "--device", "--update-figures", "--quiet"):
        assert flag in text, flag
    assert "--quick: 256" in " ".join(text.split())


def test_only_the_default_experiment_counts_as_the_readme_figure():
    default = SignalPropConfig()
    for where in ([], ["--out", "/tmp/elsewhere", "--device", "cpu", "--quiet"]):
        assert same_experiment(V.parse_config(where)[0], default), where
    for other in (["--quick"], ["--networks", "4"], ["--seeds", "0", "1"], ["--settings", "plain-ordered"]):
        assert not same_experiment(V.parse_config(other)[0], default), other


def test_small_run_writes_json_and_figure_and_leaves_figures_alone(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    cfg = SignalPropConfig(width=128, depth=3, networks=2, probes=2, n_tokens=8, out=str(tmp_path / "run"),
                             settings=("normalized-ordered",))
    record = V.run(cfg, quiet=True, figures_dir=str(figures))
    data = json.loads((tmp_path / "run" / "signal_prop.json").read_text())
    assert (tmp_path / "run" / "signal_prop.png").stat().st_size > 10_000
    assert list(figures.iterdir()) == []                  # not the default experiment: figures/ untouched
    assert data == record and data["command"] == "signal_prop"
    assert set(data) >= {"config", "versions", "timings_s", "metrics", "verdicts", "all_pass", "figures"}
    assert len(data["metrics"]["normalized-ordered"]["measured"]["rho"]["mean"]) == 4
    assert [row["claim"] for row in data["verdicts"]] == ["normalized-ordered"] * 5
    assert {row["verdict"] for row in data["verdicts"]} <= {"PASS", "FAIL"}
    assert data["metrics"]["normalized-ordered"]["out_of_float32_range"] == {
        "networks": 2, "events": [], "networks_by_quantity": {k: 0 for k in ("q", "p", "rho", "jacobian", "angle",
                                                                             "gradient")}}

    V.run(cfg, quiet=True, update_figures=True, figures_dir=str(figures))
    assert [p.name for p in figures.iterdir()] == ["signal_prop.png"]


# ----------------------------------------------------------------------------------------------------------
# Post-LN blocks, MLP biases and the finite-depth exponents
# ----------------------------------------------------------------------------------------------------------
def _pre_ln_forward_without_biases(block, x):
    """The canonical pre-LN block as it was written before placement and sigma_b existed (the same operations in
    the same order)."""
    h = block.params
    hidden = layer_norm(x)
    logits = (hidden @ block.W_Q) @ (hidden @ block.W_K).transpose(-1, -2) / math.sqrt(block.width)
    x = h.skip_A * x + h.alpha_A * (torch.softmax(logits, dim=-1) @ hidden @ block.W_V)
    return h.skip_M * x + h.alpha_M * (block.phi(layer_norm(x) @ block.W_1) @ block.W_2)


def test_block_without_biases_is_the_canonical_block_bit_for_bit():
    """sigma_b = 0, placement "pre": the five weight matrices only and exactly the old arithmetic, so every
    earlier result is reproduced bit for bit."""
    for h in (BlockParams(sigma_V=0.7), BlockParams(residual="plain", activation="relu", alpha_A=0.3)):
        block = CanonicalBlock(h, 64)
        block.reset_parameters(torch.Generator().manual_seed(0))
        assert [name for name, _ in block.named_parameters()] == ["W_Q", "W_K", "W_V", "W_1", "W_2"]
        x = torch.randn(3, 8, 64, generator=torch.Generator().manual_seed(1))
        assert torch.equal(block(x), _pre_ln_forward_without_biases(block, x))


def test_biases_are_drawn_after_the_weights_with_std_sigma_b():
    """With sigma_b > 0 a seed draws the same weights as without biases, then b_1 (d_ff) and b_2 (d) ~ N(0,
    sigma_b^2): over their 1024 entries the relative SE of the sample std is 1/sqrt(2048) = 2.2%, so 10% is 4.5 SE."""
    h = BlockParams(sigma_V=0.7)
    plain, biased = CanonicalBlock(h, 512), CanonicalBlock(h.replace(sigma_b=0.5), 512)
    plain.reset_parameters(torch.Generator().manual_seed(0))
    biased.reset_parameters(torch.Generator().manual_seed(0))
    assert [name for name, _ in biased.named_parameters()] == ["W_Q", "W_K", "W_V", "W_1", "W_2", "b_1", "b_2"]
    for name in ("W_Q", "W_K", "W_V", "W_1", "W_2"):
        assert torch.equal(getattr(plain, name), getattr(biased, name)), name
    assert torch.cat([biased.b_1, biased.b_2]).std().item() == pytest.approx(0.5, rel=0.10)


def test_post_ln_block_normalizes_each_residual_sum():
    """placement "post": every token leaves each sublayer on the sphere |x|^2 = d, and the sublayers read the
    stream itself: x <- LN(a x + alpha F(x)), computed here by hand."""
    h = BlockParams(placement="post", residual="plain", sigma_b=0.5)
    block = CanonicalBlock(h, 64)
    block.reset_parameters(torch.Generator().manual_seed(0))
    x = torch.randn(2, 8, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    block = block.double()
    logits = (x @ block.W_Q) @ (x @ block.W_K).transpose(-1, -2) / 8.0
    y = layer_norm(x + 0.5 * torch.softmax(logits, dim=-1) @ x @ block.W_V)
    y = layer_norm(y + 0.5 * (torch.tanh(y @ block.W_1 + block.b_1) @ block.W_2 + block.b_2))
    out = block(x)
    assert torch.allclose(out, y, rtol=1e-12, atol=1e-12)
    assert torch.allclose(out.pow(2).sum(-1), torch.full((2, 8), 64.0, dtype=torch.float64))


def test_common_mode_jvp_on_one_token_is_the_jvp_on_n_identical_tokens():
    """measure_finite_depth runs the common-mode tangent on one token: with n identical tokens and tangents the
    attention is exactly uniform and its softmax tangent 0, so each token's JVP is the one-token JVP."""
    for h in (FINITE_DEPTH_BASE.replace(n_tokens=8, sigma_V=0.6, sigma_w=2.0),
              SETTINGS["post-LN-biases"].replace(n_tokens=8)):
        gen = torch.Generator().manual_seed(0)
        net = CanonicalTransformer(h, 4, 64).double()
        net.reset_parameters(gen)
        x = collapsed_input(1.0, 8, 64, 3, gen, torch.float64)
        v = torch.randn(3, 1, 64, generator=gen, dtype=torch.float64)
        _, one = torch.func.jvp(net, (x[:, :1],), (v,))
        _, every = torch.func.jvp(net, (x,), (v.expand(3, 8, 64),))
        assert torch.allclose(every, one.expand(3, 8, 64), rtol=1e-12, atol=1e-12)


def test_forward_angle_growth_is_linear_and_resolved_at_its_epsilon0(monkeypatch):
    """The angle rate from the forward growth of the token spread is the linear growth: with the same draws it
    moves by O(sqrt(epsilon_0)) (measured at this chaotic point, lambda_a ~ +0.1: 4e-8 between epsilon_0 = 1e-16
    and 1e-12, 5e-7 at 1e-10, 5e-5 at 1e-6), and float64 rounding does not show down to 1e-16. Bound 2e-7 between
    the epsilon_0 used (1e-12) and 1e-16; 1e-6 would fail it."""
    h = FINITE_DEPTH_BASE.replace(n_tokens=8, sigma_V=0.3, sigma_w=4.0)
    rates = {}
    for eps0 in (1e-16, 1e-12, 1e-6):
        monkeypatch.setattr(random_networks, "FINITE_DEPTH_EPSILON0", eps0)
        rates[eps0] = measure_finite_depth(h, 16, 64, 1.0, 3, seed=4)["per_probe"]["angle"]
    assert np.all(np.abs(rates[1e-12] - rates[1e-16]) < 2e-7), rates
    assert np.any(np.abs(rates[1e-6] - rates[1e-16]) > 2e-7), rates        # the bound can tell
    assert np.all(np.abs(rates[1e-12]) > 0.01)                              # a real growth, not a constant


# Twice the largest SE measured over 6 networks at width 256 over the three settings below (rho 0.004, q 0.020,
# Jacobian growth 0.040, one-block exponents 0.037 and 0.046): a bound on the noise the tolerance may grow to
# (the test uses 12 networks, SE ~0.7 of these).
SE_BOUND = {"rho": 0.008, "q": 0.04, "jacobian": 0.08, "angle": 0.075, "gradient": 0.09}


@pytest.mark.parametrize("name", ["post-LN", "post-LN-biases", "pre-LN-biases"])
def test_post_ln_and_bias_blocks_agree_with_the_sim_map_at_one_block(name):
    """One block of width 256 (n = 8, 12 networks x 4 probes) from the simplex (q0, rho0) = (1, 0.5): rho, q and
    the Jacobian growth E|dX_1/dX_0|_F^2/(nd) against sim.signal_prop.propagate, and both exponents of one block
    at the collapsed state against sim.signal_prop.exponents. Tolerance 4 SE over the networks (measured: every
    gap within 1.5 SE at width 256 and within 1 SE at width 512, so no finite-width floor is needed; most of the
    noise in rho is that of the sampled input simplex, rho0 = 0.48-0.52 per network), plus 1e-5 of
    float32 rounding (post-LN's q is 1 up to it), with the SE itself bounded (SE_BOUND) so that a noisy
    measurement cannot pass by its noise alone."""
    h = SETTINGS[name].replace(n_tokens=8)
    theory, ex = propagate(h, 1, 1.0, 0.5), exponents(h)
    runs = [measure_network(h, 1, 256, 1.0, 0.5, 4, seed) for seed in range(12)]
    blocks = [measure_exponents(h, ex.q, 256, 4, seed) for seed in range(12)]
    measured = {"rho": [r["rho"][1] for r in runs], "q": [r["q"][1] for r in runs],
                "jacobian": [r["jacobian"][1] for r in runs],
                "angle": [b["angle"] for b in blocks], "gradient": [b["gradient"] for b in blocks]}
    predicted = {"rho": theory.rho[1], "q": theory.q[1], "jacobian": theory.jacobian[1], "angle": ex.angle,
                 "gradient": ex.gradient}
    for key, values in measured.items():
        mean, se = np.mean(values), np.std(values, ddof=1) / math.sqrt(len(values))
        assert se <= SE_BOUND[key], (name, key, se)
        assert abs(mean - predicted[key]) <= 4 * se + 1e-5, (name, key, mean, predicted[key], se)


def test_measure_finite_depth_agrees_with_the_sim_finite_depth_exponents():
    """The three depth-16 rates from q0 = 1 at the point where lambda_a < 0 < lambda_g (sigma_V = 1.2,
    sigma_w = 2), measured on 12 networks of width 128 (n = 8, 2 probes each) against
    sim.signal_prop.exponents(h, depth=16, q0=1). Tolerance 4 SE over the networks; measured over 24 networks at
    width 128, SE 0.002-0.005 with every gap within 1 SE at this point, the crossing and the chaotic point (the
    finite-width bias, <= 0.003 there, stays inside the SE); SE bounded by 0.007 (1.5 x the largest expected at 12
    networks) so that noise alone cannot pass."""
    h = FINITE_DEPTH_BASE.replace(n_tokens=8, **FINITE_DEPTH_SETTINGS["finite-depth-split"])
    theory = exponents(h, depth=16, q0=1.0)
    runs = [measure_finite_depth(h, 16, 128, 1.0, 2, seed) for seed in range(12)]
    for key in ("angle", "gradient", "gradient_frobenius"):
        values = [r[key] for r in runs]
        mean, se = np.mean(values), np.std(values, ddof=1) / math.sqrt(len(values))
        assert se <= 0.007, (key, se)
        assert abs(mean - getattr(theory, key)) <= 4 * se, (key, mean, getattr(theory, key), se)
    assert theory.angle < -0.05 and theory.gradient > 0.02        # the rates differ in sign here: a sharp test
    r = runs[0]
    assert r["log_growth"]["angle"].shape == (17,) and r["log_growth"]["angle"][0] == 0.0
    assert r["log_growth"]["gradient"][-1] == pytest.approx(16 * r["gradient"], rel=1e-12)
    assert r["q"][0] == 1.0 and r["per_probe"]["gradient_frobenius"].shape == (2,)


def test_new_settings_run_in_the_quick_preset(tmp_path):
    """The post-LN, bias and finite-depth settings through the command's quick preset (n = 8 to keep it short):
    every row judged, the crossing placed by critical_point at the run's depth (not a fixed point), both figures
    written, and theory and torch agree at every setting."""
    new = ["post-LN", "post-LN-biases", "pre-LN-biases", *FINITE_DEPTH_SETTINGS]
    cfg, _ = V.parse_config(["--quick", "--n-tokens", "8", "--settings", *new, "--out", str(tmp_path / "run")])
    record = V.run(cfg, quiet=True, figures_dir=str(tmp_path / "figures"))
    assert json.loads((tmp_path / "run" / "signal_prop.json").read_text()) == record
    for name in ("signal_prop.png", "signal_prop_finite_depth.png"):
        assert (tmp_path / "run" / name).stat().st_size > 10_000
    claims = [row["claim"] for row in record["verdicts"]]
    assert [claims.count(name) for name in new] == [5, 5, 5, 3, 4, 3, 3]     # 5 per trajectory, 3 (+ crossing)
    crossing = record["metrics"]["finite-depth-crossing"]
    found = critical_point(FINITE_DEPTH_BASE.replace(n_tokens=8), ("sigma_V", "sigma_w"), ((0.2, 1.4), (0.75, 4.5)),
                           depth=8, q0=1.0)
    assert crossing["crossing"]["exact"] and found.exact and crossing["depth"] == 8
    assert (crossing["params"]["sigma_V"], crossing["params"]["sigma_w"]) == (found.params.sigma_V,
                                                                           found.params.sigma_w)
    assert all(row["verdict"] == "PASS" for row in record["verdicts"] if row["verdict"] != "INFO"), \
        V.format_table(record["verdicts"])


def test_the_figures_show_every_judged_row_and_the_command(monkeypatch):
    """signal_prop_figures finds each PASS/FAIL row of verdict_rows on a panel by its quantity (a renamed row
    would drop out of the figure), once, and puts the command's arguments (less --out) in the footer of both
    figures. Tiny networks: the numbers do not matter here, only which rows are drawn."""
    from validate._common import figure_style
    from validate._signal_prop import figures
    from validate._signal_prop.propagation_experiment import evaluate_setting, verdict_rows
    cfg = SignalPropConfig(width=16, n_tokens=4, depth=2, networks=2, probes=1,
                           settings=("normalized-ordered", "finite-depth-crossing"))
    results = {name: evaluate_setting(name, cfg) for name in cfg.settings}
    rows = verdict_rows(results)
    saved = []

    def capture(fig, out_dir, name, *, command, verdicts=()):
        badges = [item for ax in fig.axes for item in getattr(ax, "_figure_style_badges", [])]
        saved.append((name, command, badges))
        figure_style.pyplot().close(fig)
        return name
    monkeypatch.setattr(figure_style, "save", capture)
    paths = figures.signal_prop_figures(results, cfg, "unused", verdicts=rows, argv=["--quick", "--out", "x"])
    assert paths == ["signal_prop.png", "signal_prop_finite_depth.png"]
    assert [command for _, command, _ in saved] == ["python -m validate.signal_prop --quick"] * 2
    shown = [row for _, _, badges in saved for row, _ in badges]
    judged = [row for row in rows if row.verdict != "INFO"]
    assert len(judged) == 5 + 3 and len(rows) == 5 + 4          # the crossing's INFO row is in the title
    assert sorted(map(id, shown)) == sorted(map(id, judged))
