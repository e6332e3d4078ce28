"""The figures of the signal-propagation commands, as Matplotlib figures (the commands save them to --out)."""
from __future__ import annotations

import json

import numpy as np

from validate._common import figure_style as fs
from validate._common.checks import shown
from validate._signal_prop.phase_analysis import DEFINITIONS, OPTIMIZER_NAMES, on_zero_curve
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


# zero curves: the angle exponent in black, the gradient exponent in magenta (common mode) or orange (Frobenius);
# solid asymptotic, dashed finite depth (predicted), dotted measured on initialized networks
ZERO_STYLES = {
    "angle": ("k", "solid", r"$\lambda_a=0$ (asymptotic)"),
    "gradient": ("m", "solid", r"$\lambda_g=0$ (asymptotic)"),
    "fd_angle": ("k", "dashed", r"$\lambda_a=0$ (depth $L$)"),
    "fd_gradient": ("m", "dashed", r"$\lambda_g=0$ (depth $L$, common mode)"),
    "fd_gradient_frobenius": ("darkorange", "dashed", r"$\lambda_g=0$ (depth $L$, Frobenius)"),
    "measured_angle": ("k", "dotted", r"$\lambda_a=0$ (measured at init)"),
    "measured_gradient_frobenius": ("darkorange", "dotted", r"$\lambda_g=0$ (measured, Frobenius)"),
}
CROSSING_COLOURS = {"common": "m", "frobenius": "darkorange", "measured": "w"}


def _has_zero(values) -> bool:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return values.size > 0 and values.min() <= 0 <= values.max() and np.ptp(values) > 0


def _zero_curves(ax, curves: dict) -> None:
    """Draw the zero curve of each (x, y, values) in `curves` (keys of ZERO_STYLES) with its legend entry; a
    curve that does not enter the window gets an entry that says so."""
    for key, (x, y, values) in curves.items():
        colour, style, label = ZERO_STYLES[key]
        present = _has_zero(values)
        if present:
            ax.contour(x, y, np.ma.masked_invalid(np.asarray(values, float)), levels=[0.0], colors=colour,
                       linestyles=style, linewidths=1.8)
        ax.plot([], [], color=colour, ls=style, lw=1.8, label=label + ("" if present else " (not in window)"))


def _window(ax, xs, ys) -> None:
    """Limits half a training cell beyond the grid, so cells drawn with shading='nearest' show whole."""
    dx, dy = (xs[1] - xs[0]) / 2, (ys[1] - ys[0]) / 2
    ax.set_xlim(xs[0] - dx, xs[-1] + dx)
    ax.set_ylim(ys[0] - dy, ys[-1] + dy)


def _loss_mesh(ax, xs, ys, mean, label: str, vmin=None, vmax=None):
    finite = _finite_or_nan(mean)
    if vmin is None and np.isfinite(finite).any():
        vmin, vmax = np.nanmin(finite), np.nanmax(finite)
    mesh = ax.pcolormesh(xs, ys, finite, cmap=fs.SEQUENTIAL_CMAP, shading="nearest", vmin=vmin, vmax=vmax)
    fs.colorbar(mesh, ax, label)
    for jy, jx in zip(*np.nonzero(~np.isfinite(np.asarray(mean, float)))):
        fs.unclip(ax.plot(xs[jx], ys[jy], "x", color="r", ms=10, mew=2.5))
    return mesh


def _mark_minimum(ax, xs, ys, mean, se, best: dict, cfg) -> None:
    """The loss minimum (open white circle) and the points tied with it within 2 SE (white dots)."""
    from validate._signal_prop.phase_analysis import minimum_and_ties
    found = minimum_and_ties(mean, se)
    if found is None:
        return
    _, _, tied = found
    jy, jx = np.nonzero(tied)
    fs.unclip(ax.plot(xs[jx], ys[jy], "o", ms=4, color="w", mec="k", mew=0.6, ls="none",
                      label="tied with the minimum (2 SE)"))
    fs.unclip(ax.plot(best[cfg.x_field], best[cfg.y_field], "o", ms=15, mfc="none", mec="w", mew=2.5,
                      label="loss minimum"))


