"""The generic training loop: resume, data-parallel steps, NaN guard, logs, evaluation, checkpoints.

Steps are numbered by `state.step` after the update (1 = first update). Metrics stay on the devices
and are fetched every `log_every` steps (no transfer per step), before each checkpoint and at the end;
each fetched step is checked in order, so a NaN/Inf is reported at the step that produced it.

Steps are dispatched asynchronously, one ahead: step k is dispatched before the loop waits for step k - 1
to finish, so the host reads the next batch while the devices compute and at most two steps are in flight.
`on_step` is told of a step once it has finished, so rates and ETAs built on it are true ones (counting
dispatched steps, a meter ran far ahead of the devices for its first minute). The console line shows the
share of the time the loop spent waiting for its input pipeline ("input wait").
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np

from adapt.training.checkpoint import Checkpointer, NonFiniteError
from adapt.training.metrics_log import MetricsWriter, Progress
from adapt.training.parallel import data_parallel, make_mesh, replicate, shard_batch, to_host

EvalFn = Callable[[Any, int], Mapping[str, float]]          # (state, step) -> metrics
ImageFn = Callable[[Any, int], Mapping[str, np.ndarray]]     # (state, step) -> {name: [N,H,W,C]}


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """When things happen, in steps (0 = never); `keep` latest checkpoints plus the best one."""
    log_every: int = 50
    checkpoint_every: int = 500
    keep: int = 3
    eval_every: int = 0
    image_every: int = 0
    best_metric: str | None = None      # an eval metric name; keeps the best checkpoint by it
    best_mode: str = "max"
    tensorboard: bool = True
    print_fn: Callable[[str], None] | None = print   # console progress; None = silent


def train_loop(state, step_fn: Callable, data_iterator: Iterator, num_steps: int, workdir: str,
               config: LoopConfig = LoopConfig(), *, mesh=None, eval_fn: EvalFn | None = None,
               image_fn: ImageFn | None = None, meta: Mapping[str, Any] | None = None,
               on_step: Callable[[int], None] | None = None):
    """Train until `state.step == num_steps`; returns the final (replicated) state.

    `step_fn(state, batch, key) -> (state, metrics)` is the per-device step (see `parallel`);
    `data_iterator` yields this process's part of each global batch as NumPy dicts and may have
    `state()`/`restore(state)` (its JSON position, checkpointed with the train state). If `workdir`
    holds a checkpoint, training resumes from it (state, step, RNG, data position). `meta` is extra
    JSON stored in every checkpoint. `on_step(step)` runs once per step, in order, when that step has
    finished (progress meters, tests, profilers).
    Raises `NonFiniteError` on a NaN/Inf metric or state; nothing non-finite is ever saved.
    """
    mesh = mesh or make_mesh()
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep, config.best_metric,
                        config.best_mode)
    state = replicate(state, mesh)
    restored = ckpt.restore(state)
    if restored is not None:
        state, saved_meta = restored
        if saved_meta.get("data") is not None and hasattr(data_iterator, "restore"):
            data_iterator.restore(saved_meta["data"])
    step = int(to_host(state.step))
    writer = MetricsWriter(workdir, tensorboard=config.tensorboard)
    say = config.print_fn or (lambda line: None)
    if restored is not None:
        say(f"resumed from {workdir} at step {step}")
    train_step = data_parallel(step_fn, mesh)
    pending: list[tuple[int, Any, Any]] = []   # (step, metrics, finite) still on the devices
    window: list[dict] = []                       # fetched, checked metrics since the last log line
    progress, batch_size, input_wait = None, None, 0.0
    reported = step                               # on_step has run for every finished step up to here

    def report(upto: int) -> None:
        nonlocal reported
        for finished in range(reported + 1, upto + 1):
            if on_step is not None:
                on_step(finished)
        reported = max(reported, upto)

    def flush() -> None:
        """Fetch pending metrics and check them step by step (reports the first bad step)."""
        fetched = to_host([(m, f) for _, m, f in pending])
        for (s, _, _), (metrics, finite) in zip(pending, fetched):
            for name, value in metrics.items():
                if not np.isfinite(value):
                    raise NonFiniteError(s, name, float(value), last_good=ckpt.latest_step())
            if not finite:
                raise NonFiniteError(s, "train state (params / statistics / optimizer)",
                                     last_good=ckpt.latest_step())
            window.append(metrics)
        if pending:
            report(pending[-1][0])
        pending.clear()

    try:
        while step < num_steps:
            started = time.perf_counter()
            host_batch = next(data_iterator)
            input_wait += time.perf_counter() - started
            batch_size = batch_size or len(jax.tree.leaves(host_batch)[0]) * jax.process_count()
            if progress is None:  # its clock starts now: the first batch's wait is the pipeline's start-up
                progress, input_wait = Progress(num_steps, step, batch_size), 0.0
            state, metrics, finite = train_step(state, shard_batch(host_batch, mesh))
            step += 1
            pending.append((step, metrics, finite))
            if len(pending) > 1:  # one step ahead: wait for the previous one (no transfer)
                jax.block_until_ready(pending[-2][2])
                report(step - 1)
            last = step == num_steps
            if (config.log_every and step % config.log_every == 0) or last:
                flush()
                means = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                window.clear()
                writer.scalars(step, means, "train")
                say(progress.line(step, means, input_wait))
                input_wait = 0.0
            eval_metrics = None
            if eval_fn is not None and ((config.eval_every and step % config.eval_every == 0) or last):
                flush()  # never evaluate (or save) past an unnoticed NaN
                eval_metrics = {k: float(v) for k, v in eval_fn(state, step).items()}
                if config.best_metric and config.best_metric not in eval_metrics:
                    raise KeyError(f"best_metric {config.best_metric!r} not among the eval metrics "
                                   f"{sorted(eval_metrics)}")
                writer.scalars(step, eval_metrics, "eval")
                say(f"eval step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
            if image_fn is not None and config.image_every and step % config.image_every == 0:
                writer.images(step, image_fn(state, step))
            best_candidate = eval_metrics is not None and config.best_metric is not None
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or last or best_candidate:
                flush()
                position = data_iterator.state() if hasattr(data_iterator, "state") else None
                ckpt.save(step, state, {**dict(meta or {}), "step": step, "data": position},
                          metrics=eval_metrics if best_candidate else None)
    finally:
        writer.close()
        ckpt.close()
    return state
