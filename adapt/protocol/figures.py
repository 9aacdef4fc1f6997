"""Figures of the Day2Night protocol report: a grouped bar chart of a metric per method and domain with
95 % confidence intervals, precision-recall curves of several methods on one axes, each row's night
mAP@0.5 and share of the gap against the night severity, and a labelled grid of example images (e.g. the
same night frame translated and detected by each method).

Charts use matplotlib's object API on an Agg canvas (no pyplot, no display, no global backend); the
image grid is drawn with PIL so the pixels of the examples land in the PNG unchanged (no resampling
unless the grid is wider than ``max_width``). Every function writes a PNG, creating its directory, and
returns the path. The ``_bar_figure``, ``_pr_figure`` and ``_layout`` helpers are what the tests inspect.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageDraw, ImageFont

GAP = 8  # pixels between image cells, and around the grid
FONT_SIZE = 14


def _new_figure(width: float, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout='constrained')  # room for rotated labels
    FigureCanvasAgg(fig)  # draws without a display or a global pyplot backend
    return fig


def _ready(path: str) -> str:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    return path


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _bar_figure(values: dict, metric: str, title: str) -> Figure:
    """One BarContainer per domain (labelled with it), bar i of each being method i."""
    if not values:
        raise ValueError('bar_chart: no methods to plot')
    methods = list(values)
    domains = list(values[methods[0]])
    table = []
    for m in methods:
        missing = [d for d in domains if d not in values[m]]
        if missing:
            raise ValueError(f'bar_chart: method {m!r} has no value for domain(s) {missing}')
        table.append([values[m][d] for d in domains])
    for m, row in zip(methods, table):
        for d, (value, _, _) in zip(domains, row):
            if value is None or not math.isfinite(value):
                raise ValueError(f'bar_chart: value of method {m!r} on domain {d!r} is {value}')
    fig = _new_figure(max(6.0, 2.5 + 0.6 * len(methods) * max(len(domains), 1) ** 0.5))
    ax = fig.add_subplot()
    x, width = np.arange(len(methods)), 0.8 / max(len(domains), 1)
    top = 0.0
    for j, d in enumerate(domains):
        pos = x + (j - (len(domains) - 1) / 2) * width
        heights = [row[j][0] for row in table]
        ax.bar(pos, heights, width, label=d, color=f'C{j}')
        ci = [(p, v, lo, hi) for p, (v, lo, hi) in zip(pos, (row[j] for row in table))
              if _finite(lo) and _finite(hi)]  # a bar without both bounds gets no error bar
        if ci:
            p, v, lo, hi = (np.array(c, float) for c in zip(*ci))
            ax.errorbar(p, v, yerr=[np.maximum(v - lo, 0), np.maximum(hi - v, 0)], fmt='none',
                        ecolor='black', elinewidth=1, capsize=3)
            top = max(top, hi.max())
        top = max(top, max(heights, default=0.0))
    ax.set_xticks(x, methods, rotation=30, ha='right', rotation_mode='anchor')
    ax.set(ylabel=metric, ylim=(0, max(top * 1.1, 0.05)), xlim=(-0.6, len(methods) - 0.4), title=title)
    ax.grid(axis='y', alpha=0.3)
    ax.legend(title='domain', loc='upper left', bbox_to_anchor=(1.01, 1), fontsize='small')
    return fig


def bar_chart(values: dict, path: str, *, metric: str = 'mAP@0.5', title: str = '') -> str:
    """Grouped bars of ``values`` {method: {domain: (value, low, high)}} with 95 % CI error bars."""
    _bar_figure(values, metric, title).savefig(_ready(path), format='png')
    return path


def _pr_figure(curves: dict, title: str) -> Figure:
    """One step line per method with detections; a method without any is only named in the legend."""
    fig = _new_figure(6.0, 5.0)
    ax = fig.add_subplot()
    handles = []
    for i, (name, (recall, precision)) in enumerate(curves.items()):
        recall, precision = np.asarray(recall, float), np.asarray(precision, float)
        if recall.ndim != 1 or recall.shape != precision.shape:
            raise ValueError(f'precision_recall_chart: method {name!r} has recall of shape {recall.shape} '
                             f'but precision of shape {precision.shape}')
        if recall.size:
            handles += ax.step(recall, precision, where='post', color=f'C{i}', label=str(name))
        else:
            handles.append(Line2D([], [], linestyle='none', marker='x', color=f'C{i}',
                                  label=f'{name} (no detections)'))
    ax.set(xlabel='recall', ylabel='precision', xlim=(0, 1), ylim=(0, 1.02),
           title=title or 'Precision-recall')
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles=handles, loc='lower left', fontsize='small')
    return fig


def precision_recall_chart(curves: dict, path: str, *, title: str = '') -> str:
    """Precision against recall of every method in ``curves`` {method: (recall, precision)}."""
    _pr_figure(curves, title).savefig(_ready(path), format='png')
    return path


def _severity_figure(severity: dict) -> Figure:
    """Two axes over the night severity levels: each row's target mAP@0.5, and its share of the source-only ->
    oracle gap (left out at a level where the oracle does not beat source only)."""
    levels = severity['levels']
    labels = [f"{k} {severity['names'][str(k)]}" for k in levels]
    fig = _new_figure(11.0, 4.5)
    axes = fig.subplots(1, 2)
    for i, (row, values) in enumerate(severity['rows'].items()):
        for ax, key in zip(axes, ('target_AP50', 'gap_closed')):
            ax.plot(range(len(levels)), [v if _finite(v) else np.nan for v in values[key]], marker='o',
                    color=f'C{i}', label=row)  # NaN breaks the line at an undefined level
    axes[0].set(ylabel=f"{severity['target']} test mAP@0.5", ylim=(0, None))
    axes[1].set(ylabel='share of the gap closed')
    axes[1].axhline(0.0, color='black', linewidth=0.8)
    for ax in axes:
        ax.set_xticks(range(len(levels)), labels)
        ax.set(xlabel='night severity (1 easiest)', xlim=(-0.3, len(levels) - 0.7))
        ax.grid(alpha=0.3)
    axes[1].legend(*axes[0].get_legend_handles_labels(), loc='upper left', bbox_to_anchor=(1.01, 1), fontsize='small')
    return fig


def severity_chart(severity: dict, path: str) -> str:
    """The report's `severity` block ({levels, names, target, rows: {row: {target_AP50, gap_closed}}}) drawn."""
    _severity_figure(severity).savefig(_ready(path), format='png')
    return path


