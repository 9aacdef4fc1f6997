"""Helpers shared by the experiment scripts: usage errors (one line, exit status 2) and dataset checks.

A wrong flag value must never end in a traceback: `parse_flags` turns absl's flag errors into one line,
and `check_choice` / `check_dataset` / `check_split` name the valid choices in theirs.
"""
import contextlib
import difflib
import os
import sys

# TensorFlow (tf.data, TFDS) prints C++ start-up lines on stderr (oneDNN notice, CPU features) that would
# bury a one-line usage error; set before TensorFlow is imported. oneDNN only speeds up TF's own
# matmuls/convs, which the input pipeline does not use.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')


def usage_error(message):
    """Print `<script>: <message>` on one line to stderr and exit with status 2."""
    print(f'{os.path.basename(sys.argv[0])}: {message}', file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def exit_on_non_finite():
    """A NaN/Inf in training (adapt.training.NonFiniteError, a FloatingPointError) ends the script with the
    error on one line and exit status 1 (the last good checkpoint is kept)."""
    try:
        yield
    except FloatingPointError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(1)


def _one_line(error):
    """The message of a (possibly wrapped) exception on one line, without KeyError's quoting."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    message = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    return ' '.join(message.replace("\\'", "'").split())


def parse_flags(argv):
    """absl flag parsing (`app.run(main, flags_parser=parse_flags)`) with one-line usage errors."""
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        usage_error(_one_line(error))
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # a bad --config.* override
        usage_error(f'bad flag: {_one_line(error)}')


def define_config(default, help_string='Preset (ml_collections get_config()).'):
    """`--config` flag; a `--config.<key>=...` override naming no key of the preset is a usage error.

    (ml_collections resolves override types while defining the flag, i.e. before absl parses the flags.)
    """
    from ml_collections import config_flags
    try:
        return config_flags.DEFINE_config_file('config', default, help_string)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        usage_error(f'bad flag: {_one_line(error)}')


def define_run_flags(min_steps=None):
    """The flags of every training script: --workdir (required), --data_dir, --num_steps (at least
    `min_steps` when set)."""
    from absl import flags
    flags.DEFINE_string('workdir', None, 'Checkpoints, logs and results go here; rerun to resume.', required=True)
    flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
    flags.DEFINE_integer('num_steps', None, 'Training steps (default: the preset\'s).', lower_bound=min_steps)


def apply_flags(config, names):
    """`config` with the value of each flag in `names` that was given (not None) set under the same key."""
    from absl import flags
    with config.unlocked():
        for name in names:
            if getattr(flags.FLAGS, name) is not None:
                config[name] = getattr(flags.FLAGS, name)
    return config


def define_distributed_flags():
    """Flags for JAX's multi-controller runtime: the same command on every host, each with its process_id."""
    from absl import flags
    flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for multi-host runs.')
    flags.DEFINE_integer('num_processes', 1, 'Number of processes (hosts) in a multi-host run.', lower_bound=1)
    flags.DEFINE_integer('process_id', 0, 'This process\'s index, 0 .. num_processes-1.', lower_bound=0)


def initialize_distributed():
    """jax.distributed.initialize from the flags of `define_distributed_flags` (a no-op for one process)."""
    from absl import flags
    from adapt.training import maybe_initialize_distributed
    f = flags.FLAGS
    if f.num_processes > 1 and (not f.coordinator_address or f.process_id >= f.num_processes):
        usage_error('a multi-host run needs --coordinator_address=HOST:PORT and 0 <= --process_id < '
                    '--num_processes')
    maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)


def define_detector_run_flags():
    """--workdir (a finished detector run), --step, and --dataset / --data_dir of the split it reads
    (default: the run's own): the flags of the scripts that use a trained detector."""
    from absl import flags
    flags.DEFINE_string('workdir', None, 'Detector run workdir (run.json + checkpoints/; train_detector or '
                        'adapt_detector).', required=True)
    flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).', lower_bound=0)
    flags.DEFINE_string('dataset', None, 'TFDS name[/config] of --split (default: the one trained on).')
    flags.DEFINE_string('data_dir', None, 'TFDS data directory of --split (default: the training run\'s).')


