"""The figures of the signal-propagation commands, in the package's style (validate/_common/figure_style.py).

    signal_prop_figures(results, cfg, out_dir, verdicts=rows, argv=argv)   signal_prop.png (trajectory settings:
                                    rho, q, the Jacobian growth against depth) and signal_prop_finite_depth.png
                                    (finite-depth settings: the log growth after every block), written to out_dir
    phase_diagram_figure(cfg, maps, analysis, rows), crossing_figure(cfg, maps, analysis)
                                    the figures of `python -m validate.phase_diagram` (the command saves them)

Each figure shows the verdicts of the rows it illustrates and, once saved, the command that made it."""
from __future__ import annotations

import json

import numpy as np
from matplotlib import patheffects
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.lines import Line2D

from validate._common import figure_style as fs
from validate._common.checks import shown
from validate._signal_prop.phase_analysis import DEFINITIONS, OPTIMIZER_NAMES, on_zero_curve
from validate._signal_prop.phase_experiment import PhaseDiagramConfig
from validate._signal_prop.propagation_experiment import FINITE_DEPTH_LABELS, SignalPropConfig


COMMAND = "validate.signal_prop"
SIGNAL_PROP_NAMES = ("signal_prop.png", "signal_prop_finite_depth.png")
# the verdict rows of a trajectory setting (propagation_experiment.verdict_rows) by the start of their quantity,
# and the panel row (0: rho, 1: q, 2: Jacobian growth) and badge label each is shown with
TRAJECTORY_BADGES = (("rho", 0, r"$\rho$"), ("angle exponent", 0, r"$\lambda_a$"),
                     ("gradient exponent", 0, r"$\lambda_g$"), ("q", 1, r"$q$"), ("|J|^2/nd", 2, r"$|J|^2/nd$"))
FINITE_DEPTH_BADGES = {"angle": r"$\lambda_a$", "gradient": r"$\lambda_g$", "gradient_frobenius": r"$\lambda_F$"}
# what each finite-depth curve is: the log growth after l blocks, l times that depth-l exponent
FINITE_DEPTH_CURVES = {"angle": r"token spread $\epsilon$: $l\,\lambda_a$",
                       "gradient": r"common-mode $|Jv|^2$: $l\,\lambda_g$",
                       "gradient_frobenius": r"Frobenius $|J|_F^2/(nd)$: $l\,\lambda_F$"}


def signal_prop_figures(results: dict, cfg: SignalPropConfig, out_dir: str, *, verdicts: list,
                        argv=None) -> list[str]:
    """The figures of `python -m validate.signal_prop` in out_dir: signal_prop.png when the run has trajectory
    settings, signal_prop_finite_depth.png when it has finite-depth ones; returns their paths. verdicts: the
    command's rows (propagation_experiment.verdict_rows(results)), shown on the panels they judge; argv: its
    arguments, for the footer (None: this process's, see figure_style.command_line)."""
    command = fs.command_line(COMMAND, argv)
    kinds = {"trajectory": {}, "finite_depth": {}}
    for name, r in results.items():
        kinds[r["kind"]][name] = r
    paths = []
    for chosen, draw, file_name in zip(kinds.values(), (signal_prop_figure, finite_depth_figure), SIGNAL_PROP_NAMES):
        if chosen:
            rows = [row for row in verdicts if row.claim in chosen]
            paths.append(fs.save(draw(chosen, cfg, rows), out_dir, file_name, command=command))
    return paths


def _row_starting(rows, claim: str, start: str):
    """The verdict row of `claim` whose quantity is `start` or starts with `start (` (None when not judged)."""
    return next((row for row in rows if row.claim == claim
                 and (row.quantity == start or row.quantity.startswith(start + " ("))), None)


