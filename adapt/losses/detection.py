"""Pure detection losses: `loss(outputs, targets, **hparams) -> (scalar, metrics dict)`.

`outputs` are a detector's raw head outputs {'cls_logits' [B, A, C'], 'box_codes' [B, A, 4]};
`targets` come from `adapt.matching.assign_targets` vmapped over the batch ({'cls_targets' [B, A] with
0 = background, 'box_targets' [B, A, 4] encoded, 'positive' / 'negative' [B, A] masks}).
Both terms are sums normalised by the number of positive anchors (SSD and RetinaNet), at least 1.
In a data-parallel step pass `normalizer` = the mean positive count over the devices, so that the
pmean'd loss equals the loss of the global batch on any device count.
"""
import jax
import jax.numpy as jnp
import optax
from jax import lax

from adapt.matching import hard_negative_mining

CLASSIFICATION = ('softmax', 'focal')
NEGATIVES = ('mined', 'weighted')


def weighted_negatives(positive, negative, ratio):
    """Background weights [..., A] without mining: each image's negatives share equally the weight of
    `ratio` x max(its positives, 1) anchors (in expectation, a uniform draw of that many), so an image
    without objects still teaches its background and no anchor is chosen for a large loss."""
    num_pos = jnp.sum(positive, -1, keepdims=True).astype(jnp.float32)
    num_neg = jnp.sum(negative, -1, keepdims=True).astype(jnp.float32)
    return jnp.where(negative, ratio * jnp.maximum(num_pos, 1.0) / jnp.maximum(num_neg, 1.0), 0.0)


def smooth_l1(x, beta=1.0):
    """Huber-style smooth L1 (torchvision/Fast R-CNN): 0.5 x^2 / beta below beta, |x| - 0.5 beta above."""
    ax = jnp.abs(x)
    if beta <= 0:
        return ax
    return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """RetinaNet's focal loss per element: -alpha_t (1 - p_t)^gamma log(p_t) (targets in {0, 1})."""
    ce = optax.sigmoid_binary_cross_entropy(logits, targets)
    p = jax.nn.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets) if alpha >= 0 else 1.0
    return alpha_t * (1 - p_t) ** gamma * ce


def ssd_loss(outputs, targets, *, classification='softmax', neg_pos_ratio=3, box_weight=1.0, beta=1.0,
             alpha=0.25, gamma=2.0, normalizer=None, negatives='mined'):
    """SSD multibox loss, or its RetinaNet-style focal variant.

    classification='softmax': cross-entropy over C' = num_classes + 1 columns on the positives and on the
    `neg_pos_ratio` x num_pos hardest negatives of each image (largest background cross-entropy), or, with
    negatives='weighted' (pseudo-labels: the hardest negatives are where the teacher missed an object), on
    every negative with `weighted_negatives`.
    classification='focal': sigmoid focal loss (alpha, gamma) over C' = num_classes columns on every anchor
    that is positive or negative (ignored anchors excluded); background is the all-zero target.
    Box term: smooth L1 (beta; 0 gives L1) of the codes against the targets on positives, times box_weight.
    Returns (loss, {'loss', 'cls_loss', 'box_loss', 'num_positives'}).
    """
    logits = outputs['cls_logits'].astype(jnp.float32)
    codes = outputs['box_codes'].astype(jnp.float32)
    cls_t = targets['cls_targets']
    positive = jnp.asarray(targets['positive'], bool)
    negative = jnp.asarray(targets['negative'], bool)
    num_pos = jnp.sum(positive).astype(jnp.float32)
    norm = jnp.maximum(num_pos if normalizer is None else lax.stop_gradient(normalizer), 1.0)

    if classification == 'softmax':
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, cls_t)
        if negatives == 'mined':
            hard = hard_negative_mining(lax.stop_gradient(ce), positive, negative, neg_pos_ratio)
            cls_sum = jnp.sum(jnp.where(positive | hard, ce, 0.0))
        elif negatives == 'weighted':
            background = weighted_negatives(positive, negative, neg_pos_ratio)
            cls_sum = jnp.sum(jnp.where(positive, ce, 0.0) + jnp.where(negative, background * ce, 0.0))
        else:
            raise ValueError(f'negatives {negatives!r}; valid choices: {", ".join(NEGATIVES)}')
    elif classification == 'focal':
        onehot = jax.nn.one_hot(cls_t - 1, logits.shape[-1])  # background (0) -> all zeros
        per_anchor = sigmoid_focal_loss(logits, onehot, alpha, gamma).sum(-1)
        cls_sum = jnp.sum(jnp.where(positive | negative, per_anchor, 0.0))
    else:
        raise ValueError(f'classification {classification!r}; valid choices: {", ".join(CLASSIFICATION)}')

    box_sum = jnp.sum(jnp.where(positive[..., None], smooth_l1(codes - targets['box_targets'], beta), 0.0))
    cls_loss, box_loss = cls_sum / norm, box_weight * box_sum / norm
    loss = cls_loss + box_loss
    return loss, {'loss': loss, 'cls_loss': cls_loss, 'box_loss': box_loss, 'num_positives': num_pos}
