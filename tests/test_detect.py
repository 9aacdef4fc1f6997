"""adapt.detect / experiments/detect.py: a folder of images (of several sizes, with corrupt files among them)
gives the detector's own predictions scaled to each original size; a split's files load in pycocotools
with the same AP; a missing folder is one line and exit status 2.

The run is a tiny SSD saved untrained (its fixed random function is all these tests compare), so nothing
is trained here.
"""
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from adapt import detect
from adapt.run_models import run_detector
from adapt.runs import load_run
from tests.script_runner import ROOT
from tests.tiny_config import tiny_config

DATASET = 'daynight_synth/tiny'
SIZES = ((64, 64), (48, 80), (90, 50), (33, 41))  # (height, width) of the folder's images


@pytest.fixture(scope='module')
def run(tmp_path_factory, env):
    """A finished detector run (run.json + an orbax checkpoint) on daynight_synth/tiny, and its builder."""
    from adapt.models.families import build_detector
    from adapt.runs import write_run
    from adapt.training import Checkpointer
    builder = tfds.builder(DATASET, data_dir=env[1])
    names = list(builder.info.features['objects']['label'].names)
    config = tiny_config(dataset=DATASET, eval_batch_size=4, max_boxes=16)  # the split's every object
    detector = build_detector(config, len(names))
    variables = jax.device_get(jax.jit(detector.init)(jax.random.key(3)))
    workdir = str(tmp_path_factory.mktemp('detect') / 'run')
    write_run(workdir, 'detector', config, class_names=names, data_dir=env[1])
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
    try:
        ckpt.save(1, {'params': {'detector': variables['params']}, 'batch_stats': variables['batch_stats']})
    finally:
        ckpt.close()
    return load_run(workdir, 'detector'), builder


