"""TFDS builder `bdd100k`: BDD100K 2D detection (10 classes) read from a manually downloaded folder.

Configs select the time of day, each with splits `train` and `validation` (BDD `val`; the public test
images have no labels): `all` (every labelled frame, `undefined` time of day included), `daytime`, `night`,
`dawn_dusk`. Images are stored as the original JPEG bytes (no re-encoding); boxes become normalised
[ymin, xmin, ymax, xmax] using each image's own decoded size.

Problems in the input are counted per kind (`labels.KINDS`), logged as a table at the end of each split and
saved in the dataset's metadata.json (`builder.info.metadata['splits'][split]['problems']`). A split left
with no example (no label file found, or no frame of the config's time of day) is not written; a warning
says so.
"""
import collections
import concurrent.futures
import dataclasses
import io
import os

from absl import logging
from PIL import Image
import tensorflow_datasets as tfds

from . import labels as bdd

MANUAL_DOWNLOAD_INSTRUCTIONS = """
Download from https://bdd-data.berkeley.edu/ (mirror: https://dl.cv.ethz.ch/bdd100k/data/), after accepting
the BDD100K licence:
  * bdd100k_images_100k.zip              -> bdd100k/images/100k/{train,val,test}/*.jpg
  * labels, any one of:
      bdd100k_labels_release.zip (2018)  -> bdd100k/labels/bdd100k_labels_images_{train,val}.json
      bdd100k_det_20_labels_trainval.zip -> bdd100k/labels/det_20/det_{train,val}.json
      the 2018 per-frame label release   -> bdd100k/labels/100k/{train,val}/<name>.json (one per image)
Unzip them into one folder and pass it as the manual_dir. Accepted layout (the leading `bdd100k/` that the
archives create is optional: manual_dir/bdd100k/images/... and manual_dir/images/... both work):

  manual_dir/[bdd100k/]images/100k/train/*.jpg
  manual_dir/[bdd100k/]images/100k/val/*.jpg   (test/ is not used: it has no public labels)
  manual_dir/[bdd100k/]labels/, searched per split in this order, the first found is used:
      1. labels/det_20/det_{train,val}.json              (2020 detection list)
      2. labels/bdd100k_labels_images_{train,val}.json   (2018 list)
      3. labels/100k/{train,val}/*.json                  (2018 per-frame files)

  python -m experiments.tfds_build bdd100k --manual_dir=<manual_dir> [--config=night] [--data_dir=...]
(from the adapt repository; `tfds build adapt/datasets/bdd100k ...` is the same command where the `tfds`
console script starts, which in tensorflow-datasets 4.9.10 needs apache-beam and mlcroissant installed).
"""

SPLITS = {'train': 'train', 'validation': 'val'}  # TFDS split -> BDD folder and file name part


def find_root(manual_dir: str) -> str:
    """manual_dir itself, or its `bdd100k/` child when that is where the archives unpacked."""
    nested = os.path.join(manual_dir, 'bdd100k')
    if not os.path.isdir(os.path.join(manual_dir, 'images')) and os.path.isdir(nested):
        return nested
    return manual_dir


def label_sources(root: str, split: str) -> list[str]:
    """The label paths tried for a BDD split ('train' or 'val'), in search order."""
    labels = os.path.join(root, 'labels')
    return [os.path.join(labels, 'det_20', f'det_{split}.json'),
            os.path.join(labels, f'bdd100k_labels_images_{split}.json'),
            os.path.join(labels, '100k', split)]


def _decoded_size(path: str) -> tuple[int, int] | str | None:
    """(width, height) of the fully decoded image; None if there is no file; else why it cannot be read."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, 'rb') as f:
            image = Image.open(io.BytesIO(f.read()))
            image.load()  # decode everything, so truncated or corrupt data fails here and not in training
        return image.size
    except Image.UnidentifiedImageError:
        return 'not an image file PIL can identify'
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f'{type(e).__name__}: {e}'


@dataclasses.dataclass(frozen=True)
class Example:
    frame: bdd.Frame  # boxes already checked against the image size
    path: str
    width: int
    height: int


def check_images(frames: list[bdd.Frame], image_dir: str) -> tuple[list[Example], bdd.Problems]:
    """Decodes each frame's image; drops frames without a readable image, and boxes outside it."""
    problems = bdd.Problems()
    paths = [os.path.join(image_dir, frame.name) for frame in frames]
    with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        sizes = list(pool.map(_decoded_size, paths))  # PIL decodes outside the GIL
    examples = []
    for frame, path, size in zip(frames, paths, sizes):
        if size is None:
            problems.add('missing_image', f'{frame.source}: {path} does not exist')
        elif isinstance(size, str):
            problems.add('unreadable_image', f'{path}: {size}')
        else:
            frame, box_problems = bdd.check_boxes_in_image(frame, *size)
            problems.merge(box_problems)
            examples.append(Example(frame, path, *size))
    return examples, problems


