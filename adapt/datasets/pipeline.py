"""Input pipeline: any TFDS detection dataset (`image`, `objects/bbox`, `objects/label`) -> NumPy batches.

Order per epoch (global, identical in every process): source order -> shuffle seeded by (seed, epoch) ->
global position g. Process p of P takes rows [p*L, (p+1)*L) of every global batch of G = P*L examples,
decodes, augments (stateless seeds from (seed, epoch, source index)), resizes and pads them. The iterator
position is `{'epoch', 'index'}`: the global position to resume from, so a restored iterator skips straight
to the same example. Batches (NumPy):
  image float32 [L, H, W, 3] in [0, 1]; boxes float32 [L, M, 4] normalised yxyx on the output canvas;
  labels int32 [L, M] (-1 pad); mask bool [L, M]; valid bool [L] (False only for eval padding rows);
  image_id int64 [L] (`image/id` if the dataset has it, else the source index); index int64 [L] (source
  index); original_size int32 [L, 2] (decoded height, width); window float32 [L, 4] (where the image lies on
  the canvas, see `boxes_to_original`); difficult / crowd bool [L, M] when the dataset has
  objects/is_difficult / objects/is_crowd; image_strong float32 [L, H, W, 3] with `strong_augment` (training).
Objects beyond `max_boxes` are dropped in dataset order (the first `max_boxes` kept) and counted.
Unreadable examples (image decode errors) are dropped by `ignore_errors`, counted from the gaps they leave in
g (`num_unreadable`) and reported with a warning. In eval mode their rows stay `valid=False`, so every
global batch keeps its layout and all processes yield the same number of batches. In training the process
fills its batch from further along its shard, so its position can run ahead of the other processes' (each
process should then checkpoint its own `state()`); without unreadable examples all processes report the
same position.
"""
import dataclasses
from typing import Optional, Tuple, Union

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from adapt.datasets import augment as aug
from adapt.datasets.tf_options import without_autotune

# Training epochs per tf.data dataset: a new dataset costs ~0.5 s to instantiate (its functions), most of a
# short epoch, so consecutive epochs are read through one dataset (and one iterator).
EPOCHS_PER_DATASET = 8
REQUIRED = {"image": "image", "bbox": "objects/bbox", "label": "objects/label"}
OPTIONAL = {"difficult": "objects/is_difficult", "crowd": "objects/is_crowd", "image_id": "image/id"}
PER_OBJECT_BOOL = ("difficult", "crowd")
_END = object()


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def select_features(element_spec, labelled: bool = True) -> dict:
    """{short name: flat TFDS path} of the features the pipeline reads; ValueError when one is missing.
    `labelled` False: no box, label or per-object flag is read at all."""
    available = _flatten(element_spec)
    required = REQUIRED if labelled else {"image": REQUIRED["image"]}
    for name, path in required.items():
        if path not in available:
            raise ValueError(f"dataset lacks feature '{path}'; available: {', '.join(sorted(available))}")
    found = {k: p for k, p in OPTIONAL.items() if p in available and (labelled or k not in PER_OBJECT_BOOL)}
    if "image_id" in found and not available[found["image_id"]].dtype.is_integer:
        del found["image_id"]  # non-integer ids (e.g. file names): fall back to the source index
    return {**required, **found}


def _decode(image):
    if image.dtype == tf.string:
        return tf.io.decode_image(image, channels=3, expand_animations=False)
    if image.dtype != tf.uint8 or image.shape.rank != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"image must be encoded bytes or uint8 [H, W, 1|3], got {image.dtype.name} {image.shape}")
    return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image


def pad_objects(boxes, per_object: dict, max_boxes: int) -> dict:
    """Keep the first max_boxes objects; pad boxes with 0, labels with -1, flags with False; add `mask`."""
    k = tf.minimum(tf.shape(boxes)[0], max_boxes)
    pad = max_boxes - k
    out = {"boxes": tf.ensure_shape(tf.pad(boxes[:k], [[0, pad], [0, 0]]), [max_boxes, 4]),
           "mask": tf.range(max_boxes) < k}
    for name, value in per_object.items():
        fill = -1 if name == "labels" else False
        out[name] = tf.ensure_shape(tf.pad(value[:k], [[0, pad]], constant_values=fill), [max_boxes])
    return out