def _curve_direction(x, y) -> np.ndarray:
    """The principal direction (unit vector) of the points (x, y): which way a roughly straight curve runs."""
    points = np.stack([x, y], 1) - np.mean(np.stack([x, y], 1), 0) if len(x) else np.zeros((0, 2))
    if len(points) < 2:
        return np.array([1.0, 0.0])
    direction = np.linalg.svd(points, full_matrices=False)[2][0]
    return direction if direction[0] + direction[1] >= 0 else -direction


def phase_diagram_figure(cfg: PhaseDiagramConfig, maps: dict, analysis: dict, rows: list[dict]):
    """The default plane: the predicted exponent maps, asymptotic and of the trained depth, with their zero
    curves; the trained loss on the plane with every zero curve; the loss against the exponents and against
    |lambda|; the test-loss curves of the first seed. Diverged points are marked x; non-finite exponents and
    losses are left blank."""
    mx, my = cfg.map_axes()
    tx, ty = cfg.train_axes()
    gx_, gy_ = np.meshgrid(tx, ty)
    metrics = analysis["metrics"]
    best = metrics["min_loss_point"]
    mean, se = analysis["losses"]["mean"], analysis["losses"]["se"]
    depth = cfg.train.depth
    fig, axes = fs.subplots(2, 4, panel=(4.4, 3.6))
    curves = {key: (mx, my, maps[key]) for key in ("angle", "gradient", "fd_angle", "fd_gradient",
                                                   "fd_gradient_frobenius")}

    for ax, key, title in ((axes[0, 0], "angle", r"asymptotic angle exponent $\lambda_a$"),
                           (axes[0, 1], "gradient", r"asymptotic gradient exponent $\lambda_g$"),
                           (axes[0, 2], "fd_angle", rf"depth-{depth} angle exponent $\lambda_a^{{(L)}}$"),
                           (axes[0, 3], "fd_gradient", rf"depth-{depth} gradient exponent (common mode)")):
        values = _finite_or_nan(maps[key])
        fs.signed_mesh(ax, mx, my, values, "per block (natural log)")
        _zero_curves(ax, {k: curves[k] for k in (("angle", "gradient") if key in ("angle", "gradient")
                                                 else ("fd_angle", "fd_gradient", "fd_gradient_frobenius"))})
        ax.plot(gx_, gy_, ".", color="0.3", ms=3)
        ax.legend(loc="upper right", fontsize=6.5)
        ax.set(title=f"{title}\n{cfg.map_points}x{cfg.map_points} map" + ("" if key in ("angle", "gradient")
                                                                          else rf", $q_0=1$"),
               xlabel=_label(cfg.x_field), ylabel=_label(cfg.y_field))

    ax = axes[1, 0]
    task = cfg.train.task
    finite = _finite_or_nan(mean)
    top = max(task.context_free_loss(), np.nanmax(finite) if np.isfinite(finite).any() else -np.inf)
    _loss_mesh(ax, tx, ty, mean, f"mean over {len(cfg.seeds)} seeds (floor {task.bayes_loss():.3f}, no mixing "
                                 f"{task.context_free_loss():.3f})", task.bayes_loss(), top)
    for key in ("angle", "gradient", "fd_angle", "fd_gradient"):   # line styles as in the maps above
        if _has_zero(maps[key]):
            colour, style, _ = ZERO_STYLES[key]
            ax.contour(mx, my, np.ma.masked_invalid(_finite_or_nan(maps[key])), levels=[0.0], colors=colour,
                       linestyles=style, linewidths=1.8)
    if best["loss"] is not None:
        _mark_minimum(ax, tx, ty, mean, se, best, cfg)
        ax.legend(loc="upper right", fontsize=6.5)
    _window(ax, tx, ty)
    ax.set_title(f"final test loss, depth {depth}, width {cfg.train.width}\n(x: diverged)", loc="left")
    ax.set(xlabel=_label(cfg.x_field), ylabel=_label(cfg.y_field))
    fs.verdict_badge(ax, analysis["verdicts"][1], r"min to $\lambda_a=0$")

    ax = axes[1, 1]
    angle, gradient = _finite_or_nan(maps["train_angle"]).ravel(), _finite_or_nan(maps["train_gradient"]).ravel()
    scatter = ax.scatter(angle, gradient, c=finite.ravel(), s=60, cmap=fs.SEQUENTIAL_CMAP, edgecolors="k",
                         plotnonfinite=True, label="asymptotic")
    ax.scatter(_finite_or_nan(maps["train_fd_angle"]).ravel(), _finite_or_nan(maps["train_fd_gradient"]).ravel(),
               c=finite.ravel(), s=30, marker="s", cmap=fs.SEQUENTIAL_CMAP, edgecolors="0.5",
               label=f"depth {depth}", vmin=scatter.norm.vmin, vmax=scatter.norm.vmax)
    fs.colorbar(scatter, ax, "final test loss")
    ax.axhline(0, color="m", lw=1)
    ax.axvline(0, color="k", lw=1)
    ax.legend(fontsize=7)
    ax.set(title="final test loss against the two exponents\n(one marker per grid point)",
           xlabel=r"$\lambda_a$", ylabel=r"$\lambda_g$")

    ax = axes[1, 2]
    predictor = _finite_or_nan(analysis["predictor"]).ravel()
    per_seed = analysis["losses"]["per_seed"]
    for k, seed in enumerate(cfg.seeds):
        ax.plot(predictor, _finite_or_nan(per_seed[:, k]), "o", alpha=0.5, label=f"seed {seed}")
    ax.plot(predictor, finite.ravel(), "k_", ms=14, mew=2, label="mean")
    ax.axhline(task.bayes_loss(), color="g", ls="--", label="Bayes floor")
    ax.axhline(task.context_free_loss(), color="r", ls="--", label="best without token mixing")
    ax.set_title(f"Spearman {shown(metrics['spearman'], '+.2f')} ({fs.p_value_text(metrics['spearman_p'])}); "
                 f"seed-to-seed {shown(metrics['seed_to_seed_spearman'], '+.2f')}\n"
                 f"{metrics['diverged_runs']} of {metrics['runs']} runs diverged", loc="left")
    fs.verdict_badge(ax, analysis["verdicts"][0], "")
    ax.set(xlabel=r"asymptotic $|\lambda|=\sqrt{\lambda_a^2+\lambda_g^2}$", ylabel="final test loss")
    ax.legend(fontsize=7, loc="best")

    ax = axes[1, 3]
    known = predictor[np.isfinite(predictor)]
    low, spread = (known.min(), max(np.ptp(known), 1e-12)) if known.size else (0.0, 1.0)
    import matplotlib
    colors = matplotlib.colormaps["plasma"](np.clip((np.nan_to_num(predictor, nan=low + spread) - low) / spread, 0, 1))
    first_seed = {json.dumps(r["point"], sort_keys=True): r for r in rows if r["seed"] == cfg.seeds[0]}
    for k, p in enumerate(cfg.train_points()):
        result = first_seed[json.dumps(p, sort_keys=True)]["result"]
        ax.plot(result["eval_steps"], _finite_or_nan(result["test_loss"]), color=colors[k], lw=1)
    ax.axhline(task.bayes_loss(), color="g", ls="--")
    ax.axhline(task.context_free_loss(), color="r", ls="--")
    ax.set(title=f"test-loss curves, seed {cfg.seeds[0]}\n(colour: asymptotic |lambda|, dark = near 0)",
           xlabel="step", ylabel="test loss")
    fig.suptitle(f"Trainability phase diagram: canonical transformer, {cfg.base.residual} residual, "
                 f"{cfg.base.activation}, n={cfg.base.n_tokens}; loss minimum "
                 f"{shown(metrics['distance_cells'], '.2f')} cells from the asymptotic $\\lambda_a=0$, "
                 f"{shown(metrics['finite_depth_distance_cells'], '.2f')} from the depth-{depth} one")
    return fig


