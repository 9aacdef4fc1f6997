"""Run logs in the workdir: `metrics.jsonl`, TensorBoard events, PNG image grids, console progress.

TensorBoard events are written with TensorFlow's core `tf.summary.write` and the scalars / images
plugin metadata (the `tensorboard` package, which `tf.summary.scalar` needs, is not installed).
TensorFlow is imported only when the first event is written. Only process 0 writes.
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax
import numpy as np
from PIL import Image


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """[N, H, W, C] floats in [0, 1] -> one [H', W', C] uint8 grid, row-major, `pad` white pixels apart."""
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[None]
    n, h, w, c = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
    return np.round(np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)


class MetricsWriter:
    """`scalars(step, metrics, split)` and `images(step, {name: [N,H,W,C] in [0,1]})`."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.workdir = workdir
        self.active = jax.process_index() == 0
        self._tensorboard = tensorboard
        self._tb = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def _writer(self):
        if self._tb is None:
            import tensorflow as tf  # lazily: 3 s of import, only where events are wanted
            self._tf = tf
            self._tb = tf.summary.create_file_writer(os.path.join(self.workdir, "tensorboard"))
        return self._tb

    def _event(self, tag: str, tensor, step: int, plugin: str) -> None:
        tf = self._tf
        meta = tf.compat.v1.SummaryMetadata()
        meta.plugin_data.plugin_name = plugin
        with self._writer().as_default():
            tf.summary.write(tag, tensor, step=step, metadata=meta)

    def scalars(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        if not self.active:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
        self._jsonl.flush()
        if self._tensorboard:
            self._writer()
            for k, v in values.items():
                self._event(f"{split}/{k}", self._tf.constant(v, self._tf.float32), step, "scalars")
            self._tb.flush()

    def images(self, step: int, images: Mapping[str, np.ndarray], ncol: int | None = None) -> list[str]:
        """Writes `images/<name>_<step>.png` grids (and TensorBoard images); returns the PNG paths."""
        if not self.active:
            return []
        os.makedirs(os.path.join(self.workdir, "images"), exist_ok=True)
        paths = []
        for name, batch in images.items():
            grid = make_grid(batch, ncol)
            path = os.path.join(self.workdir, "images", f"{name.replace('/', '_')}_{int(step):08d}.png")
            Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid).save(path)
            paths.append(path)
            if self._tensorboard:
                self._writer()
                tf = self._tf
                png = tf.image.encode_png(grid)
                tensor = tf.stack([tf.as_string(grid.shape[1]), tf.as_string(grid.shape[0]), png])
                self._event(f"images/{name}", tensor, step, "images")
        if self._tb is not None:  # nothing to flush when there were no images (num_draw=0)
            self._tb.flush()
        return paths

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


class Progress:
    """Console line every call: step, loss-like metrics, steps/s (and images/s), ETA, and the share of the
    time since the last line spent waiting for input (`input_wait` seconds, when given)."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int | None = None):
        self.total, self.batch_size = total_steps, batch_size
        self._last_step, self._last_time = start_step, time.perf_counter()

    def line(self, step: int, metrics: Mapping[str, float], input_wait: float | None = None) -> str:
        now = time.perf_counter()
        spent = max(now - self._last_time, 1e-9)
        rate = (step - self._last_step) / spent
        self._last_step, self._last_time = step, now
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        parts = [f"step {step}/{self.total}"] + [f"{k} {v:.4g}" for k, v in metrics.items()]
        parts.append(f"{rate:.2f} steps/s")
        if self.batch_size:
            parts.append(f"{rate * self.batch_size:.1f} images/s")
        parts.append(f"ETA {_duration(eta)}")
        if input_wait is not None:
            parts.append(f"input wait {100 * min(input_wait / spent, 1.0):.0f}%")
        return " | ".join(parts)


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
