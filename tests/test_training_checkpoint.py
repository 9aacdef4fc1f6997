"""Checkpointer: keep-K latest plus the best by a metric, JSON metadata, exact state round-trip, NaN refusal."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
import toy  # noqa: E402

from adapt.training import Checkpointer, NonFiniteError, make_optimizer, parallel  # noqa: E402


def _state():
    return toy.init_state(make_optimizer(dict(name="adamw", param_groups=[("conv", 0.0)])))[1]


def test_keep_latest_k_plus_best_and_reopen(tmp_path):
    state = _state()
    ckpt = Checkpointer(str(tmp_path), keep=2, best_metric="map", best_mode="max")
    assert ckpt.restore(state) is None
    scores = {2: 0.3, 4: 0.7, 6: 0.5, 8: 0.6}
    for step in range(1, 10):
        ckpt.save(step, state, {"step": step}, metrics={"map": scores[step]} if step in scores else None)
    assert ckpt.all_steps() == [4, 8, 9] and ckpt.best_step() == 4
    ckpt.close()
    # Reopened (a resumed run), the best survives later saves because its metrics are on disk.
    ckpt = Checkpointer(str(tmp_path), keep=2, best_metric="map", best_mode="max")
    for step in (10, 11, 12):
        ckpt.save(step, state, {"step": step})
    assert ckpt.all_steps() == [4, 11, 12] and ckpt.best_step() == 4
    assert ckpt.metrics(4) == {"map": 0.7}
    ckpt.close()


def test_best_mode_min_and_plain_keep(tmp_path):
    state = _state()
    ckpt = Checkpointer(str(tmp_path / "a"), keep=1, best_metric="loss", best_mode="min")
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 4.0)]:
        ckpt.save(step, state, metrics={"loss": loss})
    assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2
    plain = Checkpointer(str(tmp_path / "b"), keep=3)
    for step in range(1, 7):
        plain.save(step, state)
    assert plain.all_steps() == [4, 5, 6]
    with pytest.raises(ValueError, match="max, min"):
        Checkpointer(str(tmp_path / "c"), best_mode="largest")


def test_state_and_json_metadata_round_trip(tmp_path):
    mesh = parallel.make_mesh(4)
    state = parallel.replicate(_state().replace(step=jnp.asarray(17, jnp.int32)), mesh)
    meta = {"data": {"position": 123, "epoch": 2, "order_seed": [1, 2]}, "note": "day", "lr": 1e-3}
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(17, state, meta)
    template = parallel.replicate(_state(), mesh)  # different values, same structure
    restored, got_meta = ckpt.restore(template)
    assert got_meta == meta
    assert type(restored) is type(state) and restored.tx is template.tx
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree.leaves(state)):
        assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)
        assert a.sharding.is_fully_replicated and len(a.sharding.device_set) == 4
    assert int(restored.step) == 17


def test_multi_state_round_trip(tmp_path):
    _, _, state = toy.init_gan_state(seed=3)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(1, state, {})
    restored, _ = ckpt.restore(toy.init_gan_state(seed=4)[2])
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_refuses_non_finite_state_and_metric(tmp_path):
    state = _state()
    ckpt = Checkpointer(str(tmp_path), best_metric="map")
    ckpt.save(1, state, metrics={"map": 0.1})
    bad = state.replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.inf), state.params))
    with pytest.raises(NonFiniteError, match="step 2.*last good checkpoint: step 1"):
        ckpt.save(2, bad)
    with pytest.raises(NonFiniteError, match="step 3: map=nan"):
        ckpt.save(3, state, metrics={"map": float("nan")})
    assert ckpt.all_steps() == [1]
