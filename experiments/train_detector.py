"""Train a detector on any labelled TFDS detection dataset (source only); evaluate COCO / VOC metrics per split.

    python -m experiments.train_detector --workdir=/tmp/ssd_quick            # quick CPU preset
    python -m experiments.train_detector --config=experiments/configs/ssd_full.py --workdir=... \
        --config.lr=1e-3 --backbone=vgg16 --detector=retinanet

The same command resumes from the workdir's latest checkpoint (after a crash or SIGKILL) and reaches the
same parameters as an uninterrupted run. Writes to the workdir: run.json, checkpoints/, metrics.jsonl
(+ TensorBoard events), metrics.json (final per-split metrics), detections_<split>.json (COCO results)
and images/ (detections drawn on validation images). A NaN/Inf stops with one line and exit status 1;
a bad flag value gives one line listing the valid choices and exit status 2. The method is the preset's
(source_only); experiments/adapt_detector.py trains the others.
"""
from absl import app

from experiments import common, detector_run

detector_run.define_flags('ssd_quick.py')

if __name__ == '__main__':
    app.run(detector_run.main, flags_parser=common.parse_flags)
