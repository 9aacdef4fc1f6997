"""Input pipeline: content, padding, augmentation, determinism, resume, process sharding, TFDS layouts."""
import json
import logging

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from adapt.datasets import augment as aug
from adapt.datasets import pipeline as pl
from tests.pipeline_data import _dataset, _example, _pipe, _take

NO_AUG = aug.NO_AUGMENT


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def test_eval_batches_content_shapes_and_padding():
    examples = [_example(i) for i in range(6)]
    it = _pipe(_dataset(examples), train=False)
    assert it.steps_per_epoch == 2
    batches = list(it)
    assert len(batches) == 2 and it.state() == {"epoch": 0, "index": 8}
    b = batches[0]
    dtypes = {"image": np.float32, "boxes": np.float32, "labels": np.int32, "mask": np.bool_, "valid": np.bool_,
              "image_id": np.int64, "index": np.int64, "original_size": np.int32, "window": np.float32,
              "difficult": np.bool_}
    assert {k: v.dtype.type for k, v in b.items()} == dtypes
    assert b["image"].shape == (4, 32, 32, 3) and b["boxes"].shape == (4, 4, 4) and b["labels"].shape == (4, 4)
    rows = [(b, r) for b in batches for r in range(4)]
    for i, (batch, r) in enumerate(rows):
        if i >= 6:  # padding rows of the last batch
            assert not batch["valid"][r] and not batch["mask"][r].any() and (batch["labels"][r] == -1).all()
            continue
        ex, k = examples[i], len(examples[i]["objects"]["label"])
        assert batch["valid"][r] and batch["index"][r] == i and batch["image_id"][r] == i
        np.testing.assert_allclose(batch["image"][r], ex["image"] / 255.0, atol=1e-6)
        np.testing.assert_allclose(batch["boxes"][r, :k], ex["objects"]["bbox"], atol=1e-6)
        assert (batch["boxes"][r, k:] == 0).all()
        assert batch["labels"][r].tolist() == list(range(k)) + [-1] * (4 - k)
        assert batch["mask"][r].tolist() == [True] * k + [False] * (4 - k)
        assert batch["difficult"][r, :k].tolist() == (ex["objects"]["label"] % 2 == 1).tolist()
        assert batch["original_size"][r].tolist() == [32, 32]
        assert batch["window"][r].tolist() == [0, 0, 1, 1]
    with pytest.raises(StopIteration):
        next(it)


def test_unlabelled_batches_are_a_function_of_the_images_alone():
    """Every box and label perturbed (moved, resized, relabelled, some objects dropped): an unlabelled
    pipeline's batches, crop, flip, colour and strong view included, stay bit-identical; a labelled one's
    crops follow the boxes, so its images change (the perturbation reaches what a box-driven crop reads)."""
    examples = [_example(i, size=(48, 40), num_objects=3) for i in range(8)]
    rng = np.random.default_rng(0)
    perturbed = []
    for ex in examples:
        lo = rng.uniform(0, 0.6, (2, 2))
        bbox = np.concatenate([lo, lo + rng.uniform(0.05, 0.4, (2, 2))], -1).astype(np.float32)
        perturbed.append({**ex, "objects": {"bbox": bbox, "label": np.array([3, 2]), "is_difficult": np.ones(2, bool)}})
    augment = aug.AugmentConfig(crop_min_ious=(0.3, 0.5, 0.7, 0.9))
    settings = dict(seed=4, augment=augment, strong_augment=aug.StrongAugmentConfig())

    def batches(data, labelled):
        return _take(_pipe(_dataset(data), labelled=labelled, **settings), 2)

    for a, b in zip(batches(examples, False), batches(perturbed, False)):
        _assert_batches_equal(a, b)
        assert not a["mask"].any() and "difficult" not in a
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(batches(examples, True),
                                                                           batches(perturbed, True)))


@pytest.mark.parametrize("min_ious, crops", [((0.5, 0.9), True), ((None,), False)])
def test_box_free_crop_follows_the_drawn_option(min_ious, crops):
    """Without boxes a drawn minimum IoU crops (a window of the allowed scale and aspect), None keeps the
    whole image; the crop cuts exactly that window."""
    cfg = aug.AugmentConfig(crop_min_ious=min_ious, crop_scale=(0.3, 0.8))
    image = tf.random.stateless_uniform([48, 40, 3], [1, 2])
    for seed in range(5):
        window = aug.sample_crop_window(None, 48, 40, tf.constant([seed, 3]), cfg).numpy()
        if crops:
            h, w = window[2:]
            assert 0.3 * 48 - 1 <= h <= 0.8 * 48 + 1 and 0.3 * 40 - 1 <= w <= 0.8 * 40 + 1 and 0.5 <= w / h <= 2
        else:
            assert window.tolist() == [0, 0, 48, 40]
        out, boxes, keep = aug.random_crop(image, None, tf.constant([seed, 3]), cfg)
        top, left, h, w = window
        np.testing.assert_array_equal(out.numpy(), image.numpy()[top:top + h, left:left + w])
        assert boxes is None and keep is None