def load_run(workdir, kind, step=None):
    """`adapt.runs.load_run`, a workdir that is no finished run of `kind` (or lacks `step`) a usage error."""
    from adapt.runs import RunError, load_run as load
    try:
        return load(workdir, kind, step)
    except RunError as error:
        usage_error(str(error))


def check_choice(what, value, choices):
    """Usage error unless `value` is one of `choices`."""
    choices = list(choices)
    if value not in choices:
        usage_error(f'unknown {what} {value!r}; valid choices: {", ".join(map(str, choices))}')
    return value


def check_detector_family(config):
    """Usage error unless the config names a registered detector family with a settings block."""
    from adapt.models.families import detector_families
    check_choice('detector', config.detector, [n for n in detector_families() if n in config])


def set_backbone(config, name=None):
    """Usage error unless the chosen family's backbone (`name`, when given, replaces the preset's) is known;
    a family without one (shared_latent reads UNIT encoders) takes no --backbone."""
    from adapt.models.backbones import BACKBONES
    from adapt.models.data_settings import settings_family
    model = config[settings_family(config)].model  # a wrapper family (translated): the wrapped one's
    if 'backbone' not in model:
        if name is not None:
            usage_error(f'detector {config.detector} has no backbone: drop --backbone')
        return
    if name is not None:
        model.backbone = name
    check_choice('backbone', model.backbone, BACKBONES)


def check_method(config):
    """Usage error unless the method and its adaptation-loss list resolve (names, NAME:WEIGHT syntax)."""
    from adapt.methods.base import get_method, resolve_terms
    from adapt.registry import RegistryError
    try:
        resolve_terms(get_method(config.method), config.adaptation_losses, config.adaptation_hparams.to_dict())
    except RegistryError as error:
        usage_error(str(error))


def check_init_run(config):
    """Usage error unless `init_run` is empty or a finished run's workdir."""
    if config.get('init_run') and not os.path.exists(os.path.join(config.init_run, 'run.json')):
        usage_error(f'init_run {config.init_run!r} is not a finished run (no run.json)')


def check_dataset(name, data_dir=None):
    """A TFDS builder for 'name[/config][:version]' (after registering adapt's builders)."""
    import tensorflow_datasets as tfds
    import adapt.datasets  # noqa: F401  (registers daynight_synth, bdd100k)
    base, _, rest = name.partition('/')
    base = base.split(':')[0]
    known = tfds.list_builders()
    if base not in known:  # TFDS has hundreds of builders: name adapt's, the closest ones and the count
        close = difflib.get_close_matches(base, known, n=5, cutoff=0.5)
        ours = [b for b in ('daynight_synth', 'bdd100k') if b in known]
        usage_error(f'unknown dataset {base!r}; valid choices: {", ".join(ours)} or any of the {len(known)} '
                    f'names in tfds.list_builders()' + (f' (closest: {", ".join(close)})' if close else ''))
    config = rest.split(':')[0]
    if config:
        configs = [c.name for c in getattr(tfds.builder_cls(base), 'BUILDER_CONFIGS', [])]
        check_choice(f'config of dataset {base}', config, configs)
    return tfds.builder(name, data_dir=data_dir)


def check_split(builder, split):
    """Usage error unless the split (optionally sliced, 'validation_day[:500]') exists in the builder."""
    check_choice(f'split of {builder.info.full_name}', split.split('[')[0], sorted(builder.info.splits))
    return split


def prepare(builder):
    """Build the dataset if it is not there yet (procedural builders such as daynight_synth)."""
    if not builder.is_prepared():
        print(f'preparing {builder.info.full_name} in {builder.data_dir} ...', flush=True)
        builder.download_and_prepare()
    return builder