def prepare_example(example: dict, seed, *, image_size: Tuple[int, int], max_boxes: int,
                    augment: Optional[aug.AugmentConfig] = None, letterbox: bool = False, pad_value: float = 0.5,
                    strong: Optional[aug.StrongAugmentConfig] = None):
    """One selected example (keys of `select_features`) -> fixed-shape tensors; augment=None for eval.
    With `strong`, also `image_strong`: the strong view of `image` (same geometry, its own seed).
    An example without 'bbox' (an unlabelled selection) gets no objects and the box-free crop: its output
    is a function of its image alone."""
    target_h, target_w = image_size
    image = _decode(example["image"])
    original_size = tf.shape(image)[:2]
    image = tf.cast(image, tf.float32) / 255.0
    labelled = "bbox" in example
    if labelled:
        boxes = tf.reshape(tf.cast(example["bbox"], tf.float32), [-1, 4])
        per_object = {"labels": tf.cast(example["label"], tf.int32)}
        per_object.update({k: tf.cast(example[k], tf.bool) for k in PER_OBJECT_BOOL if k in example})
    else:
        boxes, per_object = tf.zeros([0, 4], tf.float32), {"labels": tf.zeros([0], tf.int32)}
    if augment is not None:
        crop_seed, flip_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        if augment.crops:
            image, cropped, keep = aug.random_crop(image, boxes if labelled else None, crop_seed, augment)
            if labelled:
                boxes = tf.boolean_mask(cropped, keep)
                per_object = {k: tf.boolean_mask(v, keep) for k, v in per_object.items()}
        if augment.flip_prob > 0:
            image, boxes = aug.random_flip(image, boxes, flip_seed, augment.flip_prob)
    shape = tf.shape(image)
    nh, nw, top, left = aug.resize_geometry(shape[0], shape[1], target_h, target_w, letterbox)
    image = tf.clip_by_value(tf.image.resize(image, tf.stack([nh, nw]), antialias=True), 0.0, 1.0)
    if augment is not None:
        image = aug.random_colour_jitter(image, colour_seed, augment)
    out = pad_objects(aug.place_boxes(boxes, nh, nw, top, left, target_h, target_w), per_object, max_boxes)
    out.update(image=aug.pad_to_canvas(image, top, left, target_h, target_w, pad_value),
               original_size=original_size,
               window=aug.place_boxes(tf.constant([0.0, 0.0, 1.0, 1.0]), nh, nw, top, left, target_h, target_w),
               _num_objects=tf.shape(boxes)[0])
    if strong is not None:
        out["image_strong"] = aug.strong_view(out["image"], tf.random.experimental.stateless_fold_in(seed, 3), strong)
    return out


def boxes_to_original(boxes, window):
    """NumPy: boxes normalised on the output canvas -> normalised in the original image (undo the window).

    Multiply by `original_size` (or use adapt.boxes converters) for pixels. Valid for eval batches (no crop).
    """
    window = np.asarray(window, np.float32)[..., None, :]
    y0, x0, y1, x1 = (window[..., i] for i in range(4))
    origin = np.stack([y0, x0, y0, x0], -1)
    size = np.stack([y1 - y0, x1 - x0, y1 - y0, x1 - x0], -1)
    return np.clip((np.asarray(boxes, np.float32) - origin) / size, 0.0, 1.0)


def _load(source, split, data_dir):
    if isinstance(source, tf.data.Dataset):
        if split is not None:
            raise ValueError("split applies to a TFDS name or builder, not to a tf.data.Dataset")
        return source
    builder = tfds.builder(source, data_dir=data_dir) if isinstance(source, str) else source
    if split is None:
        raise ValueError(f"split is required for TFDS dataset {builder.name!r}")
    decoders = {"image": tfds.decode.SkipDecoding()} if "image" in builder.info.features else None
    return builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)


