"""Data-parallel step: 4 devices == 1 device; GAN half-steps touch only their group; keys; bf16."""
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
import toy  # noqa: E402

from adapt.training import make_optimizer, parallel  # noqa: E402


def _run(make_state, make_step, batches, num_devices):
    """Run the step over `batches` on a mesh of `num_devices`; return host (state, metrics list)."""
    mesh = parallel.make_mesh(num_devices)
    state = parallel.replicate(make_state(), mesh)
    step = parallel.data_parallel(make_step(), mesh)
    history = []
    for batch in batches:
        state, metrics, finite = step(state, parallel.shard_batch(batch, mesh))
        assert bool(finite)
        history.append(metrics)
    return parallel.to_host((state, history))


def _assert_trees_close(a, b, tol=1e-5):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol, err_msg=jax.tree_util.keystr(path))


TX = make_optimizer(dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-3, clip_norm=5.0))
BATCHES = [toy.make_batch(0, i, 8) for i in range(2)]


@functools.lru_cache(maxsize=None)
def _cnn_run(num_devices, compute_dtype=None):
    model, _ = toy.init_state(TX)
    return _run(lambda: toy.init_state(TX)[1], lambda: toy.make_step(model, compute_dtype=compute_dtype),
                BATCHES, num_devices)


def test_four_devices_equal_one_device_cnn_with_batchnorm():
    assert jax.device_count() == 4
    _assert_trees_close(_cnn_run(1), _cnn_run(4))
    state, history = _cnn_run(4)
    assert int(state.step) == 2
    # The step really learned and the BatchNorm statistics moved (else equality would prove little).
    model, init = toy.init_state(TX)
    assert np.abs(state.params["conv"]["kernel"] - np.asarray(init.params["conv"]["kernel"])).max() > 1e-3
    assert np.abs(state.batch_stats["bn"]["mean"]).max() > 1e-3
    # The loss is the global-batch loss: recompute step 1's loss on the host from the initial params.
    b = BATCHES[0]
    noise = 0.01 * jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), 0), b["image"].shape[1:])
    logits, _ = toy.ToyCNN(bn_axis=None).apply({"params": init.params, "batch_stats": init.batch_stats}, b["image"] + noise,
                            train=True, mutable=["batch_stats"])
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, b["label"]).mean()
    np.testing.assert_allclose(history[0]["loss"], expected, rtol=1e-5)


def test_gan_half_steps_leave_other_group_bit_identical():
    gen, disc, state0 = toy.init_gan_state()
    batch = toy.gan_batch(0, 8)
    host0 = parallel.to_host(state0)
    for group, other in (("disc", "gen"), ("gen", "disc")):
        state, metrics = _run(lambda: toy.init_gan_state()[2], lambda: toy.make_gan_step(gen, disc, (group,)),
                              [batch], 4)
        for x, y in zip(jax.tree.leaves(state.params[other]), jax.tree.leaves(host0.params[other])):
            assert np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(state.opt_state[other]), jax.tree.leaves(host0.opt_state[other])):
            assert np.array_equal(x, y)
        changed = [not np.array_equal(x, y) for x, y in
                   zip(jax.tree.leaves(state.params[group]), jax.tree.leaves(host0.params[group]))]
        assert all(changed), group


def test_gan_alternating_step_four_devices_equal_one_device():
    gen, disc, _ = toy.init_gan_state()
    batches = [toy.gan_batch(i, 8) for i in range(3)]
    runs = [_run(lambda: toy.init_gan_state()[2], lambda: toy.make_gan_step(gen, disc), batches, n)
            for n in (1, 4)]
    _assert_trees_close(*runs)
    assert int(runs[1][0].step) == 3  # one step per alternating (disc, gen) pair


def test_step_key_is_fold_in_of_seed_and_step():
    _, _, state0 = toy.init_gan_state(seed=7)

    def step(state, batch, key):
        return state, {"u": jax.random.uniform(key)}

    _, history = _run(lambda: state0, lambda: step, [toy.gan_batch(0, 4)] * 3, 4)
    for k, metrics in enumerate(history):
        np.testing.assert_allclose(metrics["u"], jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(7), k)))


def test_bf16_compute_keeps_float32_params_and_close_loss():
    (state, history), (f32_state, f32_history) = _cnn_run(4, jnp.bfloat16), _cnn_run(4)
    assert all(m["compute_dtype_ok"] == 1.0 for m in history)
    floats = [x for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
              if np.issubdtype(x.dtype, np.floating) or x.dtype == jnp.bfloat16]
    assert len(floats) == 14 and all(x.dtype == np.float32 for x in floats)  # 6 params, 2 stats, 6 momenta
    np.testing.assert_allclose([m["loss"] for m in history], [m["loss"] for m in f32_history], rtol=2e-2)
    _assert_trees_close(state.params, f32_state.params, tol=2e-2)
