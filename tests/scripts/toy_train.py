"""Toy training run through adapt.training.train_loop, for the resume / NaN-guard subprocess tests.

python tests/scripts/toy_train.py --workdir W --steps 12 [--kill_at K] [--nan_at K] [--out params.npz]
Exit status 1 with a one-line message on a NaN/Inf.
"""
import argparse
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402

import toy  # noqa: E402
from adapt.training import LoopConfig, NonFiniteError, make_optimizer, to_host, train_loop  # noqa: E402
from adapt.training.optim import param_path  # noqa: E402


def _kill_when_saving(workdir):
    """SIGKILL as soon as orbax's temporary checkpoint directory appears; leave a note of what was seen."""
    directory = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 20
    while time.time() < deadline:
        tmp = [n for n in os.listdir(directory) if "tmp" in n]
        if tmp:
            with open(os.path.join(workdir, "killed_during_save.txt"), "w") as f:
                f.write(tmp[0])
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.0005)
    os.kill(os.getpid(), signal.SIGKILL)  # no note: the test fails, the save was never seen


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--checkpoint_every", type=int, default=3)
    p.add_argument("--log_every", type=int, default=2)
    p.add_argument("--kill_at", type=int, default=0, help="SIGKILL this process right after this step")
    p.add_argument("--kill_in_save_at", type=int, default=0,
                   help="SIGKILL this process while the checkpoint of this step is being written")
    p.add_argument("--nan_at", type=int, default=None, help="make the loss NaN at this step")
    p.add_argument("--out", default=None, help="write the final params here (.npz)")
    args = p.parse_args()

    tx = make_optimizer(dict(name="adamw", learning_rate=0.05, weight_decay=1e-3, schedule="cosine",
                             warmup_steps=2, total_steps=args.steps, clip_norm=1.0))
    model, state = toy.init_state(tx, seed=0)
    def on_step(step):
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == args.kill_in_save_at:
            threading.Thread(target=_kill_when_saving, args=(args.workdir,), daemon=True).start()
    config = LoopConfig(log_every=args.log_every, checkpoint_every=args.checkpoint_every, keep=2,
                        tensorboard=False)
    try:
        state = train_loop(state, toy.make_step(model, nan_at=args.nan_at), toy.ToyData(seed=1, batch_size=8),
                           args.steps, args.workdir, config, on_step=on_step)
    except NonFiniteError as err:
        sys.exit(f"error: {err}")
    if args.out:
        import jax
        flat = jax.tree_util.tree_flatten_with_path(to_host((state.params, state.batch_stats)))[0]
        np.savez(args.out, **{param_path(k): v for k, v in flat})


if __name__ == "__main__":
    main()
