"""The figures of the execution-manifold experiment, written to the run's output directory.

    part_one_figures(config, runs, metrics, out_dir)   execution_manifold_dimension.png (r90 per block against
                                                       the null bands), _routing.png (entropy, routing coordinate,
                                                       saturation fit), _collapse.png (window and prefix r90)
    part_two_figures(config, metrics, out_dir)         execution_manifold_commutator.png (alignment, baselines,
                                                       defect), _sae.png (routing capture, probes, ablations)

Diverged runs are left out (as the claims leave them out); where no finished run is left, each figure shows the
loss curves of the runs until they diverged instead, under the same file name, so every figure is written.
"""
from __future__ import annotations

import os

import numpy as np

from validate._common.reporting import save_figure
from validate._execution_manifold import geometry as geo
from validate._execution_manifold.commutator_probe import early_late
from validate._execution_manifold.part_one import BLOCK_KINDS, block_names, finished, point_name, stat_matrix

PART_ONE_NAMES = ("execution_manifold_dimension.png", "execution_manifold_routing.png",
                  "execution_manifold_collapse.png")
PART_TWO_NAMES = ("execution_manifold_commutator.png", "execution_manifold_sae.png")


def _pyplot():
    """pyplot on the file-only Agg backend, imported when a figure is drawn rather than with the command."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _log_scale(ax) -> None:
    """A log y-axis where the axis has positive data to show (one without, e.g. all-NaN series read back from a
    store, cannot be drawn on a log axis)."""
    values = [np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines()]
    if any(np.any(np.isfinite(v) & (v > 0)) for v in values):
        ax.set_yscale("log")


def diverged_figures(names, curves: list[tuple[str, dict]], out_dir: str, why: str) -> list[str]:
    """In place of figures that need a finished run: the loss curve of every run (label, result) until it
    diverged, once per name."""
    plt = _pyplot()
    paths = []
    for name in names:
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, result in curves:
            d = result["diverged"]
            ax.plot(result["snapshot_steps"], result["loss_curve"], "o-", ms=3,
                    label=f"{label}: {d['where']} at step {d['step']}")
        losses = np.array([v for _, result in curves for v in result["loss_curve"]], dtype=np.float64)
        losses = losses[np.isfinite(losses)]
        if losses.size and losses.min() > 0 and losses.max() > 100 * losses.min():
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (mean since the previous snapshot)")
        ax.set_title(f"{why}: nothing to show here; the loss until each run diverged", fontsize=9)
        if curves:
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_figure(fig, out_dir, name))
    return paths


# ----------------------------------------------------------------------------------------------------------
# Part one
# ----------------------------------------------------------------------------------------------------------

def part_one_figures(config, runs: dict, metrics: dict, out_dir: str) -> list[str]:
    """Part one's three figures from run_part_one's `runs` and part_one_claims' metrics (config: its
    PartOneConfig); returns their paths."""
    plt = _pyplot()
    main_key = point_name(config.run.markers, config.run.modulus)
    main = finished(runs[main_key])
    if not main:
        return diverged_figures(PART_ONE_NAMES, [(f"seed {r.get('seed')}", r) for r in runs[main_key]], out_dir,
                                f"every run of {main_key} diverged")
    names = block_names(config.run.n_layers)
    layers = np.arange(config.run.n_layers)
    paths = []

    # r90 per block and layer with null bands --------------------------------------------------------------
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), sharey=True)
    for ax, kind in zip(axes, BLOCK_KINDS):
        index = [names.index(f"L{l}.{kind}") for l in layers]
        observed = stat_matrix(main, names, "r_q")[:, index]
        for null_kind, color, label in (("random_walk", "0.6", "N1 random walk"),
                                        ("shuffled_increments", "tab:cyan", "N2 shuffled increments")):
            mean = stat_matrix(main, names, "r_q", null_kind, "null_mean")[:, index].mean(axis=0)
            sd = stat_matrix(main, names, "r_q", null_kind, "null_sd")[:, index].mean(axis=0)
            ax.fill_between(layers, mean - 2 * sd, mean + 2 * sd, color=color, alpha=0.35,
                            label=f"{label} (mean +- 2 s.d.)")
            ax.plot(layers, mean, color=color, lw=1)
        ax.axhspan(3, 4, color="tab:orange", alpha=0.15, label="paper: 3-4")
        for seed_values in observed:
            ax.plot(layers, seed_values, "o", color="tab:blue", alpha=0.35, ms=3)
        mean_obs = observed.mean(axis=0)
        err = observed.std(axis=0, ddof=1) / np.sqrt(len(observed)) if len(observed) > 1 else 0 * mean_obs
        ax.errorbar(layers, mean_obs, yerr=err, color="tab:blue", marker="s", lw=2, capsize=3,
                    label="measured r90 (seeds, mean +- s.e.)")
        ax.set_title(kind)
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
    axes[0].set_ylabel(f"r{int(round(config.q * 100))} (PCs for {config.q:.0%} of variance)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Trajectory dimension per block against null models with the same {config.run.n_snapshots} "
                 f"snapshots ({len(main)} seeds)", fontsize=10)
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir, PART_ONE_NAMES[0]))

    # entropy and routing coordinate over training -----------------------------------------------------------
    steps = np.array(main[0]["snapshot_steps"])
    first_seed = main[0].get("seed", config.seeds[0])  # the first seed that did not diverge
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    entropy = np.array([r["attention"]["entropy"] for r in main])  # (seeds, layers, snapshots)
    for layer in layers:
        axes[0, 0].plot(steps, entropy[:, layer].mean(axis=0), label=f"layer {layer}")
    axes[0, 0].axhline(np.log(config.run.seq_len), color="k", ls=":", lw=1, label="ln T (uniform)")
    axes[0, 0].set_xlabel("step")
    axes[0, 0].set_ylabel("readout-query attention entropy (nats)")
    axes[0, 0].set_title("attention concentration (mean over seeds and m)")
    axes[0, 0].legend(fontsize=7)
    for m, acc in main[0]["attention"]["accuracy_by_m"].items():
        axes[0, 1].plot(steps, acc, label=f"m = {m}")
    for m, h in main[0]["attention"]["entropy_by_m_last_layer"].items():
        axes[0, 1].plot(steps, np.array(h) / np.log(config.run.seq_len), ls="--", lw=1,
                        label=f"last-layer entropy / ln T, m = {m}")
    axes[0, 1].set_xlabel("step")
    axes[0, 1].set_title(f"seed {first_seed}: probe accuracy (solid), entropy (dashed)")
    axes[0, 1].legend(fontsize=6, ncol=2)
    arrays = np.load(os.path.join(out_dir, main[0]["arrays"]))
    last = main[0]["routing"][-1]
    coordinate = arrays[f"routing:{config.run.n_layers - 1}"]
    h_last = entropy[0, -1]
    axes[1, 0].plot(steps, coordinate, color="tab:purple")
    axes[1, 0].set_xlabel("step")
    axes[1, 0].set_ylabel(f"routing coordinate {last['coordinate_name']}")
    axes[1, 0].set_title(f"seed {first_seed}: routing coordinate, rho_S = {last['rho']:+.2f} "
                         f"(p = {last['p_value']:.3f}; clock {last['time_rho']:+.2f})", fontsize=9)
    sat = last["saturation"]
    grid = np.linspace(coordinate.min(), coordinate.max(), 200)
    points = axes[1, 1].scatter(coordinate, h_last, c=steps, cmap="viridis", s=18, label="snapshots")
    fig.colorbar(points, ax=axes[1, 1], label="step")
    fitted = [sat[k] for k in ("h_min", "h_max", "r0", "tau")]
    if np.all(np.isfinite(fitted)) and sat["tau"] != 0:  # NaN: nothing moved, so nothing was fitted
        axes[1, 1].plot(grid, geo.saturation_curve(grid, *fitted), color="tab:red",
                        label=f"sigmoid fit R^2 = {sat['r_squared']:.2f}, S = {sat['late_slope_ratio']:.2f}")
    axes[1, 1].set_xlabel("routing coordinate")
    axes[1, 1].set_ylabel("last-layer entropy (nats)")
    axes[1, 1].set_title("saturation along the routing coordinate", fontsize=9)
    axes[1, 1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir, PART_ONE_NAMES[1]))

    # collapse: window r90 of the joint trajectory against the random-walk null ------------------------------
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    window_end = steps[config.window - 1:]
    for i, r in enumerate(main):
        axes[0].plot(window_end, r["joint"]["window_curve"], color="tab:blue", alpha=0.6,
                     label="measured (each seed)" if i == 0 else None)
        axes[1].plot(steps[2:], r["joint"]["prefix_curve"], color="tab:blue", alpha=0.6,
                     label="measured prefix r90 (each seed)" if i == 0 else None)
    null_mean = np.mean([r["joint"]["window_null_mean"] for r in main], axis=0)
    null_sd = np.mean([r["joint"]["window_null_sd"] for r in main], axis=0)
    axes[0].fill_between(window_end, null_mean - 2 * null_sd, null_mean + 2 * null_sd, color="0.6", alpha=0.4,
                         label="N1 random walk, same step norms (mean +- 2 s.d.)")
    axes[0].plot(window_end, null_mean, color="0.3", ls="--", lw=1)
    for r in main:
        axes[0].axvline(r["joint"]["collapse_step"], color="tab:red", lw=0.8, alpha=0.6)
    axes[0].axvspan(0, 0.3 * steps[-1], color="tab:orange", alpha=0.1, label="paper: first 30%")
    axes[0].set_xlabel("step at window end")
    axes[0].set_ylabel(f"r90 of the last {config.window} snapshots (all blocks jointly)")
    axes[0].set_title("sliding-window dimension; red lines: collapse step", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].axhline(metrics["joint_null_r90_mean"]["random_walk"], color="0.4", ls="--",
                    label="N1 null r90 of the whole trajectory")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("r90 of snapshots 0..t (all blocks jointly)")
    axes[1].set_title("prefix dimension", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir, PART_ONE_NAMES[2]))
    return paths


# ----------------------------------------------------------------------------------------------------------
# Part two
# ----------------------------------------------------------------------------------------------------------

def part_two_figures(config, metrics: dict, out_dir: str) -> list[str]:
    """Part two's two figures from its metrics (config: its PartTwoConfig); returns their paths."""
    if metrics.get("diverged"):
        return diverged_figures(PART_TWO_NAMES, [(f"part two, seed {config.seed}", metrics)], out_dir,
                                "part two's run diverged")
    plt = _pyplot()
    c = metrics["commutators"]
    acc = c["accumulated"]
    paths = []
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    steps = np.array(acc["rho_exec"]["steps"])
    ax.plot(steps, acc["rho_exec"]["median_sample"], "o-", ms=3, label="rho_exec (median-D sample)")
    ax.plot(steps, acc["rho_exec"]["median_over_samples"], "-", lw=1, label="rho_exec (median over samples)")
    for key, label in (("rho_rand_paper", "random, whole P (paper)"), ("rho_rand_support", "random, support"),
                       ("rho_rand_block", "random, block-matched")):
        ax.plot(steps, acc[key]["median_over_samples"], "--", label=label)
    _log_scale(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("||B B^T delta|| / ||delta||")
    ax.set_title(f"commutator in the accumulated execution basis (K={acc['K']}, P={acc['P']})", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for key, label in (("ratio_paper", "/ paper baseline"), ("ratio_support", "/ support-matched"),
                       ("ratio_block", "/ block-matched")):
        line, = ax.plot(steps, acc[key]["median_over_samples"], "o-", ms=3, label=f"rho_exec {label}")
        early, late = early_late(steps, config.early_fraction)
        ax.hlines([acc[key]["median_over_samples_early"]], early[0], early[-1], color=line.get_color(), lw=3)
        ax.hlines([acc[key]["median_over_samples_late"]], late[0], late[-1], color=line.get_color(), lw=3)
    final_steps = np.array(c["final"]["steps"])
    ax.plot(final_steps, np.sqrt(c["final"]["ratio_energy_block"]), ":", color="k",
            label="final basis, sqrt(energy / block E)")
    ax.axhline(1, color="0.5", lw=0.8)
    _log_scale(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("alignment ratio")
    ax.set_title("ratios (thick bars: early / late medians, first / last 20%)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    for key in ("perp_complement_frac", "perp_norm_frac", "perp_energy_frac"):
        ax.plot(steps, acc[key]["median_sample"], "o-", ms=3, label=key)
    ax.axhline(0.92, color="tab:red", ls=":", label="paper: 0.92")
    ax.set_xlabel("step")
    ax.set_ylabel("fraction outside the execution subspace")
    ax.set_title("three readings of '>92% perpendicular'", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    d = c["defect"]
    ax.plot(d["steps"], d["median"], "o-", ms=3, label="median D")
    ax.plot(d["steps"], d["p90"], "--", label="p90 D")
    ax2 = ax.twinx()
    ax2.plot(steps, acc["inheritance_ratio"]["median_over_samples"], color="tab:green", lw=1,
             label="rho_exec(delta) / rho_exec(mean gradient)")
    ax2.set_ylabel("inheritance ratio", color="tab:green")
    _log_scale(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("D = ||delta|| / (||eta g_A|| ||eta g_B||)")
    ax.set_title("normalized defect (float64 paths) and gradient-inheritance control", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="lower right")
    run = config.run
    fig.suptitle(f"SGD commutators, {run.n_layers} layers d={run.d_model}, {run.optimizer} lr {run.lr}, "
                 f"{config.commutator_samples} samples per snapshot, eta={config.commutator_lr}", fontsize=10)
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir, PART_TWO_NAMES[0]))

    stages = metrics["sae"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = sorted(stages, key=int)  # checkpoint steps (JSON keys are text)
    x = np.arange(len(labels))
    ax = axes[0]
    width = 0.2
    for i, (key, label) in enumerate((("m", "m"), ("position", "position"), ("is_value", "is value"),
                                      ("marker_index", "marker index"))):
        ax.bar(x + (i - 1.5) * width, [stages[s]["topk"]["routing_targets"]["capture"][key] for s in labels],
               width, label=label)
    ax.axhline(0.7, color="tab:red", ls=":", lw=1)
    ax.set_xticks(x, [f"step {s}" for s in labels])
    ax.set_ylim(0, 1.3)
    ax.set_ylabel("best single-latent score")
    ax.set_title("routing capture (TopK SAE, marker/value sites)", fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="upper center")
    ax = axes[1]
    ax.bar(x - 0.3, [stages[s]["topk"]["single_latent_probe_y"] for s in labels], 0.2, label="best single latent")
    ax.bar(x - 0.1, [stages[s]["relu_l1"]["single_latent_probe_y"] for s in labels], 0.2,
           label="best single latent (L1)")
    ax.bar(x + 0.1, [stages[s]["topk"]["all_latent_probe_y"] for s in labels], 0.2, label="all latents")
    ax.bar(x + 0.3, [stages[s]["dense_probe_y"] for s in labels], 0.2, label="raw residual")
    ax.axhline(stages[labels[0]]["chance"], color="k", ls=":", lw=1, label="chance")
    ax.set_xticks(x, [f"step {s}" for s in labels])
    ax.set_ylabel("held-out accuracy for y")
    ax.set_title(f"execution isolation at L{stages[labels[0]]['layer']}, T-1", fontsize=9)
    ax.set_ylim(0, 1.2)                          # room above the bars for the legend
    ax.legend(fontsize=7, ncol=2, loc="upper center")
    ax = axes[2]
    last = stages[labels[-1]]["topk"]["ablation"]
    sizes = last["sizes"]
    for key, label in (("routing", "routing latents"), ("y", "y latents"), ("random", "random latents"),
                       ("pca", "top PCA directions")):
        ax.plot(sizes, last[key], "o-", label=label)
    ax.axhline(stages[labels[-1]]["paper_code"]["delta"], color="k", ls=":",
               label="code's splice (6 top-variance latents)")
    ax.set_xlabel("n ablated")
    ax.set_ylabel("accuracy drop")
    ax.set_title(f"ablation at L{stages[labels[-1]]['layer']}, T-1, error term kept (step {labels[-1]})",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir, PART_TWO_NAMES[1]))
    return paths
