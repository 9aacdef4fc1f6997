"""Train a detector with any registered method on labelled source + unlabelled (or, for the oracle,
labelled) target data, on the generic data-parallel step.

    python -m experiments.adapt_detector --workdir=/tmp/dann --config.method=dann \
        --config.init_run=/tmp/ssd_quick
    python -m experiments.adapt_detector --workdir=/tmp/mine --config.method=source_only \
        --config.adaptation_losses='my_losses:sliced_wasserstein:0.5,coral:1.0'

--config.method: source_only | oracle | dann | mmd | coral | entropy | mean_teacher | ... (adapt.methods.METHODS);
mean_teacher's settings: --config.mean_teacher.{decay,threshold,box_regression}; its teacher and student
are both evaluated (lines and metrics.json labels 'teacher/<split>', 'student/<split>').
--config.strong_augment.domains=source,target: the trained model sees strong views there too.
fine_tune / feature_extract: --config.fine_tune.{num_labelled,seed,keep_source,freeze,reinit} (N labelled
target images, their ids in run.json; feature_extract freezes the backbone under a fresh head).
pseudo_label: --config.pseudo_label.{threshold,rounds,steps_per_round}; lwf: --config.lwf.labels.
translate_train: --config.translator=<train_unit workdir> (source images translated to the target, with
their boxes). shared_latent: --config=experiments/configs/shared_latent_quick.py
--config.shared_latent.unit_run=<train_unit workdir> (a head on the UNIT shared latent space).
--config=experiments/configs/adapt_quick.py:METHOD is the quick preset of one method.
--config.adaptation_losses: NAME:WEIGHT pairs replacing the method's defaults; NAME is a registered loss
(dann_image, dann_instance, mmd, coral, entropy) or package.module:function. Hyper-parameters:
--config.adaptation_hparams.<loss>.<name>=... --config.init_run starts from a finished run's weights
with a fresh optimizer and schedule; --config.ema_decay=0.999 trains and evaluates an EMA of the
weights. Outputs, resume, NaN stop and exit statuses as experiments/train_detector.py.
"""
from absl import app

from experiments import common, detector_run

detector_run.define_flags('adapt_quick.py')

if __name__ == '__main__':
    app.run(detector_run.main, flags_parser=common.parse_flags)
