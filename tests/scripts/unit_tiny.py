"""Tiny UNIT set-up shared by the UNIT tests: a small architecture, a train state, batches, fast compiles.

XLA's backend optimisation level 0 compiles the UNIT step about 4x faster on CPU (the tiny step runs in
milliseconds either way), which keeps the test files within their time budget.
"""
import jax
import ml_collections
import numpy as np

from adapt.models.unit import UNITConfig
from adapt.trainers.unit import init_state
from adapt.trainers.unit_step import make_train_step
from adapt.training import parallel

FAST_COMPILE = {'xla_backend_optimization_level': 0}
TINY = dict(dim=4, n_downsample=1, n_res=2, n_shared=1, dis_dim=4, dis_layers=2, num_scales=2, pad_type='reflect')


def config(**top_level):
    """A unit_quick ConfigDict at 16 px with the tiny architecture; keyword arguments replace top-level keys."""
    from experiments.configs import unit_quick
    c = unit_quick.get_config()
    c.image_size, c.batch_size, c.num_grid, c.lr = 16, 8, 2, 1e-3
    c.model = ml_collections.ConfigDict(TINY)
    c.update(top_level)
    return c


def batch(seed, size=16, n=8):
    rng = np.random.default_rng(seed)
    return {'a': rng.random((n, size, size, 3), np.float32), 'b': rng.random((n, size, size, 3), np.float32)}


def compiled_step(step_fn, state, example_batch, mesh):
    """data_parallel(step_fn) compiled at optimisation level 0, as `train_step(state, batch)`."""
    jitted = parallel.data_parallel(step_fn, mesh, donate=False)
    batch_sharded = parallel.shard_batch(example_batch, mesh)
    compiled = jitted.lower(parallel.replicate(state, mesh), batch_sharded).compile(compiler_options=FAST_COMPILE)
    return lambda s, b: compiled(s, parallel.shard_batch(b, mesh))


def run_steps(cfg, batches, num_devices, groups=('disc', 'gen'), state=None, **step_kwargs):
    """(host states, metrics) lists, one of each per batch, of one step per batch on a mesh of
    `num_devices`, from `state` (default: `init_state(cfg)`); `step_kwargs` go to `make_train_step`."""
    mesh = parallel.make_mesh(num_devices)
    state = parallel.replicate(init_state(cfg) if state is None else state, mesh)
    step_fn = make_train_step(UNITConfig.from_mapping(cfg.model), groups=groups, **step_kwargs)
    step = compiled_step(step_fn, state, batches[0], mesh)
    states, history = [], []
    for b in batches:
        state, metrics, finite = step(state, b)
        assert bool(finite)
        states.append(jax.device_get(parallel.to_host(state)))
        history.append(jax.device_get(parallel.to_host(metrics)))
    return states, history


def cli_flags(workdir, data_dir, num_steps=2, **config):
    """train_unit flags for the tiny architecture on daynight_synth/tiny (4 images per train split) at 16 px."""
    values = dict(image_size=16, batch_size=4, num_grid=2, eval_examples=2, eval_batch_size=2, log_every=1,
                  checkpoint_every=1, image_every=2, **{f'model.{k}': v for k, v in TINY.items()})
    values.update(config)
    dataset = 'daynight_synth/tiny'
    return ([f'--workdir={workdir}', f'--data_dir={data_dir}', f'--num_steps={num_steps}', f'--dataset_a={dataset}',
             f'--dataset_b={dataset}', f'--eval_dataset={dataset}', '--config.tensorboard=False']
            + [f'--config.{k}={v}' for k, v in values.items()])


def subprocess_env():
    """Environment for CLI subprocesses: the test session's XLA_FLAGS (4 host devices, fast compiles: see
    tests/conftest.py), CPU only, quiet TF."""
    import os
    env = dict(os.environ)
    env['JAX_PLATFORMS'] = 'cpu'
    env['TF_CPP_MIN_LOG_LEVEL'] = '2'
    env['PYTHONPATH'] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return env


def build_tiny(data_dir):
    import tensorflow_datasets as tfds
    import adapt.datasets  # noqa: F401  (registers daynight_synth)
    builder = tfds.builder('daynight_synth/tiny', data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder
