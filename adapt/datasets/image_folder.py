"""A folder of image files as input (experiments/detect.py, experiments/translate.py): which files count,
and how one is read.

One extension list and one decoder, `tf.io.decode_image` (what the input pipeline decodes a dataset's
images with), so a folder and a dataset give the same pixels. The folder is read without recursion, in
name order. A file that cannot be read or decoded (empty, truncated, not an image) raises
`UnreadableImage` with a one-line reason: the caller reports it, counts it and goes on.
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
import io
import os

import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


class FolderError(ValueError):
    """The folder cannot be used at all (no such folder, no image files); one line."""


class UnreadableImage(ValueError):
    """One image file cannot be read or decoded; one line (the reason)."""


def list_images(folder) -> list:
    """Sorted names of the image files directly in `folder`; FolderError if there is none."""
    if not os.path.isdir(folder):
        raise FolderError(f'{folder}: ' + ('not a folder' if os.path.exists(folder) else 'no such folder'))
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise FolderError(f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in {folder}')
    return names


@functools.lru_cache(maxsize=None)
def _decoder():
    """One traced `tf.io.decode_image` for every file (a trace per call would cost more than the decoding)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def decode(data):
        return tf.io.decode_image(data, channels=3, expand_animations=False)
    return decode


def read_image(path) -> np.ndarray:
    """The image file at `path` as uint8 [H, W, 3] (a GIF: its first frame); UnreadableImage if it cannot be."""
    import tensorflow as tf
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as error:
        raise UnreadableImage(error.strerror or str(error)) from None
    if not data:
        raise UnreadableImage('empty file')
    _check_header(data)
    try:
        return _decoder()(tf.constant(data)).numpy()
    except tf.errors.OpError as error:
        raise UnreadableImage(_tf_message(error)) from None


def _check_header(data):
    """UnreadableImage unless PIL recognises an image header: a file that is no image or is cut inside its
    header is reported here, before TensorFlow's decoders (whose C libraries print their own lines)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise UnreadableImage('not a JPEG, PNG, BMP, GIF or WebP image (or its header is cut short)') from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImage(f'bad image header ({" ".join(str(error).split()) or type(error).__name__})') from None
    if width <= 0 or height <= 0:
        raise UnreadableImage(f'image of size {width}x{height}')


def _tf_message(error) -> str:
    """A TensorFlow op error's own text on one line (without the function/node/op decorations)."""
    text = (getattr(error, 'message', None) or str(error)).split('[[')[0].split('[Op:')[0]
    lines = [line for line in text.splitlines() if line.strip()]  # a graph error's traceback comes first
    text = lines[-1] if lines else ''
    if text.startswith('{{'):
        text = text.split('}}', 1)[-1]
    return ' '.join(text.split()) or type(error).__name__


def read_images(folder, names, read=read_image, workers=1, depth=1):
    """Yields (name, `read(path)` or its UnreadableImage) for `names` of `folder` in order, reading up to
    `depth` files ahead on `workers` threads (decoding overlaps the caller's work on earlier images)."""
    def attempt(name):
        try:
            return read(os.path.join(folder, name))
        except UnreadableImage as error:
            return error
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending = collections.deque()
        for name in names:
            pending.append((name, pool.submit(attempt, name)))
            if len(pending) > depth:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
