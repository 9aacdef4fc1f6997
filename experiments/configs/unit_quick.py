"""Quick UNIT preset for CPU (2 cores, well under 15 minutes): 64 px day <-> night, small widths.

    python -m experiments.train_unit --workdir=/tmp/unit_quick

Architecture as the reference (conv7x7, two stride-2 convs, residual blocks with one shared block each
side, upsample + conv5x5 + layer norm, 3-scale LSGAN critics) at a quarter of the width, with 2 instead
of 4 residual blocks per side, 3 instead of 4 critic layers and batch 4. The learning rate is raised from
the reference 1e-4 (halved every 1000 steps) so that 2000 steps give clear translations; the loss
weights are the reference's. About 0.15-0.3 s per step on 2 shared cores.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.dataset_a = 'daynight_synth/r64_small'    # domain a (source, "day")
    c.split_a = 'train_day'
    c.dataset_b = 'daynight_synth/r64_small'    # domain b (target, "night")
    c.split_b = 'train_night'
    c.eval_dataset = 'daynight_synth/r64_small'  # its `paired` split scores night -> day (empty: no scoring)
    c.eval_split = 'paired'
    c.eval_examples = 250                       # 0 = the whole split
    c.seed = 0
    c.image_size = 64
    c.batch_size = 4
    c.num_steps = 2000
    c.crop_size = 0                             # > 0: train on random windows of this size (see translation.py)
    c.max_boxes = 16                            # labels per day image (the labelled cycle)
    c.flip_prob = 0.5
    c.shuffle_buffer = 2048
    c.model = ml_collections.ConfigDict(dict(
        dim=16, n_downsample=2, n_res=2, n_shared=1, dis_dim=16, dis_layers=3, num_scales=3, pad_type='reflect'))
    c.loss = ml_collections.ConfigDict(dict(
        gan_kind='lsgan',                       # lsgan | nsgan | hinge
        weights=dict(gan=1.0, recon=10.0, kl=0.01, cycle=10.0, cycle_kl=0.01, feature=0.0, semantic=0.0,
                     labelled_cycle=0.0),
        feature_kind='l1',                      # l1 | l2
        # the frozen day detector (a train_detector workdir) of the detection-aware terms: semantic
        # consistency, the labelled cycle, and the feature loss's backbone unless feature_backbone is set
        detector_run='',
        feature_backbone='',                    # train_detector workdir whose backbone the feature loss uses
        feature_levels=('C3', 'C4')))
    c.lr = 4e-4
    c.optimizer = ml_collections.ConfigDict(dict(
        name='adam', b1=0.5, b2=0.999, weight_decay=1e-4, no_decay=None, schedule='step',
        boundaries=(), decay_every=1000, decay_factor=0.5))
    c.fd_backbone = ''                          # train_detector workdir whose backbone gives the Frechet distance
    c.fd_level = 'C5'                           # features ('' = a seeded random resnet18 x0.25); pooled level
    c.eval_batch_size = 50
    c.log_every = 50
    c.checkpoint_every = 500
    c.image_every = 250
    c.num_grid = 6                              # examples per image grid
    c.keep = 2
    c.tensorboard = True
    return c