class PipelineTinyDetection(tfds.core.GeneratorBasedBuilder):
    """A real TFDS builder (PNG images, image/id) so the builder path with SkipDecoding is exercised."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/id": np.int64,
            "objects": tfds.features.Sequence({"bbox": tfds.features.BBoxFeature(),
                                               "label": tfds.features.ClassLabel(num_classes=4)})}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(5)}

    def _generate_examples(self, n):
        for i in range(n):
            ex = _example(i, size=(24, 16))
            yield i, {"image": ex["image"], "image/id": 1000 + i,
                      "objects": {"bbox": ex["objects"]["bbox"], "label": ex["objects"]["label"]}}


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
    builder = PipelineTinyDetection(data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare()
    return builder


def test_tfds_builder_and_name_sources(tiny_builder):
    for source, data_dir in ((tiny_builder, None), ("pipeline_tiny_detection", tiny_builder.data_dir_root)):
        it = _pipe(source, split="train", data_dir=data_dir, train=False, image_size=(24, 16))
        b = next(it)
        assert b["index"].tolist() == [0, 1, 2, 3] and len(set(b["image_id"])) == 4  # TFDS stores by key hash
        for r in range(4):
            ex = _example(int(b["image_id"][r]) - 1000, size=(24, 16))
            np.testing.assert_allclose(b["image"][r], ex["image"] / 255.0, atol=1e-6)
            np.testing.assert_allclose(b["boxes"][r][b["mask"][r]], ex["objects"]["bbox"], atol=1e-6)
            assert b["original_size"][r].tolist() == [24, 16]
    with pytest.raises(ValueError, match="split is required"):
        _pipe(tiny_builder)


def test_missing_feature_is_one_clear_line():
    ds = tf.data.Dataset.from_tensors({"image": tf.zeros([4, 4, 3], tf.uint8),
                                       "objects": {"bbox": tf.zeros([1, 4])}})
    with pytest.raises(ValueError) as err:
        _pipe(ds)
    assert str(err.value) == "dataset lacks feature 'objects/label'; available: image, objects/bbox"


def test_flip_end_to_end_mirrors_pixels_and_boxes():
    examples = [_example(i) for i in range(8)]
    flip = aug.AugmentConfig(flip_prob=1.0, crop_min_ious=(None,), brightness=0, contrast=0, saturation=0, hue=0)
    train = _take(_pipe(_dataset(examples), augment=flip), 2)
    for b in train:
        for r, i in enumerate(b["index"]):
            ex, k = examples[i], len(examples[i]["objects"]["label"])
            np.testing.assert_allclose(b["image"][r], ex["image"][:, ::-1] / 255.0, atol=1e-6)
            y0, x0, y1, x1 = ex["objects"]["bbox"].T
            np.testing.assert_allclose(b["boxes"][r, :k], np.stack([y0, 1 - x1, y1, 1 - x0], -1), atol=1e-6)


def test_letterbox_maps_boxes_in_closed_form():
    examples = [_example(i, size=(20, 40), num_objects=3) for i in range(4)]
    b = next(_pipe(_dataset(examples), train=False, letterbox=True, pad_value=0.25))
    # scale min(32/20, 32/40) = 0.8 -> content 16 x 32 at top = 8: y' = (8 + 16 y) / 32, x' = x.
    np.testing.assert_allclose(b["window"], np.tile([[8 / 32, 0, 24 / 32, 1]], (4, 1)), atol=1e-7)
    for r in range(4):
        y0, x0, y1, x1 = examples[r]["objects"]["bbox"].T
        expected = np.stack([(8 + 16 * y0) / 32, x0, (8 + 16 * y1) / 32, x1], -1)
        np.testing.assert_allclose(b["boxes"][r, :3], expected, atol=1e-6)
        np.testing.assert_allclose(pl.boxes_to_original(b["boxes"][r, :3], b["window"][r]),
                                   examples[r]["objects"]["bbox"], atol=1e-6)
        assert (b["image"][r, :8] == 0.25).all() and (b["image"][r, 24:] == 0.25).all()
        assert b["original_size"][r].tolist() == [20, 40]


def test_crop_keeps_per_object_fields_aligned():
    examples = [_example(i, num_objects=3) for i in range(8)]
    crop = aug.AugmentConfig(flip_prob=0.0, crop_min_ious=(0.0, 0.1), brightness=0, contrast=0, saturation=0, hue=0)
    changed = 0
    for b in _take(_pipe(_dataset(examples), augment=crop, seed=3), 4):
        boxes, mask = b["boxes"], b["mask"]
        assert (boxes[mask] >= 0).all() and (boxes[mask] <= 1).all()
        assert (boxes[mask][:, 2] > boxes[mask][:, 0]).all() and (boxes[mask][:, 3] > boxes[mask][:, 1]).all()
        assert (b["difficult"][mask] == (b["labels"][mask] % 2 == 1)).all()
        for r in range(4):
            kept = b["labels"][r][mask[r]]
            assert (np.diff(kept) > 0).all() and (b["labels"][r][~mask[r]] == -1).all()
            changed += not np.allclose(boxes[r][mask[r]], examples[b["index"][r]]["objects"]["bbox"][kept])
    assert changed >= 4


def test_same_seed_same_stream_other_seed_differs():
    examples = [_example(i) for i in range(10)]
    a, b, c = (_take(_pipe(_dataset(examples), seed=s), 3) for s in (5, 5, 6))
    for x, y in zip(a, b):
        _assert_batches_equal(x, y)
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))
    assert any(not np.array_equal(x["index"], z["index"]) for x, z in zip(a, c))
    assert not np.array_equal(a[0]["index"], a[2]["index"])  # epoch 1 is shuffled afresh


def test_epochs_read_through_one_dataset_equal_one_dataset_per_epoch(monkeypatch):
    """Consecutive epochs share a tf.data dataset (EPOCHS_PER_DATASET of them): the batches are those of one
    dataset per epoch, and every epoch reads each example once (10 examples, 2 batches of 4 per epoch)."""
    examples = [_example(i) for i in range(10)]
    shared = _take(_pipe(_dataset(examples), seed=3), 10)
    monkeypatch.setattr(pl, "EPOCHS_PER_DATASET", 1)
    tf.random.set_seed(0)  # a global seed of 0 leaves the order alone (TF compares it with the epoch's seed)
    try:
        rebuilt = _take(_pipe(_dataset(examples), seed=3), 10)
    finally:
        tf.random.set_seed(None)
    for x, y in zip(shared, rebuilt):
        _assert_batches_equal(x, y)
    for epoch in range(5):
        read = np.concatenate([b["index"] for b in shared[2 * epoch:2 * epoch + 2]])
        assert len(set(read.tolist())) == 8 and set(read.tolist()) <= set(range(10))


@pytest.mark.parametrize("k", [1, 2])  # mid-epoch, and at an epoch end (10 examples, 2 batches of 4 per epoch)
def test_resume_gives_byte_identical_batches(k):
    examples = [_example(i) for i in range(10)]
    reference = _take(_pipe(_dataset(examples), seed=1), k + 3)
    first = _pipe(_dataset(examples), seed=1)
    _take(first, k)
    state = json.loads(json.dumps(first.state()))
    resumed = _pipe(_dataset(examples), seed=1, start_position=state)
    for x, y in zip(reference[k:], _take(resumed, 3)):
        _assert_batches_equal(x, y)
    first.restore(state)
    _assert_batches_equal(reference[k], next(first))


def test_eval_resume():
    examples = [_example(i) for i in range(10)]
    reference = list(_pipe(_dataset(examples), train=False))
    resumed = _pipe(_dataset(examples), train=False, start_position={"epoch": 0, "index": 4})
    rest = list(resumed)
    assert len(rest) == 2 and resumed.state() == {"epoch": 0, "index": 12}
    for x, y in zip(reference[1:], rest):
        _assert_batches_equal(x, y)


def test_processes_read_disjoint_halves_of_each_global_batch():
    examples = [_example(i) for i in range(10)]
    whole = _take(_pipe(_dataset(examples), seed=2), 3)
    parts = [_take(_pipe(_dataset(examples), seed=2, process_index=p, process_count=2), 3) for p in (0, 1)]
    for g, p0, p1 in zip(whole, *parts):
        assert p0["image"].shape[0] == 2 and not set(p0["index"]) & set(p1["index"])
        for key in g:
            assert np.array_equal(np.concatenate([p0[key], p1[key]]), g[key]), key
    evals = [list(_pipe(_dataset(examples), train=False, process_index=p, process_count=2)) for p in (0, 1)]
    assert len(evals[0]) == len(evals[1]) == 3
    seen = [i for batches in evals for b in batches for i in b["index"][b["valid"]]]
    assert sorted(seen) == list(range(10))


def test_train_and_eval_datasets_run_deterministically_without_autotuning():
    # Dropping an autotuned iterator waits for its optimiser thread's sleep: 33 s for a training iterator
    # deleted after 20 s of use and 40 s idle (an end-of-run evaluation), 0.3 s without autotuning.
    ds = _dataset([_example(i) for i in range(8)])
    for train in (True, False):
        options = _pipe(ds, train=train)._dataset().options()
        assert options.autotune.enabled is False and options.deterministic is True


def test_batch_size_errors():
    ds = _dataset([_example(i) for i in range(8)])
    with pytest.raises(ValueError, match="per-process batch 6 .* not divisible by the 4 local devices"):
        pl.DetectionPipeline(ds, global_batch_size=6, image_size=(8, 8), process_index=0, process_count=1)
    with pytest.raises(ValueError, match="not divisible by process_count 4"):
        _pipe(ds, global_batch_size=6, process_count=4)
    with pytest.raises(ValueError, match="no full global batch"):
        _pipe(ds, global_batch_size=12)


def test_unreadable_images_are_counted_and_skipped(caplog):
    examples = [_example(i) for i in range(10)]
    corrupt = {2, 7}
    with caplog.at_level(logging.WARNING):
        ev = _pipe(_dataset(examples, corrupt), train=False)
        batches = list(ev)
    seen = [i for b in batches for i in b["index"][b["valid"]]]
    assert sorted(seen) == sorted(set(range(10)) - corrupt) and ev.num_unreadable == 2
    assert len(batches) == 3 and any("unreadable" in r.getMessage() for r in caplog.records)
    train = _pipe(_dataset(examples, corrupt), seed=4, global_batch_size=2)
    epoch0 = _take(train, 4)  # 8 readable examples: exactly four batches
    assert sorted(i for b in epoch0 for i in b["index"]) == sorted(set(range(10)) - corrupt)
    assert train.state()["epoch"] == 0 and train.num_unreadable <= 2
    next(train)  # runs epoch 0 dry (counting its tail), then reads epoch 1
    assert train.state()["epoch"] == 1 and 2 <= train.num_unreadable <= 4


def test_objects_beyond_max_boxes_keep_dataset_order():
    examples = [_example(i, num_objects=6 if i == 1 else 2) for i in range(4)]
    it = _pipe(_dataset(examples), train=False)
    b = next(it)
    np.testing.assert_allclose(b["boxes"][1], examples[1]["objects"]["bbox"][:4], atol=1e-6)
    assert b["labels"][1].tolist() == [0, 1, 2, 3] and b["mask"][1].all() and it.num_truncated == 1


def _layout_example(name, i):
    """A full example of the TFDS voc / coco feature dicts with known boxes."""
    k = 2 + i % 2
    bbox = np.array([[0.1, 0.2, 0.5, 0.6], [0.3, 0.1, 0.9, 0.4], [0.0, 0.5, 0.2, 0.9]][:k], np.float32)
    image = np.random.default_rng(i).integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
    label = [3 + i, 7, 1][:k]
    flags = [bool((i + j) % 2) for j in range(k)]
    if name == "voc":
        return {"image": image, "image/filename": f"{i}.jpg", "labels": label, "labels_no_difficult": label,
                "objects": {"bbox": bbox, "label": label, "is_difficult": flags, "is_truncated": [False] * k,
                            "pose": [0] * k}}
    return {"image": image, "image/filename": f"{i}.jpg", "image/id": 500 + i,
            "objects": {"bbox": bbox, "label": label, "is_crowd": flags, "id": list(range(k)), "area": [1] * k}}


def _mock_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    """Consistent fake examples serialised and decoded by the dataset's own TFDS features."""
    del split, read_config, shuffle_files
    features = self.info.features
    encoded = [features.encode_example(_layout_example(self.name, i)) for i in range(3)]
    signature = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.tf_dtype), features.get_serialized_info())
    ds = tf.data.Dataset.from_generator(lambda: iter(encoded), output_signature=signature)
    return ds.map(lambda ex: features.decode_example(ex, decoders=decoders))


