"""Settings every trainer reads the same way from its preset: image size, optimizer, loop schedule."""
from __future__ import annotations

import functools

from adapt.training.loop import LoopConfig
from adapt.training.optim import OptimizerConfig, make_optimizer


def image_size(config) -> tuple:
    """(height, width) of `config.image_size` (an int or a pair)."""
    size = config.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def optimizer_config(config) -> OptimizerConfig:
    """The preset's `optimizer` block with `lr` as the peak learning rate and `num_steps` as the
    schedule's length; ValueError on an unknown key or a bad value."""
    return OptimizerConfig.from_mapping({**config.optimizer.to_dict(), 'learning_rate': config.lr,
                                         'total_steps': config.num_steps})


def optimizer(config):
    return make_optimizer(optimizer_config(config))


def loop_config(config, print_fn=None) -> LoopConfig:
    """When to log, checkpoint, evaluate and draw (`eval_every` also draws unless `image_every` is set)."""
    eval_every = config.get('eval_every', 0)
    return LoopConfig(log_every=config.log_every, checkpoint_every=config.checkpoint_every, keep=config.keep,
                      eval_every=eval_every, image_every=config.get('image_every', eval_every),
                      best_metric=config.get('best_metric') or None, tensorboard=config.tensorboard,
                      print_fn=print_fn or functools.partial(print, flush=True))