def _folder(path, builder):
    """PNG files of SIZES made from validation_night's images, a truncated JPEG, a text file named .png, an
    empty .jpg and files that are not read (another extension, a folder); returns the good ones' names."""
    path.mkdir()
    images = [e['image'] for e in tfds.as_numpy(builder.as_dataset(split='validation_night'))]
    good = []
    for i, (h, w) in enumerate(SIZES):
        name = f'img{i}.png'
        Image.fromarray(images[i % len(images)]).resize((w, h), Image.BILINEAR).save(path / name)
        good.append(name)
    jpeg = io.BytesIO()
    Image.fromarray(images[0]).resize((256, 256)).save(jpeg, format='JPEG')  # cut in its image data
    (path / 'cut.jpg').write_bytes(jpeg.getvalue()[:len(jpeg.getvalue()) // 2])
    (path / 'notes.png').write_text('not an image\n')
    (path / 'empty.jpg').write_bytes(b'')
    (path / 'readme.txt').write_text('ignored')
    (path / 'sub.png').mkdir()
    return good


def _expected(run, folder, names):
    """{file name: (COCO xywh [D, 4], scores, category ids)}: detector.apply + postprocess on each image
    resized as the pipeline does, boxes scaled to the original size by hand."""
    detector, variables = run_detector(run).for_input('target'), run.variables()
    originals = [np.asarray(Image.open(folder / n).convert('RGB')) for n in names]
    resized = np.stack([np.clip(tf.image.resize(o / np.float32(255), detector.image_size, antialias=True), 0, 1)
                        for o in originals])
    dets = jax.jit(lambda v, x: detector.postprocess(detector.apply(v, x, train=False)[0]))(variables, resized)
    dets = jax.tree.map(np.asarray, dets)
    out = {}
    for i, (name, image) in enumerate(zip(names, originals)):
        h, w = image.shape[:2]
        n = int(dets.num_valid[i])
        y0, x0, y1, x1 = np.clip(dets.boxes[i, :n], 0, 1).T.astype(np.float64)
        xywh = np.stack([x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h], -1)
        out[name] = (xywh, dets.scores[i, :n], dets.classes[i, :n] + 1)
    return out


def test_folder_detections_are_the_detectors_own_in_original_pixels(tmp_path, run):
    run, builder = run
    names = _folder(tmp_path / 'images', builder)
    reported, progress = [], []
    detected = detect.detect_folder(run_detector(run).for_input('target'), run.variables(), str(tmp_path / 'images'),
                                    run.class_names, batch_size=3, num_draw=2, min_score=0.0,
                                    report=reported.append, print_fn=progress.append, progress_every=0.0)
    detect.write_outputs(str(tmp_path / 'out'), detected, run.class_names)

    # the three bad files: one line each, skipped, counted; the others are not read at all
    assert sorted(n for n, _ in detected.skipped) == ['cut.jpg', 'empty.jpg', 'notes.png']
    assert len(reported) == 3 and all(line.startswith('skipped ') and '\n' not in line for line in reported)
    assert any(line.endswith('cut.jpg: jpeg::Uncompress failed. Invalid JPEG data or crop window.')
               for line in reported), reported
    assert any('empty.jpg: empty file' in line for line in reported), reported
    assert detected.summary() == f'4 images, {len(detected.results)} detections, 3 skipped'
    assert progress and progress[-1].startswith('7/7 images')  # batches of 3 rounded up to the 4 devices

    # images.json: ids in name order (cut=1, empty=2, img0..3=3..6, notes=7), the original sizes, the classes
    from pycocotools.coco import COCO
    coco = COCO(str(tmp_path / 'out' / 'images.json'))
    ids = {img['file_name']: img['id'] for img in coco.dataset['images']}
    assert ids == {n: 3 + i for i, n in enumerate(names)}
    assert [(coco.imgs[ids[n]]['height'], coco.imgs[ids[n]]['width']) for n in names] == list(SIZES)
    assert [c['name'] for c in coco.dataset['categories']] == list(run.class_names)
    results = json.load(open(tmp_path / 'out' / 'detections.json'))
    assert results and coco.loadRes(results).getImgIds()

    # the same boxes as the detector's own predictions, within 1e-3 pixels
    expected = _expected(run, tmp_path / 'images', names)
    for name in names:
        mine = [r for r in results if r['image_id'] == ids[name]]
        xywh, scores, categories = expected[name]
        assert len(mine) == len(scores) > 0, name
        np.testing.assert_allclose([r['bbox'] for r in mine], xywh, atol=1e-3, rtol=0, err_msg=name)
        np.testing.assert_allclose([r['score'] for r in mine], scores, atol=1e-5, err_msg=name)
        np.testing.assert_array_equal([r['category_id'] for r in mine], categories, err_msg=name)

    # the first two readable images drawn in their own size (enlarged to 256 px), boxes on them
    drawn = sorted(os.listdir(tmp_path / 'out' / 'drawn'))
    assert drawn == ['img0.png', 'img1.png']
    picture = np.asarray(Image.open(tmp_path / 'out' / 'drawn' / 'img1.png'))
    assert picture.shape == (48 * 4, 80 * 4, 3)
    plain = np.asarray(Image.open(tmp_path / 'images' / 'img1.png').resize((320, 192), Image.NEAREST))
    assert (picture != plain).any()


def test_split_files_load_in_pycocotools_with_the_same_ap(tmp_path, run, capsys):
    """pycocotools reads the files and scores them as adapt does. (With an untrained detector and objects of
    2-8 px the AP is 0, so the files' contents are checked on their own: the ground truth against the
    TFDS boxes, the detections against the folder path's on the same images, whose boxes the test above
    checks against the detector's own.)"""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    run, builder = run
    detected = detect.detect_split(run_detector(run), run.variables(), run.config, builder, 'validation_night',
                                   batch_size=4, num_draw=1)
    detect.write_outputs(str(tmp_path / 'split'), detected, run.class_names)
    gt = COCO(str(tmp_path / 'split' / 'ground_truth.json'))
    dets = gt.loadRes(str(tmp_path / 'split' / 'detections.json'))
    evaluation = COCOeval(gt, dets, 'bbox')
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    capsys.readouterr()
    assert evaluation.stats[0] == pytest.approx(detected.metrics['AP'], abs=1e-9)
    assert evaluation.stats[1] == pytest.approx(detected.metrics['AP50'], abs=1e-9)
    assert json.load(open(tmp_path / 'split' / 'metrics.json'))['AP'] == detected.metrics['AP']
    assert os.listdir(tmp_path / 'split' / 'drawn') == ['validation_night_0.png']
    assert detected.summary() == f'2 images, {len(detected.results)} detections, 0 skipped'

    # image i of the split (no image/id: its position) has its TFDS boxes in pixels, labels + 1
    examples = list(tfds.as_numpy(builder.as_dataset(split='validation_night', shuffle_files=False)))
    assert sorted(gt.getImgIds()) == list(range(len(examples)))
    for i, example in enumerate(examples):
        h, w = example['image'].shape[:2]
        y0, x0, y1, x1 = example['objects']['bbox'].T
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[i]))
        np.testing.assert_allclose([a['bbox'] for a in anns], np.stack([x0 * w, y0 * h, (x1 - x0) * w,
                                                                        (y1 - y0) * h], -1), atol=1e-3)
        assert [a['category_id'] for a in anns] == list(example['objects']['label'] + 1)
    # and the detections the folder path finds on the same images, saved losslessly
    (tmp_path / 'images').mkdir()
    for i, example in enumerate(examples):
        Image.fromarray(example['image']).save(tmp_path / 'images' / f'{i}.png')
    folder = detect.detect_folder(run_detector(run).for_input('validation_night'), run.variables(),
                                  str(tmp_path / 'images'), run.class_names, batch_size=4, num_draw=0)
    by_file = {img['id']: int(img['file_name'][:-4]) for img in folder.images}
    assert len(folder.results) == len(detected.results) > 0
    for split_row, folder_row in zip(detected.results, folder.results):
        assert split_row['image_id'] == by_file[folder_row['image_id']]
        assert split_row['category_id'] == folder_row['category_id']
        np.testing.assert_allclose(split_row['bbox'], folder_row['bbox'], atol=1e-4)
        assert split_row['score'] == pytest.approx(folder_row['score'], abs=1e-6)


def test_missing_folder_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'experiments.detect', f'--workdir={tmp_path}',
                           f'--images={tmp_path / "nowhere"}', f'--output_dir={tmp_path / "out"}'],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and 'nowhere: no such folder' in lines[0], proc.stderr
    assert not os.path.exists(tmp_path / 'out')
