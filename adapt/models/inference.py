"""Run a detector over an evaluation split: predictions, COCO-format results and metrics, drawn examples.

Boxes leave the model on the pipeline's canvas; `boxes_to_original` maps them (and the ground truth)
back into the original image, so the COCO pixel boxes refer to the stored images whatever the resizing.
Category ids are label + 1 on both sides (`adapt.evaluation.cocojson`'s default).
"""
import colorsys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
from PIL import Image, ImageDraw

from adapt.datasets.pipeline import boxes_to_original
from adapt.evaluation import detections_to_results, evaluate_coco, evaluate_voc, ground_truth_from_arrays
from adapt.training.parallel import AXIS, shard_batch


def make_predict_fn(detector, mesh=None):
    """jit-ed `predict(variables, images [B, H, W, 3] in [0, 1]) -> Detections` (batched, fixed size).

    With a mesh, each device predicts its shard of the batch (images sharded as `shard_batch` does,
    variables replicated).
    """
    def predict(variables, images):
        outputs, _, _ = detector.apply(variables, images, train=False)
        return detector.postprocess(outputs)
    if mesh is not None:
        predict = jax.shard_map(predict, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS))
    return jax.jit(predict)


def _gather(tree):
    """Global (possibly multi-process) arrays or per-process NumPy rows -> NumPy of all rows."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def predict_split(predict, variables, pipeline, mesh, keep_images=0):
    """Detections for every valid example of an eval `DetectionPipeline` (train=False).

    Returns NumPy arrays over the N valid examples: image_id, index (position in the split),
    original_size [N, 2]; ground truth
    gt_boxes [N, M, 4] (normalised in the original image), gt_labels, gt_mask, gt_crowd,
    gt_difficult; detections boxes [N, D, 4] (same frame), scores, classes (0-based), det_mask [N, D];
    plus `images` [k, H, W, 3], `canvas_boxes` [k, D, 4] and `canvas_gt_boxes` [k, M, 4] (boxes on the
    pipeline's canvas) of the first `keep_images` examples.
    """
    rows, images, canvas, canvas_gt = [], [], [], []
    for batch in pipeline:
        dets = _gather(predict(variables, shard_batch(batch['image'], mesh)))
        host = _gather({k: batch[k] for k in ('valid', 'window', 'image_id', 'index', 'original_size', 'boxes',
                                               'labels', 'mask', 'image') if k in batch}
                       | {k: batch.get(k, np.zeros_like(batch['mask'])) for k in ('crowd', 'difficult')})
        ok = host['valid']
        det_mask = np.arange(dets.scores.shape[1])[None] < dets.num_valid[:, None]
        rows.append(dict(image_id=host['image_id'][ok], index=host['index'][ok],
                         original_size=host['original_size'][ok],
                         gt_boxes=boxes_to_original(host['boxes'][ok], host['window'][ok]),
                         gt_labels=host['labels'][ok], gt_mask=host['mask'][ok], gt_crowd=host['crowd'][ok],
                         gt_difficult=host['difficult'][ok],
                         boxes=boxes_to_original(dets.boxes[ok], host['window'][ok]), scores=dets.scores[ok],
                         classes=dets.classes[ok], det_mask=det_mask[ok]))
        if sum(len(x) for x in images) < keep_images:
            images.append(host['image'][ok])
            canvas.append(np.where(det_mask[ok][..., None], dets.boxes[ok], 0.0))
            canvas_gt.append(np.where(host['mask'][ok][..., None], host['boxes'][ok], 0.0))
    out = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    if keep_images:
        out['images'] = np.concatenate(images)[:keep_images]
        out['canvas_boxes'] = np.concatenate(canvas)[:keep_images]
        out['canvas_gt_boxes'] = np.concatenate(canvas_gt)[:keep_images]
    return out


def coco_inputs(pred, class_names):
    """(COCO ground-truth dict, COCO results list) of `predict_split`'s output, in pixels."""
    heights, widths = pred['original_size'][:, 0], pred['original_size'][:, 1]
    gt = ground_truth_from_arrays(pred['image_id'], pred['gt_boxes'], pred['gt_labels'], heights, widths,
                                  class_names, mask=pred['gt_mask'], iscrowd=pred['gt_crowd'])
    results = detections_to_results(pred['image_id'], pred['boxes'], pred['scores'], pred['classes'], heights,
                                    widths, mask=pred['det_mask'])
    return gt, results


def voc_inputs(pred):
    """Per-image VOC ground truth (crowd regions count as difficult: ignored) and detections."""
    gt, dets = [], []
    for i in range(len(pred['image_id'])):
        m, d = pred['gt_mask'][i], pred['det_mask'][i]
        gt.append({'boxes': pred['gt_boxes'][i][m], 'labels': pred['gt_labels'][i][m],
                   'difficult': (pred['gt_difficult'][i] | pred['gt_crowd'][i])[m]})
        dets.append({'boxes': pred['boxes'][i][d], 'scores': pred['scores'][i][d], 'labels': pred['classes'][i][d]})
    return gt, dets


def detection_metrics(pred, class_names):
    """Metrics of `predict_split`'s output: pycocotools' 12 numbers by short name (AP, AP50, ...),
    per-class 'AP50/<name>', VOC mAP at IoU 0.5 ('voc07_mAP' 11-point, 'voc_mAP' all-point).
    Returns (metrics, CocoEvaluation, COCO ground truth, COCO results)."""
    gt, results = coco_inputs(pred, class_names)
    coco = evaluate_coco(gt, results)
    metrics = coco.summary()
    ap50 = coco.per_category_ap(iou_threshold=0.5)
    metrics.update({f'AP50/{name}': float(v) for name, v in zip(coco.category_names, ap50)})
    voc_gt, voc_dets = voc_inputs(pred)
    for key, use_07 in (('voc07_mAP', True), ('voc_mAP', False)):
        metrics[key] = evaluate_voc(voc_gt, voc_dets, len(class_names), use_07_metric=use_07).map
    return metrics, coco, gt, results


def class_colour(label, num_classes):
    r, g, b = colorsys.hsv_to_rgb(label / max(num_classes, 1), 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image, boxes, classes, scores, class_names, min_score=0.3, gt_boxes=None, scale=4):
    """uint8 [H*scale, W*scale, 3]: detections above `min_score` (class colour, label and score) and
    the ground truth `gt_boxes` (white, thin) drawn on an image in [0, 1] with normalised yxyx boxes."""
    h, w = image.shape[:2]
    canvas = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).resize(
        (w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    size = np.array([h, w, h, w], np.float32) * scale
    for box in ([] if gt_boxes is None else gt_boxes):
        if box[2] > box[0] and box[3] > box[1]:
            y0, x0, y1, x1 = box * size
            draw.rectangle([x0, y0, x1, y1], outline=(255, 255, 255), width=1)
    for box, label, score in zip(boxes, classes, scores):
        if score < min_score:
            continue
        y0, x0, y1, x1 = box * size
        colour = class_colour(int(label), len(class_names))
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        draw.text((x0 + 2, max(y0 - 11, 0)), f'{class_names[int(label)]} {score:.2f}', fill=colour)
    return np.asarray(canvas)
