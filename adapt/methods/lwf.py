"""Learning without Forgetting (Li and Hoiem 2016): adapt to the target while distilling the frozen source
model's outputs on the same images, so the source task is kept without storing any source sample.

`config.lwf.labels` says where the target labels come from: 'fine_tune' (the N labelled target images of
`config.fine_tune`) or 'pseudo_label' (the model's own confident detections, in the rounds of
`config.pseudo_label`; no true target label is used). The frozen source model is the run's starting
point (`init_run`), kept in the checkpointed aux state and read as the method's teacher; the distillation
term is the 'lwf' adaptation loss (weight 1 by default; its temperature and box weight under
`config.adaptation_hparams.lwf`).
"""
from __future__ import annotations

import dataclasses

from adapt.methods import fine_tune, pseudo_label
from adapt.methods.base import Method, register_method

LABELS = ('fine_tune', 'pseudo_label')


def _source_model(variables):
    return {'source_model': variables}


def _teacher(state):
    return state.aux['method']['source_model']


def configure(config) -> Method:
    """LWF with the target labels of `config.lwf.labels`; ValueError (one line) for a bad choice."""
    labels = config.lwf.labels
    if labels == 'fine_tune':
        return dataclasses.replace(LWF, **fine_tune.settings(config))
    if labels == 'pseudo_label':
        return dataclasses.replace(LWF, supervised=('source',), losses='pseudo_label:1.0,lwf:1.0',
                                   **pseudo_label.settings(config))
    raise ValueError(f'unknown lwf.labels {labels!r}; valid choices: {", ".join(LABELS)}')


LWF = register_method(Method(
    'lwf', 'Learning without Forgetting: target labels (lwf.labels: fine_tune or pseudo_label) + the frozen '
    'source model\'s outputs distilled', supervised=('target',), losses='lwf:1.0', init_aux=_source_model,
    teacher=_teacher, configure=configure))
