"""adapt.protocol.figures: bar heights, curve data and grid pixels read back from what is drawn."""
import numpy as np
import pytest
from matplotlib.container import BarContainer
from PIL import Image

from adapt.protocol.figures import (_bar_figure, _layout, _pr_figure, bar_chart, image_strip,
                                    precision_recall_chart)

VALUES = {'source only': {'day': (0.61, 0.58, 0.64), 'dusk': (0.47, 0.43, 0.5), 'night': (0.30, None, 0.33)},
          'CycleGAN + fine-tune': {'day': (0.60, 0.57, 0.63), 'dusk': (0.52, 0.49, 0.55),
                                   'night': (0.44, 0.40, 0.48)}}


def test_bar_chart_writes_a_png(tmp_path):
    path = str(tmp_path / 'report' / 'bars.png')
    assert bar_chart(VALUES, path, title='Day2Night') == path
    with Image.open(path) as im:
        assert im.format == 'PNG' and 500 <= im.width <= 2000 and 300 <= im.height <= 1000


def test_bar_heights_match_the_values():
    ax = _bar_figure(VALUES, 'mAP@0.5', '').axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == ['day', 'dusk', 'night']
    heights = np.array([[p.get_height() for p in c.patches] for c in bars]).T  # methods x domains
    expected = [[v for v, _, _ in VALUES[m].values()] for m in VALUES]
    np.testing.assert_allclose(heights, expected)
    # the groups sit at the method ticks, the bars of a group in domain order from left to right
    centres = np.array([[p.get_x() + p.get_width() / 2 for p in c.patches] for c in bars]).T
    assert [t.get_text() for t in ax.get_xticklabels()] == list(VALUES)
    np.testing.assert_allclose(centres.mean(axis=1), ax.get_xticks(), atol=1e-12)
    assert (np.diff(centres, axis=1) > 0).all()
    assert ax.get_ylabel() == 'mAP@0.5' and ax.get_ylim() == pytest.approx((0, 0.64 * 1.1))
    assert len(ax.collections) == 3  # error bars: one per domain, the night bar without a low bound left out
    night_bars = ax.collections[2].get_segments()
    assert len(night_bars) == 1 and np.allclose(night_bars[0][:, 1], [0.40, 0.48])


@pytest.mark.parametrize('bad', [{}, {'a': {'day': (float('nan'), None, None)}},
                                 {'a': {'day': (0.5, 0.4, 0.6)}, 'b': {'night': (0.5, 0.4, 0.6)}}])
def test_bar_chart_rejects_bad_values(tmp_path, bad):
    with pytest.raises(ValueError) as err:
        bar_chart(bad, str(tmp_path / 'bars.png'))
    assert '\n' not in str(err.value) and str(err.value)
    assert not (tmp_path / 'bars.png').exists()


def test_precision_recall_lines_are_the_given_curves(tmp_path):
    curves = {'source only': (np.array([0.1, 0.4, 0.5]), np.array([1.0, 0.8, 0.6])),
              'empty': (np.array([]), np.array([])),
              'adapted': ([0.2, 0.7], [0.9, 0.7])}
    ax = _pr_figure(curves, 'night').axes[0]
    assert len(ax.lines) == 2
    for line, name in zip(ax.lines, ['source only', 'adapted']):
        np.testing.assert_array_equal(line.get_xdata(), curves[name][0])
        np.testing.assert_array_equal(line.get_ydata(), curves[name][1])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ['source only', 'empty (no detections)',
                                                                   'adapted']
    assert ax.get_xlim() == (0, 1) and ax.get_ylim() == pytest.approx((0, 1.02))
    path = str(tmp_path / 'pr.png')
    assert precision_recall_chart(curves, path) == path
    with Image.open(path) as im:
        assert im.format == 'PNG' and im.size == (600, 500)


def test_precision_recall_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="'bad'"):
        precision_recall_chart({'bad': ([0.1, 0.2], [1.0])}, str(tmp_path / 'pr.png'))


def solid(h, w, colour):
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


RED, GREEN, BLUE, ORANGE = (200, 30, 40), (20, 180, 60), (30, 60, 210), (250, 140, 10)


def test_image_strip_puts_each_image_in_its_cell(tmp_path):
    # row 2's second image is half as tall as the first, so it is drawn at twice its size: 40x60
    rows = [('day', [('input', solid(30, 40, RED)), ('translated', solid(30, 20, GREEN))]),
            ('night / long label', [('input', solid(40, 50, BLUE)), ('detections', solid(20, 30, ORANGE))])]
    path = image_strip(rows, str(tmp_path / 'strip' / 'grid.png'))
    pixels = np.asarray(Image.open(path).convert('RGB'))
    cells = _layout(rows).cells
    assert [[(x1 - x0, y1 - y0) for x0, y0, x1, y1 in row] for row in cells] == [[(40, 30), (20, 30)],
                                                                                   [(50, 40), (60, 40)]]
    for row_cells, colours in zip(cells, [(RED, GREEN), (BLUE, ORANGE)]):
        for (x0, y0, x1, y1), colour in zip(row_cells, colours):
            assert tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2]) == colour
            assert (pixels[y0:y1, x0:x1] == colour).all()
            assert (pixels == colour).all(axis=2).sum() == (x1 - x0) * (y1 - y0)  # nowhere else
    boxes = [b for row in cells for b in row]
    assert all(b[2] <= a[0] or a[2] <= b[0] or b[3] <= a[1] or a[3] <= b[1]
               for i, a in enumerate(boxes) for b in boxes[i + 1:])  # cells do not overlap
    assert (pixels != 255).any(axis=2)[:, :cells[1][0][0]].any()  # row labels drawn left of the images


def test_image_strip_scales_down_a_wide_grid(tmp_path):
    rows = [('wide', [('a', solid(10, 300, RED)), ('b', solid(10, 300, GREEN))])]
    full = _layout(rows).size
    with Image.open(image_strip(rows, str(tmp_path / 'grid.png'), max_width=200)) as im:
        assert im.width == 200 and im.height == round(full[1] * 200 / full[0])


@pytest.mark.parametrize('image', [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8),
                                   np.zeros((8, 8, 4), np.uint8)])
def test_image_strip_rejects_bad_images(tmp_path, image):
    with pytest.raises(ValueError, match="'x'.*HxWx3 uint8"):
        image_strip([('row', [('x', image)])], str(tmp_path / 'grid.png'))


def test_image_strip_rejects_empty_rows(tmp_path):
    with pytest.raises(ValueError):
        image_strip([], str(tmp_path / 'grid.png'))
    with pytest.raises(ValueError, match="'row'"):
        image_strip([('row', [])], str(tmp_path / 'grid.png'))
