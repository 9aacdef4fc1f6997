"""One process of a multi-process data-parallel run on localhost (see tests/test_training_multiprocess.py).

python multiprocess_step.py PROCESS_ID NUM_PROCESSES PORT OUT.npz
Each process feeds its consecutive slice of the global batch; writes the params and losses it sees.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import jax  # noqa: E402  (importing is fine; no backend may start before distributed.initialize)
import numpy as np  # noqa: E402
import optax  # noqa: E402

import toy  # noqa: E402
from adapt.training import parallel  # noqa: E402
from adapt.training.optim import param_path  # noqa: E402

STEPS, GLOBAL_BATCH = 2, 8


def main():
    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    assert parallel.maybe_initialize_distributed(f"127.0.0.1:{port}", nproc, pid, initialization_timeout=60)
    mesh = parallel.make_mesh()
    model, state = toy.init_state(optax.sgd(0.1, momentum=0.9))
    state = parallel.replicate(state, mesh)
    step = parallel.data_parallel(toy.make_step(model), mesh)
    local = GLOBAL_BATCH // nproc
    losses = []
    for i in range(STEPS):
        batch = toy.make_batch(0, i, GLOBAL_BATCH)
        mine = {k: v[pid * local:(pid + 1) * local] for k, v in batch.items()}
        state, metrics, _ = step(state, parallel.shard_batch(mine, mesh))
        losses.append(float(parallel.to_host(metrics["loss"])))
    flat = jax.tree_util.tree_flatten_with_path(parallel.to_host((state.params, state.batch_stats)))[0]
    np.savez(out, loss=np.array(losses), devices=np.array([jax.device_count(), jax.local_device_count()]),
             **{param_path(k): v for k, v in flat})
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
