"""One look for every figure of the package: sizes, one DPI, fonts, colour maps, and the small pieces every figure
shares (verdict badges, a footer with the command that made it, labelled error bands, colour bars).

    fig, axes = figure_style.subplots(1, 2)                    # constrained layout, panel-sized, styled
    axes[0].set_ylabel(r"attention $c_{l|n}$")                 # mathtext between $...$: rendered, not printed
    axes[0].fill_between(x, lo, hi, label=figure_style.spread_label("s.e.m.", 8))   # "mean ± s.e.m., 8 seeds"
    figure_style.verdict_badge(axes[0], row, "C1")             # PASS / FAIL / INFO above the panel, at its right
    figure_style.signed_mesh(axes[1], x, y, exponent, "angle exponent")   # RdBu centred on 0, with a colour bar
    path = figure_style.save(fig, out_dir, "name.png", command=figure_style.command_line("validate.scan_snap"))

Panel titles go on the left (``set_title(..., loc="left")``) where a panel carries a badge: the badge sits at the
right of the same line. Integer quantities (an r90, a count) are drawn with `integer_steps` and `integer_axis`,
p-values with `p_value_text` ("p < 0.001", never "p = 0.000"), markers that may sit on an axis limit with `unclip`.
"""
from __future__ import annotations

import os
import re
import shlex
import sys

import numpy as np

DPI = 120  # one resolution for every PNG: sharp on a laptop screen, a few hundred kB per figure
PANEL = (4.4, 3.3)  # width, height in inches of one panel; a figure of r x c panels is about c*4.4 x r*3.3
FONT_SIZE = 9  # axis labels; ticks and legends a step smaller, the footer smaller still
TITLE_SIZE = 9.5
LEGEND_SIZE = 7.5
SMALL_SIZE = 7  # footers, notes inside a panel
SAVE_KWARGS = {"dpi": DPI, "bbox_inches": "tight", "pad_inches": 0.06}  # the footer sits below the axes: keep it

SIGNED_CMAP = "RdBu_r"  # exponents and other signed quantities: blue < 0 < red, white at 0
SEQUENTIAL_CMAP = "viridis"
VERDICT_COLOURS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "INFO": "#57606a"}
# flags that say where or how a command runs, not what it computes: left out of the footer's command
_WHERE_FLAGS = {"--out": True, "--workers": True, "--scheduler": True, "--quiet": False, "--fresh": False}

RC = {
    "font.size": FONT_SIZE, "axes.titlesize": TITLE_SIZE, "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": FONT_SIZE - 1, "ytick.labelsize": FONT_SIZE - 1, "legend.fontsize": LEGEND_SIZE,
    "legend.title_fontsize": LEGEND_SIZE, "figure.titlesize": TITLE_SIZE + 0.5, "figure.dpi": DPI,
    "savefig.dpi": DPI, "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": True,
    "legend.framealpha": 0.85, "legend.edgecolor": "0.85", "lines.markersize": 4, "errorbar.capsize": 2.5,
    "image.cmap": SEQUENTIAL_CMAP, "mathtext.fontset": "dejavusans", "axes.formatter.use_mathtext": True,
}


