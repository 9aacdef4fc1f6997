"""Load and validate COCO ground truth and detection results; write results lists from arrays.

Bad input is never turned into a number: every problem raises ``CocoFormatError`` with one line that names
the offending entry, e.g. ``dets.json: detections[17]: unknown image_id 42``. Validation is vectorised
(type sets and NumPy checks) with a per-entry scan only to locate the first offender, so loading 500k
detections stays cheap.

Conventions follow pycocotools: ground truth ``{images, annotations, categories}``; annotations need
``id, image_id, category_id, bbox [x, y, w, h], area`` (``iscrowd`` defaults to 0); a results list holds
``{image_id, category_id, bbox, score}``. Unlike pycocotools (which asserts, drops or crashes), unknown ids,
duplicate ids, non-finite numbers and negative sizes are errors, and an empty results list is allowed.
"""
import dataclasses
import gc
import itertools
import json
import operator
import os
import warnings

import numpy as np


class CocoFormatError(ValueError):
    """Malformed COCO input; the message is a single line naming the offending entry."""


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """Validated ground truth as arrays; annotations keep their file order (it breaks pycocotools' ties)."""
    image_ids: np.ndarray       # [I] int64, sorted
    category_ids: np.ndarray    # [K] int64, sorted
    category_names: tuple       # [K] str, same order as category_ids
    ann_ids: np.ndarray         # [G] int64
    image_index: np.ndarray     # [G] index into image_ids
    category_index: np.ndarray  # [G] index into category_ids
    boxes: np.ndarray           # [G, 4] float64 pixel [x, y, w, h]
    areas: np.ndarray           # [G] float64, the 'area' field (used for area ranges, as pycocotools does)
    iscrowd: np.ndarray         # [G] bool


@dataclasses.dataclass(frozen=True)
class Detections:
    """Validated detection results in file order, indexed against one GroundTruth."""
    image_index: np.ndarray     # [D] index into GroundTruth.image_ids
    category_index: np.ndarray  # [D] index into GroundTruth.category_ids
    boxes: np.ndarray           # [D, 4] float64 pixel [x, y, w, h]
    scores: np.ndarray          # [D] float64


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def read_json(source):
    """(object, message prefix): a path is read as JSON, anything else is taken as already loaded."""
    if not isinstance(source, (str, os.PathLike)):
        return source, ''
    path = os.fspath(source)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # json builds ~10^6 small objects and no cycles; GC passes would double the load time
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f), f'{path}: '
    except FileNotFoundError:
        raise CocoFormatError(f'{path}: no such file') from None
    except IsADirectoryError:
        raise CocoFormatError(f'{path}: is a directory, not a JSON file') from None
    except OSError as e:
        raise CocoFormatError(f'{path}: cannot read ({e.strerror})') from None
    except UnicodeDecodeError:
        raise CocoFormatError(f'{path}: malformed JSON (not UTF-8 text)') from None
    except json.JSONDecodeError as e:
        raise CocoFormatError(f'{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})') from None
    finally:
        if gc_was_enabled:
            gc.enable()


def _entries(obj, key, where):
    if not isinstance(obj, list):
        raise CocoFormatError(f'{where}: {key} must be a list, got {type(obj).__name__}')
    if not all(issubclass(t, dict) for t in set(map(type, obj))):
        bad = next(i for i, e in enumerate(obj) if not isinstance(e, dict))
        raise CocoFormatError(f'{where}{key}[{bad}]: expected an object, got {_short(obj[bad])}')
    return obj


def _column(entries, key, name, where, default=None):
    try:
        return list(map(operator.itemgetter(key), entries))
    except KeyError:
        if default is not None:
            return [e.get(key, default) for e in entries]
        bad = next(i for i, e in enumerate(entries) if key not in e)
        raise CocoFormatError(f"{where}{name}[{bad}]: missing key '{key}'") from None


def _is_real_type(t):
    return t is int or t is float or issubclass(t, (np.integer, np.floating))


def _first_bad(values, ok, name, where, what):
    bad = int(np.flatnonzero(~ok)[0])
    raise CocoFormatError(f'{where}{name}[{bad}]: {what}, got {_short(values[bad])}')


def _reals(values, key, name, where, finite=True, what=None):
    """float64 array of real numbers (bools and strings rejected)."""
    what = what or f'{key} must be a {"finite " if finite else ""}number'
    if not all(map(_is_real_type, set(map(type, values)))):
        _first_bad(values, np.array([_is_real_type(type(v)) for v in values], bool), name, where, what)
    try:
        arr = np.array(values, dtype=np.float64).reshape(len(values))
    except OverflowError:  # a Python int beyond float64
        _first_bad(values, np.array([abs(v) < 1e308 for v in values], bool), name, where, what)
    if finite and not np.isfinite(arr).all():
        _first_bad(values, np.isfinite(arr), name, where, what)
    return arr


