"""An SSD-family detector from a config: the model, its anchors, the loss settings and the train step.

`--detector` picks a variant; both share the SSD architecture and differ in the head and its loss:
  ssd:       softmax head with a background column, cross-entropy with 3:1 hard-negative mining,
             matcher IoU 0.5 (every ground truth also keeps its best anchor);
  retinanet: sigmoid head (bias at prior 0.01), focal loss (alpha 0.25, gamma 2) on all anchors but an
             ignore band of IoU 0.4-0.5 (RetinaNet's matcher), normalised by the positives.
The train step is the per-device step of `adapt.training.data_parallel`.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from adapt.losses.detection import ssd_loss
from adapt.matching import assign_targets
from adapt.models.ssd import BOX_WEIGHTS, SSD
from adapt.training.parallel import AXIS, mean_value_and_grad

DETECTORS = {
    'ssd': dict(head='softmax', classification='softmax', matched_threshold=0.5, unmatched_threshold=0.5),
    'retinanet': dict(head='sigmoid', classification='focal', matched_threshold=0.5, unmatched_threshold=0.4),
}


@dataclasses.dataclass(frozen=True)
class Detector:
    """A built detector: `model` (BatchNorm over `axis_name` for training), its `eval_model` (no axis),
    the anchors [A, 4] for `image_size`, and the target / loss / postprocess settings."""
    model: SSD
    eval_model: SSD
    anchors: np.ndarray
    image_size: tuple
    matcher: dict
    loss: dict
    postprocess: dict

    @property
    def head(self):
        return self.model.head

    def init(self, key):
        """Variables {'params', 'batch_stats'} of the model for this image size (one jit-ed program:
        initialising layer by layer costs a compilation per initializer call)."""
        return jax.jit(self.eval_model.init)(key, jnp.zeros((1, *self.image_size, 3), jnp.float32))


def build_detector(config, num_classes, detector='ssd', axis_name=AXIS):
    """Detector from a ConfigDict with `image_size`, `model` (SSD fields except head / num_classes),
    `loss` (ssd_loss hparams), `matcher` (assign_targets arguments; the thresholds default to the
    variant's) and `postprocess` (see ssd.postprocess)."""
    if detector not in DETECTORS:
        raise ValueError(f'unknown detector {detector!r}; valid choices: {", ".join(DETECTORS)}')
    variant = DETECTORS[detector]
    size = config.image_size
    image_size = (size, size) if isinstance(size, int) else tuple(size)
    fields = dict(config.model)
    fields['dtype'] = jnp.dtype(fields.get('dtype', 'float32'))
    for key in ('levels', 'extra_channels'):
        if key in fields:
            fields[key] = tuple(fields[key])
    if fields.get('aspect_ratios') is not None:
        fields['aspect_ratios'] = tuple(tuple(r) if isinstance(r, (list, tuple)) else r
                                        for r in fields['aspect_ratios'])
    model = SSD(num_classes=num_classes, head=variant['head'], axis_name=axis_name, **fields)
    eval_model = model.clone(axis_name=None)
    matcher = {'matched_threshold': variant['matched_threshold'],
               'unmatched_threshold': variant['unmatched_threshold'],
               **{k: v for k, v in dict(config.matcher).items() if v is not None}}
    loss = dict(classification=variant['classification'], **dict(config.loss))
    return Detector(model, eval_model, model.anchors(image_size), image_size, matcher, loss,
                    dict(config.postprocess))


def make_targets(detector, boxes, labels, mask):
    """assign_targets for a batch: boxes [B, M, 4], labels / mask [B, M] -> dict of [B, A, ...]."""
    anchors = jnp.asarray(detector.anchors)
    assign = lambda b, l, m: assign_targets(anchors, b, l, m, weights=BOX_WEIGHTS, **detector.matcher)  # noqa: E731
    return jax.vmap(assign)(boxes, labels, mask)


def make_train_step(detector):
    """Per-device `step(state, batch, key) -> (state, metrics)`: targets, forward, loss, update.

    The loss is normalised by the positives averaged over the devices, so one step on N devices equals
    one step on 1 device for the same global batch.
    """
    def step(state, batch, key):
        del key  # no randomness in the step (augmentation happens in the input pipeline)
        targets = make_targets(detector, batch['boxes'], batch['labels'], batch['mask'])
        normalizer = lax.pmean(jnp.sum(targets['positive']).astype(jnp.float32), AXIS)

        def loss_fn(params):
            outputs, new = detector.model.apply({'params': params, 'batch_stats': state.batch_stats},
                                                batch['image'], train=True, mutable=['batch_stats'])
            loss, metrics = ssd_loss(outputs, targets, normalizer=normalizer, **detector.loss)
            stats = jax.tree.map(lambda x: x.astype(jnp.float32), new['batch_stats'])
            return loss, (metrics, stats)

        (_, (metrics, stats)), grads = mean_value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads, batch_stats=stats), metrics

    return step
