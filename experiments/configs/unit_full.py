"""Full UNIT preset (GPU/TPU): the reference architecture and optimiser at 256 px, day <-> night.

    python -m experiments.train_unit --config=experiments/configs/unit_full.py --workdir=/tmp/unit_full

Reference values (mingyuliutw/UNIT configs): generator width 64, 2 downsamplings, 4 residual blocks per
encoder / decoder of which 1 shared, critics of width 64 with 4 layers at 3 scales, reflection padding,
LSGAN, loss weights gan 1 / recon 10 / KL 0.01 / cycle 10 / cycle KL 0.01, Adam(1e-4, 0.5, 0.999) with
weight decay 1e-4 and the learning rate halved every 100k steps. The reference trains with batch 1 on one
GPU; here the batch is split over the devices (instance / layer norm are per sample, so any split gives
the same step).
"""
from experiments.configs import common


def get_config():
    c = common.unit_config()
    c.dataset_a = c.dataset_b = c.eval_dataset = 'daynight_synth/r256'
    c.image_size = 256
    c.batch_size = 8
    c.num_steps = 500_000
    c.model.update(dim=64, n_downsample=2, n_res=4, n_shared=1, dis_dim=64, dis_layers=4, num_scales=3,
                   pad_type='reflect')
    c.lr = 1e-4
    c.optimizer.update(decay_every=100_000, decay_factor=0.5)
    c.eval_examples = 0
    c.eval_batch_size = 16
    c.log_every = 100
    c.checkpoint_every = 10_000
    c.image_every = 2_000
    c.num_grid = 8
    c.keep = 3
    return c
