"""The `bdd100k` TFDS builder on generated BDD-layout folders (tests/bdd_fixture.py).

References: the fixture's own record of what it wrote (pixel boxes, class names, time of day, problems per
kind), PIL for the pixels, and `adapt.boxes.yxyx_to_xyxy` for the way back to pixel x1, y1, x2, y2.
"""
import collections
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

import adapt.datasets  # noqa: F401  (registers the builders)
from adapt import boxes as box_lib
from adapt.datasets import bdd100k
from adapt.datasets.bdd100k import bdd100k as builder_lib
from adapt.datasets.bdd100k import labels as bdd
from tests.bdd_fixture import make_bdd_folder

TFDS_SPLIT = {'train': 'train', 'val': 'validation'}
CONFIG_TIMES = {'all': None, 'daytime': 'daytime', 'night': 'night', 'dawn_dusk': 'dawn/dusk'}


def _prepare(manual_dir, data_dir, config):
    builder = tfds.builder('bdd100k', config=config, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False))
    return builder


def _read(builder, split):
    """{filename: example} with the image decoded by TFDS and its stored bytes."""
    raw = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    decoded = builder.as_dataset(split=split)
    out = {}
    for r, d in zip(tfds.as_numpy(raw), tfds.as_numpy(decoded)):
        assert r['image/filename'] == d['image/filename']
        out[d['image/filename'].decode()] = dict(d, jpeg=r['image'])
    return out


def _check_examples(examples, answer, want_time):
    """Same frames, time of day, labels and (back in pixels) boxes as the fixture wrote; images intact."""
    want = {n: f for n, f in answer.frames.items() if want_time is None or f['timeofday'] == want_time}
    assert sorted(examples) == sorted(want)
    for name, ex in examples.items():
        frame = want[name]
        assert bdd.TIMES_OF_DAY[ex['timeofday']] == frame['timeofday']
        assert [bdd.CLASS_NAMES[i] for i in ex['objects']['label']] == frame['labels']
        height, width = ex['image'].shape[:2]
        with open(answer.image_paths[name], 'rb') as f:
            jpeg = f.read()
        assert ex['jpeg'] == jpeg  # stored as is, not re-encoded
        pil = np.asarray(Image.open(answer.image_paths[name]).convert('RGB'))
        assert ex['image'].shape == pil.shape
        assert np.abs(ex['image'].astype(int) - pil.astype(int)).mean() < 1.0
        pixels = np.asarray(box_lib.yxyx_to_xyxy(ex['objects']['bbox'], height, width)).reshape(-1, 4)
        np.testing.assert_allclose(pixels, np.asarray(frame['boxes']).reshape(-1, 4), atol=1e-3, rtol=0)


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    manual_dir = str(tmp_path_factory.mktemp('bdd_manual'))
    return manual_dir, make_bdd_folder(manual_dir), str(tmp_path_factory.mktemp('bdd_data'))


def test_scan_labels_per_frame_and_list_forms(small):
    manual_dir, answer, _ = small
    root = os.path.join(manual_dir, 'bdd100k')
    image_kinds = {'box_outside_image', 'missing_image', 'unreadable_image'}  # found only with the images
    json_kinds = set(bdd.KINDS) - image_kinds
    for split, path in [('train', os.path.join(root, 'labels', '100k', 'train')),
                        ('val', os.path.join(root, 'labels', 'bdd100k_labels_images_val.json'))]:
        frames, problems = bdd100k.scan_labels(path)
        want = {k: n for k, n in answer[split].problems.items() if k in json_kinds}
        assert {k: n for k, n in problems.items() if n} == want, split
        # Frames whose image is missing or bad are still labelled frames at this stage.
        names = {f.name for f in frames}
        assert set(answer[split].frames) <= names
        assert len(names) == len(frames)


def test_scan_split_counts_every_kind(small):
    manual_dir, answer, _ = small
    root = builder_lib.find_root(manual_dir)
    for split in ('train', 'val'):
        examples, problems, summary = bdd100k.scan_split(root, split)
        assert {k: n for k, n in problems.items() if n} == dict(answer[split].problems), split
        assert summary['problems'] == {k: answer[split].problems[k] for k in bdd.KINDS}
        want_times = collections.Counter(f['timeofday'] for f in answer[split].frames.values())
        assert summary['frames_by_timeofday'] == dict(want_times)
        assert {e.frame.name for e in examples} == set(answer[split].frames)
    every_kind = answer['train'].problems + answer['val'].problems
    assert set(every_kind) == set(bdd.KINDS)  # the fixture exercises every kind


