"""Day2Night in one command: every transfer method on one detector and one dataset, with a report to trust.

    python -m experiments.day2night                                   # synthetic day/dusk/night, ~1 h on 2 cores
    python -m experiments.day2night --methods=source_only,oracle,online_translation,dann --seeds=3
    python -m experiments.day2night --dataset=bdd100k --manual_dir=/data/bdd100k --workdir=runs/bdd

The protocol (adapt.protocol.day2night) runs as a graph of stages, each in its own sub-workdir of
--workdir keyed by a hash of its settings: data -> source-only burn-in -> detection-aware UNIT -> every
method continued from the burn-in -> a sequential day -> dusk -> night run -> evaluation on the test
splits -> report. A complete stage is reused, so the same command again finishes in seconds; an
interrupted one resumes from its checkpoints; changed settings re-run only the stages they touch.
Writes <workdir>/report/report.md and report.json (every number), figures, and the COCO detections and
ground truth behind every number; <workdir>/graph.json lists the stages. A bad flag gives one line and
exit status 2; a NaN stops the stage with one line and exit status 1, its last good checkpoint kept.

--dataset=bdd100k: the preset's BDD100K domains (experiments/configs/day2night.py: labelled daytime train,
unlabelled night train, BDD's val as the test set of each time of day, as published); `--manual_dir` is
the folder of the BDD100K download (see adapt/datasets/bdd100k). Settings: --config.burn_in.* (the detector
preset), --config.adapt.* (the shared adaptation schedule), --config.unit.* (the translator).
"""
import os
import sys

from absl import app, flags, logging

from experiments import common

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
FLAGS = flags.FLAGS
common.define_config(os.path.join(_CONFIGS, 'day2night.py'))
flags.DEFINE_string('workdir', os.path.join('runs', 'day2night'), 'Stages, report and files go here; rerun '
                    'to reuse or resume.')
flags.DEFINE_string('methods', None, 'Comma-separated methods (default: every registered one).')
flags.DEFINE_integer('seeds', None, 'Repeat every seeded stage over this many seeds; report mean and std.',
                     lower_bound=1)
flags.DEFINE_enum('dataset', 'daynight_synth', ['daynight_synth', 'bdd100k'], 'Domains: the synthetic '
                  'day/dusk/night data, or BDD100K daytime / dawn_dusk / night.')
flags.DEFINE_string('manual_dir', None, 'BDD100K: the downloaded folder (images/ and labels/).')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_list('only', None, 'Bring only these stages (and what they depend on) up to date.')


def resolve_config():
    from adapt.protocol.day2night import method_names
    from adapt.protocol.spec import severity_methods
    config = FLAGS.config
    with config.unlocked():
        if FLAGS.methods is not None:
            config.methods = FLAGS.methods
        if FLAGS.seeds is not None:
            config.seeds = FLAGS.seeds
    if FLAGS.dataset == 'bdd100k':
        if not FLAGS.manual_dir and not FLAGS.data_dir:
            common.usage_error('--dataset=bdd100k needs --manual_dir=<the BDD100K download> (or a --data_dir '
                               'where bdd100k is prepared)')
        from experiments.configs.day2night import bdd100k_domains
        with config.unlocked():
            config.domains.update(bdd100k_domains())
    try:
        severity_methods(config, method_names(config))
    except ValueError as error:
        common.usage_error(str(error))
    for role in ('source', 'intermediate', 'target'):
        common.check_choice(f'{role} domain', config[role], list(config.domains))
    if FLAGS.manual_dir and not os.path.isdir(FLAGS.manual_dir):
        common.usage_error(f'--manual_dir {FLAGS.manual_dir!r} is not a directory')
    return config


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO
    config = resolve_config()
    import jax  # one compilation cache per protocol: a resumed or repeated stage loads its programs
    jax.config.update('jax_compilation_cache_dir', os.path.join(os.path.abspath(FLAGS.workdir), 'xla_cache'))
    from adapt.protocol import run_graph
    from adapt.protocol.day2night import build_stages
    stages = build_stages(config, data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir)
    try:
        results = run_graph(stages, FLAGS.workdir, only=FLAGS.only)
    except ValueError as error:  # a bad --only name, a missing split
        common.usage_error(str(error).splitlines()[0])
    except FloatingPointError:  # adapt.training.NonFiniteError: run_graph printed the stage and the error
        sys.exit(1)
    if 'report' in results:
        print(f"report: {results['report']['report_md']}")


if __name__ == '__main__':
    app.run(main, flags_parser=common.parse_flags)