def pyplot():
    """pyplot on the file-only Agg backend (worker machines have no display) with this module's rcParams; the
    package draws no figure of any other style, so the parameters are set for the process."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update(RC)
    return plt


def subplots(nrows: int = 1, ncols: int = 1, *, panel: tuple = PANEL, figsize: tuple | None = None, **kwargs):
    """plt.subplots with constrained layout (no panel title, suptitle or colour bar overlaps another) and a
    size of nrows x ncols panels of `panel` inches unless figsize is given; returns (fig, axes)."""
    plt = pyplot()
    if figsize is None:
        figsize = (panel[0] * ncols, panel[1] * nrows)
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=figsize, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Footer and saving
# ----------------------------------------------------------------------------------------------------------

def command_line(module: str, argv=None) -> str:
    """The command that made a figure, as a user would type it: "python -m validate.scan_snap --lr-ratio 10".

    argv: the command's arguments (a list); None reads them from sys.argv when this process is that command,
    and otherwise (run() called from Python) says so. Flags of where and how it ran (--out, --workers,
    --scheduler, --quiet, --fresh) are left out: they do not change what is drawn."""
    if argv is None:
        program = os.path.splitext(os.path.abspath(sys.argv[0]))[0] if sys.argv and sys.argv[0] else ""
        if not program.replace(os.sep, ".").endswith(module):
            return f"python -m {module} (called from Python: the JSON record has its config)"
        argv = sys.argv[1:]
    kept, skip = [], False
    for arg in map(str, argv):
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in _WHERE_FLAGS:
            skip = _WHERE_FLAGS[flag] and "=" not in arg
            continue
        kept.append(arg)
    return " ".join(["python", "-m", module] + [shlex.quote(a) for a in kept])


def _verdict_text(verdict) -> str:
    """PASS / FAIL / INFO from a verdict string, a reporting.Verdict (its .verdict), or True / False / None."""
    if hasattr(verdict, "verdict"):
        verdict = verdict.verdict
    if verdict is None or isinstance(verdict, (bool, np.bool_)):
        return "INFO" if verdict is None else ("PASS" if verdict else "FAIL")
    if verdict not in VERDICT_COLOURS:
        raise ValueError(f"verdict={verdict!r}: allowed are {tuple(VERDICT_COLOURS)}, a Verdict, True, False or None")
    return verdict


def _readable(label: str) -> str:
    """A verdict's text as a figure shows it: a p-value printed as zero at three decimals ("p = 0.000",
    "p 0.000", as verdict tables print them) reads "p < 0.001"."""
    return re.sub(r"\bp( =)? 0\.000\b", "p < 0.001", label)


def _badge_row(items, size: float, label_first: bool = False):
    """An HPacker of the (verdict, label) items: each verdict bold in its colour, beside its label."""
    from matplotlib.offsetbox import HPacker, TextArea
    groups = []
    for verdict, label in items:
        text = _verdict_text(verdict)
        label = _readable(label)
        badge = TextArea(text, textprops={"color": VERDICT_COLOURS[text], "fontweight": "bold", "fontsize": size})
        parts = [badge]
        if label:
            words = TextArea(label, textprops={"color": "0.2", "fontsize": size})
            parts = [words, badge] if label_first else [badge, words]
        groups.append(HPacker(children=parts, pad=0, sep=3, align="baseline"))
    return HPacker(children=groups, pad=0, sep=9, align="baseline")


def verdict_badge(ax, verdict, label: str = "") -> None:
    """A verdict (PASS / FAIL / INFO, a Verdict row, or True / False / None) above the panel at its right, after
    `label` (e.g. "C1 paper"); called again on the same panel, the badges line up in call order.
    Put the panel's title on the left (loc="left") so the two share the line."""
    from matplotlib.offsetbox import AnchoredOffsetbox
    items = getattr(ax, "_figure_style_badges", [])
    items.append((verdict, label))
    ax._figure_style_badges = items
    previous = getattr(ax, "_figure_style_badge_box", None)
    if previous is not None:
        previous.remove()
    row = _badge_row(items, SMALL_SIZE + 0.5, label_first=True)
    box = AnchoredOffsetbox(loc="lower right", child=row, pad=0.1, borderpad=0.3, frameon=False,
                            bbox_to_anchor=(1.0, 1.0), bbox_transform=ax.transAxes)
    ax.add_artist(box)
    ax._figure_style_badge_box = box


def finish(fig, command: str, verdicts=()) -> None:
    """Below the panels: one line per figure-wide verdict (verdicts: (verdict, label) pairs), then a small grey
    footer with the command that made the figure. Saved with SAVE_KWARGS (a tight box), both stay in the file.
    A p-value the verdict text rounds to "p = 0.000" is shown as "p < 0.001"."""
    from matplotlib.offsetbox import AnchoredOffsetbox, TextArea, VPacker
    rows = [_badge_row([(verdict, label)], SMALL_SIZE + 1) for verdict, label in verdicts]
    rows.append(TextArea(f"made by: {command}", textprops={"color": "0.45", "fontsize": SMALL_SIZE}))
    # below everything already drawn (a figure legend outside the axes at the bottom included): lay the figure
    # out once, then anchor the lines under its tight box, at its left edge
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    _pin_figure_legends(fig, renderer)
    fig.set_layout_engine("none")  # the layout is done: savefig's tight box must not redo it around the lines
    tight = fig.get_tightbbox(renderer)  # inches
    anchor = (min(0.0, tight.x0 / fig.get_figwidth()), min(0.0, tight.y0 / fig.get_figheight()))
    box = AnchoredOffsetbox(loc="upper left", child=VPacker(children=rows, pad=0, sep=2, align="left"), pad=0.2,
                            borderpad=0.0, frameon=False, bbox_to_anchor=anchor, bbox_transform=fig.transFigure)
    fig.add_artist(box)


def _pin_figure_legends(fig, renderer) -> None:
    """Fix each figure legend where the layout put it. A figure legend sits relative to the figure's box, which
    savefig's tight box moves and grows once the lines below the panels are part of it: without a pin, a legend
    "outside lower center" would slide over them, one "outside right center" down by half their height."""
    for legend in fig.legends:
        box = legend.get_window_extent(renderer).transformed(fig.transFigure.inverted())
        legend.set_bbox_to_anchor((box.x0, box.y0), transform=fig.transFigure)
        legend._loc = 3  # lower left at that point (Legend.set_loc is matplotlib >= 3.8)
        legend.borderaxespad = 0.0


def save(fig, out_dir: str, name: str, *, command: str, verdicts=()) -> str:
    """finish(fig, command, verdicts), then out_dir/name written atomically at DPI; closes fig, returns the path."""
    from validate._common.reporting import save_figure
    finish(fig, command, verdicts)
    return save_figure(fig, out_dir, name, **SAVE_KWARGS)


# ----------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------

