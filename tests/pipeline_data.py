"""In-memory detection examples and pipelines, for any test of the input pipeline (a module of its own:
importing test_pipeline from another test file would register its TFDS builder a second time)."""
import numpy as np
import tensorflow as tf

from adapt.datasets import pipeline as pl

SPEC = {"image": tf.TensorSpec([], tf.string),
        "objects": {"bbox": tf.TensorSpec([None, 4], tf.float32), "label": tf.TensorSpec([None], tf.int64),
                    "is_difficult": tf.TensorSpec([None], tf.bool)}}


def _example(i, size=(32, 32), num_objects=None):
    """Random uint8 image and i % 4 boxes; labels 0..k-1 identify each object, odd ones are 'difficult'."""
    rng = np.random.default_rng(i)
    k = i % 4 if num_objects is None else num_objects
    y0, x0 = rng.uniform(0, 0.5, k), rng.uniform(0, 0.5, k)
    bbox = np.stack([y0, x0, y0 + rng.uniform(0.1, 0.5, k), x0 + rng.uniform(0.1, 0.5, k)], -1)
    label = np.arange(k, dtype=np.int64)
    return {"image": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
            "objects": {"bbox": bbox.astype(np.float32).reshape(-1, 4), "label": label, "is_difficult": label % 2 == 1}}


def _dataset(examples, corrupt=()):
    encoded = [b"not an image" if i in corrupt else tf.io.encode_png(ex["image"]).numpy()
               for i, ex in enumerate(examples)]
    gen = lambda: ({"image": encoded[i], "objects": ex["objects"]} for i, ex in enumerate(examples))
    return tf.data.Dataset.from_generator(gen, output_signature=SPEC)


def _pipe(ds, **kwargs):
    defaults = dict(global_batch_size=4, image_size=(32, 32), max_boxes=4, local_device_count=1,
                    process_index=0, process_count=1, shuffle_buffer=64)
    return pl.DetectionPipeline(ds, **{**defaults, **kwargs})


def _take(it, n):
    return [next(it) for _ in range(n)]
