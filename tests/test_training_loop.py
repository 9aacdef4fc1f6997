"""train_loop: NaN/Inf guard (exit status, message, last good checkpoint), logs, eval + best, image grids."""
import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))
import toy  # noqa: E402

from adapt.training import Checkpointer, LoopConfig, NonFiniteError, make_mesh, state as state_lib, train_loop  # noqa: E402
from adapt.training.metrics_log import make_grid  # noqa: E402


def test_nan_loss_exits_1_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    cmd = [sys.executable, os.path.join(HERE, "scripts", "toy_train.py"), "--workdir", str(tmp_path),
           "--steps", "10", "--checkpoint_every", "3", "--log_every", "100", "--nan_at", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == ("error: non-finite value at step 5: loss=nan; stopped without saving "
                         "(last good checkpoint: step 3)"), proc.stderr[-3000:]
    # The flush before the step-6 save caught it: only step 3 is on disk, and it is finite.
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    assert ckpt.all_steps() == [3]
    restored, meta = ckpt.restore()  # no template: the saved tree as dicts
    assert meta["step"] == 3 and meta["data"] == {"position": 3}
    leaves = jax.tree.leaves((restored["params"], restored["batch_stats"], restored["opt_state"]))
    assert leaves and all(np.all(np.isfinite(x)) for x in leaves if np.issubdtype(x.dtype, np.floating))
    ckpt.close()


def test_nan_in_state_with_finite_metrics_is_caught(tmp_path):
    _, state = toy.init_state(optax.sgd(0.1))

    def step(state, batch, key):
        poison = jnp.where(state.step + 1 == 3, jnp.nan, 1.0)
        return state.replace(params=jax.tree.map(lambda p: p * poison, state.params)), {"loss": 0.5}

    config = LoopConfig(log_every=10, checkpoint_every=2, tensorboard=False, print_fn=None)
    with pytest.raises(NonFiniteError, match=r"step 3: train state.*last good checkpoint: step 2"):
        train_loop(state, step, toy.ToyData(0, 4), 6, str(tmp_path), config, mesh=make_mesh(2))
    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2]


def test_logs_tensorboard_eval_best_checkpoint_and_images(tmp_path):
    import tensorflow as tf

    model, state = toy.init_state(optax.adam(1e-2))
    accuracy = {3: 0.9, 6: 0.5}
    lines = []
    config = LoopConfig(log_every=2, checkpoint_every=4, keep=1, eval_every=3, image_every=3,
                        best_metric="acc", print_fn=lines.append)
    rng = np.random.default_rng(0)
    images = {"grid": rng.uniform(size=(4, 8, 8, 3)).astype(np.float32)}
    final = train_loop(state, toy.make_step(model), toy.ToyData(0, 8), 6, str(tmp_path), config,
                       eval_fn=lambda s, step: {"acc": accuracy[step]}, image_fn=lambda s, step: images)
    assert int(final.step) == 6

    records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    train = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
    assert sorted(train) == [2, 4, 6] and all(np.isfinite(list(train.values())))
    assert [(r["step"], r["acc"]) for r in records if r["split"] == "eval"] == [(3, 0.9), (6, 0.5)]

    # Progress lines: step, metrics, rate and ETA.
    progress = [l for l in lines if l.startswith("step ")]
    assert len(progress) == 3 and all("steps/s" in l and "images/s" in l and "ETA" in l for l in progress)

    # Best (step 3, acc 0.9) kept beside the latest (6); step 4 was dropped (keep=1).
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=1, best_metric="acc")
    assert ckpt.all_steps() == [3, 6] and ckpt.best_step() == 3
    ckpt.close()

    # PNG grids equal make_grid's, which places image i at row i // ncol, column i % ncol.
    grid = make_grid(images["grid"])
    assert grid.shape == (22, 22, 3)
    np.testing.assert_array_equal(grid[12:20, 2:10], np.round(images["grid"][2] * 255).astype(np.uint8))
    for step in (3, 6):
        png = np.asarray(Image.open(tmp_path / "images" / f"grid_{step:08d}.png"))
        np.testing.assert_array_equal(png, grid)

    # TensorBoard events: scalars equal the JSON lines; the image is the same PNG.
    seen = {}
    for path in glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                seen[(v.tag, event.step)] = (v.metadata.plugin_data.plugin_name, tf.make_ndarray(v.tensor))
    for step, loss in train.items():
        plugin, value = seen[("train/loss", step)]
        assert plugin == "scalars" and value == pytest.approx(loss, rel=1e-6)
    assert seen[("eval/acc", 3)][1] == pytest.approx(0.9)
    plugin, tensor = seen[("images/grid", 6)]
    assert plugin == "images" and tensor[:2].tolist() == [b"22", b"22"]
    np.testing.assert_array_equal(tf.io.decode_png(tensor[2]).numpy(), grid)


def test_all_finite():
    assert bool(state_lib.all_finite({"a": jnp.ones(3), "i": jnp.arange(3)}))
    assert not bool(state_lib.all_finite({"a": jnp.array([1.0, jnp.inf]), "i": jnp.arange(3)}))


def test_no_images_to_write_is_not_an_error(tmp_path):
    """`num_draw=0` gives the writer no images: nothing is written, and a fresh TensorBoard writer is fine."""
    from adapt.training.metrics_log import MetricsWriter
    writer = MetricsWriter(str(tmp_path), tensorboard=True)
    try:
        assert writer.images(3, {}) == []
    finally:
        writer.close()
    assert not os.path.exists(tmp_path / 'tensorboard')



def test_on_step_hears_of_finished_steps_only_and_the_line_shows_the_input_wait(tmp_path):
    """A step of about T seconds (chained matmuls; T measured on a finished step): step s has finished no
    earlier than (s - 1) T after step 1 did. A meter told of dispatched steps hears of several at once
    (dispatch returns before the devices are done); one told of finished steps cannot beat the bound."""
    import time

    _, state = toy.init_state(optax.sgd(0.1))
    w = jnp.eye(256) * 0.5

    def work(x):
        return jax.lax.fori_loop(0, 60, lambda _, y: jnp.tanh(y @ w), x)

    def step(state, batch, key):
        return state.replace(step=state.step + 1), {"loss": jnp.mean(work(jnp.ones((256, 256))))}

    timed = jax.jit(work)
    timed(jnp.ones((256, 256))).block_until_ready()
    durations = []
    for _ in range(3):
        begin = time.perf_counter()
        timed(jnp.ones((256, 256))).block_until_ready()
        durations.append(time.perf_counter() - begin)
    heard, lines = [], []
    config = LoopConfig(log_every=8, checkpoint_every=0, tensorboard=False, print_fn=lines.append)
    train_loop(state, step, toy.ToyData(0, 4), 8, str(tmp_path), config, mesh=make_mesh(1),
               on_step=lambda s: heard.append((s, time.perf_counter())))
    assert [s for s, _ in heard] == list(range(1, 9))
    first = heard[0][1]
    assert all(t - first >= 0.5 * min(durations) * (s - 1) for s, t in heard), (heard, durations)
    assert "input wait " in lines[-1] and lines[-1].endswith("%")
