"""Helpers shared by the experiment scripts: usage errors (one line, exit status 2) and dataset checks.

A wrong flag value must never end in a traceback: `parse_flags` turns absl's flag errors into one line,
and `check_choice` / `check_dataset` / `check_split` name the valid choices in theirs.
"""
import os
import sys


def usage_error(message):
    """Print `<script>: <message>` on one line to stderr and exit with status 2."""
    print(f'{os.path.basename(sys.argv[0])}: {message}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    """absl flag parsing (`app.run(main, flags_parser=parse_flags)`) with one-line usage errors."""
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        usage_error(' '.join(str(error).split()))


def check_choice(what, value, choices):
    """Usage error unless `value` is one of `choices`."""
    choices = list(choices)
    if value not in choices:
        usage_error(f'unknown {what} {value!r}; valid choices: {", ".join(map(str, choices))}')
    return value


def check_dataset(name, data_dir=None):
    """A TFDS builder for 'name[/config][:version]' (after registering adapt's builders)."""
    import tensorflow_datasets as tfds
    import adapt.datasets  # noqa: F401  (registers daynight_synth, bdd100k)
    base, _, rest = name.partition('/')
    base = base.split(':')[0]
    check_choice('dataset', base, sorted(tfds.list_builders()))
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
