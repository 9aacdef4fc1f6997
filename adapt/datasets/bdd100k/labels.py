"""Parse and validate BDD100K detection labels (pure functions, no TensorFlow).

Label forms read, all with pixel boxes `box2d{x1, y1, x2, y2}`:
  * a single JSON list of frames (2018 `bdd100k_labels_images_{split}.json`, 2020 `det_20/det_{split}.json`):
    `{name, attributes{timeofday, weather, scene}, labels[{category, box2d}]}`;
  * one JSON file per image, either in that same frame form or in the old 100k per-frame form
    `{name, attributes, frames[{objects[{category, box2d}]}]}`.

Nothing is repaired quietly: every problem is counted under a kind (see `KINDS`) and the item it concerns is
dropped (a label, a box or a frame) or, for an attribute, kept as 'undefined'. A bad box is dropped, never
clipped.
"""
import collections
import dataclasses
import json
import math
import os
from typing import Any

import numpy as np

CLASS_NAMES = ('pedestrian', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle',
               'traffic light', 'traffic sign')
# The 2018 release used older names for three of the classes.
CATEGORY_ALIASES = {'person': 'pedestrian', 'bike': 'bicycle', 'motor': 'motorcycle'}
# Boxed categories of the 2020 release that the 10-class detection benchmark ignores.
IGNORED_CATEGORIES = frozenset({'other person', 'other vehicle', 'trailer'})
# Polygon (poly2d) annotations of lanes and drivable area: not detection labels.
NON_DETECTION_CATEGORIES = frozenset({'drivable area', 'lane'})
NON_DETECTION_PREFIXES = ('area/', 'lane/')

TIMES_OF_DAY = ('daytime', 'night', 'dawn/dusk', 'undefined')
WEATHERS = ('clear', 'partly cloudy', 'overcast', 'rainy', 'snowy', 'foggy', 'undefined')
SCENES = ('city street', 'highway', 'residential', 'parking lot', 'gas stations', 'tunnel', 'undefined')
ATTRIBUTES = {'timeofday': TIMES_OF_DAY, 'weather': WEATHERS, 'scene': SCENES}

# kind -> (is an error, what happens to the item). Info kinds are expected in real BDD data.
KINDS = {
    'unparseable_json': (True, 'file skipped (every frame in it lost)'),
    'malformed_frame': (True, 'frame dropped (not an object, bad name, labels/frames/attributes mistyped)'),
    'duplicate_frame': (True, 'later frame with the same name dropped'),
    'malformed_label': (True, 'label dropped (not an object, no category, missing or non-numeric box2d)'),
    'unknown_category': (True, 'label dropped (not one of the 10 classes or a known BDD name)'),
    'inverted_box': (True, 'box dropped (x2 < x1 or y2 < y1)'),
    'box_outside_image': (True, 'box dropped (a corner outside [0, width] x [0, height]; never clipped)'),
    'missing_image': (True, 'frame dropped (no image file)'),
    'unreadable_image': (True, 'frame dropped (image cannot be decoded)'),
    'bad_attribute': (True, 'timeofday/weather/scene missing or unknown: kept as undefined'),
    'non_detection_label': (False, 'skipped: lane / drivable-area polygon, not a detection label'),
    'ignored_category': (False, 'skipped: other person / other vehicle / trailer, not in the 10 classes'),
    'no_labels_key': (False, 'frame kept with no objects (no labels key)'),
}
MAX_MESSAGES_PER_KIND = 5


