"""validate/: the torch block's parametrisation, theory-vs-torch convergence in width, and the CLI."""
import json
import math
import numpy as np
import pytest
import torch

from sim.signal_prop import propagate
from theory.signal_prop import BlockParams
from validate import signal_prop as V
from validate._signal_prop.propagation_experiment import SignalPropConfig, same_experiment
from validate._signal_prop.transformer import (CanonicalBlock, CanonicalTransformer, gram_order_parameters,
                                              simplex_tokens)


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