def signal_prop_figure(results: dict, cfg: SignalPropConfig, rows: list = ()):
    """Per trajectory setting (columns): rho, q and the Jacobian growth against depth, theory (finite-n map)
    against torch (mean ± s.e.m. over the networks), with the setting's verdicts on the panels they judge and
    both one-block exponents in the title."""
    names = list(results)
    fig, axes = fs.subplots(3, len(names), panel=(3.9, 2.9), squeeze=False)
    layers = np.arange(cfg.depth + 1)
    # the first column names each row in full, the others by its symbol (the badges above say it too)
    quantities = (("rho", r"$\rho = p/q$ (cosine between tokens)", r"$\rho$"),
                  ("q", r"$q$ (squared norm per dimension)", r"$q$"),
                  ("jacobian", r"$E\,|\partial X_l/\partial X_0|_F^2\,/\,(nd)$",
                   r"$|\partial X_l/\partial X_0|_F^2/(nd)$"))
    for col, name in enumerate(names):
        r = results[name]
        networks = r["out_of_float32_range"]["networks"]
        for row, (key, label, symbol) in enumerate(quantities):
            ax = axes[row, col]
            theory, mean = _finite_or_nan(r["theory"][key]), _finite_or_nan(r["measured"][key]["mean"])
            kept = networks - r["out_of_float32_range"]["networks_by_quantity"][key]
            ax.plot(layers, theory, "-", color="C0", label="theory (finite-n map)")
            fs.unclip(ax.errorbar(layers, mean, yerr=_finite_or_nan(r["measured"][key]["se"]), fmt="o", ms=3,
                                  color="C3", label=f"torch, d = {cfg.width}: "
                                                    f"{fs.spread_label('s.e.m.', kept, 'networks')}"))
            if kept < networks:
                ax.text(0.02, 0.02, f"{networks - kept} of {networks} networks out of float32 range (left out)",
                        transform=ax.transAxes, fontsize=fs.SMALL_SIZE, color=fs.VERDICT_COLOURS["FAIL"])
            positive = np.concatenate([theory, mean])
            positive = positive[np.isfinite(positive) & (positive > 0)]
            # a log axis where the growth spans a decade or more; within one, its ticks would be one or two labels
            if key == "jacobian" and positive.size and positive.max() >= 10 * positive.min():
                ax.set_yscale("log")
                fs.plain_log_labels(ax, "y")
            ax.set_ylabel(label if col == 0 else symbol)
            if row == 2:
                ax.set_xlabel("block $l$")
            if row == 0:
                e = r["measured_exponents"]
                ax.set_title(
                    f"{name}\n"
                    f"$\\lambda_a$: theory {shown(r['theory']['angle_exponent'], '+.3f')}, torch "
                    f"{shown(e['angle'], '+.3f')} ± {shown(e['angle_se'], '.3f')}\n"
                    f"$\\lambda_g$: theory {shown(r['theory']['gradient_exponent'], '+.3f')}, torch "
                    f"{shown(e['gradient'], '+.3f')} ± {shown(e['gradient_se'], '.3f')}", loc="left",
                    pad=16)   # room for the badges under the title, above the panel
        for start, row, label in TRAJECTORY_BADGES:
            verdict = _row_starting(rows, name, start)
            if verdict is not None:
                fs.verdict_badge(axes[row, col], verdict, label)
    # below the panels, where it hides no data
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=2)
    fig.suptitle(f"Token geometry through random canonical transformers: n = {cfg.n_tokens} tokens, depth "
                 f"{cfg.depth}, input $q_0$ = {cfg.q0:g}, $\\rho_0$ = {cfg.rho0:g}; exponents per block "
                 "(natural log), torch ± s.e.m.")
    return fig


