"""The scan-and-snap figures: attention over training (cf. Tian et al. 2023, Fig. 4), entropy against time,
the theory regime (torch against Lemma 1's flow, the snap time against Theorem 4), and the Syn-Medium sweep
(cf. Fig. 6). Each carries the verdicts of the rows it illustrates and the command that made it
(validate/_common/figure_style.py)."""
from __future__ import annotations

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from validate._common import figure_style as style
from validate._scan_snap import experiment
from validate._scan_snap.experiment import ODE_ERROR_BAR, ScanSnapConfig
from validate._scan_snap.fig6 import SweepConfig, verdicts as fig6_verdicts
from validate._scan_snap.models import make_classes

RATIO = r"$\eta_Y/\eta_Z$"
ETA_Z = r"$\eta_Z$"
ENTROPY = r"entropy of $c_n$ on distinct tokens (nats)"


def scan_snap_figures(cfg: ScanSnapConfig, A: dict, T: dict, out_dir: str, *, verdicts=None, argv=None) -> list[str]:
    """The three figures of `python -m validate.scan_snap` in out_dir (A: authors_regime, T: theory_regime).
    verdicts: the command's rows (experiment.verdicts(cfg, A, T) when not given); argv: its arguments, for the
    footer (None: this process's, see figure_style.command_line)."""
    rows = experiment.verdicts(cfg, A, T) if verdicts is None else verdicts
    command = style.command_line("validate.scan_snap", argv)
    classes = make_classes(cfg.train.dataset, cfg.train.next_tokens)
    return [_attention(cfg, classes, A, rows, out_dir, command), _entropy(A, rows, out_dir, command),
            _theory(cfg, classes, T, rows, out_dir, command)]


def _row(rows, text: str):
    """The verdict row whose quantity contains `text` (None when the command did not judge it)."""
    return next((r for r in rows if text in r.quantity), None)


def _badge(ax, rows, text: str, label: str) -> None:
    row = _row(rows, text)
    if row is not None:
        style.verdict_badge(ax, row, label)


def _seeds_text(counts) -> str:
    """"3 seeds", or "2-3 seeds" where diverged runs left some ratios with fewer."""
    counts = sorted(set(int(c) for c in counts if c))
    if not counts:
        return "0 seeds"
    return f"{counts[0]} seed{'s' * (counts[0] != 1)}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds"


def _attention(cfg, classes, A, rows, out_dir, command) -> str:
    """Attention of class 0 over the common and distinct tokens at several steps, for the smallest and the main
    ratio (of each, the first seed whose run stayed finite)."""
    common = list(classes.common_tokens())
    shown = sorted(set(common) | set(classes.distinct_tokens(0)))
    ratios_shown = sorted({A["ratios"][0], cfg.train.lr_ratio})
    fig, axes = style.subplots(1, len(ratios_shown), panel=(5.6, 3.6), squeeze=False, sharey=False)
    steps = A["steps"]
    picks = [s for s in (0, 2, 4, 6, 8, 10) if s in set(steps.tolist())] + [int(steps[-1])]
    colours = style.sequential_colours(len(picks))
    for ax, r in zip(axes[0], ratios_shown):
        ax.set_title(f"{RATIO} = {r:g}", loc="left")
        if r not in A["attention_first_seed"]:
            style.no_data(ax, f"{RATIO} = {r:g}: every run diverged (NaN/inf)")
            continue
        seed, att = A["attention_first_seed"][r]
        ax.axvspan(-0.5, len(common) - 0.5, color="0.93", lw=0)
        for colour, s in zip(colours, picks):
            j = int(np.searchsorted(steps, s))
            style.unclip(ax.plot(range(len(shown)), att[j, 0, shown], marker="o", ms=3, color=colour,
                                 label=f"{s}"))
        ax.text(0.01, 0.98, "common tokens", transform=ax.transAxes, va="top", fontsize=style.SMALL_SIZE,
                color="0.35")
        ax.set_title(f"{RATIO} = {r:g}, seed {seed}", loc="left")
        ax.set_xlabel(r"token: common, then class 0's distinct tokens by increasing $P(l\,|\,n)$")
        ax.set_ylabel(r"attention $c_{l|n}$ of class $n = 0$")
        ax.set_xticks(range(len(shown)), [str(t) for t in shown], fontsize=style.SMALL_SIZE)
        ax.set_xlim(-0.5, len(shown) - 0.5)
        if r == cfg.train.lr_ratio:
            _badge(ax, rows, "drop order of distinct tokens", "Thm 3 drop order")
            _badge(ax, rows, "every common token's attention falls", "Thm 2b common fall")
    handles = [Line2D([], [], color=c, marker="o", ms=3, label=f"{s}") for c, s in zip(colours, picks)]
    fig.legend(handles=handles, title="SGD step", loc="outside right center")
    fig.suptitle(f"Attention of class 0 over training: {cfg.train.dataset.title()}, {ETA_Z} = {cfg.train.lr_z:g}, "
                 f"SGD momentum {cfg.train.momentum:g} (cf. paper Fig. 4)")
    return style.save(fig, out_dir, "scan_snap_attention.png", command=command)