class Problems(collections.Counter):
    """Counts of problems by kind, plus the first few messages of each kind for the build log."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = collections.defaultdict(list)

    def add(self, kind: str, message: str) -> None:
        if kind not in KINDS:
            raise KeyError(f'unknown problem kind {kind!r}')
        self[kind] += 1
        if len(self.messages[kind]) < MAX_MESSAGES_PER_KIND:
            self.messages[kind].append(message)

    def merge(self, other: 'Problems') -> None:
        self.update(other)
        for kind, messages in other.messages.items():
            room = MAX_MESSAGES_PER_KIND - len(self.messages[kind])
            self.messages[kind].extend(messages[:max(room, 0)])

    def errors(self) -> dict[str, int]:
        return {kind: n for kind, n in self.items() if KINDS[kind][0] and n}


@dataclasses.dataclass(frozen=True)
class Frame:
    """One labelled image. `boxes` are pixel [x1, y1, x2, y2] exactly as in the JSON."""
    name: str  # image file name, with extension
    timeofday: str
    weather: str
    scene: str
    boxes: np.ndarray  # float64 [N, 4]
    labels: np.ndarray  # int64 [N], index into CLASS_NAMES
    source: str  # the JSON file it came from, for messages


def _image_name(name: Any) -> str | None:
    """Image file name for a frame `name` (the old per-frame form omits '.jpg'); None if unusable."""
    if not isinstance(name, str) or not name or '/' in name or '\\' in name or name.startswith('.'):
        return None
    return name if os.path.splitext(name)[1].lower() in ('.jpg', '.jpeg') else name + '.jpg'


def _objects(obj: dict) -> tuple[list, bool] | None:
    """(the frame's label list in either form, whether it was absent); None when malformed."""
    if 'labels' in obj and 'frames' in obj:
        return None
    if 'frames' in obj:
        frames = obj['frames']
        if not isinstance(frames, list) or len(frames) > 1 or (frames and not isinstance(frames[0], dict)):
            return None
        objects = frames[0].get('objects') if frames else None
    else:
        objects = obj.get('labels')
    if objects is None:
        return [], True
    return (objects, False) if isinstance(objects, list) else None


def _box(label: dict) -> list[float] | None:
    box = label.get('box2d')
    if not isinstance(box, dict):
        return None
    coords = [box.get(k) for k in ('x1', 'y1', 'x2', 'y2')]
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in coords):
        return [float(c) for c in coords]
    return None


def _parse_label(label: Any, where: str, problems: Problems) -> tuple[list[float], int] | None:
    """(pixel box, class id) of a valid detection label; None (counted) otherwise."""
    if not isinstance(label, dict) or not isinstance(label.get('category'), str):
        problems.add('malformed_label', f'{where}: label without a category: {str(label)[:80]}')
        return None
    category = label['category']
    if label.get('box2d') is None and (category in NON_DETECTION_CATEGORIES or 'poly2d' in label
                                       or category.startswith(NON_DETECTION_PREFIXES)):
        problems.add('non_detection_label', f'{where}: {category!r}')
        return None
    name = CATEGORY_ALIASES.get(category, category)
    if name in IGNORED_CATEGORIES:
        problems.add('ignored_category', f'{where}: {category!r}')
        return None
    if name not in CLASS_NAMES:
        problems.add('unknown_category', f'{where}: unknown category {category!r}')
        return None
    box = _box(label)
    if box is None:
        problems.add('malformed_label', f'{where}: {category!r} without numeric box2d: {label.get("box2d")}')
        return None
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        problems.add('inverted_box', f'{where}: {category!r} box x1,y1,x2,y2={box}')
        return None
    return box, CLASS_NAMES.index(name)


def _attribute(attributes: dict, key: str, where: str, problems: Problems) -> str:
    value = attributes.get(key)
    if value not in ATTRIBUTES[key]:
        problems.add('bad_attribute', f'{where}: {key}={value!r} kept as undefined')
        return 'undefined'
    return value


def parse_frame(obj: Any, source: str) -> tuple[Frame | None, Problems]:
    """One frame in either form -> (Frame, or None when dropped; problems)."""
    problems = Problems()
    is_dict = isinstance(obj, dict)
    name = _image_name(obj.get('name')) if is_dict else None
    found = _objects(obj) if is_dict else None
    attributes = obj.get('attributes', {}) if is_dict else None
    if name is None or found is None or not isinstance(attributes, dict):
        problems.add('malformed_frame', f'{source}: bad frame: {str(obj)[:120]}')
        return None, problems
    where = f'{source}:{name}'
    objects, absent = found
    if absent:
        problems.add('no_labels_key', where)
    boxes, classes = [], []
    for label in objects:
        parsed = _parse_label(label, where, problems)
        if parsed is not None:
            boxes.append(parsed[0])
            classes.append(parsed[1])
    values = {key: _attribute(attributes, key, where, problems) for key in ATTRIBUTES}
    frame = Frame(name=name, boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
                  labels=np.asarray(classes, np.int64), source=source, **values)
    return frame, problems


