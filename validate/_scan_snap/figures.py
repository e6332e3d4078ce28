"""The scan-and-snap figures: attention over training (cf. Tian et al. 2023, Fig. 4), entropy against time,
the theory regime (torch against Lemma 1's flow, the snap), and the Syn-Medium sweep (cf. Fig. 6)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, and worker machines have none
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from validate._common.reporting import save_figure  # noqa: E402
from validate._scan_snap.experiment import ODE_ERROR_BAR, ScanSnapConfig  # noqa: E402
from validate._scan_snap.fig6 import SweepConfig  # noqa: E402
from validate._scan_snap.models import make_classes  # noqa: E402


def scan_snap_figures(cfg: ScanSnapConfig, A: dict, T: dict, out_dir: str) -> list[str]:
    """The three figures of `python -m validate.scan_snap` in out_dir (A: authors_regime, T: theory_regime)."""
    classes = make_classes(cfg.train.dataset, cfg.train.next_tokens)
    return [_attention(cfg, classes, A, out_dir), _entropy(A, out_dir), _theory(cfg, classes, T, out_dir)]


def _no_data(ax, text: str) -> None:
    """An empty panel that says why it is empty (every run behind it diverged, or a flow failed)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _attention(cfg, classes, A, out_dir) -> str:
    """Attention of class 0 over the common and distinct tokens at several steps, for the smallest and the main
    ratio (of each, the first seed whose run stayed finite)."""
    shown = sorted(set(classes.common_tokens()) | set(classes.distinct_tokens(0)))
    ratios_shown = sorted({A["ratios"][0], cfg.train.lr_ratio})
    fig, axes = plt.subplots(1, len(ratios_shown), figsize=(6 * len(ratios_shown), 3.6), squeeze=False)
    steps = A["steps"]
    picks = [s for s in (0, 2, 4, 6, 8, 10) if s in set(steps.tolist())] + [int(steps[-1])]
    for ax, r in zip(axes[0], ratios_shown):
        if r not in A["attention_first_seed"]:
            _no_data(ax, f"eta_Y/eta_Z = {r:g}: every run diverged (NaN/inf)")
            continue
        seed, att = A["attention_first_seed"][r]
        for i, s in enumerate(picks):
            j = int(np.searchsorted(steps, s))
            ax.plot(range(len(shown)), att[j, 0, shown], marker="o", ms=3,
                    color=plt.cm.viridis(i / max(1, len(picks) - 1)), label=f"step {s}")
        ax.set_title(f"eta_Y/eta_Z = {r:g} (eta_Z = {cfg.train.lr_z:g}, momentum {cfg.train.momentum}, seed {seed})",
                     fontsize=9)
        ax.set_xlabel("token (common, then class-0 distinct in increasing P(l|n))")
        ax.set_ylabel("attention c_{l|n}")
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels([str(t) for t in shown], fontsize=7)
        ax.legend(fontsize=7)
    fig.suptitle("Attention of class 0 over training, cf. paper Fig. 4")
    return save_figure(fig, out_dir, "scan_snap_attention.png", dpi=120, bbox_inches="tight")


