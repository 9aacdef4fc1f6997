"""Toy pieces for the training-engine tests: a tiny CNN with cross-device BatchNorm, its steps, a dataset.

Kept independent of adapt.models / adapt.datasets on purpose (the engine must not depend on them).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from adapt.training import parallel
from adapt.training.state import MultiTrainState, TrainState

IMAGE = (8, 8, 3)
NUM_CLASSES = 4


class ToyCNN(nn.Module):
    """conv -> BatchNorm (statistics averaged over the 'data' axis) -> relu -> pool -> dense."""
    features: int = 8
    dtype: jnp.dtype | None = None  # None: compute in the inputs' dtype (so bf16 casts take effect)
    bn_axis: str | None = "data"    # None: plain BatchNorm over the whole batch (host references)

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(self.features, (3, 3), dtype=self.dtype, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis if train else None,
                         momentum=0.9, dtype=self.dtype, name="bn")(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(NUM_CLASSES, dtype=self.dtype, name="head")(x)


def init_state(tx, seed=0, features=8):
    model = ToyCNN(features)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1,) + IMAGE), train=False))  # 1 compile, not 30
    variables = init(jax.random.PRNGKey(seed))
    return model, TrainState.create(variables["params"], tx, rng=seed, batch_stats=variables["batch_stats"])


def make_step(model, nan_at=None, compute_dtype=None):
    """Per-device classification step; `nan_at` (1-based step) poisons the loss at that step."""
    def step(state, batch, key):
        noise = 0.01 * jax.random.normal(key, batch["image"].shape[1:])  # a key-dependent draw

        def loss_fn(params):
            images = batch["image"] + noise
            if compute_dtype is not None:
                params, images = parallel.cast_floating((params, images), compute_dtype)
            logits, new = model.apply({"params": params, "batch_stats": state.batch_stats}, images,
                                      train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), batch["label"]).mean()
            if nan_at is not None:
                loss = loss * jnp.where(state.step + 1 == nan_at, jnp.nan, 1.0)
            stats = parallel.cast_floating(new["batch_stats"], jnp.float32)
            return loss, (stats, logits.dtype)

        (loss, (stats, dtype)), grads = parallel.mean_value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = {"loss": loss}
        if compute_dtype is not None:  # proves the forward pass really ran in compute_dtype
            metrics["compute_dtype_ok"] = jnp.asarray(dtype == compute_dtype, jnp.float32)
        return state.apply_gradients(grads, batch_stats=stats), metrics
    return step


def make_batch(seed, index, batch_size):
    """Deterministic batch number `index` of a seeded stream."""
    rng = np.random.default_rng([seed, index])
    return {"image": rng.normal(size=(batch_size,) + IMAGE).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, size=(batch_size,)).astype(np.int32)}


class ToyData:
    """Infinite batch iterator with a JSON position, like the detection pipeline's state()/restore()."""
    def __init__(self, seed, batch_size):
        self.seed, self.batch_size, self.position = seed, batch_size, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = make_batch(self.seed, self.position, self.batch_size)
        self.position += 1
        return batch

    def state(self):
        return {"position": self.position}

    def restore(self, state):
        self.position = int(state["position"])


class ToyGAN(nn.Module):
    """A 'generator' and a 'discriminator' as two separate tiny MLPs."""
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.tanh(nn.Dense(8)(x)))


def init_gan_state(seed=0):
    gen, disc = nn.Dense(6), ToyGAN()
    kg, kd = jax.random.split(jax.random.PRNGKey(seed))
    params = {"gen": gen.init(kg, jnp.zeros((1, 4)))["params"],
              "disc": disc.init(kd, jnp.zeros((1, 6)))["params"]}
    txs = {"gen": optax.adam(1e-2, 0.5, 0.999), "disc": optax.adam(2e-2, 0.5, 0.999)}
    return gen, disc, MultiTrainState.create(params, txs, rng=seed)


def make_gan_step(gen, disc, groups=("disc", "gen")):
    """LSGAN-style alternating step: update the groups in `groups` order, each from its own loss."""
    def d_loss(dp, gp, batch, z):
        fake = gen.apply({"params": gp}, z)
        real = disc.apply({"params": dp}, batch["real"])
        return jnp.mean((real - 1) ** 2) + jnp.mean(disc.apply({"params": dp}, fake) ** 2)

    def g_loss(gp, dp, batch, z):
        return jnp.mean((disc.apply({"params": dp}, gen.apply({"params": gp}, z)) - 1) ** 2)

    def step(state, batch, key):
        keys = parallel.example_keys(key, batch["z"].shape[0])
        z = jax.vmap(lambda k: jax.random.normal(k, batch["z"].shape[1:]))(keys) + batch["z"]
        metrics = {}
        for group in groups:
            if group == "disc":
                loss, g = parallel.mean_value_and_grad(d_loss)(state.params["disc"], state.params["gen"], batch, z)
            else:
                loss, g = parallel.mean_value_and_grad(g_loss)(state.params["gen"], state.params["disc"], batch, z)
            state = state.apply_gradients(group, g)
            metrics[f"{group}_loss"] = loss
        return state, metrics
    return step


def gan_batch(seed, batch_size):
    rng = np.random.default_rng(seed)
    return {"z": rng.normal(size=(batch_size, 4)).astype(np.float32),
            "real": rng.normal(1.0, 0.5, size=(batch_size, 6)).astype(np.float32)}