def _entropy(A, rows, out_dir, command) -> str:
    """Entropy on distinct tokens against time for every ratio, mean and s.e.m. band over seeds, and the ODE."""
    fig, ax = style.subplots(1, 1, panel=(7.4, 3.8))
    steps = A["steps"]
    colours = style.sequential_colours(len(A["ratios"]), "plasma", 0.85)
    counts = [len(A["entropy"][r]) for r in A["ratios"]]
    ratio_handles = []
    for col, r in zip(colours, A["ratios"]):
        e = A["entropy"][r]
        if "entropy_ode" in A and r in A["entropy_ode"]:
            ax.plot(steps, A["entropy_ode"][r], color=col, ls="--", lw=1)
        if not len(e):
            ratio_handles.append(Line2D([], [], color=col, label=f"{r:g}: every run diverged"))
            continue
        mean = e.mean(0)
        se = e.std(0, ddof=1) / np.sqrt(e.shape[0]) if e.shape[0] > 1 else 0 * mean
        ax.plot(steps, mean, color=col)
        ax.fill_between(steps, mean - se, mean + se, color=col, alpha=0.25, lw=0)
        ratio_handles.append(Line2D([], [], color=col, label=f"{r:g}"))
    fig.legend(handles=ratio_handles, title=RATIO, loc="outside right upper")
    fig.legend(handles=[Line2D([], [], color="0.3", label="torch, mean"),
                       Patch(color="0.3", alpha=0.25, label=f"± s.e.m., {_seeds_text(counts)}"),
                       Line2D([], [], color="0.3", ls="--", lw=1, label=r"ODE at $\eta/(1-\mathrm{momentum})$")],
              loc="outside right lower")
    ax.set_xlabel("SGD step")
    ax.set_ylabel(ENTROPY)
    ax.set_title("Syn-Small: entropy against time", loc="left")
    _badge(ax, rows, "final entropy rises with eta_Y/eta_Z", "rises with ratio")
    return style.save(fig, out_dir, "scan_snap_entropy.png", command=command)