def p_value_text(p: float, floor: float = 0.001) -> str:
    """A p-value as a reader takes it: "p < 0.001" below the floor (a permutation test's resolution, or where
    three decimals end), else two significant digits ("p = 0.012", "p = 0.35"); "p = n/a" when not finite."""
    if p is None or not np.isfinite(p):
        return "p = n/a"
    if p < floor:
        return f"p < {floor:g}"
    return f"p = {p:.2g}" if p < 0.1 else f"p = {p:.2f}"


def spread_label(spread: str, n: int, of: str = "seeds", centre: str = "mean") -> str:
    """What an error bar or band shows: spread_label("s.e.m.", 8) -> "mean ± s.e.m., 8 seeds";
    spread_label("2 s.d.", 200, "null draws") -> "mean ± 2 s.d., 200 null draws"."""
    return f"{centre} ± {spread}, {n} {of[:-1] if n == 1 and of.endswith('s') else of}"


# ----------------------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------------------

def sequential_colours(n: int, cmap: str = SEQUENTIAL_CMAP, stop: float = 0.9, start: float = 0.0) -> list:
    """n colours along a sequential map from `start` to `stop` (the last tenth of viridis or plasma is too pale on
    white; the first half of "Blues" too)."""
    import matplotlib
    colours = matplotlib.colormaps[cmap]
    return [colours(start + (stop - start) * i / max(1, n - 1)) for i in range(n)]


def signed_norm(values=None, span: float | None = None):
    """A TwoSlopeNorm centred on 0 with symmetric limits +- span (default: the largest finite |value|), so that
    white means 0 and equal colours on both sides mean equal magnitudes."""
    from matplotlib.colors import TwoSlopeNorm
    if span is None:
        finite = np.abs(np.asarray(values, dtype=np.float64))
        finite = finite[np.isfinite(finite)]
        span = float(finite.max()) if finite.size else 1.0
    span = span if span > 0 else 1.0
    return TwoSlopeNorm(0.0, -span, span)


def colorbar(mappable, ax, label: str, **kwargs):
    """A colour bar for `mappable` beside ax, labelled: every colour scale in a figure gets one."""
    return ax.figure.colorbar(mappable, ax=ax, label=label, **kwargs)


def signed_mesh(ax, x, y, values, label: str, span: float | None = None, **kwargs):
    """pcolormesh of a signed quantity (an exponent) in SIGNED_CMAP centred on 0, with its labelled colour bar;
    returns the mesh."""
    kwargs.setdefault("shading", "auto")
    mesh = ax.pcolormesh(x, y, values, cmap=SIGNED_CMAP, norm=signed_norm(values, span), **kwargs)
    colorbar(mesh, ax, label)
    return mesh


# ----------------------------------------------------------------------------------------------------------
# Markers, integers, empty panels
# ----------------------------------------------------------------------------------------------------------

def unclip(*artists):
    """Draw markers whole where they sit on an axis limit (clip_on=False): a predicted point, a minimum.
    Accepts lines, collections and the containers errorbar and bar return (tuples of artists); returns them."""
    for artist in artists:
        if isinstance(artist, (list, tuple)):  # matplotlib's containers are tuples
            unclip(*artist)
        elif artist is not None:
            artist.set_clip_on(False)
    return artists


def plain_log_labels(ax, axis: str = "x") -> None:
    """Tick labels of a log or symlog `axis` ("x", "y" or "both") as plain numbers (30, 0.3, not 3 x 10^1), on
    the majors and on minors at 2 and 5 times a power of ten."""
    from matplotlib.ticker import FuncFormatter

    def major(value, _):
        return f"{value:g}"

    def minor(value, _):
        if value == 0 or not np.isfinite(value):
            return ""
        mantissa = abs(value) / 10 ** np.floor(np.log10(abs(value)))
        return f"{value:g}" if np.isclose(mantissa, 2) or np.isclose(mantissa, 5) else ""
    for name in ("x", "y") if axis == "both" else (axis,):
        axis_object = getattr(ax, f"{name}axis")
        axis_object.set_major_formatter(FuncFormatter(major))
        axis_object.set_minor_formatter(FuncFormatter(minor))


def integer_axis(ax, axis: str = "y") -> None:
    """Integer ticks only on `axis` ("x", "y" or "both"): for counts and dimensions such as r90."""
    from matplotlib.ticker import MaxNLocator
    for name in ("x", "y") if axis == "both" else (axis,):
        getattr(ax, f"{name}axis").set_major_locator(MaxNLocator(integer=True))


def integer_steps(ax, x, y, *, marker: str = "o", **kwargs):
    """An integer quantity measured at x: a step that holds each value until the next measurement, a marker at
    each measurement, integer ticks on y; returns the step line. No slanted segment suggests values in between."""
    line, = ax.step(x, y, where="post", **kwargs)
    points_kwargs = {k: v for k, v in kwargs.items() if k in ("color", "alpha", "zorder")}
    points_kwargs.setdefault("color", line.get_color())
    ax.plot(x, y, marker, ms=2.5, ls="none", **points_kwargs)
    integer_axis(ax, "y")
    return line


def no_data(ax, text: str) -> None:
    """An empty panel that says why it is empty (every run behind it diverged, a flow failed)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=FONT_SIZE, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