def _ids(values, key, name, where):
    """int64 array of integer ids (integral floats such as 3.0 accepted, as pycocotools' set lookups do)."""
    what = f'{key} must be an integer id'
    arr = _reals(values, key, name, where, finite=False, what=what)
    ok = np.isfinite(arr) & (arr == np.round(arr)) & (np.abs(arr) < 2.0 ** 53)
    if not ok.all():
        _first_bad(values, ok, name, where, what)
    return arr.astype(np.int64)


def _boxes(values, name, where):
    """[N, 4] float64 pixel [x, y, w, h]: four finite numbers, width and height >= 0."""
    what = 'bbox must be [x, y, width, height] of 4 finite numbers'
    ok_shape = all(t in (list, tuple) or issubclass(t, np.ndarray) for t in set(map(type, values)))
    if ok_shape and values:
        ok_shape = set(map(len, values)) == {4}
    flat = list(itertools.chain.from_iterable(values)) if ok_shape else []
    if ok_shape:
        ok_shape = all(map(_is_real_type, set(map(type, flat))))
    if not ok_shape:
        ok = np.array([isinstance(v, (list, tuple, np.ndarray)) and len(v) == 4
                       and all(_is_real_type(type(x)) for x in v) for v in values], bool)
        _first_bad(values, ok, name, where, what)
    arr = np.array(flat, dtype=np.float64).reshape(len(values), 4)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        _first_bad(values, finite, name, where, what)
    size_ok = (arr[:, 2] >= 0) & (arr[:, 3] >= 0)
    if not size_ok.all():
        _first_bad(values, size_ok, name, where, 'bbox width and height must be >= 0')
    return arr


def _unique_ids(ids, name, where):
    order = np.argsort(ids, kind='stable')
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        bad = int(order[dup + 1].min())
        raise CocoFormatError(f'{where}{name}[{bad}]: duplicate id {ids[bad]}')


def _lookup(ids, known, values, key, name, where):
    """Index of each id in the sorted array ``known``; an unknown id is an error naming its entry."""
    idx = np.searchsorted(known, ids)
    ok = idx < known.size
    ok[ok] = known[idx[ok]] == ids[ok]
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise CocoFormatError(f'{where}{name}[{bad}]: unknown {key} {_short(values[bad])}')
    return idx


def load_ground_truth(source):
    """GroundTruth from a COCO ground-truth JSON path or an already loaded dict."""
    data, where = read_json(source)
    if isinstance(data, GroundTruth):
        return data
    if not isinstance(data, dict):
        raise CocoFormatError(f'{where}ground truth must be a JSON object with images, annotations and '
                              f'categories, got {type(data).__name__}')
    for key in ('images', 'annotations', 'categories'):
        if key not in data:
            raise CocoFormatError(f"{where}ground truth: missing key '{key}'")
    images = _entries(data['images'], 'images', where)
    cats = _entries(data['categories'], 'categories', where)
    anns = _entries(data['annotations'], 'annotations', where)

    image_ids = _ids(_column(images, 'id', 'images', where), 'id', 'images', where)
    _unique_ids(image_ids, 'images', where)
    cat_ids = _ids(_column(cats, 'id', 'categories', where), 'id', 'categories', where)
    _unique_ids(cat_ids, 'categories', where)
    names = [str(c.get('name', c['id'])) for c in cats]

    a = 'annotations'
    ann_ids = _ids(_column(anns, 'id', a, where), 'id', a, where)
    _unique_ids(ann_ids, a, where)
    raw_img, raw_cat = _column(anns, 'image_id', a, where), _column(anns, 'category_id', a, where)
    ann_img, ann_cat = _ids(raw_img, 'image_id', a, where), _ids(raw_cat, 'category_id', a, where)
    boxes = _boxes(_column(anns, 'bbox', a, where), a, where)
    raw_area = _column(anns, 'area', a, where)
    areas = _reals(raw_area, 'area', a, where)
    if (areas < 0).any():
        _first_bad(raw_area, areas >= 0, a, where, 'area must be >= 0')
    raw_crowd = _column(anns, 'iscrowd', a, where, default=0)
    crowd = np.array([(_is_real_type(type(c)) or isinstance(c, bool)) and c in (0, 1) for c in raw_crowd], bool)
    if not crowd.all():
        _first_bad(raw_crowd, crowd, a, where, 'iscrowd must be 0 or 1')

    img_sort, cat_sort = np.sort(image_ids), np.argsort(cat_ids)
    gt = GroundTruth(
        image_ids=img_sort, category_ids=cat_ids[cat_sort],
        category_names=tuple(names[i] for i in cat_sort), ann_ids=ann_ids,
        image_index=_lookup(ann_img, img_sort, raw_img, 'image_id', a, where),
        category_index=_lookup(ann_cat, cat_ids[cat_sort], raw_cat, 'category_id', a, where),
        boxes=boxes, areas=areas, iscrowd=np.array([bool(c) for c in raw_crowd], bool).reshape(len(anns)))
    if (ann_ids == 0).any():
        warnings.warn(f'{where}annotations[{int(np.flatnonzero(ann_ids == 0)[0])}]: annotation id 0; '
                      'pycocotools (and this evaluator, to stay identical) counts a match to it as a miss')
    return gt


