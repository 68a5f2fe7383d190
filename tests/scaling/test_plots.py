"""The fit's plots are readable: distinct (colour, marker) per format for 20 formats, plain tick
labels on log axes (no "5.04×10⁰"), and tick labels that do not overlap, for wide sweeps and for
narrow ones like the demo's."""
import itertools

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_hex

from megatron_csl.scaling.fitting import FitOptions, fit_runs
from megatron_csl.scaling.plots import (format_styles, loss_vs_n_figure, nice_log_ticks, pareto_figure,
                                        plain_number, write_plots)
from megatron_csl.scaling.report import build_report
from megatron_csl.scaling.synthetic import SyntheticSweep

TWENTY = ["dense", "w8", "w6", "w5", "w4", "w3", "w2", "w1", "w1.58", "s25", "s50", "s75", "s50+w4",
          "w4a4", "w8a8", "fp8", "fp4", "w4:g32", "s50:nm2/4", "w2:zero"]


def _fit(formats, sizes, ratios):
    epm = tuple((f, 1.0 if f == "dense" else 0.3 + 0.65 * i / len(formats)) for i, f in enumerate(formats))
    runs = SyntheticSweep(epm=epm, sizes=sizes, ratios=ratios).draw(np.random.default_rng(0))
    return fit_runs("compression", runs, options=FitOptions(refine_top=4))


@pytest.fixture(scope="module")
def wide():
    """20 formats over two decades of N at two token ratios (the full law)."""
    return _fit(TWENTY, (2e7, 2e8, 2e9), (10.0, 40.0))


@pytest.fixture(scope="module")
def narrow():
    """The demo's shape: 4 formats, N within a factor of two, one ratio (the reduced form)."""
    return _fit(["dense", "w4", "w2", "s50"], (7.9e4, 1.0e5, 1.3e5, 1.59e5), (20.0,))


def _tick_labels(axis, renderer):
    """Every tick label drawn on `axis`, major and minor (log axes label minor ticks by default)."""
    lo, hi = sorted(axis.get_view_interval())
    return [t.label1 for t in axis.get_major_ticks() + axis.get_minor_ticks()
            if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]


def _assert_readable(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = _tick_labels(axis, renderer)
            if axis is ax.xaxis or ax is fig.axes[0]:  # (pareto's right panel shares the left's y)
                assert len(labels) >= 2, f"fewer than two labelled ticks on {axis.axis_name}"
            texts = [t.get_text() for t in labels]
            for text in texts:
                assert "×10" not in text and "\\times" not in text, text
            boxes = [t.get_window_extent(renderer) for t in labels]
            for (a, ta), (b, tb) in itertools.combinations(zip(boxes, texts), 2):
                assert not a.overlaps(b), f"tick labels {ta!r} and {tb!r} overlap"


def _styles_drawn(ax):
    """(colour, marker) of every scatter the axes draw, per collection."""
    pairs = []
    for coll in ax.collections:
        path = coll.get_paths()[0]
        pairs.append((to_hex(coll.get_facecolor()[0], keep_alpha=False), path.vertices.round(3).tobytes()))
    return pairs


def test_twenty_formats_get_distinct_colour_marker_pairs(wide):
    styles = format_styles(TWENTY)
    assert len({(to_hex(s["color"]), s["marker"]) for s in styles.values()}) == 20
    fig = loss_vs_n_figure(wide)
    drawn = _styles_drawn(fig.axes[0])
    assert len(drawn) == 20 and len(set(drawn)) == 20  # what is drawn differs, not only the table
    legend = fig.axes[0].get_legend()
    handles = legend.legend_handles
    assert len({(to_hex(h.get_color()), h.get_marker()) for h in handles}) == 20
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("which", ["wide", "narrow"])
def test_tick_labels_are_plain_and_do_not_overlap(which, request):
    result = request.getfixturevalue(which)
    for make in (loss_vs_n_figure, pareto_figure):
        fig = make(result)
        _assert_readable(fig)
        matplotlib.pyplot.close(fig)


def test_write_plots_writes_the_three_pngs(narrow, tmp_path):
    paths = write_plots(narrow, build_report(narrow), tmp_path)
    assert [p.name for p in paths] == ["loss_vs_N.png", "epm.png", "pareto.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_tick_values_and_text():
    assert nice_log_ticks(2.2, 6.1, 8) == [3.0, 4.0, 5.0, 6.0]
    assert nice_log_ticks(3e15, 2e21, 6) == [1e16, 1e17, 1e18, 1e19, 1e20, 1e21]
    assert len(nice_log_ticks(1e3, 1e20, 6)) <= 6
    assert [plain_number(v) for v in (5.04, 2.5, 1200, 0.05)] == ["5.04", "2.5", "1200", "0.05"]
    assert plain_number(1e17) == "$10^{17}$" and plain_number(2e5) == "2·$10^{5}$"