def _theory(cfg, classes, T, rows, out_dir, command) -> str:
    """Theory regime: class-0 attention against the ODE, its error over time, the back-propagated signal whose
    peak is the snap, and the snap time against eta_Y."""
    fig, axes = style.subplots(2, 2, panel=(5.4, 3.5))
    (att_ax, err_ax), (signal_ax, snap_ax) = axes
    logs = T["logs"]
    dist0 = list(classes.distinct_tokens(0))
    colours = style.sequential_colours(len(dist0))
    for col, l in zip(colours, dist0):
        if T["ode_attention"] is not None:
            att_ax.plot(logs, T["ode_attention"][:, 0, l], color=col, lw=1)
        if len(T["attention"]):
            style.unclip(att_ax.plot(logs[::3], T["attention"][0][::3, 0, l], "o", ms=2.5, color=col))
    tokens = ScalarMappable(cmap=ListedColormap(colours), norm=Normalize(-0.5, len(dist0) - 0.5))
    bar = style.colorbar(tokens, att_ax, r"distinct token of class 0, by $P(l\,|\,n)$")
    bar.set_ticks(range(len(dist0)), labels=[str(t) for t in dist0])
    bar.ax.tick_params(labelsize=style.SMALL_SIZE)
    missing = "; ".join(([] if T["ode_attention"] is not None else ["the flow's integration failed"])
                        + ([] if len(T["attention"]) else ["every theory-regime run diverged"]))
    for ax in (att_ax, err_ax) if missing else ():
        ax.text(0.02, 0.02, missing, transform=ax.transAxes, fontsize=style.SMALL_SIZE)
    att_ax.legend(handles=[Line2D([], [], color="0.3", marker="o", ls="none", ms=3,
                                  label=f"torch, seed {T['seeds'][0]}" if T["seeds"] else "torch"),
                           Line2D([], [], color="0.3", lw=1, label="Lemma 1 gradient flow")], loc="upper left")
    att_ax.set_ylabel(r"attention $c_{l|n}$, class 0's distinct tokens")
    att_ax.set_title(f"plain SGD, {ETA_Z} = {T['lr_z']:g}, {RATIO} = {cfg.train.lr_ratio:g}, "
                     f"T = {cfg.theory_seq_len}", loc="left")

    for s, e in zip(T["seeds"], T["errors"]):
        err_ax.plot(logs, e, label=f"seed {s}")
    err_ax.axhline(ODE_ERROR_BAR, color="k", ls=":", label=f"tolerance {100 * ODE_ERROR_BAR:.0f}%")
    err_ax.set_ylabel("largest relative error on distinct tokens")
    err_ax.set_ylim(0, 1.15 * ODE_ERROR_BAR)
    err_ax.legend(loc="center left")
    err_ax.set_title("torch against the flow", loc="left")
    _badge(err_ax, rows, "torch vs Lemma 1 ODE", "torch = flow")

    snap_logs = T["snap_logs"]
    s = T["snap"]
    ratio_colours = style.sequential_colours(len(s["ratio"]), "plasma", 0.85)
    for i, (col, r) in enumerate(zip(ratio_colours, s["ratio"])):
        if r in T["g_meas"]:
            signal_ax.plot(snap_logs, T["g_meas"][r], color=col, label=f"{r:g}")
            if s["measured"][i] is not None:
                style.unclip(signal_ax.plot([s["measured"][i]], [np.interp(s["measured"][i], snap_logs,
                                                                           T["g_meas"][r])], "v", color=col, ms=5))
        else:
            signal_ax.plot([], [], color=col, label=f"{r:g}: diverged")
        if r in T["g_ode"]:
            signal_ax.plot(snap_logs, T["g_ode"][r], color=col, ls="--", lw=1)
        if s["t0_prime"][i] is not None:
            signal_ax.axvline(s["t0_prime"][i], color=col, ls=":", lw=1)
    first = signal_ax.legend(title=RATIO, loc="lower left", bbox_to_anchor=(1.01, 0.0))
    signal_ax.add_artist(first)
    signal_ax.legend(handles=[Line2D([], [], color="0.3", label="torch"),
                              Line2D([], [], color="0.3", marker="v", ls="none", ms=5, label="its peak: the snap"),
                              Line2D([], [], color="0.3", ls="--", lw=1, label="Lemma 1 flow"),
                              Line2D([], [], color="0.3", ls=":", lw=1, label=r"$t_0' = K\ln M/\eta_Y$")],
                     loc="upper left", bbox_to_anchor=(1.01, 1.0))
    signal_ax.set_ylabel(r"$\mathrm{mean}_n\ \|Y(e_n - \alpha_n)\|$")
    signal_ax.set_title("back-propagated signal", loc="left")

    eta_y = np.array(s["eta_Y"], dtype=float)
    known = [i for i, m in enumerate(s["measured"]) if m is not None]
    flow = [i for i, m in enumerate(s["ode"]) if m is not None]
    predicted = [i for i, t in enumerate(s["t0_prime"]) if t is not None]
    if predicted:
        snap_ax.plot(eta_y[predicted], [s["t0_prime"][i] for i in predicted], color="k", lw=1,
                     label=r"$t_0' = K\ln M/\eta_Y$ (slope $-1$)")
    if flow:
        style.unclip(snap_ax.plot(eta_y[flow], [s["ode"][i] for i in flow], "s", mfc="none", color="tab:blue",
                                  ms=7, label="peak of the Lemma 1 flow"))
    if known:
        fit = (f", fitted slope {T['slope']:.2f}" + (f" ± {T['slope_se']:.2f}" if T["slope_se"] is not None else "")
               if T["slope"] is not None else "")
        style.unclip(snap_ax.plot(eta_y[known], [s["measured"][i] for i in known], "o", color="tab:red",
                                  label=f"peak of torch{fit}"))
    if not (known or flow or predicted):
        style.no_data(snap_ax, "no snap time: every run diverged and no prediction could be computed")
    else:
        snap_ax.set_xscale("log")
        snap_ax.set_yscale("log")
        style.plain_log_labels(snap_ax, "both")
        snap_ax.legend(loc="lower left")
    snap_ax.set_xlabel(r"$\eta_Y$")
    snap_ax.set_ylabel("snap time (SGD steps)")
    snap_ax.set_title(f"snap time, {RATIO} = {', '.join(f'{r:g}' for r in s['ratio'])}", loc="left")
    _badge(snap_ax, rows, "snap time ~ eta_Y^p", r"snap $\propto\eta_Y^{-1}$")

    for ax in (att_ax, err_ax, signal_ax):
        ax.set_xscale("symlog", linthresh=1, linscale=0.4)  # step 0 included, logarithmic beyond step 1
        ax.set_xlim(0, None)
        style.plain_log_labels(ax, "x")
        ax.set_xlabel("SGD step")
    fig.suptitle("Theory regime: the torch Y/Z model against Lemma 1's gradient flow, and the snap (Theorem 4)")
    return style.save(fig, out_dir, "scan_snap_theory.png", command=command)