def _count(ds) -> int:
    n = int(ds.cardinality())
    if n == tf.data.INFINITE_CARDINALITY:
        raise ValueError("the dataset is infinite; pass a finite split (the pipeline repeats epochs itself)")
    return n if n >= 0 else int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _plain(fn):
    """Skip AutoGraph (no Python control flow on tensors here); its conversion dominated each epoch rebuild."""
    return tf.autograph.experimental.do_not_convert(fn)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32)[0])


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Which global positions g belong to this process, and position arithmetic on them."""
    global_batch: int
    local_batch: int
    process_index: int

    @property
    def start(self) -> int:
        return self.process_index * self.local_batch

    def rank(self, g):
        """Position of g within this process's shard (g must belong to it)."""
        return (g // self.global_batch) * self.local_batch + g % self.global_batch - self.start

    def shard_before(self, index: int) -> int:
        """How many of this process's positions lie below the global position `index`."""
        within = min(max(index % self.global_batch - self.start, 0), self.local_batch)
        return (index // self.global_batch) * self.local_batch + within

    def index_after(self, g: int) -> int:
        """Resume position after consuming g: the next global batch when g ends this process's block."""
        if g % self.global_batch == (self.process_index + 1) * self.local_batch - 1:
            return (g // self.global_batch + 1) * self.global_batch
        return g + 1


class DetectionPipeline:
    """Deterministic, resumable iterator of host-local detection batches (see the module docstring).

    source: TFDS name or builder (with `split`, optional `data_dir`), or a tf.data.Dataset of TFDS-style
    examples (image as encoded bytes or uint8). train=True: shuffled per epoch, augmented, full batches only,
    endless; with `strong_augment`, batches also carry `image_strong` (see `prepare_example`). train=False:
    source order, no augmentation, one pass of ceil(N / G) batches with padding rows marked `valid=False`.
    The TF global seed (tf.random.set_seed) does not enter the training order.
    `shuffle_buffer >= N` gives a full permutation per epoch. `labelled` False (an unlabelled domain): the
    boxes and labels are never read, batches carry no objects and the crop is box-free (`prepare_example`).
    """

    def __init__(self, source: Union[str, tfds.core.DatasetBuilder, tf.data.Dataset], *, global_batch_size: int,
                 image_size: Tuple[int, int], split: Optional[str] = None, data_dir: Optional[str] = None,
                 max_boxes: int = 100, train: bool = True, seed: int = 0,
                 augment: Optional[aug.AugmentConfig] = aug.AugmentConfig(),
                 strong_augment: Optional[aug.StrongAugmentConfig] = None, letterbox: bool = False,
                 pad_value: float = 0.5, shuffle_buffer: int = 1024, prefetch: int = 2,
                 process_index: Optional[int] = None, process_count: Optional[int] = None,
                 local_device_count: Optional[int] = None, start_position: Optional[dict] = None,
                 labelled: bool = True):
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        local_device_count = jax.local_device_count() if local_device_count is None else local_device_count
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}")
        local_batch = global_batch_size // process_count
        if local_batch % local_device_count:
            raise ValueError(f"per-process batch {local_batch} (= {global_batch_size} / {process_count} processes) "
                             f"is not divisible by the {local_device_count} local devices")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} outside [0, {process_count})")
        ds = _load(source, split, data_dir)
        self.features = select_features(ds.element_spec, labelled)
        self.num_examples = _count(ds)
        self.train, self.seed, self.shuffle_buffer, self.prefetch = train, int(seed), shuffle_buffer, prefetch
        self.layout = _Layout(global_batch_size, local_batch, process_index)
        self.steps_per_epoch = (self.num_examples // global_batch_size if train
                                else -(-self.num_examples // global_batch_size))
        if train and self.steps_per_epoch == 0:
            raise ValueError(f"{self.num_examples} examples make no full global batch of {global_batch_size}")
        # Positions read per epoch: train drops the last partial *global* batch in every process alike.
        self._read = min(self.num_examples, self.steps_per_epoch * global_batch_size)
        self._prepare_kwargs = dict(image_size=tuple(image_size), max_boxes=max_boxes, letterbox=letterbox,
                                    pad_value=pad_value, augment=augment if train else None,
                                    strong=strong_augment if train else None)
        self._source = ds.map(_plain(self._select)).enumerate()
        self._prepare_row = tf.function(self._row, autograph=False)
        self.num_unreadable = self.num_truncated = 0
        self.restore(start_position or {"epoch": 0, "index": 0})

    def _row(self, g, i, example, epoch):
        """One output row; a tf.function traced once and reused by every epoch's dataset."""
        seed = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(self.seed, tf.int64), epoch]), i)
        out = prepare_example(example, seed, **self._prepare_kwargs)
        image_id = tf.cast(example["image_id"], tf.int64) if "image_id" in example else i
        return {**out, "index": i, "image_id": image_id, "_g": g}

    def _select(self, example):
        flat = _flatten(example)
        return {name: flat[path] for name, path in self.features.items()}

    # ----- position
    def state(self) -> dict:
        return {"epoch": self._epoch, "index": self._index}

    def restore(self, state: dict) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        end = self.steps_per_epoch * self.layout.global_batch
        if epoch < 0 or not 0 <= index <= end or (not self.train and epoch != 0):
            raise ValueError(f"bad position {state} for {self.num_examples} examples (train={self.train})")
        self._epoch, self._index = epoch, index
        self._it, self._pending, self._yielded = None, None, False
        self._next_rank = self.layout.shard_before(index)

    # ----- tf.data graph
    def _one_epoch(self, epoch, shuffle_seed, skip: bool):
        """This process's prepared rows of one epoch (`epoch`: an int64 tensor), from the current position
        when `skip` (a bool tensor) is true, else from the epoch's start."""
        lay, index = self.layout, self._index
        ds = self._source
        if shuffle_seed is not None:
            ds = ds.shuffle(self.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        skip_global, skip_local = index // lay.global_batch * lay.global_batch, lay.shard_before(index)
        ds = ds.enumerate().take(self._read).skip(tf.where(skip, tf.constant(skip_global, tf.int64), 0))
        ds = ds.filter(_plain(lambda g, _: (g % lay.global_batch) // lay.local_batch == lay.process_index))
        local = skip_local - skip_global // lay.global_batch * lay.local_batch
        ds = ds.skip(tf.where(skip, tf.constant(local, tf.int64), 0))
        prepare = lambda g, item: self._prepare_row(g, item[0], item[1], epoch)
        ds = ds.map(_plain(prepare), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.ignore_errors(log_warning=True)

    def _dataset(self):
        """Eval: the one epoch from the current position. Train: batches of EPOCHS_PER_DATASET epochs from the
        current position on, each batch tagged with its epoch's offset `_k` (0 = the current epoch)."""
        if not self.train:
            ds = self._one_epoch(tf.constant(self._epoch, tf.int64), None, tf.constant(True))
        else:
            first = self._epoch
            seeds = tf.constant([_epoch_seed(self.seed, first + k) for k in range(EPOCHS_PER_DATASET)], tf.int64)

            def epoch_batches(k):
                # The epoch's seed alone orders it: a graph-level seed (tf.random.set_seed) would also enter
                # shuffle's seeds, and TF cannot combine a global seed of 0 with a tensor seed.
                tf.compat.v1.get_default_graph().seed = None
                rows = self._one_epoch(first + k, seeds[k], tf.equal(k, 0))
                return rows.batch(self.layout.local_batch).map(_plain(lambda batch: {**batch, "_k": k}))
            ds = tf.data.Dataset.range(EPOCHS_PER_DATASET).flat_map(_plain(epoch_batches))
        return without_autotune(ds.prefetch(self.prefetch))

    # ----- iteration
    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self._next_train() if self.train else self._next_eval()

    def _count_gaps(self, g) -> None:
        ranks = self.layout.rank(np.asarray(g, np.int64))
        self._add_unreadable(int(ranks[-1]) + 1 - self._next_rank - len(ranks))
        self._next_rank = int(ranks[-1]) + 1

    def _add_unreadable(self, n: int) -> None:
        if n:
            self.num_unreadable += n
            logging.warning("skipped %d unreadable example(s) in epoch %d (%d so far)", n, self._epoch,
                            self.num_unreadable)

    def _finish(self, batch: dict, valid) -> dict:
        del batch["_g"]
        num_objects = batch.pop("_num_objects")
        over = int(np.sum(num_objects[valid] > batch["mask"].shape[1]))
        if over:
            if not self.num_truncated:
                logging.warning("examples with more than max_boxes=%d objects: keeping the first max_boxes",
                                batch["mask"].shape[1])
            self.num_truncated += over
        batch["valid"] = np.asarray(valid, bool)
        return batch

    def _next_train(self) -> dict:
        lay, empty_epochs = self.layout, 0
        while True:
            if self._it is None:
                self._it, self._it_epoch = self._dataset().as_numpy_iterator(), self._epoch
            batch = next(self._it, None)
            epoch = self._it_epoch + (EPOCHS_PER_DATASET if batch is None else int(batch.pop("_k")))
            while self._epoch < epoch:  # the epochs before this batch's have ended
                self._add_unreadable(lay.shard_before(self._read) - self._next_rank)
                empty_epochs = 0 if self._yielded else empty_epochs + 1
                if empty_epochs > 1:
                    raise RuntimeError(f"a whole epoch gave no batch: {self.num_unreadable} of "
                                       f"{self.num_examples} examples unreadable")
                self._epoch, self._index, self._next_rank, self._yielded = self._epoch + 1, 0, 0, False
            if batch is None:
                self._it = None
                continue
            self._count_gaps(batch["_g"])
            if len(batch["_g"]) == lay.local_batch:  # short only when unreadable examples ran the epoch dry
                self._index, self._yielded = lay.index_after(int(batch["_g"][-1])), True
                return self._finish(batch, np.ones(lay.local_batch, bool))

    def _next_eval(self) -> dict:
        lay = self.layout
        k = self._index // lay.global_batch
        if k >= self.steps_per_epoch:
            raise StopIteration
        if self._it is None:
            ds = self._dataset()
            self._spec, self._it = ds.element_spec, ds.as_numpy_iterator()
        rows = {}
        while True:
            if self._pending is None:
                self._pending = next(self._it, _END)
            ex = self._pending
            if ex is _END or ex["_g"] // lay.global_batch != k:
                break
            rows[int(ex["_g"]) % lay.global_batch - lay.start] = ex
            self._pending = None
        self._index = (k + 1) * lay.global_batch
        end = min(self._index, self._read)
        self._add_unreadable(lay.shard_before(end) - lay.shard_before(k * lay.global_batch) - len(rows))
        batch = _stack_rows(rows, lay.local_batch, self._spec)
        valid = np.zeros(lay.local_batch, bool)
        valid[list(rows)] = True
        return self._finish(batch, valid)


def _stack_rows(rows: dict, size: int, spec) -> dict:
    """Eval batch of `size` rows from {slot: example}; missing slots hold labels/ids -1, everything else 0."""
    batch = {}
    for key, s in spec.items():
        fill = -1 if key in ("labels", "index", "image_id") else 0
        batch[key] = np.full((size, *s.shape), fill, s.dtype.as_numpy_dtype)
        for slot, ex in rows.items():
            batch[key][slot] = ex[key]
    return batch


make_detection_iterator = DetectionPipeline
