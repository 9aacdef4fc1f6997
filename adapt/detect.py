"""Run a finished detector run on new images: a folder of image files or a TFDS split -> COCO files.

The library behind experiments/detect.py. Both inputs go through the evaluation pipeline's preparation
(`adapt.datasets.pipeline.prepare_example`: decoded by `tf.io.decode_image`, scaled to [0, 1], resized
bilinearly with antialiasing to the detector's image size), are predicted in batches by
`adapt.models.inference.make_predict_fn` (one jit-ed function, batch sharded over the mesh's devices; a
batch size is rounded up to a multiple of the device count, the last batch padded), and the normalised
boxes are mapped back to each original image's pixels in the COCO results (category_id = label + 1).

A folder (`detect_folder`) is read by `adapt.datasets.image_folder` (its image files in name order);
image ids are the 1-based positions in that order (a skipped file leaves its id unused). A file that cannot
be read or decoded (empty, truncated, not an image) is reported on one line through `report`, counted and
skipped. A split (`detect_split`) is predicted and scored (COCO and VOC metrics of
`adapt.models.inference.detection_metrics`) against its ground truth.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import sys
import time

import numpy as np

DRAW_MIN_SIDE = 256  # drawn folder images are enlarged (nearest) until their longer side reaches this
_print = functools.partial(print, flush=True)


@dataclasses.dataclass
class Detected:
    """What a detection pass produced: COCO `results`, COCO `images` (id, file_name for a folder, width,
    height), the `skipped` (file, reason) pairs, {name: uint8 image} `drawn` with the detections, and for
    a split its COCO `ground_truth` and `metrics`."""
    results: list
    images: list
    skipped: list
    drawn: dict
    ground_truth: dict | None = None
    metrics: dict | None = None

    def summary(self) -> str:
        return f'{len(self.images)} images, {len(self.results)} detections, {len(self.skipped)} skipped'


class Progress:
    """Prints 'done/total images, rate images/s' at most every `every` seconds (never for short runs)."""

    def __init__(self, total, every=10.0, print_fn=_print):
        self.total, self.every, self.print_fn = total, every, print_fn
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n):
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.print_fn(f'{self.done}/{self.total} images, {self.done / (now - self.start):.1f} images/s')


def device_batch_size(batch_size, mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's device count (the batch is split over them)."""
    return -(-max(batch_size, 1) // mesh.size) * mesh.size


def pipeline_resize(image_size):
    """uint8 [H, W, 3] -> float32 [h, w, 3] in [0, 1] at `image_size`, as the evaluation pipeline prepares a
    dataset's image (no boxes, no augmentation)."""
    import tensorflow as tf
    from adapt.datasets.pipeline import prepare_example
    size = tuple(int(s) for s in image_size)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)], autograph=False)
    def resize(image):
        example = {'image': image, 'bbox': tf.zeros([0, 4]), 'label': tf.zeros([0], tf.int64)}
        return prepare_example(example, None, image_size=size, max_boxes=1)['image']
    return lambda image: resize(image).numpy()


def _drawn_names(names):
    """File name -> drawn image name: the stem, or the whole name where two files share a stem."""
    stems = collections.Counter(os.path.splitext(n)[0] for n in names)
    return {n: os.path.splitext(n)[0] if stems[os.path.splitext(n)[0]] == 1 else n for n in names}


def detect_folder(detector, variables, folder, class_names, *, batch_size=16, num_draw=16, min_score=0.3,
                  mesh=None, report=None, print_fn=_print, progress_every=10.0, workers=None) -> Detected:
    """Detections for every image file of `folder` (see the module docstring).

    `detector` is the one for these inputs (`Detector.for_input`); `variables` its host or replicated
    variables; `report(line)` receives 'skipped <file>: <reason>' (default: stderr); `print_fn` the
    progress lines. The first `num_draw` readable images are drawn in their own size (enlarged when small)
    with the detections of score >= `min_score`.
    """
    import jax
    from adapt.datasets.image_folder import UnreadableImage, list_images, read_image, read_images
    from adapt.datasets.pipeline import boxes_to_original
    from adapt.evaluation import detections_to_results
    from adapt.models.inference import draw_detections, make_predict_fn
    from adapt.training.parallel import make_mesh, replicate, shard_batch

    names = list_images(folder)
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    mesh = mesh or make_mesh()
    batch = device_batch_size(batch_size, mesh)
    predict = make_predict_fn(detector, mesh)
    variables = replicate(variables, mesh)
    resize = pipeline_resize(detector.image_size)

    def read(path):
        image = read_image(path)
        return image, resize(image)

    h, w = detector.image_size
    drawn_names = _drawn_names(names)
    out = Detected(results=[], images=[], skipped=[], drawn={})
    progress = Progress(len(names), progress_every, print_fn)
    rows, pending = [], None

    def collect(rows, dets):
        """COCO results (and drawings) of one predicted batch: `rows` are (id, name, height, width, decoded)."""
        dets = jax.tree.map(np.asarray, dets)
        n = len(rows)
        heights = np.array([r[2] for r in rows])
        widths = np.array([r[3] for r in rows])
        boxes = boxes_to_original(dets.boxes[:n], np.tile([[0.0, 0.0, 1.0, 1.0]], (n, 1)))  # stretched: the
        mask = np.arange(dets.scores.shape[1])[None] < dets.num_valid[:n, None]              # whole canvas
        out.results.extend(detections_to_results([r[0] for r in rows], boxes, dets.scores[:n], dets.classes[:n],
                                                 heights, widths, mask=mask))
        for i, (image_id, name, height, width, decoded) in enumerate(rows):
            if decoded is not None:
                keep = mask[i]
                scale = max(1, math.ceil(DRAW_MIN_SIDE / max(height, width)))
                out.drawn[drawn_names[name]] = draw_detections(
                    decoded / 255.0, boxes[i][keep], dets.classes[i][keep], dets.scores[i][keep],
                    class_names, min_score=min_score, scale=scale)

    def flush():
        nonlocal rows, pending
        images = np.zeros((batch, h, w, 3), np.float32)  # the last batch is padded with black images
        for i, row in enumerate(rows):
            images[i] = row[-1]
        dets = predict(variables, shard_batch(images, mesh))  # dispatched; collected after the next one
        if pending is not None:
            collect(*pending)
        pending = ([r[:-1] for r in rows], dets)
        progress.update(len(rows))
        rows = []

    index = {name: i + 1 for i, name in enumerate(names)}
    workers = workers or min(4, os.cpu_count() or 1)
    for name, got in read_images(folder, names, read, workers, 2 * batch):
        if isinstance(got, UnreadableImage):
            out.skipped.append((name, str(got)))
            report(f'skipped {os.path.join(folder, name)}: {got}')
            progress.update(1)
            continue
        decoded, resized = got
        height, width = int(decoded.shape[0]), int(decoded.shape[1])
        out.images.append({'id': index[name], 'file_name': name, 'width': width, 'height': height})
        keep = decoded if len(out.images) <= num_draw else None
        rows.append((index[name], name, height, width, keep, resized))
        if len(rows) == batch:
            flush()
    if rows:
        flush()
    if pending is not None:
        collect(*pending)
    return out


