"""The shared figure style (validate/_common/figure_style.py): what a reader sees is what the helpers promise
(p-values never "p = 0.000", signed colour maps centred on 0, the footer and verdict lines inside the saved file,
mathtext that renders), and the scan-and-snap sweep figure finds every verdict row it shows."""
from __future__ import annotations

import sys

import matplotlib.image
import numpy as np
import pytest

from validate._common import figure_style as style
from validate._common.reporting import Verdict


def _texts(box) -> list[str]:
    """Every text inside an offset box (the badges, verdict lines and footer are offset boxes of TextAreas)."""
    from matplotlib.offsetbox import TextArea
    if isinstance(box, TextArea):
        return [box.get_text()]
    return [text for child in box.get_children() for text in _texts(child)]


@pytest.mark.parametrize("p, text", [(0.0, "p < 0.001"), (0.0004, "p < 0.001"), (0.001, "p = 0.001"),
                                     (0.0123, "p = 0.012"), (0.35, "p = 0.35"), (float("nan"), "p = n/a"),
                                     (None, "p = n/a")])
def test_p_values_read_as_bounds_below_the_floor(p, text):
    assert style.p_value_text(p) == text


def test_verdict_lines_never_show_a_zero_p_value():
    fig, ax = style.subplots()
    style.finish(fig, "python -m x", [("PASS", "rho 0.89 (p 0.000); p = 0.000; p 0.0004; p = 0.012")])
    texts = _texts(fig.artists[-1])
    assert texts[:2] == ["PASS", "rho 0.89 (p < 0.001); p < 0.001; p 0.0004; p = 0.012"]
    assert texts[-1] == "made by: python -m x"
    style.pyplot().close(fig)


def test_spread_labels_say_what_and_over_how_many():
    assert style.spread_label("s.e.m.", 8) == "mean ± s.e.m., 8 seeds"
    assert style.spread_label("s.e.m.", 1) == "mean ± s.e.m., 1 seed"
    assert style.spread_label("2 s.d.", 200, "null draws") == "mean ± 2 s.d., 200 null draws"


def test_the_footer_command_keeps_what_changes_the_result_only(monkeypatch):
    argv = ["--lr-ratio", "10", "--out", "/tmp/x", "--workers=2", "--quiet", "--seeds", "1", "2", "--fresh"]
    assert style.command_line("validate.scan_snap", argv) == "python -m validate.scan_snap --lr-ratio 10 --seeds 1 2"
    assert style.command_line("validate.scan_snap", []) == "python -m validate.scan_snap"
    # argv None: this process's arguments when it is the command, else a note (pytest is not the command)
    assert "called from Python" in style.command_line("validate.scan_snap")
    monkeypatch.setattr(sys, "argv", ["/repo/validate/scan_snap.py", "--quick", "--out", "runs/q"])
    assert style.command_line("validate.scan_snap") == "python -m validate.scan_snap --quick"
    assert "called from Python" in style.command_line("validate.scan_snap_sweep")


def test_signed_norm_is_centred_on_zero_and_symmetric():
    norm = style.signed_norm(np.array([-0.5, 0.1, 2.0, np.nan]))
    assert (norm.vmin, norm.vcenter, norm.vmax) == (-2.0, 0.0, 2.0)
    assert np.allclose(norm(np.array([-2.0, -1.0, 0.0, 1.0, 2.0])), [0.0, 0.25, 0.5, 0.75, 1.0])
    assert style.signed_norm(np.array([np.nan, 0.0])).vmax == 1.0  # nothing to scale: limits +-1
    assert style.signed_norm(span=3.0).vmin == -3.0


def test_every_colour_scale_gets_a_labelled_colour_bar():
    fig, ax = style.subplots()
    mesh = style.signed_mesh(ax, np.arange(4), np.arange(3), np.array([[-1.0, 0.5, 2.0], [0.0, -3.0, 1.0]]),
                             r"angle exponent $\lambda_a$")
    assert mesh.cmap.name == style.SIGNED_CMAP and mesh.norm.vcenter == 0.0
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == r"angle exponent $\lambda_a$"
    style.pyplot().close(fig)