@pytest.mark.parametrize("name,split,flag", [("voc/2007", "validation", "difficult"), ("coco/2017", "train", "crowd")])
def test_tfds_voc_and_coco_layouts(name, split, flag):
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=_mock_as_dataset):
        batches = list(_pipe(name, split=split, train=False, global_batch_size=2, image_size=(16, 16)))
    short = name.split("/")[0]
    assert len(batches) == 2 and [b["valid"].tolist() for b in batches] == [[True, True], [True, False]]
    for i in range(3):
        b, r, ex = batches[i // 2], i % 2, _layout_example(short, i)
        k = len(ex["objects"]["label"])
        np.testing.assert_allclose(b["boxes"][r, :k], ex["objects"]["bbox"], atol=1e-6)
        assert b["labels"][r].tolist() == ex["objects"]["label"] + [-1] * (4 - k)
        key = "is_difficult" if flag == "difficult" else "is_crowd"
        assert b[flag][r, :k].tolist() == ex["objects"][key] and not b[flag][r, k:].any()
        assert b["image_id"][r] == (500 + i if short == "coco" else i)
        assert b["original_size"][r].tolist() == [20 + i, 30]
    assert (flag == "crowd") == ("crowd" in batches[0]) and (flag == "difficult") == ("difficult" in batches[0])
