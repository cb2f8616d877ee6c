"""loss.png: the smoothing maths directly, the figure as drawn."""

from __future__ import annotations

import math

import pytest

from finetune_trainer.train.lossplot import draw_loss, smooth


def test_smoothing_is_an_ema_whose_weight_grows_with_the_length() -> None:
    assert smooth([]) == []
    assert smooth([3.0]) == [3.0]
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * 2)) - 0.5)
    assert smooth([1.0, 0.0]) == pytest.approx([1.0, weight])
    long = smooth([10.0] + [0.0] * 199)
    assert long[1] > 0.8 * 10.0, "a long curve is smoothed hard (weight close to 0.9)"


def test_a_single_point_is_drawn_as_a_point_titled_with_the_job() -> None:
    import matplotlib.pyplot as plt

    fig = draw_loss([3], [2.5], title="sft-lora")
    (ax,) = fig.axes
    assert ax.get_title() == "sft-lora"
    (raw,) = ax.get_lines()
    assert raw.get_marker() not in (None, "", "None", " "), "a lone point without a marker is invisible"
    plt.close(fig)


def test_the_smoothed_curve_is_drawn_beside_the_raw_one() -> None:
    import matplotlib.pyplot as plt

    losses = [5.0, 4.0, 4.5, 3.0]
    fig = draw_loss([1, 2, 3, 4], losses, title="job")
    raw, smoothed = fig.axes[0].get_lines()
    assert list(raw.get_ydata()) == losses
    assert list(smoothed.get_ydata()) == pytest.approx(smooth(losses))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["original", "smoothed"]
    plt.close(fig)
