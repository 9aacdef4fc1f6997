"""A tiny BDD100K-layout folder for tests, with the answer it should give written down independently.

Each split holds good frames at several times of day and every kind of malformed input; `make_bdd_folder`
returns per split the usable frames (time of day, pixel boxes, class names) and the problem count per kind,
both derived from the spec below, not from the parser under test.
"""
import collections
import dataclasses
import io
import json
import os

import numpy as np
from PIL import Image

# Category as written -> class name the builder should give; spelt out here, not taken from the builder.
EXPECT_CLASS = {'pedestrian': 'pedestrian', 'person': 'pedestrian', 'rider': 'rider', 'car': 'car',
                'truck': 'truck', 'bus': 'bus', 'train': 'train', 'motorcycle': 'motorcycle',
                'motor': 'motorcycle', 'bicycle': 'bicycle', 'bike': 'bicycle',
                'traffic light': 'traffic light', 'traffic sign': 'traffic sign'}


@dataclasses.dataclass
class SplitAnswer:
    frames: dict  # image file name -> {'timeofday', 'boxes' [[x1, y1, x2, y2]], 'labels' [class names]}
    problems: collections.Counter  # kind -> count
    image_paths: dict  # image file name -> path


def _jpeg(rng, width, height) -> bytes:
    """A smooth random picture (JPEG-friendly) so decoded pixels can be compared."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 255, 3)
    phase = xx[..., None] / rng.uniform(5, 20) + yy[..., None] / rng.uniform(5, 20) + np.arange(3)
    img = base + 80 * np.sin(phase)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buffer, format='JPEG', quality=90)
    return buffer.getvalue()


def _good_labels(rng, width, height, categories):
    """Valid labels with non-integer pixel boxes, one touching the right/bottom border exactly."""
    labels = []
    for i, category in enumerate(categories):
        x1, y1 = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
        if i == 0:
            x2, y2 = width, height
        else:
            x2, y2 = x1 + rng.uniform(1, width / 2), y1 + rng.uniform(1, height / 2)
        labels.append({'category': category, 'box2d': {'x1': x1, 'y1': y1, 'x2': x2, 'y2': y2}})
    return labels


def _bad_labels(width, height):
    """(label, problem kind) for every label-level problem, and the info kinds."""
    box = {'x1': 1.5, 'y1': 2.5, 'x2': 10.0, 'y2': 12.0}
    return [
        ({'category': 'car', 'box2d': dict(box, x1=20.0, x2=10.0)}, 'inverted_box'),
        ({'category': 'bus', 'box2d': dict(box, y1=30.0, y2=12.0)}, 'inverted_box'),
        ({'category': 'spaceship', 'box2d': box}, 'unknown_category'),
        ({'category': 'car', 'box2d': {'x1': 1.0, 'y1': 2.0, 'x2': 3.0}}, 'malformed_label'),
        ({'category': 'car', 'box2d': dict(box, x1='7')}, 'malformed_label'),
        ({'box2d': box}, 'malformed_label'),
        ('car', 'malformed_label'),
        ({'category': 'truck', 'box2d': dict(box, x2=width + 0.5)}, 'box_outside_image'),
        ({'category': 'rider', 'box2d': dict(box, y1=-2.0)}, 'box_outside_image'),
        ({'category': 'car', 'box2d': dict(box, y2=height + 3.0)}, 'box_outside_image'),
        ({'category': 'drivable area', 'poly2d': [{'vertices': [[0, 0], [5, 5]]}]}, 'non_detection_label'),
        ({'category': 'lane/single white', 'poly2d': [[0, 0, 'L'], [5, 5, 'L']]}, 'non_detection_label'),
        ({'category': 'other vehicle', 'box2d': box}, 'ignored_category'),
    ]


def _frame_json(name, timeofday, labels, old_form):
    """A frame in the list / new per-frame form, or in the old per-frame form (no '.jpg', frames[objects])."""
    attributes = {'weather': 'clear', 'scene': 'city street'}
    if timeofday is not None:
        attributes['timeofday'] = timeofday
    if old_form:
        frames = [{'timestamp': 10000, 'objects': labels}]
        return {'name': name[:-4], 'attributes': attributes, 'frames': frames}
    obj = {'name': name, 'attributes': attributes}
    if labels is not None:
        obj['labels'] = labels
    return obj


def _write_split(root, split, form, width, height, seed, malformed) -> SplitAnswer:
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, 'images', '100k', split)
    os.makedirs(image_dir, exist_ok=True)
    answer = SplitAnswer({}, collections.Counter(), {})
    frames = []  # (frame json object or raw text for per-frame files)

    def good(name, timeofday, categories, image='ok', extra=(), written_timeofday='same', labels_key=True):
        labels = _good_labels(rng, width, height, categories)
        bad = [label for label, _ in extra]
        answer.problems.update(kind for _, kind in extra)
        old_form = form == 'per_frame' and len(frames) % 2 == 1
        written = timeofday if written_timeofday == 'same' else written_timeofday
        frames.append(_frame_json(name, written, labels + bad if labels_key else None, old_form))
        path = os.path.join(image_dir, name)
        if image == 'ok':
            with open(path, 'wb') as f:
                f.write(_jpeg(rng, width, height))
            boxes = [[lb['box2d'][k] for k in ('x1', 'y1', 'x2', 'y2')] for lb in labels]
            answer.frames[name] = {'timeofday': timeofday, 'boxes': boxes,
                                   'labels': [EXPECT_CLASS[c] for c in categories]}
            answer.image_paths[name] = path
        elif image == 'truncated':
            with open(path, 'wb') as f:
                f.write(_jpeg(rng, width, height)[:300])
            answer.problems['unreadable_image'] += 1
        elif image == 'garbage':
            with open(path, 'wb') as f:
                f.write(b'not a jpeg at all' * 10)
            answer.problems['unreadable_image'] += 1
        else:
            answer.problems['missing_image'] += 1

    day, night, dusk = 'daytime', 'night', 'dawn/dusk'
    prefix = 'a' if split == 'train' else 'b'
    good(f'{prefix}0000001-00000001.jpg', day, ['car', 'person', 'traffic sign'])
    good(f'{prefix}0000002-00000002.jpg', day, ['bike', 'motor', 'traffic light'])
    good(f'{prefix}0000003-00000003.jpg', night, ['car', 'bus', 'truck', 'rider'])
    good(f'{prefix}0000004-00000004.jpg', night, ['train', 'pedestrian'])
    good(f'{prefix}0000005-00000005.jpg', dusk, ['bicycle', 'motorcycle'])
    if split == 'train':
        good(f'{prefix}0000006-00000006.jpg', night, ['car'])
        good(f'{prefix}0000007-00000007.jpg', 'undefined', ['car'])
    if malformed:
        good(f'{prefix}0000010-00000010.jpg', day, ['car'], extra=_bad_labels(width, height))
        good(f'{prefix}0000011-00000011.jpg', night, ['car'], image='missing')
        good(f'{prefix}0000012-00000012.jpg', day, ['car'], image='truncated')
        good(f'{prefix}0000013-00000013.jpg', dusk, ['car'], image='garbage')
        good(f'{prefix}0000014-00000014.jpg', 'undefined', ['car'], written_timeofday=None)
        answer.problems['bad_attribute'] += 1
        good(f'{prefix}0000015-00000015.jpg', 'undefined', ['car'], written_timeofday='midnight')
        answer.problems['bad_attribute'] += 1
        if form == 'list':  # the 2020 form leaves out `labels` when a frame has no objects
            good(f'{prefix}0000016-00000016.jpg', day, [], labels_key=False)
            answer.problems['no_labels_key'] += 1
        frames.append({'attributes': {'timeofday': day}, 'labels': []})  # no name
        frames.append({'name': 'x.jpg', 'labels': {'category': 'car'}})  # labels not a list
        frames.append({'name': 'y.jpg', 'labels': [], 'attributes': 'day'})  # attributes not an object
        frames.append(['not', 'a', 'frame'])
        answer.problems['malformed_frame'] += 4
        duplicate = dict(frames[0])  # same name as the first frame, other labels: dropped
        duplicate['labels'] = [{'category': 'bus', 'box2d': {'x1': 0, 'y1': 0, 'x2': 1, 'y2': 1}}]
        duplicate.pop('frames', None)
        frames.append(duplicate)
        answer.problems['duplicate_frame'] += 1

    if form == 'list':
        path = os.path.join(root, 'labels', f'bdd100k_labels_images_{split}.json')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(frames, f)
    else:
        label_dir = os.path.join(root, 'labels', '100k', split)
        os.makedirs(label_dir, exist_ok=True)
        for i, frame in enumerate(frames):
            with open(os.path.join(label_dir, f'{i:04d}.json'), 'w') as f:
                json.dump(frame, f)
        if malformed:
            with open(os.path.join(label_dir, '9998.json'), 'w') as f:
                f.write('{"name": "z.jpg", "labels": [')  # cut short
            with open(os.path.join(label_dir, '9999.json'), 'wb') as f:
                f.write(b'\xff\xfe\x00garbage')
            answer.problems['unparseable_json'] += 2
    return answer


def make_bdd_folder(manual_dir, *, width=128, height=72, forms=(('train', 'per_frame'), ('val', 'list')),
                    nested=True, malformed=True) -> dict[str, SplitAnswer]:
    """Writes the folder; returns {BDD split: SplitAnswer}. `nested` adds the archives' `bdd100k/` level."""
    root = os.path.join(manual_dir, 'bdd100k') if nested else manual_dir
    return {split: _write_split(root, split, form, width, height, seed, malformed)
            for seed, (split, form) in enumerate(forms)}