@pytest.mark.parametrize('config', list(CONFIG_TIMES))
def test_build_each_config(small, config, caplog):
    manual_dir, answer, data_dir = small
    with caplog.at_level(logging.INFO):
        builder = _prepare(manual_dir, data_dir, config)
    want_time = CONFIG_TIMES[config]
    for split, tfds_split in TFDS_SPLIT.items():
        frames = answer[split].frames
        n_want = sum(want_time is None or f['timeofday'] == want_time for f in frames.values())
        assert builder.info.splits[tfds_split].num_examples == n_want
        _check_examples(_read(builder, tfds_split), answer[split], want_time)
        meta = builder.info.metadata['splits'][tfds_split]
        assert meta['problems'] == {k: answer[split].problems[k] for k in bdd.KINDS}
        assert meta['examples_by_timeofday'] == dict(collections.Counter(
            f['timeofday'] for f in frames.values() if want_time is None or f['timeofday'] == want_time))
        table = f'bdd100k/{config} {tfds_split}: problems by kind'
        assert table in caplog.text
        log = caplog.text[caplog.text.index(table):]
        for kind in ('box_outside_image', 'unreadable_image', 'inverted_box'):
            assert re.search(rf'^  {kind} +{answer[split].problems[kind]} +error ', log, re.M), kind
    # The counts are also in the metadata.json next to the prepared data, and reload with the dataset.
    with open(os.path.join(builder.data_dir, 'metadata.json')) as f:
        saved = json.load(f)
    assert saved['splits']['train']['problems']['unreadable_image'] == 2
    reloaded = tfds.builder('bdd100k', config=config, data_dir=data_dir)
    assert reloaded.info.metadata['splits']['validation']['problems']['inverted_box'] == 2


def test_full_size_det20_flat_layout(tmp_path):
    """1280x720 images, 2020 `det_20/det_{split}.json` naming, folder without the `bdd100k/` level."""
    manual_dir = str(tmp_path / 'manual')
    answer = make_bdd_folder(manual_dir, width=1280, height=720, forms=(('train', 'list'), ('val', 'list')),
                             nested=False, malformed=False)
    for split in ('train', 'val'):  # keep 2 images in all, renamed to the 2020 names
        labels_dir = os.path.join(manual_dir, 'labels')
        with open(os.path.join(labels_dir, f'bdd100k_labels_images_{split}.json')) as f:
            frames = json.load(f)
        keep = frames[:1]
        os.makedirs(os.path.join(labels_dir, 'det_20'), exist_ok=True)
        with open(os.path.join(labels_dir, 'det_20', f'det_{split}.json'), 'w') as f:
            json.dump(keep, f)
        os.remove(os.path.join(labels_dir, f'bdd100k_labels_images_{split}.json'))
        answer[split].frames = {f['name']: answer[split].frames[f['name']] for f in keep}
    builder = _prepare(manual_dir, str(tmp_path / 'data'), 'all')
    for split, tfds_split in TFDS_SPLIT.items():
        examples = _read(builder, tfds_split)
        assert [ex['image'].shape for ex in examples.values()] == [(720, 1280, 3)]
        _check_examples(examples, answer[split], None)
        source = builder.info.metadata['splits'][tfds_split]['label_source']
        assert source.endswith(f'det_20/det_{split}.json')


def test_label_search_order(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, 'labels', 'det_20'))
    os.makedirs(os.path.join(root, 'labels', '100k', 'val'))
    order = builder_lib.label_sources(root, 'val')
    assert order == [os.path.join(root, 'labels', 'det_20', 'det_val.json'),
                     os.path.join(root, 'labels', 'bdd100k_labels_images_val.json'),
                     os.path.join(root, 'labels', '100k', 'val')]
    assert bdd100k.scan_split(root, 'val')[2]['label_source'] == order[2]
    for path in reversed(order[:2]):
        with open(path, 'w') as f:
            json.dump([], f)
        assert bdd100k.scan_split(root, 'val')[2]['label_source'] == path


def test_unusable_folder_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='no usable labelled images'):
        _prepare(str(tmp_path), str(tmp_path / 'data'), 'all')


def test_unparseable_list_file_is_counted_not_raised(tmp_path):
    path = tmp_path / 'det_val.json'
    path.write_text('[{"name": "a.jpg", ')
    frames, problems = bdd100k.scan_labels(str(path))
    assert frames == [] and problems == {'unparseable_json': 1}
    path.write_text('{"name": "a.jpg"}')
    frames, problems = bdd100k.scan_labels(str(path))
    assert frames == [] and problems == {'malformed_frame': 1}


def test_tfds_build_command(tmp_path):
    """`python -m experiments.tfds_build bdd100k --manual_dir=...` (TFDS's build command) makes the data."""
    manual_dir = str(tmp_path / 'manual')
    answer = make_bdd_folder(manual_dir)
    data_dir = str(tmp_path / 'data')
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, '-m', 'experiments.tfds_build', 'bdd100k', '--config=night', f'--manual_dir={manual_dir}',
         f'--data_dir={data_dir}'],
        cwd=repo, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'bdd100k/night train: problems by kind' in result.stderr
    builder = tfds.builder_from_directory(os.path.join(data_dir, 'bdd100k', 'night', '1.0.0'))
    for split, tfds_split in TFDS_SPLIT.items():
        want = sum(f['timeofday'] == 'night' for f in answer[split].frames.values())
        assert builder.info.splits[tfds_split].num_examples == want
    assert builder.info.metadata['splits']['train']['problems']['missing_image'] == 1