def fig6_figure(cfg: SweepConfig, agg: dict, out_dir: str, *, argv=None) -> str:
    """Final entropy against eta_Y/eta_Z, one panel per K, one line per eta_Z (cf. paper Fig. 6); agg: fig6.aggregate.
    A point whose runs all diverged is a gap, and each panel says how many of its runs diverged. The sweep's
    verdicts (fig6.verdicts) are printed below the panels; argv: the command's arguments, for the footer."""
    t = cfg.train
    mean, se = agg["mean"], agg["se"]
    fig, axes = style.subplots(1, len(cfg.next_tokens), panel=(3.6, 3.3), squeeze=False, sharey=True)
    colours = style.sequential_colours(len(cfg.lr_z))
    for i, (ax, K) in enumerate(zip(axes[0], cfg.next_tokens)):
        for col, j, lz in zip(colours, range(len(cfg.lr_z)), cfg.lr_z):
            style.unclip(ax.errorbar(cfg.ratios, mean[i, j], yerr=se[i, j], marker="o", ms=3, color=col,
                                     label=f"{lz:g}"))
        lost = int(agg["diverged"][i].sum())
        if lost:
            ax.text(0.02, 0.02, f"{lost} of {lost + int(agg['finite'][i].sum())} runs diverged (left out)",
                    transform=ax.transAxes, fontsize=style.SMALL_SIZE, color="C3")
        ax.set_xscale("log")
        ax.set_xticks(cfg.ratios, [f"{r:g}" for r in cfg.ratios])
        ax.minorticks_off()
        ax.set_title(f"K = {K} next tokens ({K // 2} {'query' if K == 2 else 'queries'})", loc="left")
        ax.set_xlabel(RATIO)
    n = len(cfg.seeds)
    finite = agg["finite"]
    seeds = f"{n} seeds" if np.all(finite == n) else f"{int(finite.min())}-{n} seeds (diverged runs left out)"
    axes[0][0].set_ylabel("final " + ENTROPY)
    fig.legend(*axes[0][0].get_legend_handles_labels(), title=f"{ETA_Z}\n(bars: s.e.m.,\n{seeds})",
               loc="outside right center")
    fig.suptitle(f"{t.dataset.title()}, SGD momentum {t.momentum:g}, batch {t.batch}, T = {t.seq_len}, "
                 f"{t.steps} steps, {t.init} init (cf. paper Fig. 6)")
    labels = ("runs that diverged", f"entropy falls as {ETA_Z} grows, in each (K, ratio) cell",
              f"entropy rises with {RATIO} beyond 2, in each (K, {ETA_Z}) cell",
              f"below the threshold: H(ratio 2) - H(ratio 1)")
    rows = fig6_verdicts(agg, cfg)
    keys = ("runs that diverged", "entropy falls as eta_Z grows", "entropy rises with the ratio beyond 2",
            "H(ratio 2) - H(ratio 1)")
    verdicts = [(row, f"{label}: {_short(row.measurement)}") for key, label in zip(keys, labels)
                for row in [_row(rows, key)] if row is not None]
    return style.save(fig, out_dir, "scan_snap_fig6.png", command=style.command_line("validate.scan_snap_sweep", argv),
                      verdicts=verdicts)


def _short(text: str, limit: int = 110) -> str:
    """A verdict's measurement, cut at `limit` characters (the JSON and the table keep it whole)."""
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."