def scan_split(root: str, split: str, times_of_day: tuple[str, ...] = ()
               ) -> tuple[list[Example], bdd.Problems, dict]:
    """Every check for one BDD split -> (examples kept, problems, summary for the metadata and the log).

    `times_of_day` keeps only frames with those `timeofday` values (empty keeps all); every frame of the
    split is checked, so the problem counts are the same for every config.
    """
    source = next((p for p in label_sources(root, split) if os.path.exists(p)), None)
    if source is None:
        return [], bdd.Problems(), {'label_source': None}
    frames, problems = bdd.scan_labels(source)
    image_dir = os.path.join(root, 'images', '100k', split)
    if frames and not os.path.isdir(image_dir):
        logging.warning('bdd100k: image folder %s does not exist', image_dir)
    usable, image_problems = check_images(frames, image_dir)  # all frames: counts do not depend on the config
    problems.merge(image_problems)
    examples = [e for e in usable if not times_of_day or e.frame.timeofday in times_of_day]
    summary = {
        'label_source': source,
        'frames_by_timeofday': dict(collections.Counter(e.frame.timeofday for e in usable)),
        'examples_by_timeofday': dict(collections.Counter(e.frame.timeofday for e in examples)),
        'num_examples': len(examples),
        'num_objects': sum(len(e.frame.labels) for e in examples),
        'problems': {kind: problems[kind] for kind in bdd.KINDS},
    }
    return examples, problems, summary


def _log_split(title: str, problems: bdd.Problems, summary: dict) -> None:
    report = (f'{bdd.summary_table(problems, title)}\n  label source: {summary["label_source"]}\n'
              f'  usable frames by timeofday: {summary["frames_by_timeofday"]}\n'
              f'  examples written by timeofday: {summary["examples_by_timeofday"]}; '
              f'objects: {summary["num_objects"]}')
    (logging.warning if problems.errors() else logging.info)('%s', report)


@dataclasses.dataclass
class Bdd100kConfig(tfds.core.BuilderConfig):
    times_of_day: tuple[str, ...] = ()  # empty: every frame


class Bdd100k(tfds.core.GeneratorBasedBuilder):
    """BDD100K 2D detection, selectable by time of day."""

    name = 'bdd100k'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        Bdd100kConfig(name='all', description='Every labelled frame.'),
        Bdd100kConfig(name='daytime', description='timeofday == daytime.', times_of_day=('daytime',)),
        Bdd100kConfig(name='night', description='timeofday == night.', times_of_day=('night',)),
        Bdd100kConfig(name='dawn_dusk', description='timeofday == dawn/dusk.', times_of_day=('dawn/dusk',)),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
                'image/filename': tfds.features.Text(),
                'timeofday': tfds.features.ClassLabel(names=bdd.TIMES_OF_DAY),
                'weather': tfds.features.ClassLabel(names=bdd.WEATHERS),
                'scene': tfds.features.ClassLabel(names=bdd.SCENES),
                'objects': tfds.features.Sequence({
                    'bbox': tfds.features.BBoxFeature(),
                    'label': tfds.features.ClassLabel(names=bdd.CLASS_NAMES),
                }),
            }),
            homepage='https://bdd-data.berkeley.edu/',
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = find_root(os.fspath(dl_manager.manual_dir))
        generators, summaries = {}, {}
        for tfds_split, split in SPLITS.items():
            examples, problems, summary = scan_split(root, split, self.builder_config.times_of_day)
            summaries[tfds_split] = summary
            title = f'bdd100k/{self.builder_config.name} {tfds_split}: problems by kind'
            if summary['label_source'] is None:
                logging.warning('bdd100k: no labels for %s; tried %s', split, label_sources(root, split))
            elif not examples:
                _log_split(title + ' (no examples: split not written)', problems, summary)
            else:
                generators[tfds_split] = self._generate_examples(examples, problems, summary, title)
        if not generators:
            raise FileNotFoundError(f'bdd100k: no usable labelled images under {root}.\n'
                                    f'{MANUAL_DOWNLOAD_INSTRUCTIONS}')
        self.info.metadata['splits'] = summaries
        return generators

    def _generate_examples(self, examples: list[Example], problems: bdd.Problems, summary: dict, title: str):
        for example in examples:
            frame = example.frame
            with open(example.path, 'rb') as f:
                jpeg = f.read()  # stored as is, not re-encoded
            yield frame.name, {
                'image': jpeg,
                'image/filename': frame.name,
                'timeofday': frame.timeofday,
                'weather': frame.weather,
                'scene': frame.scene,
                'objects': {'bbox': bdd.normalized_yxyx(frame.boxes, example.width, example.height),
                            'label': frame.labels},
            }
        _log_split(title, problems, summary)
