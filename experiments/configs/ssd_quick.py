"""Quick SSD preset for CPU: 128 px scenes trained at 160 px, a width-0.25 ResNet-18, < 10 minutes on 2 cores.

    python -m experiments.train_detector --workdir=/tmp/ssd_quick

Objects in daynight_synth are small (median ~8 % of the image side), so the heads start at stride 4 (C2)
and the default boxes span 4 % to 25 % of the image; upsampling the 128 px renders to 160 px bought more
day mAP@0.5 than more steps at 128 px (0.58 vs 0.50).
"""
import ml_collections


def ssd_block():
    """Settings of the SSD family (ssd and retinanet): model, matcher, loss, post-processing."""
    return ml_collections.ConfigDict(dict(
        model=dict(backbone='resnet18', width=0.25, levels=('C2', 'C3', 'C4'), extra_channels=(64,),
                   aspect_ratios=((2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,)), min_scale=0.04, max_scale=0.25,
                   head_convs=0, frozen_bn=False, backbone_kwargs={}, dtype='float32',
                   instance_dim=64, instance_top_k=64),
        # Matcher thresholds: None = the variant's (ssd 0.5/0.5, retinanet 0.5/0.4).
        matcher=dict(allow_low_quality=True,
                     matched_threshold=ml_collections.FieldReference(None, field_type=float),
                     unmatched_threshold=ml_collections.FieldReference(None, field_type=float)),
        loss=dict(neg_pos_ratio=3, box_weight=1.0, beta=1.0, alpha=0.25, gamma=2.0),
        postprocess=dict(score_threshold=0.01, iou_threshold=0.45, max_detections=100, pre_nms_top_k=200)))


def get_config():
    c = ml_collections.ConfigDict()
    c.dataset = 'daynight_synth/r128_small'
    c.train_split = 'train_day'
    c.eval_splits = 'validation_day,validation_dusk,validation_night'
    c.eval_examples = 0               # per split; 0 = the whole split
    c.detector = 'ssd'                # ssd | retinanet (adapt.models.detector.DETECTORS)
    c.seed = 0
    c.image_size = 160
    c.max_boxes = 16
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_steps = 1000
    # One settings block per detector family; `detector` picks the one in use.
    c.ssd = ssd_block()
    c.retinanet = ssd_block()
    c.optimizer = ml_collections.ConfigDict(dict(
        name='adamw', schedule='cosine', warmup_steps=50, end_factor=0.0, weight_decay=5e-4, clip_norm=10.0))
    c.lr = 3e-3                       # peak learning rate (the optimizer's total_steps is num_steps)
    c.augment = ml_collections.ConfigDict(dict(
        flip_prob=0.5, crop_min_ious=(None, 0.1, 0.3, 0.5, 0.7), crop_scale=(0.5, 1.0), brightness=0.1,
        contrast=0.2, saturation=0.2, hue=0.02))
    c.log_every = 50
    c.checkpoint_every = 200
    c.eval_every = 500                # and at the end; 0: at the end only
    c.keep = 2
    c.best_metric = ''                # e.g. 'validation_day/AP50' keeps the best checkpoint too
    c.num_draw = 8                    # example images with detections drawn, per eval split
    c.init_from = ''                  # backbone checkpoint from experiments.import_weights
    # Methods (adapt.methods; train_detector runs source_only, adapt_detector any of them).
    c.method = 'source_only'          # source_only | oracle | dann | mmd | coral | entropy
    c.adaptation_losses = ''          # 'name:weight,...' (also package.module:function); '' = the method's
    c.adaptation_hparams = ml_collections.ConfigDict(dict(   # '' level = the detector's alignment level
        dann_image=dict(level='', hidden=64, gamma=10.0), dann_instance=dict(hidden=64, gamma=10.0),
        mmd=dict(level='', num_kernels=5, kernel_mul=2.0), coral=dict(level='')))
    c.target_dataset = ''             # '' = dataset
    c.target_split = 'train_night'    # unlabelled unless the method uses target labels (oracle)
    c.target_eval_splits = ''         # evaluation splits of target_dataset (when it differs)
    c.ema_decay = 0.0                 # > 0: train an EMA of the weights and evaluate it
    c.init_run = ''                   # a finished detector run to start from (fresh optimizer and schedule)
    c.tensorboard = True
    return c
