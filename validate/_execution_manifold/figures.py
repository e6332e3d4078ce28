"""The figures of the execution-manifold experiment, written to the run's output directory.

    part_one_figures(config, runs, metrics, out_dir)   execution_manifold_dimension.png (r90 per block against
                                                       the null bands), _routing.png (entropy, routing coordinate,
                                                       saturation fit), _collapse.png (window and prefix r90)
    part_two_figures(config, metrics, out_dir)         execution_manifold_commutator.png (alignment, baselines,
                                                       defect), _sae.png (routing capture, probes, ablations)

Each figure shows the verdicts of the claims it illustrates (claims.py; computed from the same results when the
caller does not pass them) and the command that made it, in the package's style (validate/_common/figure_style.py).
Diverged runs are left out (as the claims leave them out); where no finished run is left, each figure shows the
loss curves of the runs until they diverged instead, under the same file name, so every figure is written.
"""
from __future__ import annotations

import os

import numpy as np
from matplotlib.lines import Line2D

from validate._common import figure_style as style
from validate._execution_manifold import geometry as geo
from validate._execution_manifold.claims import part_one_claims, part_two_claims
from validate._execution_manifold.commutator_probe import early_late
from validate._execution_manifold.part_one import BLOCK_KINDS, block_names, finished, point_name, stat_matrix

PART_ONE_NAMES = ("execution_manifold_dimension.png", "execution_manifold_routing.png",
                  "execution_manifold_collapse.png")
PART_TWO_NAMES = ("execution_manifold_commutator.png", "execution_manifold_sae.png")
COMMAND = "validate.execution_manifold"
RHO_EXEC = r"$\rho_\mathrm{exec}$"
_SEVERITY = {"FAIL": 2, "PASS": 1, "INFO": 0}


def _log_scale(ax) -> None:
    """A log y-axis where the axis has positive data to show (one without, e.g. all-NaN series read back from a
    store, cannot be drawn on a log axis)."""
    values = [np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines()]
    if any(np.any(np.isfinite(v) & (v > 0)) for v in values):
        ax.set_yscale("log")
        style.plain_log_labels(ax, "y")


def _legend_below(ax, handles=None, labels=None, ncol: int = 2) -> None:
    """The panel's legend under its x label, where it hides no data (constrained layout makes room)."""
    args = () if handles is None else (handles, labels)
    ax.legend(*args, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol)


def _claim_rows(rows, claim: str) -> dict:
    """The rows of one claim ("C1"; stage-wise claims such as "C10 ... (step 2000)" included) by measure."""
    by_measure = {}
    for row in rows:
        if row.claim.split(" ")[0] == claim:
            by_measure.setdefault(row.measure or "", []).append(row)
    return by_measure


def _worst(rows) -> str:
    """One verdict for several rows of a measure: FAIL if any failed, else PASS if any passed, else INFO."""
    return max((r.verdict for r in rows), key=_SEVERITY.get)


def _claim_badge(ax, rows, claim: str) -> None:
    """The claim's verdict per measure (paper, null) above the panel: "C7 paper PASS  null FAIL"; several rows of
    a measure (nulls, checkpoints) count as one, failing when any fails."""
    for i, (measure, group) in enumerate(_claim_rows(rows, claim).items()):
        style.verdict_badge(ax, _worst(group), f"{claim} {measure}".strip() if i == 0 else measure)


def _claim_lines(rows, claims) -> list[tuple]:
    """Figure-wide verdict lines, one per row of the claims: the claim, its measure, what was measured."""
    lines = []
    for row in rows:
        if row.claim.split(" ")[0] in claims:
            measure = f" ({row.measure})" if row.measure else ""
            lines.append((row, f"{row.claim}{measure}: {row.quantity}: {row.measurement} "
                               f"[wanted {row.prediction}]"))
    return lines