def _read_json(path: str, problems: Problems) -> Any:
    try:
        with open(path, 'rb') as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        problems.add('unparseable_json', f'{path}: {type(e).__name__}: {str(e)[:120]}')
        return None


def _frames_from(objs: list, sources: list[str], problems: Problems) -> list[Frame]:
    """Parses frames, keeping the first of several with the same name."""
    frames, seen = [], {}
    for obj, source in zip(objs, sources):
        frame, frame_problems = parse_frame(obj, source)
        problems.merge(frame_problems)
        if frame is None:
            continue
        if frame.name in seen:
            problems.add('duplicate_frame', f'{source}: {frame.name} already given in {seen[frame.name]}')
            continue
        seen[frame.name] = source
        frames.append(frame)
    return frames


def scan_labels(path: str) -> tuple[list[Frame], Problems]:
    """Frames from a single-file JSON list or a folder of per-frame JSON files, with the problems found.

    The check of boxes against the image size is `check_boxes_in_image`, which needs the image.
    """
    problems = Problems()
    if os.path.isdir(path):
        objs, sources = [], []
        for file in sorted(f for f in os.listdir(path) if f.endswith('.json')):
            source = os.path.join(path, file)
            obj = _read_json(source, problems)
            if obj is not None:
                objs.append(obj)
                sources.append(source)
        return _frames_from(objs, sources, problems), problems
    objs = _read_json(path, problems)
    if objs is None:
        return [], problems
    if not isinstance(objs, list):
        problems.add('malformed_frame', f'{path}: expected a JSON list of frames, got {type(objs).__name__}')
        return [], problems
    return _frames_from(objs, [path] * len(objs), problems), problems


def check_boxes_in_image(frame: Frame, width: int, height: int) -> tuple[Frame, Problems]:
    """Drops (and counts) boxes with a corner outside [0, width] x [0, height] pixels."""
    problems = Problems()
    b = frame.boxes
    inside = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= width) & (b[:, 3] <= height)
    for box, label in zip(b[~inside], frame.labels[~inside]):
        problems.add('box_outside_image', f'{frame.source}:{frame.name}: {CLASS_NAMES[label]!r} box '
                     f'x1,y1,x2,y2={box.tolist()} outside {width}x{height}')
    return dataclasses.replace(frame, boxes=b[inside], labels=frame.labels[inside]), problems


def normalized_yxyx(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel [x1, y1, x2, y2] -> normalised [ymin, xmin, ymax, xmax] float32 (TFDS BBoxFeature order).

    NumPy twin of `adapt.boxes.xyxy_to_yxyx`, kept here so the builder needs neither JAX nor `adapt` on
    the path (`tfds build adapt/datasets/bdd100k` loads this package on its own).
    """
    x1, y1, x2, y2 = np.asarray(boxes, np.float64).reshape(-1, 4).T
    return np.stack([y1 / height, x1 / width, y2 / height, x2 / width], axis=-1).astype(np.float32)


def summary_table(problems: Problems, title: str) -> str:
    """Plain-text table of every kind with its count and effect, then a few example messages."""
    lines = [title, f'  {"kind":<20} {"count":>8}  {"severity":<8} effect']
    for kind, (is_error, effect) in KINDS.items():
        lines.append(f'  {kind:<20} {problems[kind]:>8}  {"error" if is_error else "info":<8} {effect}')
    for kind, messages in problems.messages.items():
        lines.extend(f'  e.g. {kind}: {message}' for message in messages)
        if problems[kind] > len(messages):
            lines.append(f'  ... and {problems[kind] - len(messages)} more {kind}')
    return '\n'.join(lines)
