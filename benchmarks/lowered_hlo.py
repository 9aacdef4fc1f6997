"""Hashes of the lowered train steps and predict functions of the quick presets: a refactor that moves no
parameter and changes no computation leaves every hash as it was.

    python -m benchmarks.lowered_hlo                      # one line per (family, program): sha256 of its HLO
    python -m benchmarks.lowered_hlo --families=ssd,yolo
    python -m benchmarks.lowered_hlo --families=           # the UNIT steps alone

Per family (ssd, retinanet, yolo, faster_rcnn on ssd_quick's settings, the data-derived priors and anchor
sizes fixed here) the data-parallel train step of each method (as experiments/benchmark.py times it:
`data_parallel(setup(config, n).step(config), mesh)`) and `make_predict_fn` on the same mesh are lowered, not
compiled, on a tiny batch; the text carries no source locations (`as_text()` drops them), so a moved line of
Python does not change a hash. 'params' hashes every variable's path, shape and dtype (what checkpoints on disk
are keyed by). Then the UNIT train step of unit_quick (`adapt.trainers.unit.Trainer.step`): plain, with the
feature loss (a random frozen backbone) and detection-aware (a random ssd_quick judge, crop 64).
"""
import hashlib
import os
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

FAMILIES = ('ssd', 'retinanet', 'yolo', 'faster_rcnn')
METHODS = ('source_only', 'dann', 'mean_teacher')
NUM_CLASSES = 3
BATCH = 4  # one image per device
YOLO_PRIORS = [[(0.05, 0.04), (0.08, 0.1), (0.12, 0.06)], [(0.2, 0.15), (0.25, 0.3), (0.3, 0.2)],
               [(0.4, 0.35), (0.5, 0.6), (0.7, 0.5)]]
ANCHOR_SIZES = (8.0, 16.0, 32.0)


def quick_config(family, method):
    """ssd_quick with `family`'s detector (the data-derived settings fixed) and `method`."""
    from experiments.configs import common
    c = common.base_config()
    c.detector = family
    c.method = method
    c.batch_size = BATCH
    c.yolo.model.anchors = YOLO_PRIORS
    c.faster_rcnn.model.anchor_sizes = ANCHOR_SIZES
    return c


def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


def variable_paths(variables):
    """'collection/path shape dtype' of every variable, one a line (what a checkpoint on disk is keyed by)."""
    import jax
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    return '\n'.join(f'{jax.tree_util.keystr(path)} {leaf.shape} {leaf.dtype}' for path, leaf in leaves)


def lowered(family, method, mesh):
    """(train step HLO, predict HLO, variable paths) of one family and method."""
    from adapt.benchmark import random_batch
    from adapt.trainers.detection import init_state, setup
    from adapt.models.inference import make_predict_fn
    from adapt.training import data_parallel, replicate, shard_batch
    config = quick_config(family, method)
    s = setup(config, NUM_CLASSES)
    state = replicate(init_state(config, s), mesh)
    one = lambda seed: random_batch(BATCH, config.image_size, config.max_boxes, NUM_CLASSES, seed)  # noqa: E731
    batch = {'source': one(0), 'target': one(1)}
    for domain in s.strong:
        batch[domain]['image_strong'] = batch[domain]['image']
    batch = shard_batch(batch, mesh)
    train = data_parallel(s.step(config), mesh).lower(state, batch).as_text()
    variables = {'params': state.params['detector'], 'batch_stats': state.batch_stats}
    predict = make_predict_fn(s.detector, mesh).lower(variables, batch['source']['image']).as_text()
    return train, predict, variable_paths(variables)


def unit_lowered(variant, mesh):
    """The HLO of the UNIT step of unit_quick in `variant` ('plain', 'feature', 'detection_aware')."""
    import jax
    import numpy as np
    from adapt.models.frozen_features import random_features
    from adapt.run_models import build_detector
    from adapt.trainers import unit
    from adapt.trainers.unit_judge import FrozenDetector
    from adapt.training import data_parallel, replicate, shard_batch
    from experiments.configs import ssd_quick, unit_quick
    config, kwargs = unit_quick.get_config(), {}
    if variant == 'feature':
        config.loss.weights.feature = 0.5
        kwargs['features'] = random_features('resnet18', 0.125, levels=('C2', 'C3'), seed=0,
                                             backbone_kwargs={'stage_sizes': (1, 1, 1, 1)})
    elif variant == 'detection_aware':
        detector = build_detector(ssd_quick.get_config(), NUM_CLASSES)
        variables = jax.device_get(detector.init(jax.random.key(0, impl='rbg')))
        kwargs['detector'] = FrozenDetector(detector, variables, 'random')
        config.image_size = tuple(detector.image_size)[0]
        config.update(crop_size=64)
        config.loss.weights.update(semantic=1000.0, labelled_cycle=1.0)
    rng = np.random.default_rng(0)
    a = rng.random((config.batch_size, config.image_size, config.image_size, 3), np.float32)
    batch = {'a': a, 'b': rng.random(a.shape, np.float32)}
    if variant == 'detection_aware':
        m = config.max_boxes
        batch['a'] = {'image': a, 'labels': np.zeros((len(a), m), np.int32), 'mask': np.ones((len(a), m), np.float32),
                      'boxes': np.tile(np.array([0.1, 0.1, 0.5, 0.5], np.float32), (len(a), m, 1))}
    state = replicate(unit.init_state(config), mesh)
    step = data_parallel(unit.Trainer(config, **kwargs).step(), mesh, donate=False)
    return step.lower(state, shard_batch(batch, mesh)).as_text()


def main(argv):
    from adapt.training import make_mesh
    families = FAMILIES
    for arg in argv[1:]:
        if arg.startswith('--families='):
            families = tuple(f for f in arg.split('=', 1)[1].split(',') if f)
    mesh = make_mesh()
    for family in families:
        predicts, paths = set(), set()
        for method in METHODS:
            train, predict, variables = lowered(family, method, mesh)
            print(f'{family:12} {method:13} train   {digest(train)}', flush=True)
            predicts.add(digest(predict))
            paths.add(digest(variables))
        for h in sorted(predicts):
            print(f'{family:12} {"-":13} predict {h}', flush=True)
        for h in sorted(paths):
            print(f'{family:12} {"-":13} params  {h}', flush=True)
    for variant in ('plain', 'feature', 'detection_aware'):
        print(f'{"unit":12} {variant:15} train {digest(unit_lowered(variant, make_mesh(1)))}', flush=True)


if __name__ == '__main__':
    main(sys.argv)
