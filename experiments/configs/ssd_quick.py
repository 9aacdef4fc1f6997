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
    c.detector = 'ssd'                # ssd | retinanet | shared_latent | yolo | faster_rcnn (adapt.models.detector)
    c.seed = 0
    c.image_size = 160
    c.max_boxes = 16
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_steps = 1000
    # One settings block per detector family; `detector` picks the one in use.
    c.ssd = ssd_block()
    c.retinanet = ssd_block()
    # shared_latent: SSD's head on the latent map of a finished UNIT run's encoders (stride 4 with n_downsample
    # 2), then the extra stride-2 levels; no backbone. Night inputs go through the night encoder.
    c.shared_latent = ssd_block()
    for key in ('backbone', 'width', 'levels', 'backbone_kwargs'):
        del c.shared_latent.model[key]
    c.shared_latent.model.update(dict(extra_channels=(64, 64), aspect_ratios=((2.0, 3.0), (2.0, 3.0), (2.0,))))
    c.shared_latent.unit_run = ''             # a finished train_unit workdir (its encoders; its UNIT settings)
    c.shared_latent.variant = 'ssd'           # ssd (softmax) | retinanet (sigmoid, focal) head
    c.shared_latent.train_encoder = False     # False: the encoder stays frozen
    c.shared_latent.target_inputs = 'night,dusk'  # input names routed through the night (b) encoder
    from experiments.configs.yolo_quick import yolo_block  # yolo_quick imports this module
    c.yolo = yolo_block()
    from experiments.configs.faster_rcnn_quick import faster_rcnn_block  # faster_rcnn_quick imports this module
    c.faster_rcnn = faster_rcnn_block()
    # translated: a frozen input transform in front of a detector of `detector`'s family (adapt.models.translated);
    # the online_translation / gamma / histeq methods wrap the run's detector and fill the transform's settings.
    c.translated = ml_collections.ConfigDict(dict(
        detector='ssd', transform='unit',            # unit | gamma | histeq
        unit_run='', unit_step=ml_collections.FieldReference(None, field_type=int),
        target_mean=ml_collections.FieldReference(None, field_type=float), target_cdf=(),
        stats_split='validation_day'))              # the day frames gamma's and histeq's targets come from
    c.optimizer = ml_collections.ConfigDict(dict(
        name='adamw', schedule='cosine', warmup_steps=50, end_factor=0.0, weight_decay=5e-4, clip_norm=10.0))
    c.lr = 3e-3                       # peak learning rate (the optimizer's total_steps is num_steps)
    c.augment = ml_collections.ConfigDict(dict(
        flip_prob=0.5, crop_min_ious=(None, 0.1, 0.3, 0.5, 0.7), crop_scale=(0.5, 1.0), brightness=0.1,
        contrast=0.2, saturation=0.2, hue=0.02))
    # The strong view (adapt.datasets.augment.StrongAugmentConfig, Adaptive Teacher's recipe) drawn on the weak
    # view above: the trained model sees it in the `domains` listed ('source,target': how the baselines get
    # it) and in a method's own (mean_teacher: target); a teacher sees the weak view.
    c.strong_augment = ml_collections.ConfigDict(dict(
        domains='', jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, greyscale_prob=0.2,
        blur_prob=0.5, blur_sigma=(0.1, 2.0),   # pixels of the canvas
        erasing=((0.7, 0.05, 0.2, 0.3, 3.3), (0.5, 0.02, 0.2, 0.1, 6.0), (0.3, 0.02, 0.2, 0.05, 8.0))))
    c.log_every = 50
    c.checkpoint_every = 200
    c.eval_every = 500                # and at the end; 0: at the end only
    c.keep = 2
    c.best_metric = ''                # e.g. 'validation_day/AP50' keeps the best checkpoint too
    c.num_draw = 8                    # example images with detections drawn, per eval split
    c.init_from = ''                  # backbone checkpoint from experiments.import_weights
    # Methods (adapt.methods; train_detector runs source_only, adapt_detector any of them).
    c.method = 'source_only'          # source_only | oracle | dann | mmd | coral | entropy | mean_teacher |
    #                                   pseudo_label | fine_tune | feature_extract | lwf | shared_latent |
    #                                   translate_train | online_translation | gamma | histeq | adabn
    #                                   (adapt.methods.METHODS)
    c.adaptation_losses = ''          # 'name:weight,...' (also package.module:function); '' = the method's
    c.adaptation_hparams = ml_collections.ConfigDict(dict(   # '' level = the detector's alignment level
        dann_image=dict(level='', hidden=64, gamma=10.0), dann_instance=dict(hidden=64, gamma=10.0),
        mmd=dict(level='', num_kernels=5, kernel_mul=2.0), coral=dict(level=''),
        lwf=dict(temperature=2.0, box_weight=1.0)))
    c.target_dataset = ''             # '' = dataset
    c.target_split = 'train_night'    # unlabelled unless the method uses target labels (oracle)
    c.target_eval_splits = ''         # evaluation splits of target_dataset (when it differs)
    c.ema_decay = 0.0                 # > 0: train an EMA of the weights and evaluate it
    c.init_run = ''                   # a finished detector run to start from (fresh optimizer and schedule)
    c.translator = ''                 # a finished train_unit run whose frozen generator translates source ->
    #                                   target (translate_train) and target -> source (online_translation)
    c.adabn = ml_collections.ConfigDict(dict(num_images=0))  # adabn: target_split images (0 = all)
    # pseudo_label: rounds x steps_per_round must be num_steps (one learning-rate schedule over all rounds)
    c.pseudo_label = ml_collections.ConfigDict(dict(threshold=0.5, rounds=3, steps_per_round=100))
    # mean_teacher: the teacher's EMA decay (Adaptive Teacher: 0.9996 over 100k steps; adapt_quick: 0.99), the
    # score at or above which its detections become pseudo-labels, and box regression on them (off, as published)
    c.mean_teacher = ml_collections.ConfigDict(dict(decay=0.9996, threshold=0.8, box_regression=False))
    # fine_tune / feature_extract: N labelled target images (a seeded subset of target_split, ids in run.json;
    # subsets of one seed are nested); parameters matching `freeze` ('detector/features/backbone/conv1') keep
    # their values and BatchNorm statistics; feature_extract also freezes the backbone and starts the
    # parameters matching `reinit` (the head) fresh instead of from init_run.
    c.fine_tune = ml_collections.ConfigDict(dict(
        num_labelled=100,             # 0 = the whole target split; fewer than batch_size are repeated
        seed=0,                       # which subset
        keep_source=False,            # also train on the labelled source batches
        freeze='',                    # regex of parameter paths; '' = none
        reinit=r'^detector/(?!features/backbone/)'))   # feature_extract: everything outside the backbone
    # lwf: where its target labels come from: 'fine_tune' (the fine_tune block's N images) or 'pseudo_label'
    # (the pseudo_label block's rounds); the distillation's temperature / box weight: adaptation_hparams.lwf
    c.lwf = ml_collections.ConfigDict(dict(labels='fine_tune'))
    c.tensorboard = True
    return c