def coco_images(images, class_names) -> dict:
    """A COCO ground-truth skeleton (images, no annotations, categories id = label + 1): with it,
    pycocotools (`COCO`, `loadRes`) and adapt.evaluation load a folder's detections."""
    return {'images': list(images), 'annotations': [],
            'categories': [{'id': c + 1, 'name': str(n)} for c, n in enumerate(class_names)]}


def detect_split(detector, variables, config, builder, split, *, batch_size=16, num_draw=16, min_score=0.3,
                 mesh=None, print_fn=_print, progress_every=10.0) -> Detected:
    """Detections and metrics for every example of a TFDS split (slices such as 'test_night[:100]' work;
    `config.eval_examples` does not cut it short) through the evaluation pipeline. The first `num_draw`
    examples are drawn on the detector's canvas (enlarged 4x) with the ground truth in white."""
    from adapt.evaluation.detector_eval import class_names, eval_pipeline, file_tag
    from adapt.models.inference import detection_metrics, draw_detections, make_predict_fn, predict_split
    from adapt.training.parallel import make_mesh, replicate

    mesh = mesh or make_mesh()
    config = config.copy_and_resolve_references()
    config.eval_examples = 0
    config.eval_batch_size = device_batch_size(batch_size, mesh)
    pipeline = eval_pipeline(config, builder, split)
    predict = make_predict_fn(detector.for_input(split), mesh)
    progress = Progress(pipeline.num_examples, progress_every, print_fn)

    def batches():
        for batch in pipeline:
            yield batch
            progress.update(int(np.sum(batch['valid'])))

    pred = predict_split(predict, replicate(variables, mesh), batches(), mesh, keep_images=num_draw)
    names = class_names(builder)
    metrics, _, gt, results = detection_metrics(pred, names)
    drawn = {}
    for i in range(len(pred.get('images', ()))):
        keep = pred['det_mask'][i]
        drawn[f'{file_tag(split)}_{int(pred["image_id"][i])}'] = draw_detections(
            pred['images'][i], pred['canvas_boxes'][i][keep], pred['classes'][i][keep], pred['scores'][i][keep],
            names, min_score=min_score, gt_boxes=pred['canvas_gt_boxes'][i])
    skipped = [(f'{split} example', 'unreadable')] * pipeline.num_unreadable
    return Detected(results=results, images=gt['images'], skipped=skipped, drawn=drawn, ground_truth=gt,
                    metrics=metrics)


def write_outputs(output_dir, detected: Detected, class_names=()):
    """detections.json; ground_truth.json and metrics.json (a split) or images.json (a folder);
    drawn/<name>.png."""
    import json

    from PIL import Image
    from adapt.evaluation import write_json
    os.makedirs(output_dir, exist_ok=True)
    write_json(detected.results, os.path.join(output_dir, 'detections.json'))
    if detected.ground_truth is not None:
        write_json(detected.ground_truth, os.path.join(output_dir, 'ground_truth.json'))
    else:
        write_json(coco_images(detected.images, class_names), os.path.join(output_dir, 'images.json'))
    if detected.metrics is not None:
        with open(os.path.join(output_dir, 'metrics.json'), 'w') as f:
            json.dump(detected.metrics, f, indent=1)
    if detected.drawn:
        os.makedirs(os.path.join(output_dir, 'drawn'), exist_ok=True)
        for name, image in detected.drawn.items():
            Image.fromarray(image).save(os.path.join(output_dir, 'drawn', f'{name}.png'))
