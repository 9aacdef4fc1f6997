"""orbax checkpoints of a train state plus JSON metadata (data-iterator position, best metric, ...).

Keeps the latest `keep` checkpoints and, when `best_metric` is set, also the best one by that metric
(among checkpoints saved with metrics). A save is finished (`wait_until_finished`) before `save`
returns, so the process may be killed at any later point; a kill during a save leaves only an
unfinished temporary directory, which orbax ignores, and the previous checkpoint intact.
A state with a NaN/Inf is refused (`NonFiniteError`): a checkpoint on disk is always finite.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from adapt.training.parallel import to_host
from adapt.training.state import all_finite

_all_finite = jax.jit(all_finite)


class NonFiniteError(FloatingPointError):
    """Training produced a NaN/Inf; `step` and `name` say where. Scripts exit(1) with str(err)."""

    def __init__(self, step: int, name: str, value: Any = None, last_good: int | None = None):
        self.step, self.name, self.value, self.last_good = step, name, value, last_good
        where = f"{name}={value}" if value is not None else name
        kept = (f"last good checkpoint: step {last_good}" if last_good is not None
                else "no checkpoint was saved")
        super().__init__(f"non-finite value at step {step}: {where}; stopped without saving ({kept})")


class Checkpointer:
    """`save(step, state, meta, metrics=None)` / `restore(template) -> (state, meta) | None`."""

    def __init__(self, directory: str, keep: int = 3, best_metric: str | None = None,
                 best_mode: str = "max", read_only: bool = False):
        """`read_only`: for loading a finished run; creates and cleans up nothing, and starts no background
        work that could outlive a short-lived reader (orbax's own read_only option logs warnings)."""
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode {best_mode!r}: choose one of max, min")
        self.best_metric, self.best_mode = best_metric, best_mode
        keep_policies = [policies.LatestN(n=keep)]
        best_fn = None
        if best_metric is not None:
            best_fn = lambda metrics: metrics[best_metric]  # noqa: E731
            keep_policies.append(policies.BestN(get_metric_fn=best_fn, reverse=(best_mode == "min"), n=1,
                                                keep_checkpoints_without_metrics=False))
        # best_fn also makes orbax write the metrics to disk, so the best survives a restart.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep_policies), best_fn=best_fn,
            best_mode=best_mode, create=not read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=not read_only)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """Step of the best kept checkpoint by `best_metric` (None if none has metrics)."""
        return self.manager.best_step() if self.best_metric else None

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, meta: Mapping[str, Any] | None = None,
             metrics: Mapping[str, float] | None = None) -> None:
        """Write and finish one checkpoint; refuse a non-finite state or metric."""
        if not bool(to_host(_all_finite(state))):
            raise NonFiniteError(step, "train state (params / statistics / optimizer)",
                                 last_good=self.latest_step())
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        for name, value in (metrics or {}).items():
            if not math.isfinite(value):
                raise NonFiniteError(step, name, value, last_good=self.latest_step())
        # Host NumPy copies: orbax would otherwise slice every replicated array per device, one small
        # compiled program per shape (~3 s per save of the tiny test detector on 4 CPU devices).
        args = ocp.args.Composite(state=ocp.args.StandardSave(to_host(state)),
                                  meta=ocp.args.JsonSave(dict(meta or {})))
        self.manager.save(step, args=args, metrics=metrics, force=True)
        self.manager.wait_until_finished()

    def restore(self, template=None, step: int | None = None):
        """(state, meta) of `step` (default: latest), or None if there is no checkpoint.

        With a `template` (a state of the same structure, e.g. freshly initialised and replicated),
        the state comes back as that type with its shapes, dtypes and shardings. Without one, the
        state is the saved tree as nested dicts of arrays (enough to read params for evaluation).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        abstract = None if template is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def metrics(self, step: int) -> dict | None:
        return self.manager.metrics(step)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

