"""The training engine shared by all experiments (detectors and GANs).

state.py (TrainState, MultiTrainState), optim.py (optax from a config), parallel.py (mesh, shard_map
step, sharding helpers, multi-host start), checkpoint.py (orbax), metrics_log.py (JSON lines,
TensorBoard, PNG grids, progress), loop.py (train_loop).
"""
from adapt.training.checkpoint import Checkpointer, NonFiniteError
from adapt.training.loop import LoopConfig, train_loop
from adapt.training.optim import OptimizerConfig, make_optimizer, make_schedule
from adapt.training.parallel import (cast_floating, data_parallel, example_keys, make_mesh,
                                     maybe_initialize_distributed, mean_value_and_grad, replicate, shard_batch,
                                     to_host)
from adapt.training.state import MultiTrainState, TrainState

__all__ = [
    "Checkpointer", "NonFiniteError", "LoopConfig", "train_loop", "OptimizerConfig", "make_optimizer",
    "make_schedule", "cast_floating", "data_parallel", "example_keys", "make_mesh", "maybe_initialize_distributed",
    "mean_value_and_grad", "replicate", "shard_batch", "to_host", "MultiTrainState", "TrainState",
]
