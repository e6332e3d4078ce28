"""The figures of the signal-propagation commands, as Matplotlib figures (the commands save them to --out)."""
from __future__ import annotations

import json

import numpy as np

from validate._common.checks import shown
from validate._signal_prop.phase_experiment import PhaseDiagramConfig
from validate._signal_prop.propagation_experiment import SignalPropConfig


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")   # files only: no display is needed or assumed
    import matplotlib.pyplot as plt
    return plt


def signal_prop_figure(results: dict, cfg: SignalPropConfig):
    """Per setting (columns): rho, q and the Jacobian growth against depth, theory and torch (mean ± SE)."""
    plt = _pyplot()
    names = list(results)
    fig, axes = plt.subplots(3, len(names), figsize=(4.2 * len(names), 9.5), squeeze=False)
    layers = np.arange(cfg.depth + 1)
    for col, name in enumerate(names):
        r = results[name]
        for row, (key, label) in enumerate((("rho", r"$\rho$ = p/q"), ("q", "q"),
                                            ("jacobian", r"$E|dX_l/dX_0|_F^2/(nd)$"))):
            ax = axes[row, col]
            theory, mean = _finite_or_nan(r["theory"][key]), _finite_or_nan(r["measured"][key]["mean"])
            ax.plot(layers, theory, "-", color="C0", label="theory (finite n)")
            ax.errorbar(layers, mean, yerr=_finite_or_nan(r["measured"][key]["se"]), fmt="o",
                        ms=3.5, color="C3", label=f"torch d={cfg.width}, {len(cfg.network_seeds())} networks")
            if key == "jacobian" and (np.concatenate([theory, mean]) > 0).any():
                ax.set_yscale("log")
            ax.set_ylabel(label)
            if row == 2:
                ax.set_xlabel("block l")
            if row == 0:
                e = r["measured_exponents"]
                ax.set_title(f"{name}\n$\\lambda_a$ th {shown(r['theory']['angle_exponent'], '+.3f')} / "
                             f"torch {shown(e['angle'], '+.3f')}\n$\\lambda_g$ th "
                             f"{shown(r['theory']['gradient_exponent'], '+.3f')} / torch "
                             f"{shown(e['gradient'], '+.3f')}", fontsize=9)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"Token geometry through random canonical transformers: n={cfg.n_tokens}, "
                 f"depth {cfg.depth}, input rho0={cfg.rho0}", fontsize=11)
    fig.tight_layout()
    return fig


def _label(name: str) -> str:
    return {"alpha": r"$\alpha=\alpha_A=\alpha_M$", "alpha_A": r"$\alpha_A$", "alpha_M": r"$\alpha_M$",
            "sigma_A": r"$\sigma_A$", "sigma_V": r"$\sigma_V$", "sigma_w": r"$\sigma_w$",
            "sigma_2": r"$\sigma_2$"}[name]


def _finite_or_nan(values) -> np.ndarray:
    """values as a float array (None -> NaN) with +-inf as NaN: what a plot can draw."""
    values = np.array(values, dtype=float)
    return np.where(np.isfinite(values), values, np.nan)