def diverged_figures(names, curves: list[tuple[str, dict]], out_dir: str, why: str, *, argv=None) -> list[str]:
    """In place of figures that need a finished run: the loss curve of every run (label, result) until it
    diverged, once per name."""
    paths = []
    for name in names:
        fig, ax = style.subplots(1, 1, panel=(7, 4))
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
        ax.set_title(f"{why}: nothing to show here; the loss until each run diverged", loc="left")
        if curves:
            ax.legend()
        paths.append(style.save(fig, out_dir, name, command=style.command_line(COMMAND, argv)))
    return paths


def _per_layer(values) -> tuple[np.ndarray, np.ndarray]:
    """x, y of a per-layer value drawn flat across its layer (layer l spans l - 0.5 to l + 0.5)."""
    values = np.asarray(values, dtype=np.float64)
    x = np.repeat(np.arange(values.size + 1) - 0.5, 2)[1:-1]
    return x, np.repeat(values, 2)


def _coordinate_words(name: str) -> str:
    """"L4.W_K.PC2" -> "PC 2 of layer 4's W_K trajectory" (the routing coordinate's name in part_one)."""
    try:
        layer, kind, pc = name.split(".")
        return rf"PC {int(pc[2:])} of layer {int(layer[1:])}'s ${kind}$ trajectory"
    except ValueError:
        return name


# ----------------------------------------------------------------------------------------------------------
# Part one
# ----------------------------------------------------------------------------------------------------------