class _Layout(NamedTuple):
    size: tuple  # (width, height) of the full-size grid
    labels: list  # (row label, (x, y)) text anchors
    titles: list  # (column title, (x, y)) text anchors, all rows in order
    cells: list  # per row, (x0, y0, x1, y1) image boxes (x1, y1 exclusive), each image resized to fill one


def _font():
    return ImageFont.load_default(size=FONT_SIZE)


def _text_size(text: str, font) -> tuple:
    left, top, right, bottom = ImageDraw.Draw(Image.new('RGB', (1, 1))).multiline_textbbox((0, 0), text,
                                                                                             font=font)
    return right, bottom


def _check_rows(rows: list) -> None:
    if not rows:
        raise ValueError('image_strip: no rows to draw')
    for label, images in rows:
        if not images:
            raise ValueError(f'image_strip: row {label!r} has no images')
        for title, image in images:
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                    and image.shape[2] == 3 and image.shape[0] > 0 and image.shape[1] > 0):
                desc = f'{image.shape} {image.dtype}' if isinstance(image, np.ndarray) else type(image).__name__
                raise ValueError(f'image_strip: image {title!r} of row {label!r} is {desc}, '
                                 f'expected HxWx3 uint8')


def _layout(rows: list, font=None, gap: int = GAP) -> _Layout:
    """Where everything goes: labels on the left, each row's images at the height of its first one,
    centred under their titles in cells as wide as the wider of image and title."""
    font = font or _font()
    text_h = _text_size('Ag', font)[1] + 4
    label_w = max(_text_size(str(label), font)[0] for label, _ in rows) + 2 * gap
    labels, titles, cells, y, width = [], [], [], gap, 0
    for label, images in rows:
        h = images[0][1].shape[0]
        x, boxes = label_w, []
        for title, image in images:
            w = max(1, round(image.shape[1] * h / image.shape[0]))
            title_w = _text_size(str(title), font)[0]
            cell_w = max(w, title_w)
            titles.append((str(title), (x + (cell_w - title_w) // 2, y)))
            x0 = x + (cell_w - w) // 2
            boxes.append((x0, y + text_h, x0 + w, y + text_h + h))
            x += cell_w + gap
        labels.append((str(label), (gap, y + text_h + (h - _text_size(str(label), font)[1]) // 2)))
        cells.append(boxes)
        width, y = max(width, x), y + text_h + h + gap
    return _Layout((width, y), labels, titles, cells)


def image_strip(rows: list, path: str, *, max_width: int = 2400) -> str:
    """A grid of example images, ``rows`` being [(row label, [(column title, HxWx3 uint8 image)])]."""
    _check_rows(rows)
    font = _font()
    layout = _layout(rows, font)
    canvas = Image.new('RGB', layout.size, 'white')
    draw = ImageDraw.Draw(canvas)
    for (_, images), boxes in zip(rows, layout.cells):
        for (_, image), (x0, y0, x1, y1) in zip(images, boxes):
            canvas.paste(Image.fromarray(image).resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST), (x0, y0))
    for text, xy in layout.labels + layout.titles:
        draw.multiline_text(xy, text, fill='black', font=font)
    if canvas.width > max_width:  # keep the report light; only now are the examples resampled
        scale = max_width / canvas.width
        canvas = canvas.resize((max_width, max(1, round(canvas.height * scale))), Image.Resampling.LANCZOS)
    canvas.save(_ready(path), format='PNG')
    return path