def crossing_figure(cfg: PhaseDiagramConfig, maps: dict, analysis: dict):
    """The crossing experiment at a glance. Top: the final test loss of Adam and of SGD on the plane, with the
    zero curves of every definition (predicted at depth L dashed, measured dotted), the crossings (stars) and the
    loss minimum (open circle) with its tied points; the loss on the lambda_a = 0 curve against the distance from
    the crossing. Bottom: the predicted finite-depth exponent maps with the measured zero curves, and the
    measured exponents against the predicted ones."""
    mx, my = cfg.map_axes()
    tx, ty = cfg.train_axes()
    metrics = analysis["metrics"]
    measured, definitions = analysis["measured"], analysis["definitions"]
    cell = np.array([tx[1] - tx[0], ty[1] - ty[0]])
    depth = cfg.train.depth
    fig, axes = fs.subplots(2, 3, panel=(5.0, 4.0))
    curves = {"fd_angle": (mx, my, maps["fd_angle"]), "fd_gradient": (mx, my, maps["fd_gradient"]),
              "fd_gradient_frobenius": (mx, my, maps["fd_gradient_frobenius"]),
              "measured_angle": (tx, ty, measured["angle"]),
              "measured_gradient_frobenius": (tx, ty, measured["gradient_frobenius"])}
    verdicts = {row["claim"] if isinstance(row, dict) else row.claim: row for row in analysis["verdicts"]
                if (row["quantity"] if isinstance(row, dict) else row.quantity).startswith("simultaneous")}

    def crossings(ax):
        for name, d in definitions.items():
            for k, (x, y) in enumerate(d["crossings"]):
                fs.unclip(ax.plot(x, y, "*", ms=17, mfc=CROSSING_COLOURS[name], mec="k", mew=1.2, ls="none",
                                  label=f"crossing: {DEFINITIONS[name]}" if k == 0 else None))

    for ax, optimizer in zip(axes[0, :2], ("adam", "sgd")):
        losses = analysis["losses"].get(optimizer)
        if losses is None:
            fs.no_data(ax, f"{OPTIMIZER_NAMES[optimizer]} not trained")
            continue
        m = metrics["optimizers"][optimizer]
        _loss_mesh(ax, tx, ty, losses["mean"], f"final test loss, mean of {len(cfg.seeds)} seeds (min "
                                               f"{shown(m['min_loss_point']['loss'], '.3f')})")
        _zero_curves(ax, curves)
        crossings(ax)
        if m["min_loss_point"]["loss"] is not None:
            _mark_minimum(ax, tx, ty, losses["mean"], losses["se"], m["min_loss_point"], cfg)
        _window(ax, tx, ty)
        lr = cfg.train.lr if optimizer == "adam" else metrics["sgd_learning_rate"]["value"]
        ax.set_title(f"{OPTIMIZER_NAMES[optimizer]}, lr {lr:g}", loc="left")
        ax.set(xlabel=_label(cfg.x_field), ylabel=_label(cfg.y_field))
        if OPTIMIZER_NAMES[optimizer] in verdicts:
            fs.verdict_badge(ax, verdicts[OPTIMIZER_NAMES[optimizer]], "simultaneous vanishing")
    axes[0, 0].plot([], [], "x", color="r", ms=8, mew=2, label="diverged (a seed)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)

    # the loss on lambda_a = 0 (depth L) against the distance from each predicted crossing, signed along the curve
    ax = axes[0, 2]
    on_curve = on_zero_curve(maps["train_fd_angle"])
    gx_, gy_ = np.meshgrid(tx, ty)
    along = _curve_direction(gx_[on_curve] / cell[0], gy_[on_curve] / cell[1])
    drawn = False
    for optimizer, colour in (("adam", "C0"), ("sgd", "C3")):
        losses = analysis["losses"].get(optimizer)
        if losses is None:
            continue
        for name, marker in (("common", "o"), ("frobenius", "s")):
            if not definitions[name]["crossings"]:
                continue
            cx, cy = definitions[name]["crossings"][0]
            offset = np.stack([(gx_[on_curve] - cx) / cell[0], (gy_[on_curve] - cy) / cell[1]], 1)
            distance = np.hypot(*offset.T) * np.where(offset @ along < 0, -1.0, 1.0)
            mean, se = _finite_or_nan(losses["mean"])[on_curve], _finite_or_nan(losses["se"])[on_curve]
            order = np.argsort(distance)
            fs.unclip(ax.errorbar(distance[order], mean[order], yerr=se[order], fmt=marker + "-", color=colour,
                                  ms=5, lw=1, alpha=0.9 if name == "common" else 0.5,
                                  label=f"{OPTIMIZER_NAMES[optimizer]}, from the {DEFINITIONS[name].split(',')[0]} "
                                        "crossing"))
            drawn = True
        best = metrics["optimizers"][optimizer]["min_loss_point"]["loss"]
        if best is not None:
            ax.axhline(best, color=colour, ls=":", lw=1)
    if drawn:
        for edge, style in ((1.0, "-"), (2.0, "--")):
            for side in (-1, 1):
                ax.axvline(side * edge, color="0.6", lw=0.8, ls=style)
        ax.legend(fontsize=6.5)
        ax.set(xlabel="distance along the curve from the crossing (cells)",
               ylabel=f"final test loss ({fs.spread_label('s.e.m.', len(cfg.seeds))})")
    else:
        fs.no_data(ax, "no predicted crossing inside the window")
    ax.set_title(rf"the loss on $\lambda_a=0$ (depth {depth}), training points""\n"
                 "dotted: each minimum; grey: 1 and 2 cells", loc="left")

    for ax, key, title in ((axes[1, 0], "fd_angle", rf"predicted $\lambda_a$, depth {depth}, $q_0=1$"),
                           (axes[1, 1], "fd_gradient", rf"predicted $\lambda_g$ (common mode), depth {depth}")):
        fs.signed_mesh(ax, mx, my, _finite_or_nan(maps[key]), "per block (natural log)")
        _zero_curves(ax, curves)
        crossings(ax)
        ax.plot(gx_, gy_, ".", color="0.3", ms=3)
        _window(ax, tx, ty)
        ax.set(title=title, xlabel=_label(cfg.x_field), ylabel=_label(cfg.y_field))

    ax = axes[1, 2]
    for name, key, colour in (("angle", "fd_angle", "k"), ("gradient", "fd_gradient", "m"),
                              ("gradient_frobenius", "fd_gradient_frobenius", "darkorange")):
        predicted = _finite_or_nan(maps["train_" + key]).ravel()
        fs.unclip(ax.errorbar(predicted, _finite_or_nan(measured[name]).ravel(),
                              yerr=_finite_or_nan(measured[name + "_se"]).ravel(), fmt="o", ms=3.5, color=colour,
                              label={"angle": r"$\lambda_a$", "gradient": r"$\lambda_g$ common mode",
                                     "gradient_frobenius": r"$\lambda_g$ Frobenius"}[name]))
    limits = np.array([ax.get_xlim(), ax.get_ylim()])
    low, high = limits.min(), limits.max()
    ax.plot([low, high], [low, high], color="0.5", lw=0.8, label="measured = predicted")
    ax.legend(fontsize=7)
    ax.set(title=f"measured at init (width {cfg.train.width}, {len(cfg.seeds)} networks, {cfg.probes} probes)"
                 "\nagainst predicted, per training point",
           xlabel="predicted exponent (per block)", ylabel=f"measured ({fs.spread_label('s.e.m.', len(cfg.seeds))})")

    fig.suptitle(f"Where the depth-{depth} zero curves cross: {cfg.base.residual} residual, alpha_A = alpha_M = "
                 f"{cfg.base.alpha_A:g}, {cfg.base.activation}, n = {cfg.base.n_tokens}, width {cfg.train.width}; "
                 f"{cfg.train.steps} steps")
    return fig