def _entropy(A, out_dir) -> str:
    """Entropy on distinct tokens against time for every ratio, mean +- s.e.m. over seeds, and the ODE."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = A["steps"]
    for i, r in enumerate(A["ratios"]):
        e = A["entropy"][r]
        col = plt.cm.plasma(i / max(1, len(A["ratios"]) - 1) * 0.85)
        if "entropy_ode" in A and r in A["entropy_ode"]:
            ax.plot(steps, A["entropy_ode"][r], color=col, ls="--", lw=1)
        if not len(e):
            ax.plot([], [], color=col, label=f"torch, ratio {r:g}: every run diverged")
            continue
        mean = e.mean(0)
        se = e.std(0, ddof=1) / np.sqrt(e.shape[0]) if e.shape[0] > 1 else 0 * mean
        ax.plot(steps, mean, color=col, label=f"torch, ratio {r:g}")
        ax.fill_between(steps, mean - se, mean + se, color=col, alpha=0.25)
    ax.set_xlabel("SGD step")
    ax.set_ylabel("entropy of c_n on distinct tokens (nats)")
    ax.set_title("Syn-Small: entropy vs time (dashed: ODE with eta/(1-momentum))", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "scan_snap_entropy.png", dpi=120, bbox_inches="tight")


def _theory(cfg, classes, T, out_dir) -> str:
    """Theory regime: class-0 attention against the ODE, the error over time, and the back-propagated signal."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    logs = T["logs"]
    x = np.maximum(logs, 0.5)
    dist0 = list(classes.distinct_tokens(0))
    for i, l in enumerate(dist0):
        col = plt.cm.viridis(i / max(1, len(dist0) - 1))
        if T["ode_attention"] is not None:
            axes[0].plot(x, T["ode_attention"][:, 0, l], color=col, lw=1)
        if len(T["attention"]):
            axes[0].plot(x[::3], T["attention"][0][::3, 0, l], "o", ms=2.5, color=col)
    missing = "; ".join(([] if T["ode_attention"] is not None else ["the flow's integration failed"])
                        + ([] if len(T["attention"]) else ["every theory-regime run diverged"]))
    for ax in axes[:2] if missing else []:
        ax.text(0.02, 0.02, missing, transform=ax.transAxes, fontsize=8)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("SGD step")
    axes[0].set_ylabel("c_{l|n}, class-0 distinct tokens")
    axes[0].set_title(f"torch (dots) vs Lemma 1 ODE (lines); plain SGD, eta_Z={T['lr_z']:g}, "
                      f"ratio {cfg.train.lr_ratio:g}", fontsize=8)
    for s, e in zip(T["seeds"], T["errors"]):
        axes[1].plot(x, e, label=f"seed {s}")
    axes[1].axhline(ODE_ERROR_BAR, color="k", ls=":", label=f"{100 * ODE_ERROR_BAR:.0f}% bar")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("SGD step")
    axes[1].set_ylabel("max relative error on distinct tokens")
    axes[1].legend(fontsize=7)
    sl = T["snap_logs"]
    for i, r in enumerate(T["snap"]["ratio"]):
        col = plt.cm.plasma(i / max(1, len(T["snap"]["ratio"]) - 1) * 0.85)
        if r in T["g_meas"]:
            axes[2].plot(sl[1:], T["g_meas"][r][1:], color=col, label=f"torch, ratio {r:g}")
        else:
            axes[2].plot([], [], color=col, label=f"torch, ratio {r:g}: diverged")
        if r in T["g_ode"]:
            axes[2].plot(sl[1:], T["g_ode"][r][1:], color=col, ls="--", lw=1)
        if T["snap"]["t0_prime"][i] is not None:
            axes[2].axvline(T["snap"]["t0_prime"][i], color=col, ls=":", lw=1)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("SGD step")
    axes[2].set_ylabel("mean_n ||Y (e_n - alpha_n)||")
    axes[2].set_title("back-propagated signal; dashed ODE, dotted t0' = K ln M / eta_Y", fontsize=8)
    axes[2].legend(fontsize=7)
    return save_figure(fig, out_dir, "scan_snap_theory.png", dpi=120, bbox_inches="tight")


def fig6_figure(cfg: SweepConfig, agg: dict, out_dir: str) -> str:
    """Final entropy against eta_Y/eta_Z, one panel per K, one line per eta_Z (cf. paper Fig. 6); agg: fig6.aggregate.
    A point whose runs all diverged is a gap, and each panel says how many of its runs diverged."""
    t = cfg.train
    mean, se = agg["mean"], agg["se"]
    fig, axes = plt.subplots(1, len(cfg.next_tokens), figsize=(4 * len(cfg.next_tokens), 3.6), squeeze=False,
                             sharey=True)
    for i, (ax, K) in enumerate(zip(axes[0], cfg.next_tokens)):
        for j, lz in enumerate(cfg.lr_z):
            col = plt.cm.viridis(j / max(1, len(cfg.lr_z) - 1) * 0.9)
            ax.errorbar(cfg.ratios, mean[i, j], yerr=se[i, j], marker="o", ms=3, capsize=2, color=col,
                        label=f"eta_Z = {lz:g}")
        lost = int(agg["diverged"][i].sum())
        if lost:
            ax.text(0.02, 0.02, f"{lost} of {lost + int(agg['finite'][i].sum())} runs diverged (left out)",
                    transform=ax.transAxes, fontsize=7, color="C3")
        ax.set_xscale("log")
        ax.set_xticks(cfg.ratios)
        ax.set_xticklabels([f"{r:g}" for r in cfg.ratios])
        ax.set_title(f"K = {K} next tokens ({K // 2} {'query' if K == 2 else 'queries'})")
        ax.set_xlabel("eta_Y / eta_Z")
    axes[0][0].set_ylabel("final entropy of c_n on distinct tokens")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{t.dataset.title()}, SGD momentum {t.momentum:g}, batch {t.batch}, T={t.seq_len}, "
                 f"{t.steps} steps, {t.init} init (cf. paper Fig. 6)")
    return save_figure(fig, out_dir, "scan_snap_fig6.png", dpi=100)
