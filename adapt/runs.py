"""Runs on disk: the library writes a run's description, and `load_run` reads any finished run back.

A workdir holds `run.json` ({'kind': 'detector' | 'unit', 'config': the full preset, 'data_dir',
'class_names', ...}) and `checkpoints/` (orbax). Runs started from a script or from Python look the same,
so evaluation, inference, frozen features and `init_run` all read them through `load_run`. This module only
reads and writes runs; the models a run holds are built by `adapt.run_models`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections

RUN_FILE = 'run.json'
KINDS = ('detector', 'unit')


class RunError(FileNotFoundError):
    """The workdir is not a finished run of the expected kind; one line."""


def write_run(workdir: str, kind: str, config, **extra) -> dict:
    """Write `run.json` (process 0 only in a multi-host run) and return what was written."""
    import jax
    if kind not in KINDS:
        raise ValueError(f'run kind {kind!r}; valid choices: {", ".join(KINDS)}')
    record = {'kind': kind, 'config': config.to_dict() if hasattr(config, 'to_dict') else dict(config), **extra}
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, RUN_FILE), 'w') as f:
            json.dump(record, f, indent=1)
    return record


def read_run(workdir: str, kind: str | None = None) -> dict:
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.exists(path):
        raise RunError(f'{workdir} has no {RUN_FILE}: not an adapt run workdir')
    with open(path) as f:
        record = json.load(f)
    if kind is not None and record.get('kind') != kind:
        raise RunError(f'{workdir} is a {record.get("kind")} run, not a {kind} run')
    return record


@dataclasses.dataclass
class Run:
    """A finished run: its record, `config` (ConfigDict), the checkpoint `step` and restored `state`
    (nested dicts of NumPy arrays, as saved)."""
    workdir: str
    record: dict
    step: int
    state: Any

    @property
    def kind(self) -> str:
        return self.record['kind']

    @property
    def config(self):
        return ml_collections.ConfigDict(self.record['config'])

    @property
    def data_dir(self):
        return self.record.get('data_dir')

    @property
    def class_names(self) -> tuple:
        return tuple(self.record.get('class_names', ()))

    @property
    def uses_ema(self) -> bool:
        return 'ema' in (self.state.get('aux') or {})

    def variables(self, ema: bool | None = None) -> dict:
        """Detector variables {'params', 'batch_stats'}: the EMA when the run kept one (unless ema=False)."""
        if self.kind != 'detector':
            raise RunError(f'{self.workdir} is a {self.kind} run, not a detector run')
        if (self.uses_ema if ema is None else ema):
            return self.state['aux']['ema']
        return {'params': self.state['params']['detector'], 'batch_stats': self.state.get('batch_stats') or {}}


def load_run(workdir: str, kind: str | None = None, step: int | None = None) -> Run:
    """The run in `workdir` at checkpoint `step` (default: the latest); RunError (one line) otherwise."""
    from adapt.training.checkpoint import Checkpointer  # orbax: only when a checkpoint is read
    record = read_run(workdir, kind)
    directory = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(directory):
        raise RunError(f'no checkpoint in {directory}')
    ckpt = Checkpointer(directory, read_only=True)
    try:
        steps = ckpt.all_steps()
        step = max(steps, default=None) if step is None else step
        if step not in steps:
            raise RunError(f'no checkpoint {"" if step is None else f"at step {step} "}in {directory}'
                           f'{f" (have {sorted(steps)})" if steps else ""}')
        state, _ = ckpt.restore(step=step)
    finally:
        ckpt.close()
    return Run(workdir, record, int(step), state)