def test_unclip_reaches_every_part_of_an_errorbar():
    fig, ax = style.subplots()
    container = ax.errorbar([0, 1], [1, 2], yerr=[0.1, 0.2], marker="o")
    line, = ax.plot([0, 1], [0, 1], "o")
    style.unclip(container, [line])
    parts = [container[0], *container[1], *container[2], line]
    assert parts and all(not artist.get_clip_on() for artist in parts)
    style.pyplot().close(fig)


def test_integer_quantities_are_steps_with_integer_ticks():
    fig, ax = style.subplots()
    line = style.integer_steps(ax, [0, 10, 20, 30], [2, 2, 3, 3])
    assert line.get_drawstyle() == "steps-post"
    ax.set_ylim(1.6, 3.4)
    ticks = ax.yaxis.get_major_locator()()
    assert np.allclose(ticks, np.round(ticks))
    style.pyplot().close(fig)


def test_verdicts_accept_rows_bools_and_words_only():
    fig, ax = style.subplots()
    row = Verdict.check("q", "1", "1", "0", False)
    style.verdict_badge(ax, row, "C1 paper")
    style.verdict_badge(ax, None, "null")
    assert _texts(ax._figure_style_badge_box) == ["C1 paper", "FAIL", "null", "INFO"]
    with pytest.raises(ValueError, match="verdict='OK'"):
        style.verdict_badge(ax, "OK")
    style.pyplot().close(fig)


def test_footer_and_verdict_lines_are_inside_the_saved_file_and_mathtext_renders(tmp_path):
    """The same figure saved bare and with two verdict lines and a footer: the file grows by their height (a
    figure whose footer was cut by the tight box would not), and mathtext labels parse (savefig raises on a bad
    one)."""
    def draw():
        fig, ax = style.subplots()
        ax.plot([0, 1], [0, 1], label=r"$c_{l|n}$")
        ax.set_xlabel(r"$\eta_Y/\eta_Z$")
        ax.set_ylabel(r"$\rho = \|BB^\top\delta\|\,/\,\|\delta\|$")
        ax.legend()
        return fig
    bare = tmp_path / "bare.png"
    draw().savefig(bare, **style.SAVE_KWARGS)
    path = style.save(draw(), str(tmp_path), "full.png", command="python -m validate.scan_snap --lr-ratio 10",
                      verdicts=[("PASS", r"entropy falls as $\eta_Z$ grows"), (True, "second line")])
    height_bare, height_full = matplotlib.image.imread(bare).shape[0], matplotlib.image.imread(path).shape[0]
    # three lines of about 8-9 pt at 120 dpi: at least 30 pixels more
    assert height_full > height_bare + 30


def test_the_sweep_figure_shows_every_verdict_of_the_sweep(tmp_path, monkeypatch):
    """fig6_figure finds each of fig6.verdicts' rows by its text: a renamed row would drop out of the figure."""
    from validate._scan_snap import figures
    from validate._scan_snap.fig6 import SweepConfig, verdicts
    cfg = SweepConfig(next_tokens=(2, 6), lr_z=(1.0, 3.0), ratios=(1.0, 2.0, 10.0), seeds=(1, 2, 3))
    shape = (2, 2, 3)
    generator = np.random.default_rng(0)
    agg = {"mean": 1.5 + generator.random(shape), "se": np.full(shape, 0.01), "finite": np.full(shape, 3),
           "diverged": np.zeros(shape, dtype=int), "diverged_runs": []}
    shown = {}

    def capture(fig, out_dir, name, *, command, verdicts=()):
        shown.update(command=command, verdicts=list(verdicts))
        style.pyplot().close(fig)
        return name
    monkeypatch.setattr(style, "save", capture)
    figures.fig6_figure(cfg, agg, str(tmp_path), argv=["--quick"])
    assert shown["command"] == "python -m validate.scan_snap_sweep --quick"
    assert [row for row, _ in shown["verdicts"]] == verdicts(agg, cfg)
