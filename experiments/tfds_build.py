"""`tfds build` for adapt's datasets, without the console script's optional dependencies.

    python -m experiments.tfds_build bdd100k --config=night --manual_dir=/data/bdd100k [--data_dir=...]
    python -m experiments.tfds_build daynight_synth --config=r64_small

The `tfds` console script of tensorflow-datasets 4.9.10 imports its `convert_format` and `build_croissant`
commands at start-up, and those need apache-beam and mlcroissant (not installed: apache-beam would
downgrade pinned packages). This runs TFDS's own `build` command, with every flag of `tfds build --help`,
after registering adapt's builders so that they can be named (a builder folder path works too).
"""
from absl import app
from tensorflow_datasets.scripts.cli import build, cli_utils

import adapt.datasets  # noqa: F401  (registers daynight_synth and bdd100k)


def main():
    parser = cli_utils.make_flags_parser(build.Args, description='Build TFDS datasets (tfds build).')
    app.run(lambda args: args.execute(), flags_parser=parser)


if __name__ == '__main__':
    main()
