"""Batches from several pipelines at once (a source and a target domain; UNIT's domains a and b).

Each step reads one batch from every pipeline; `fields` picks what reaches the step from each: a tuple of
keys (a dict of those), one key (that array alone), or None (the whole batch). Unsupervised methods get
the target as ('image',): its labels never leave the iterator. The position is every pipeline's position,
so a resumed run sees the same examples in every domain.
"""
from __future__ import annotations

TRAIN_FIELDS = ('image', 'boxes', 'labels', 'mask')


class ZipIterator:
    def __init__(self, pipelines: dict, fields: dict | None = None):
        self.pipelines = dict(pipelines)
        self.fields = {name: (fields or {}).get(name) for name in self.pipelines}

    def __iter__(self):
        return self

    def _select(self, name, batch):
        keep = self.fields[name]
        if keep is None:
            return batch
        if isinstance(keep, str):
            return batch[keep]
        return {k: batch[k] for k in keep}

    def __next__(self):
        return {name: self._select(name, next(p)) for name, p in self.pipelines.items()}

    def state(self):
        return {name: p.state() for name, p in self.pipelines.items()}

    def restore(self, state):
        for name, p in self.pipelines.items():
            p.restore(state[name])

    def close(self):
        """Drop the live tf.data iterators now (restoring the current position does that). Left to the
        garbage collector they may be destroyed at interpreter exit, where their destructor was seen to
        hang after a finished run."""
        for p in self.pipelines.values():
            p.restore(p.state())
