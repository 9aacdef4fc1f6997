"""Quick YOLO preset for CPU: ssd_quick's data, backbone, learning rate and 1000 steps with the yolo family.

    python -m experiments.train_detector --config=experiments/configs/yolo_quick.py --workdir=/tmp/yolo_quick

The priors are left None: the trainer derives them from train_day's boxes (k-means, adapt.priors; 9 priors
from 2.8 x 6.7 to 37 x 50 px at 160 px) and run.json stores them. Objects are small (median 10 x 6 px at
160 px), so the grids start at stride 4 as SSD's heads do: levels C2-C4 (40, 20 and 10 cells a side) reached
validation mAP@0.5 day 0.680 / dusk 0.138 / night 0.022 (SSD quick's source-only run: 0.589 / 0.128 / 0.052),
where YOLOv3's strides 8 and 16 (C3, C4, 6 priors) reached 0.488 / 0.113 / 0.011. A train step costs about
1.5x SSD's (measured side by side on the shared 2-core machine); the run took 34 min there under a load of 3-7.
"""
import ml_collections

from experiments.configs import ssd_quick


def yolo_block():
    """Settings of the yolo family: model (anchors None: k-means priors from the source boxes), loss,
    post-processing."""
    return ml_collections.ConfigDict(dict(
        model=dict(backbone='resnet18', width=0.25, levels=('C2', 'C3', 'C4'), anchors=None, priors_per_level=3,
                   kmeans_seed=0, neck_channels=64, prior_prob=0.01, frozen_bn=False, backbone_kwargs={},
                   dtype='float32', instance_dim=64, instance_top_k=64),
        loss=dict(ignore_threshold=0.5, obj_weight=1.0, noobj_weight=1.0, cls_weight=1.0, box_weight=1.0),
        postprocess=dict(score_threshold=0.01, iou_threshold=0.45, max_detections=100, pre_nms_top_k=200)))


def get_config():
    c = ssd_quick.get_config()
    c.detector = 'yolo'
    return c
