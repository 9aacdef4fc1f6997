"""adapt.losses.detection against plain NumPy re-derivations of the SSD and RetinaNet losses."""
import numpy as np
import pytest

from adapt.losses.detection import sigmoid_focal_loss, smooth_l1, ssd_loss


def _case(seed, num_classes, softmax=True, batch=2, anchors=14):
    """Random outputs and targets with positives, negatives and ignored anchors."""
    num_outputs = num_classes + 1 if softmax else num_classes
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (batch, anchors, num_outputs))
    codes = rng.normal(0, 1.5, (batch, anchors, 4))
    kind = rng.choice(3, size=(batch, anchors), p=[0.25, 0.6, 0.15])  # 0 positive, 1 negative, 2 ignore
    kind[1, :2] = 0  # at least two positives in the second image
    positive, negative = kind == 0, kind == 1
    cls_targets = np.where(positive, rng.integers(1, num_classes + 1, (batch, anchors)), 0)
    box_targets = np.where(positive[..., None], rng.normal(0, 1.5, (batch, anchors, 4)), 0.0)
    outputs = {'cls_logits': logits.astype(np.float32), 'box_codes': codes.astype(np.float32)}
    targets = {'cls_targets': cls_targets.astype(np.int32), 'box_targets': box_targets.astype(np.float32),
               'positive': positive, 'negative': negative}
    return outputs, targets


def _np_smooth_l1(x, beta):
    ax = np.abs(x)
    return ax if beta == 0 else np.where(ax < beta, 0.5 * ax ** 2 / beta, ax - 0.5 * beta)


def _np_box_sum(outputs, targets, beta):
    diff = outputs['box_codes'].astype(np.float64) - targets['box_targets']
    return (_np_smooth_l1(diff, beta).sum(-1) * targets['positive']).sum()


def _np_softmax_ce_mined(outputs, targets, ratio):
    """Sum of CE over positives and, per image, the `ratio * num_pos` negatives of largest CE."""
    logits = outputs['cls_logits'].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    total = 0.0
    for b in range(logits.shape[0]):
        ce = -logp[b, np.arange(logits.shape[1]), targets['cls_targets'][b]]
        pos, neg = targets['positive'][b], targets['negative'][b]
        k = min(ratio * pos.sum(), neg.sum())
        total += ce[pos].sum() + np.sort(ce[neg])[::-1][:k].sum()
    return total


def _np_focal_sum(outputs, targets, alpha, gamma):
    logits = outputs['cls_logits'].astype(np.float64)
    onehot = np.eye(logits.shape[-1] + 1)[targets['cls_targets']][..., 1:]  # background -> all zeros
    p = 1 / (1 + np.exp(-logits))
    p_t = np.where(onehot == 1, p, 1 - p)
    a_t = np.where(onehot == 1, alpha, 1 - alpha)
    loss = -a_t * (1 - p_t) ** gamma * np.log(p_t)
    care = targets['positive'] | targets['negative']
    return (loss.sum(-1) * care).sum()


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('ratio', [1, 3])
def test_softmax_loss_with_hard_negative_mining(seed, ratio):
    outputs, targets = _case(seed, num_classes=4)
    loss, metrics = ssd_loss(outputs, targets, classification='softmax', neg_pos_ratio=ratio, beta=1.0)
    n = targets['positive'].sum()
    cls = _np_softmax_ce_mined(outputs, targets, ratio) / n
    box = _np_box_sum(outputs, targets, 1.0) / n
    np.testing.assert_allclose(metrics['cls_loss'], cls, rtol=1e-5)
    np.testing.assert_allclose(metrics['box_loss'], box, rtol=1e-5)
    np.testing.assert_allclose(loss, cls + box, rtol=1e-5)
    assert metrics['num_positives'] == n