def finite_depth_figure(results: dict, cfg: SignalPropConfig, rows: list = ()):
    """One panel per finite-depth setting: the log growth after l blocks (l times the depth-l exponent) of the
    token spread epsilon, the common-mode and the Frobenius Jacobian, theory (lines) against torch (mean ± s.e.m.
    over the networks), with the setting's verdicts."""
    fig, axes = fs.subplots(1, len(results), squeeze=False)
    colours = {"angle": "C0", "gradient": "C3", "gradient_frobenius": "C2"}
    for ax, (name, r) in zip(axes[0], results.items()):
        layers = np.arange(r["depth"] + 1)
        networks = r["non_finite"]["networks"]
        kept_all = [networks - r["non_finite"]["networks_by_quantity"][k] for k in FINITE_DEPTH_CURVES]
        for k, label in FINITE_DEPTH_CURVES.items():
            ax.plot(layers, r["theory"]["log_growth"][k], "-", color=colours[k], label=f"{label}, theory")
            measured = r["measured_log_growth"][k]
            fs.unclip(ax.errorbar(layers, measured["mean"], yerr=measured["se"], fmt="o", color=colours[k], ms=3))
        # one legend entry for the torch markers of all three colours
        ax.errorbar([], [], yerr=[], fmt="o", color="0.45", ms=3,
                    label=f"torch (markers), {fs.spread_label('s.e.m.', min(kept_all), 'networks')}"
                    if len(set(kept_all)) == 1 else
                    f"torch (markers), mean ± s.e.m., {min(kept_all)}-{max(kept_all)} networks")
        ax.axhline(0.0, color="0.6", lw=0.7)
        p = r["params"]
        where = ": the predicted crossing" if r["crossing"] is not None else ""
        ax.set_title(f"{name}{where}\n$\\sigma_V$ = {p['sigma_V']:.4g}, $\\sigma_w$ = {p['sigma_w']:.4g}",
                     loc="left")
        for k, label in FINITE_DEPTH_BADGES.items():
            verdict = _row_starting(rows, name, FINITE_DEPTH_LABELS[k])
            if verdict is not None:
                fs.verdict_badge(ax, verdict, label)
        ax.set_xlabel("block $l$")
        if ax is axes[0, 0]:
            ax.set_ylabel("log growth after $l$ blocks")
    # below the panels, where it hides no data
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=4)
    fig.suptitle(f"Finite-depth exponents: random networks (width {cfg.width}, float64) fed {cfg.n_tokens} "
                 f"identical tokens of norm $q_0$ = {cfg.q0:g}; per block, natural log")
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