def phase_diagram_figure(cfg: PhaseDiagramConfig, maps: dict, analysis: dict, rows: list[dict]):
    """Predicted exponent maps with their zero curves, the trained loss on the plane, the loss against the
    exponents and against |lambda|, and the test-loss curves of the first seed. Diverged points are marked x;
    non-finite exponents and losses are left blank."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    mx, my = cfg.map_axes()
    tx, ty = cfg.train_axes()
    gx_, gy_ = np.meshgrid(tx, ty)
    crit = analysis["metrics"]["predicted_critical_point"]
    best = analysis["metrics"]["min_loss_point"]
    mean = analysis["losses"]["mean"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))

    def crosses_zero(values):
        values = values[np.isfinite(values)]
        return values.size > 0 and values.min() < 0 < values.max()

    def zero_curves(ax, legend=False):
        for values, color, name in ((maps["angle"], "k", r"$\lambda_a=0$"), (maps["gradient"], "m",
                                                                               r"$\lambda_g=0$")):
            if crosses_zero(values):
                ax.contour(mx, my, np.ma.masked_invalid(values), levels=[0.0], colors=color, linewidths=2)
            ax.plot([], [], color=color, lw=2, label=name + ("" if crosses_zero(values) else " (not in window)"))
        ax.plot(crit[cfg.x_field], crit[cfg.y_field], "*", ms=18, mfc="gold", mec="k",
                label="predicted critical point")
        if legend:
            ax.legend(loc="upper right", fontsize=8, framealpha=0.85)

    for ax, key, title in ((axes[0, 0], "angle", r"angle exponent $\lambda_a$ (per block)"),
                           (axes[0, 1], "gradient", r"gradient exponent $\lambda_g$ (per block)")):
        values = _finite_or_nan(maps[key])
        span = max(np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.0, 1e-12)
        mesh = ax.pcolormesh(mx, my, values, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -span, span), shading="auto")
        fig.colorbar(mesh, ax=ax)
        zero_curves(ax, legend=key == "angle")
        ax.plot(gx_, gy_, ".", color="0.3", ms=4)
        ax.set(title=f"predicted {title}\n{cfg.map_points}x{cfg.map_points} map", xlabel=_label(cfg.x_field),
               ylabel=_label(cfg.y_field))

    ax = axes[0, 2]
    task = cfg.train.task
    finite = _finite_or_nan(mean)
    top = max(task.context_free_loss(), np.nanmax(finite) if np.isfinite(finite).any() else -np.inf)
    mesh = ax.pcolormesh(tx, ty, finite, cmap="viridis", shading="nearest", vmin=task.bayes_loss(), vmax=top)
    fig.colorbar(mesh, ax=ax, label="final test loss (mean over seeds)")
    for jy, jx in zip(*np.nonzero(~np.isfinite(mean))):
        ax.plot(tx[jx], ty[jy], "x", color="r", ms=12, mew=3)
    zero_curves(ax)
    if best["loss"] is not None:
        ax.plot(best[cfg.x_field], best[cfg.y_field], "o", ms=14, mfc="none", mec="w", mew=3)
    ax.set(title=f"trained: final test loss, depth {cfg.train.depth}, width {cfg.train.width}\n"
                 f"(o: minimum; x: diverged; floor {task.bayes_loss():.3f}, "
                 f"no mixing {task.context_free_loss():.3f})",
           xlabel=_label(cfg.x_field), ylabel=_label(cfg.y_field),
           xlim=(mx[0], mx[-1]), ylim=(my[0], my[-1]))

    ax = axes[1, 0]
    angle, gradient = _finite_or_nan(maps["train_angle"]).ravel(), _finite_or_nan(maps["train_gradient"]).ravel()
    scatter = ax.scatter(angle, gradient, c=finite.ravel(), s=70, cmap="viridis", edgecolors="k",
                         plotnonfinite=True)
    fig.colorbar(scatter, ax=ax, label="final test loss")
    ax.axhline(0, color="m", lw=1)
    ax.axvline(0, color="k", lw=1)
    ax.set(title="final test loss against the two exponents\n(one dot per grid point)",
           xlabel=r"$\lambda_a$", ylabel=r"$\lambda_g$")

    ax = axes[1, 1]
    metrics = analysis["metrics"]
    predictor = _finite_or_nan(analysis["predictor"]).ravel()
    per_seed = analysis["losses"]["per_seed"]
    for k, seed in enumerate(cfg.seeds):
        ax.plot(predictor, _finite_or_nan(per_seed[:, k]), "o", alpha=0.5, label=f"seed {seed}")
    ax.plot(predictor, finite.ravel(), "k_", ms=14, mew=2, label="mean")
    ax.axhline(task.bayes_loss(), color="g", ls="--", label="Bayes floor")
    ax.axhline(task.context_free_loss(), color="r", ls="--", label="best without token mixing")
    ax.set(title=f"Spearman {shown(metrics['spearman'], '+.2f')} (p={shown(metrics['spearman_p'], '.1g')}); "
                 f"seed-to-seed {shown(metrics['seed_to_seed_spearman'], '+.2f')}; "
                 f"{metrics['diverged_runs']} of {metrics['runs']} runs diverged",
           xlabel=r"$|\lambda|=\sqrt{\lambda_a^2+\lambda_g^2}$", ylabel="final test loss")
    ax.legend(fontsize=8, loc="best", framealpha=0.85)

    ax = axes[1, 2]
    known = predictor[np.isfinite(predictor)]
    low, spread = (known.min(), max(np.ptp(known), 1e-12)) if known.size else (0.0, 1.0)
    colors = plt.cm.plasma(np.clip((np.nan_to_num(predictor, nan=low + spread) - low) / spread, 0, 1))
    first_seed = {json.dumps(r["point"], sort_keys=True): r for r in rows if r["seed"] == cfg.seeds[0]}
    for k, p in enumerate(cfg.train_points()):
        result = first_seed[json.dumps(p, sort_keys=True)]["result"]
        ax.plot(result["eval_steps"], _finite_or_nan(result["test_loss"]), color=colors[k], lw=1)
    ax.axhline(task.bayes_loss(), color="g", ls="--")
    ax.axhline(task.context_free_loss(), color="r", ls="--")
    ax.set(title=f"test-loss curves, seed {cfg.seeds[0]}\n(colour: |lambda|, dark = near 0)",
           xlabel="step", ylabel="test loss")
    fig.suptitle(f"Trainability phase diagram: canonical transformer, {cfg.base.residual} residual, "
                 f"{cfg.base.activation}, n={cfg.base.n_tokens}; distance min-loss to predicted point "
                 f"{shown(metrics['distance_cells'], '.2f')} cells", fontsize=12)
    fig.tight_layout()
    return fig