def part_one_figures(config, runs: dict, metrics: dict, out_dir: str, *, verdicts=None, argv=None) -> list[str]:
    """Part one's three figures from run_part_one's `runs` and part_one_claims' metrics (config: its
    PartOneConfig); returns their paths. verdicts: part_one_claims' rows (recomputed when not given); argv: the
    command's arguments, for the footer (None: this process's)."""
    command = style.command_line(COMMAND, argv)
    main_key = point_name(config.run.markers, config.run.modulus)
    main = finished(runs[main_key])
    if not main:
        return diverged_figures(PART_ONE_NAMES, [(f"seed {r.get('seed')}", r) for r in runs[main_key]], out_dir,
                                f"every run of {main_key} diverged", argv=argv)
    rows = part_one_claims(config, runs, out_dir)[0] if verdicts is None else verdicts
    names = block_names(config.run.n_layers)
    layers = np.arange(config.run.n_layers)
    n_seeds = len(main)
    r_label = f"$r_{{{int(round(config.q * 100))}}}$"  # r90 at the default q = 0.9
    paths = []

    # r90 per block and layer with null bands --------------------------------------------------------------
    fig, axes = style.subplots(1, 4, panel=(3.7, 3.2), sharey=True)
    offsets = (np.arange(n_seeds) - (n_seeds - 1) / 2) * 0.08  # the seeds side by side within a layer
    for ax, kind in zip(axes, BLOCK_KINDS):
        index = [names.index(f"L{l}.{kind}") for l in layers]
        observed = stat_matrix(main, names, "r_q")[:, index]
        for null_kind, color, label in (("random_walk", "0.6", "N1 random walk"),
                                        ("shuffled_increments", "tab:cyan", "N2 shuffled increments")):
            mean = stat_matrix(main, names, "r_q", null_kind, "null_mean")[:, index].mean(axis=0)
            sd = stat_matrix(main, names, "r_q", null_kind, "null_sd")[:, index].mean(axis=0)
            # one flat band per layer (layer l spans l +- 0.5): nothing is interpolated between layers
            low, high = _per_layer(mean - 2 * sd), _per_layer(mean + 2 * sd)
            ax.fill_between(low[0], low[1], high[1], color=color, alpha=0.35, lw=0,
                            label=f"{label}: {style.spread_label('2 s.d.', config.null_draws, 'draws')}")
            ax.plot(*_per_layer(mean), color=color, lw=1)
        ax.axhspan(3, 4, color="tab:orange", alpha=0.15, lw=0, label="paper: 3-4")
        for offset, seed_values in zip(offsets, observed):
            style.unclip(ax.plot(layers + offset, seed_values, "o", color="tab:blue", alpha=0.45, ms=3))
        mean_obs = observed.mean(axis=0)
        err = observed.std(axis=0, ddof=1) / np.sqrt(n_seeds) if n_seeds > 1 else 0 * mean_obs
        style.unclip(ax.errorbar(layers, mean_obs, yerr=err, color="tab:blue", marker="s", ms=5, ls="none",
                                 lw=1.5, label=f"measured: {style.spread_label('s.e.m.', n_seeds)}"
                                 if n_seeds > 1 else "measured (one seed: no s.e.m.)"))
        ax.set_title(f"${kind}$ blocks", loc="left")
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
        style.integer_axis(ax, "y")
    axes[0].plot([], [], "o", color="tab:blue", alpha=0.45, ms=3, label="measured: each seed")
    axes[0].set_ylabel(f"{r_label}: PCs holding {config.q:.0%} of the variance")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center")
    fig.suptitle(f"Trajectory dimension per block against null models with the same {config.run.n_snapshots} "
                 f"snapshots")
    paths.append(style.save(fig, out_dir, PART_ONE_NAMES[0], command=command,
                            verdicts=_claim_lines(rows, ("C1", "C2", "C6"))))

    # entropy and routing coordinate over training -----------------------------------------------------------
    steps = np.array(main[0]["snapshot_steps"])
    first_seed = main[0].get("seed", config.seeds[0])  # the first seed that did not diverge
    seq_len = config.run.seq_len
    fig, axes = style.subplots(2, 2, panel=(5.6, 3.4))
    entropy = np.array([r["attention"]["entropy"] for r in main])  # (seeds, layers, snapshots)
    for layer in layers:
        axes[0, 0].plot(steps, entropy[:, layer].mean(axis=0), label=f"layer {layer}")
    axes[0, 0].axhline(np.log(seq_len), color="k", ls=":", lw=1, label=r"$\ln T$ (uniform attention)")
    axes[0, 0].set_ylabel("readout-query attention entropy (nats)")
    axes[0, 0].set_title(f"attention concentration (mean over {n_seeds} seeds and all m)", loc="left")
    axes[0, 0].legend(loc="center right")
    accuracy = main[0]["attention"]["accuracy_by_m"]
    colours = {m: f"C{i}" for i, m in enumerate(accuracy)}
    for m, acc in accuracy.items():
        axes[0, 1].plot(steps, acc, color=colours[m])
    for m, h in main[0]["attention"]["entropy_by_m_last_layer"].items():
        axes[0, 1].plot(steps, np.array(h) / np.log(seq_len), ls="--", lw=1, color=colours.get(m, "0.5"))
    handles = [Line2D([], [], color=colours[m], label=f"m = {m}") for m in accuracy]
    handles += [Line2D([], [], color="0.3", label="probe accuracy"),
                Line2D([], [], color="0.3", ls="--", lw=1, label=r"last-layer entropy / $\ln T$")]
    fig.legend(handles=handles, loc="outside right upper")
    axes[0, 1].set_ylim(0, 1.05)
    axes[0, 1].set_title(f"seed {first_seed}: accuracy and entropy per m", loc="left")
    arrays = np.load(os.path.join(out_dir, main[0]["arrays"]))
    last = main[0]["routing"][-1]
    coordinate = arrays[f"routing:{config.run.n_layers - 1}"]
    h_last = entropy[0, -1]
    axes[1, 0].plot(steps, coordinate, color="tab:purple")
    axes[1, 0].set_ylabel("routing coordinate")
    axes[1, 0].set_title(f"seed {first_seed}: {_coordinate_words(last['coordinate_name'])}", loc="left")
    axes[1, 0].text(0.98, 0.97, rf"Spearman with the entropy $\rho_S$ = {last['rho']:+.2f} "
                    f"({style.p_value_text(last['p_value'])})\nwith the step (a clock) {last['time_rho']:+.2f}",
                    transform=axes[1, 0].transAxes, fontsize=style.SMALL_SIZE, ha="right", va="top")
    for ax in (axes[0, 0], axes[0, 1], axes[1, 0]):
        ax.set_xlabel("step")
    sat = last["saturation"]
    grid = np.linspace(coordinate.min(), coordinate.max(), 200)
    points = axes[1, 1].scatter(coordinate, h_last, c=steps, cmap=style.SEQUENTIAL_CMAP, s=16,
                                label="snapshots (colour: step)")
    style.unclip(points)
    style.colorbar(points, axes[1, 1], "step")
    fitted = [sat[k] for k in ("h_min", "h_max", "r0", "tau")]
    if np.all(np.isfinite(fitted)) and sat["tau"] != 0:  # NaN: nothing moved, so nothing was fitted
        axes[1, 1].plot(grid, geo.saturation_curve(grid, *fitted), color="tab:red",
                        label=f"sigmoid fit: $R^2$ = {sat['r_squared']:.2f}, "
                              f"late/peak slope {sat['late_slope_ratio']:.2f}")
    axes[1, 1].set_xlabel("routing coordinate")
    axes[1, 1].set_ylabel("last-layer entropy (nats)")
    axes[1, 1].set_title(f"seed {first_seed}: saturation along the routing coordinate", loc="left")
    axes[1, 1].legend(loc="upper left")
    paths.append(style.save(fig, out_dir, PART_ONE_NAMES[1], command=command, verdicts=_claim_lines(rows, ("C4",))))

    # collapse: window r90 of the joint trajectory against the random-walk null ------------------------------
    fig, axes = style.subplots(1, 2, panel=(5.6, 3.4))
    window_end = steps[config.window - 1:]
    seed_colours = style.sequential_colours(n_seeds, "Blues", 0.95, start=0.5)
    null_mean = np.mean([r["joint"]["window_null_mean"] for r in main], axis=0)
    null_sd = np.mean([r["joint"]["window_null_sd"] for r in main], axis=0)
    axes[0].fill_between(window_end, null_mean - 2 * null_sd, null_mean + 2 * null_sd, step="post", color="0.6",
                         alpha=0.4, lw=0, label="N1 random walk, same step norms: "
                         + style.spread_label("2 s.d.", config.null_draws, "draws"))
    axes[0].step(window_end, null_mean, where="post", color="0.3", ls="--", lw=1)
    for i, (colour, r) in enumerate(zip(seed_colours, main)):
        seed = r.get("seed", "?")
        style.integer_steps(axes[0], window_end, r["joint"]["window_curve"], color=colour,
                            label=f"measured, seed {seed}")
        style.integer_steps(axes[1], steps[2:], r["joint"]["prefix_curve"], color=colour,
                            label=f"measured, seed {seed}")
        axes[0].axvline(r["joint"]["collapse_step"], color=colour, ls="-.", lw=1,
                        label="collapse step (each seed)" if i == 0 else None)
    axes[0].axvspan(0, 0.3 * steps[-1], color="tab:orange", alpha=0.1, lw=0, label="paper: first 30%")
    axes[0].set_xlabel("step at the window's end")
    axes[0].set_ylabel(f"{r_label} of the last {config.window} snapshots (all blocks)")
    axes[0].set_title("sliding-window dimension", loc="left")
    axes[1].axhline(metrics["joint_null_r90_mean"]["random_walk"], color="0.4", ls="--",
                    label=f"N1 random walk: {r_label} of the whole trajectory (mean)")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(f"{r_label} of snapshots 0..t (all blocks)")
    axes[1].set_title("prefix dimension", loc="left")
    handles, labels = axes[0].get_legend_handles_labels()
    more = axes[1].get_legend_handles_labels()
    shown = dict(zip(labels + more[1], handles + more[0]))  # the seeds' entries once
    fig.legend(shown.values(), shown.keys(), loc="outside lower center", ncol=3)
    paths.append(style.save(fig, out_dir, PART_ONE_NAMES[2], command=command, verdicts=_claim_lines(rows, ("C5",))))
    return paths