@pytest.mark.parametrize('seed', [0, 3])
def test_focal_loss(seed):
    outputs, targets = _case(seed, num_classes=3, softmax=False)
    loss, metrics = ssd_loss(outputs, targets, classification='focal', alpha=0.25, gamma=2.0, beta=0.0,
                             box_weight=2.0)
    n = targets['positive'].sum()
    cls = _np_focal_sum(outputs, targets, 0.25, 2.0) / n
    box = 2.0 * _np_box_sum(outputs, targets, 0.0) / n
    np.testing.assert_allclose(metrics['cls_loss'], cls, rtol=1e-5)
    np.testing.assert_allclose(metrics['box_loss'], box, rtol=1e-5)
    np.testing.assert_allclose(loss, cls + box, rtol=1e-5)


def test_focal_closed_form():
    # p = sigmoid(0) = 0.5: positive -> 0.25 * 0.25 * log 2, negative -> 0.75 * 0.25 * log 2.
    out = sigmoid_focal_loss(np.zeros(2, np.float32), np.array([1.0, 0.0], np.float32))
    np.testing.assert_allclose(out, [0.0625 * np.log(2), 0.1875 * np.log(2)], rtol=1e-6)


def test_smooth_l1_pieces():
    x = np.array([-3.0, -0.5, 0.0, 0.25, 1.0, 2.0], np.float32)
    np.testing.assert_allclose(smooth_l1(x, 1.0), [2.5, 0.125, 0.0, 0.03125, 0.5, 1.5], rtol=1e-6)
    np.testing.assert_allclose(smooth_l1(x, 0.0), np.abs(x))
    np.testing.assert_allclose(smooth_l1(x, 1 / 9), _np_smooth_l1(x.astype(np.float64), 1 / 9), rtol=1e-6)


def test_normalizer_and_no_positives():
    outputs, targets = _case(4, num_classes=3)
    _, plain = ssd_loss(outputs, targets)
    _, scaled = ssd_loss(outputs, targets, normalizer=2.0 * targets['positive'].sum())
    np.testing.assert_allclose(scaled['loss'], plain['loss'] / 2, rtol=1e-6)
    empty = dict(targets, positive=np.zeros_like(targets['positive']), cls_targets=np.zeros_like(
        targets['cls_targets']))
    loss, metrics = ssd_loss(outputs, empty)
    assert loss == 0.0 and metrics['num_positives'] == 0  # no positives: no mined negatives, no NaN
    loss, _ = ssd_loss(outputs, empty, classification='focal')
    np.testing.assert_allclose(loss, _np_focal_sum(outputs, empty, 0.25, 2.0), rtol=1e-5)  # divided by max(0, 1)


def test_unknown_classification():
    outputs, targets = _case(0, num_classes=3)
    with pytest.raises(ValueError, match='valid choices: softmax, focal'):
        ssd_loss(outputs, targets, classification='hinge')


@pytest.mark.parametrize('seed', range(4))
def test_hard_negative_mining_matches_a_sorted_reference(seed):
    from adapt.matching import hard_negative_mining
    rng = np.random.default_rng(seed)
    loss = rng.exponential(size=(6, 300)).astype(np.float32)
    loss[:, ::3] = np.round(loss[:, ::3], 1)  # many ties
    loss[1] = 0.5  # all tied
    loss[2, :50] = 0.0
    loss[3] -= 1.0  # negative values too
    positive = rng.random((6, 300)) < [[0.0], [0.01], [0.02], [0.05], [0.2], [0.5]]
    negative = ~positive & (rng.random((6, 300)) < 0.8)
    for ratio in (1, 3):
        got = np.asarray(hard_negative_mining(loss, positive, negative, ratio))
        for row in range(6):
            neg = np.flatnonzero(negative[row])
            k = min(ratio * positive[row].sum(), len(neg))
            want = sorted(sorted(neg, key=lambda i: (-loss[row, i], i))[:k])
            np.testing.assert_array_equal(np.flatnonzero(got[row]), want)