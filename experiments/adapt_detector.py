"""Train a detector with any registered method on labelled source + unlabelled (or, for the oracle,
labelled) target data, on the generic data-parallel step.

    python -m experiments.adapt_detector --workdir=/tmp/dann --config.method=dann \
        --config.init_run=/tmp/ssd_quick
    python -m experiments.adapt_detector --workdir=/tmp/mine --config.method=source_only \
        --config.adaptation_losses='my_losses:sliced_wasserstein:0.5,coral:1.0'

--config.method: source_only | oracle | dann | mmd | coral | entropy (adapt.methods.METHODS).
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