def load_detections(source, gt):
    """Detections from a COCO results JSON path or list, checked against ``gt`` (a GroundTruth)."""
    data, where = read_json(source)
    if isinstance(data, Detections):
        return data
    if not isinstance(data, list):
        raise CocoFormatError(f'{where}detections must be a JSON list of {{image_id, category_id, bbox, '
                              f'score}} results, got {type(data).__name__}')
    d = 'detections'
    dets = _entries(data, d, where)
    raw_img, raw_cat = _column(dets, 'image_id', d, where), _column(dets, 'category_id', d, where)
    boxes = _boxes(_column(dets, 'bbox', d, where), d, where)
    scores = _reals(_column(dets, 'score', d, where), 'score', d, where)
    return Detections(
        image_index=_lookup(_ids(raw_img, 'image_id', d, where), gt.image_ids, raw_img, 'image_id', d, where),
        category_index=_lookup(_ids(raw_cat, 'category_id', d, where), gt.category_ids, raw_cat,
                               'category_id', d, where),
        boxes=boxes, scores=scores)


def _pixel_xywh(boxes, heights, widths):
    # Imported here so that evaluation and the CLI do not pay for starting JAX; only the writers convert.
    from adapt.boxes import yxyx_to_xywh
    return np.asarray(yxyx_to_xywh(boxes, np.asarray(heights, np.float32)[:, None],
                                   np.asarray(widths, np.float32)[:, None]), np.float64)


def _valid(mask, shape):
    return np.ones(shape, bool) if mask is None else np.asarray(mask, bool)


def detections_to_results(image_ids, boxes, scores, labels, heights, widths, mask=None, category_ids=None):
    """COCO results list from batched model outputs.

    boxes [N, M, 4] normalised [ymin, xmin, ymax, xmax]; scores, labels (0-based) and mask [N, M];
    image_ids, heights, widths [N]. ``category_ids[label]`` gives the COCO id (default label + 1).
    """
    xywh = _pixel_xywh(boxes, heights, widths)
    labels = np.asarray(labels)
    cat = labels + 1 if category_ids is None else np.asarray(category_ids)[labels]
    valid = _valid(mask, labels.shape)
    n, m = np.nonzero(valid)
    image_ids, scores = np.asarray(image_ids), np.asarray(scores, np.float64)
    return [{'image_id': int(image_ids[i]), 'category_id': int(cat[i, j]),
             'bbox': [float(v) for v in xywh[i, j]], 'score': float(scores[i, j])} for i, j in zip(n, m)]


def ground_truth_from_arrays(image_ids, boxes, labels, heights, widths, class_names, mask=None, iscrowd=None):
    """COCO ground-truth dict from batched targets (the pipeline's ``boxes``/``labels``/``mask``).

    Category ids are label + 1 (as ``detections_to_results`` defaults to); annotation ids start at 1
    (pycocotools treats id 0 as "no match"); ``area`` is the pixel box area.
    """
    xywh = _pixel_xywh(boxes, heights, widths)
    labels = np.asarray(labels)
    valid = _valid(mask, labels.shape)
    crowd = np.zeros(labels.shape, bool) if iscrowd is None else np.asarray(iscrowd, bool)
    image_ids = np.asarray(image_ids)
    images = [{'id': int(i), 'height': int(h), 'width': int(w)} for i, h, w in zip(image_ids, heights, widths)]
    anns = [{'id': k + 1, 'image_id': int(image_ids[i]), 'category_id': int(labels[i, j]) + 1,
             'bbox': [float(v) for v in xywh[i, j]], 'area': float(xywh[i, j, 2] * xywh[i, j, 3]),
             'iscrowd': int(crowd[i, j])} for k, (i, j) in enumerate(zip(*np.nonzero(valid)))]
    cats = [{'id': c + 1, 'name': str(name)} for c, name in enumerate(class_names)]
    return {'images': images, 'annotations': anns, 'categories': cats}


def write_json(obj, path):
    """Write ``obj`` as JSON (the format both this evaluator and pycocotools read). ``json.dumps`` runs the C
    encoder, ``json.dump`` the pure-Python one (2x slower on a test split's 25 000 detections); same bytes."""
    with open(path, 'w', encoding='utf-8') as f:
        f.write(json.dumps(obj))
