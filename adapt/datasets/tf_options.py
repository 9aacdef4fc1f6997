"""The tf.data options every input pipeline of the project runs with."""
import tensorflow as tf


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds`, deterministic, with tf.data's autotuning off (a map's AUTOTUNE parallelism becomes the number
    of cores).

    Why: autotuning's optimiser thread sleeps for periods that grow up to a minute, and dropping an iterator
    waits for that thread to wake. A training iterator deleted after 20 s of use and 40 s idle (as during an
    end-of-run evaluation) took 33 s to delete, 0.3 s without autotuning; and since the garbage collector
    drops it, the stall lands anywhere in the process: the next protocol stage, the next test. Throughput
    is the same or better without it (the tests' 240x320 -> 160x160 training pipeline, 16-image batches on
    2 cores: 10.4 and 11.8 batches/s with autotuning, 12.4 and 12.0 without)."""
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return ds.with_options(options)