def _legend_below(ax, ncol: int = 1, **kwargs) -> None:
    """The panel's legend under its x label, where it hides neither a map nor a zero curve (constrained layout
    makes room)."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, **kwargs)


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
    # a white ring outlined in black: seen on a dark mesh and, in the legend (smaller), on white
    outline = [patheffects.Stroke(linewidth=4.5, foreground="k"), patheffects.Normal()]
    fs.unclip(ax.plot(best[cfg.x_field], best[cfg.y_field], "o", ms=15, mfc="none", mec="w", mew=2.5,
                      path_effects=outline))
    ax.plot([], [], "o", ms=8, mfc="none", mec="w", mew=2, path_effects=outline, label="loss minimum")


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
        fs.unclip(ax.plot(gx_, gy_, ".", color="0.3", ms=3))
        if key == "angle":
            ax.plot([], [], ".", color="0.3", ms=3, label="training points")
        _legend_below(ax)
        ax.set(title=f"{title}\n{cfg.map_points}x{cfg.map_points} map" + ("" if key in ("angle", "gradient")
                                                                          else rf", $q_0=1$"),
               xlabel=_label(cfg.x_field), ylabel=_label(cfg.y_field))

    ax = axes[1, 0]
    task = cfg.train.task
    finite = _finite_or_nan(mean)
    top = max(task.context_free_loss(), np.nanmax(finite) if np.isfinite(finite).any() else -np.inf)
    _loss_mesh(ax, tx, ty, mean, f"final test loss, mean of {len(cfg.seeds)} seeds\n(Bayes floor "
                                 f"{task.bayes_loss():.3f}, no mixing {task.context_free_loss():.3f})",
               task.bayes_loss(), top)
    _zero_curves(ax, {key: curves[key] for key in ("angle", "gradient", "fd_angle", "fd_gradient")})
    if best["loss"] is not None:
        _mark_minimum(ax, tx, ty, mean, se, best, cfg)
    if not np.isfinite(np.asarray(mean, float)).all():
        ax.plot([], [], "x", color="r", ms=8, mew=2, label="diverged (a seed)")
    _legend_below(ax, ncol=2, fontsize=6.5)
    _window(ax, tx, ty)
    ax.set_title(f"final test loss\ndepth {depth}, width {cfg.train.width}", loc="left")
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
    ax.legend([Line2D([], [], marker="o", ms=7, color="0.6", mec="k", ls="none"),
               Line2D([], [], marker="s", ms=5, color="0.6", mec="0.5", ls="none")],
              ["asymptotic", f"depth {depth}"], loc="best")
    ax.set(title="final test loss against the two exponents\n(one marker per grid point)",
           xlabel=r"$\lambda_a$", ylabel=r"$\lambda_g$")

    ax = axes[1, 2]
    predictor = _finite_or_nan(analysis["predictor"]).ravel()
    per_seed = analysis["losses"]["per_seed"]
    for k, seed in enumerate(cfg.seeds):
        ax.plot(predictor, _finite_or_nan(per_seed[:, k]), "o", alpha=0.5, label=f"seed {seed}")
    ax.plot(predictor, finite.ravel(), "k_", ms=14, mew=2, label=f"mean of {len(cfg.seeds)} seeds")
    ax.axhline(task.bayes_loss(), color="g", ls="--", label="Bayes floor")
    ax.axhline(task.context_free_loss(), color="r", ls="--", label="best without token mixing")
    ax.set_title(f"Spearman {shown(metrics['spearman'], '+.2f')} ({fs.p_value_text(metrics['spearman_p'])}); "
                 f"seed-to-seed {shown(metrics['seed_to_seed_spearman'], '+.2f')}\n"
                 f"{metrics['diverged_runs']} of {metrics['runs']} runs diverged", loc="left")
    fs.verdict_badge(ax, analysis["verdicts"][0], r"loss against $|\lambda|$")
    ax.set(xlabel=r"asymptotic $|\lambda|=\sqrt{\lambda_a^2+\lambda_g^2}$", ylabel="final test loss")
    ax.legend(fontsize=7, loc="best")

    ax = axes[1, 3]
    known = predictor[np.isfinite(predictor)]
    low, spread = (known.min(), max(np.ptp(known), 1e-12)) if known.size else (0.0, 1.0)
    # plasma up to 0.9 (its last tenth is too pale on white); a point without a finite |lambda| gets the top colour
    colormap = ScalarMappable(Normalize(low, low + spread), ListedColormap(fs.sequential_colours(256, "plasma")))
    colors = colormap.to_rgba(np.nan_to_num(predictor, nan=low + spread))
    first_seed = {json.dumps(r["point"], sort_keys=True): r for r in rows if r["seed"] == cfg.seeds[0]}
    for k, p in enumerate(cfg.train_points()):
        result = first_seed[json.dumps(p, sort_keys=True)]["result"]
        ax.plot(result["eval_steps"], _finite_or_nan(result["test_loss"]), color=colors[k], lw=1)
    ax.axhline(task.bayes_loss(), color="g", ls="--")
    ax.axhline(task.context_free_loss(), color="r", ls="--")
    fs.colorbar(colormap, ax, r"asymptotic $|\lambda|$ of the point")
    ax.set(title=f"test-loss curves, seed {cfg.seeds[0]}, one per grid point", xlabel="step", ylabel="test loss")
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

    fig.suptitle(f"Where the depth-{depth} zero curves cross: {cfg.base.residual} residual, $\\alpha_A = \\alpha_M$ = "
                 f"{cfg.base.alpha_A:g}, {cfg.base.activation}, n = {cfg.base.n_tokens}, width {cfg.train.width}; "
                 f"{cfg.train.steps} steps")
    return fig