# ----------------------------------------------------------------------------------------------------------
# Part two
# ----------------------------------------------------------------------------------------------------------

def part_two_figures(config, metrics: dict, out_dir: str, *, verdicts=None, argv=None) -> list[str]:
    """Part two's two figures from its metrics (config: its PartTwoConfig); returns their paths. verdicts:
    part_two_claims' rows (recomputed when not given); argv: the command's arguments, for the footer."""
    command = style.command_line(COMMAND, argv)
    if metrics.get("diverged"):
        return diverged_figures(PART_TWO_NAMES, [(f"part two, seed {config.seed}", metrics)], out_dir,
                                "part two's run diverged", argv=argv)
    rows = part_two_claims(config, metrics) if verdicts is None else verdicts
    c = metrics["commutators"]
    acc = c["accumulated"]
    samples = config.commutator_samples
    paths = []
    fig, axes = style.subplots(2, 2, panel=(6.0, 4.3))
    ax = axes[0, 0]
    steps = np.array(acc["rho_exec"]["steps"])
    ax.plot(steps, acc["rho_exec"]["median_sample"], "o-", ms=3, label=f"{RHO_EXEC}, sample of median defect")
    ax.plot(steps, acc["rho_exec"]["median_over_samples"], "-", lw=1,
            label=f"{RHO_EXEC}, median over {samples} samples")
    for key, label in (("rho_rand_paper", "random subspace of all P parameters (paper)"),
                       ("rho_rand_support", "random, gradient-receiving parameters only"),
                       ("rho_rand_block", "random, same number of directions per block")):
        ax.plot(steps, acc[key]["median_over_samples"], "--", label=label)
    _log_scale(ax)
    ax.set_xlabel("step")
    ax.set_ylabel(r"$\rho = \|BB^\top\delta\|\,/\,\|\delta\|$")
    ax.set_title(f"commutator in the execution basis (K = {acc['K']}, P = {acc['P']:,})", loc="left")
    _legend_below(ax)
    ax = axes[0, 1]
    for key, label in (("ratio_paper", "paper's baseline"), ("ratio_support", "support-matched"),
                       ("ratio_block", "block-matched")):
        line, = ax.plot(steps, acc[key]["median_over_samples"], "o-", ms=3, label=f"{RHO_EXEC} / {label}")
        early, late = early_late(steps, config.early_fraction)
        ax.hlines([acc[key]["median_over_samples_early"]], early[0], early[-1], color=line.get_color(), lw=3)
        ax.hlines([acc[key]["median_over_samples_late"]], late[0], late[-1], color=line.get_color(), lw=3)
    final_steps = np.array(c["final"]["steps"])
    ax.plot(final_steps, np.sqrt(c["final"]["ratio_energy_block"]), ":", color="k",
            label=r"final basis: $\sqrt{\mathrm{energy}\,/\,\mathrm{block\ expectation}}$")
    ax.plot([], [], color="0.3", lw=3, label=f"medians of the first / last {config.early_fraction:.0%}")
    ax.axhline(1, color="0.5", lw=0.8)
    _log_scale(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("alignment ratio (median over samples)")
    ax.set_title("alignment against random baselines", loc="left")
    _legend_below(ax)
    _claim_badge(ax, rows, "C7")
    ax = axes[1, 0]
    for key, label in (("perp_complement_frac", r"$1-\rho$ (the paper's code)"),
                       ("perp_norm_frac", r"$\sqrt{1-\rho^2}$ (norm outside)"),
                       ("perp_energy_frac", r"$1-\rho^2$ (energy outside)")):
        ax.plot(steps, acc[key]["median_sample"], "o-", ms=3, label=label)
    ax.axhline(0.92, color="tab:red", ls=":", label="paper: 0.92")
    ax.set_xlabel("step")
    ax.set_ylabel("fraction outside the execution subspace")
    ax.set_title("three readings of '>92% perpendicular'", loc="left")
    _legend_below(ax)
    _claim_badge(ax, rows, "C8")
    ax = axes[1, 1]
    d = c["defect"]
    ax.plot(d["steps"], d["median"], "o-", ms=3, label=f"median over {samples} samples")
    ax.plot(d["steps"], d["p90"], "--", label="90th percentile")
    ax2 = ax.twinx()
    ax2.spines["right"].set_visible(True)
    ax2.plot(steps, acc["inheritance_ratio"]["median_over_samples"], color="tab:green", lw=1,
             label=f"{RHO_EXEC}" + r"$(\delta)\,/\,$" + f"{RHO_EXEC}(mean gradient) (right axis)")
    ax2.set_ylabel("inheritance ratio", color="tab:green")
    _log_scale(ax)
    ax.set_xlabel("step")
    ax.set_ylabel(r"$D = \|\delta\|\,/\,(\|\eta g_A\|\,\|\eta g_B\|)$")
    ax.set_title("normalized defect (float64 paths)", loc="left")
    handles = ax.get_legend_handles_labels()
    extra = ax2.get_legend_handles_labels()
    _legend_below(ax, handles[0] + extra[0], handles[1] + extra[1])
    _claim_badge(ax, rows, "C9")
    run = config.run
    fig.suptitle(f"SGD commutators: {run.n_layers} layers, d = {run.d_model}, {run.optimizer} lr {run.lr:g}, "
                 rf"{samples} samples per snapshot, $\eta$ = {config.commutator_lr:g}")
    paths.append(style.save(fig, out_dir, PART_TWO_NAMES[0], command=command))

    stages = metrics["sae"]
    fig, axes = style.subplots(1, 3, panel=(4.6, 4.0))
    labels = sorted(stages, key=int)  # checkpoint steps (JSON keys are text)
    x = np.arange(len(labels))
    ax = axes[0]
    width = 0.2
    for i, (key, label) in enumerate((("m", "m"), ("position", "position"), ("is_value", "is value"),
                                      ("marker_index", "marker index"))):
        ax.bar(x + (i - 1.5) * width, [stages[s]["topk"]["routing_targets"]["capture"][key] for s in labels],
               width, label=label)
    ax.axhline(0.7, color="tab:red", ls=":", lw=1, label="bar: 0.7")
    ax.set_xticks(x, [f"step {s}" for s in labels])
    ax.set_ylim(0, 1.35)
    ax.set_ylabel("best single-latent score")
    ax.set_title("routing capture (TopK SAE)", loc="left")
    ax.legend(ncol=3, loc="upper center")
    _claim_badge(ax, rows, "C10")
    ax = axes[1]
    ax.bar(x - 0.3, [stages[s]["topk"]["single_latent_probe_y"] for s in labels], 0.2, label="best single latent")
    ax.bar(x - 0.1, [stages[s]["relu_l1"]["single_latent_probe_y"] for s in labels], 0.2,
           label="best single latent (L1 SAE)")
    ax.bar(x + 0.1, [stages[s]["topk"]["all_latent_probe_y"] for s in labels], 0.2, label="all latents")
    ax.bar(x + 0.3, [stages[s]["dense_probe_y"] for s in labels], 0.2, label="raw residual")
    ax.axhline(stages[labels[0]]["chance"], color="k", ls=":", lw=1, label="chance")
    ax.set_xticks(x, [f"step {s}" for s in labels])
    ax.set_ylabel("held-out accuracy for y")
    ax.set_title(f"execution isolation at L{stages[labels[0]]['layer']}, position T-1", loc="left")
    ax.set_ylim(0, 1.3)                          # room above the bars for the legend
    ax.legend(ncol=2, loc="upper center")
    _claim_badge(ax, rows, "C11")
    ax = axes[2]
    last = stages[labels[-1]]["topk"]["ablation"]
    sizes = last["sizes"]
    for key, label in (("routing", "routing latents"), ("y", "y latents"), ("random", "random latents"),
                       ("pca", "top PCA directions")):
        style.unclip(ax.plot(sizes, last[key], "o-", label=label))
    ax.axhline(stages[labels[-1]]["paper_code"]["delta"], color="k", ls=":",
               label="the code's splice (6 top-variance latents)")
    ax.set_xlabel("latents (or directions) ablated")
    style.integer_axis(ax, "x")
    ax.set_ylabel("accuracy drop")
    ax.set_title(f"ablation at L{stages[labels[-1]]['layer']}, T-1, step {labels[-1]}", loc="left")
    _legend_below(ax)
    _claim_badge(ax, rows, "C12")
    fig.suptitle(f"Sparse autoencoders on the residual stream at {len(labels)} checkpoints (error term kept "
                 "in ablations)")
    paths.append(style.save(fig, out_dir, PART_TWO_NAMES[1], command=command))
    return paths
