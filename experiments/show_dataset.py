"""Write a PNG grid of daynight_synth scenes with their boxes, so a person can look at the data.

  python -m experiments.show_dataset                        # 6 paired scenes, day | dusk | night
  python -m experiments.show_dataset --config=r256 --split=test_night --num_scenes=8
  python -m experiments.show_dataset --config=r128_sev1                 # the night at severity 1
  python -m experiments.show_dataset --source=tfds --data_dir=/tmp/tfds   # read the prepared data

By default the scenes of --split are rendered directly (no TFDS preparation needed) in all three
domains, one scene per row. With --source=tfds the prepared dataset is read instead (prepared first
if missing): the paired split shows its day and night images, other splits their one image.
"""
import os

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw, ImageFont

from adapt.datasets.daynight_synth import exposure, raster, render
from adapt.datasets.daynight_synth.daynight_synth import SPLIT_CODES, DaynightSynth, scene_id
from adapt.datasets.daynight_synth.scene import CLASS_NAMES, DOMAINS, sample_scene, split_seed
from experiments.common import parse_flags, usage_error

_CONFIGS = {c.name: c for c in DaynightSynth.BUILDER_CONFIGS}
flags.DEFINE_enum('config', 'r128', list(_CONFIGS), 'Builder config (sets the resolution and the night '
                 'severity).')
flags.DEFINE_enum('split', 'paired', list(SPLIT_CODES), 'Split whose scenes are shown.')
flags.DEFINE_integer('num_scenes', 6, 'Number of scenes (rows).', lower_bound=1)
flags.DEFINE_integer('start', 0, 'Index of the first scene in the split.', lower_bound=0)
flags.DEFINE_enum('source', 'render', ['render', 'tfds'], 'Render directly or read the TFDS data.')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir for --source=tfds (TFDS default if unset).')
flags.DEFINE_integer('tile', 320, 'Displayed size of each image in pixels (nearest upscaling).',
                     lower_bound=32)
flags.DEFINE_string('out', 'out/daynight_grid.png', 'Output PNG path.')
FLAGS = flags.FLAGS

CLASS_COLORS = ((0, 200, 255), (255, 150, 0), (255, 60, 200), (120, 255, 60), (255, 255, 0), (255, 90, 90))


def annotate(image, boxes, labels, tile, caption=''):
    """Upscale an image to tile x tile and draw its boxes with class names (PIL)."""
    im = Image.fromarray(image).resize((tile, tile), Image.NEAREST)
    draw, font = ImageDraw.Draw(im), ImageFont.load_default()
    for (y0, x0, y1, x1), label in zip(np.asarray(boxes) * tile, labels):
        color = CLASS_COLORS[int(label)]
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=1)
        draw.text((x0 + 1, max(0.0, y0 - 11)), CLASS_NAMES[int(label)], fill=color, font=font)
    if caption:
        draw.rectangle([0, 0, 7 * len(caption) + 4, 12], fill=(0, 0, 0))
        draw.text((2, 0), caption, fill=(255, 255, 255), font=font)
    return im


def grid(rows, tile):
    """Paste rows of annotated tiles (lists of PIL images) into one image with 2 px gaps."""
    n_cols = max(len(r) for r in rows)
    out = Image.new('RGB', (n_cols * (tile + 2), len(rows) * (tile + 2)), (40, 40, 40))
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            out.paste(im, (j * (tile + 2), i * (tile + 2)))
    return out


def rendered_rows(split, start, num, config, tile):
    rows, night = [], exposure.LEVELS[config.severity - 1]
    for index in range(start, start + num):
        scene = sample_scene(split_seed(SPLIT_CODES[split], index))
        geometry = raster.rasterize(scene, config.resolution)
        rows.append([annotate(render.shade(scene, geometry, d, night), geometry.boxes, geometry.labels, tile,
                              f'{d} {scene_id(split, index)}') for d in DOMAINS])
    return rows


def tfds_rows(config, split, start, num, data_dir, tile):
    import tensorflow_datasets as tfds  # only this mode needs TensorFlow

    builder = tfds.builder(f'daynight_synth/{config}', data_dir=data_dir)
    builder.download_and_prepare()
    size = builder.info.splits[split].num_examples
    if start >= size:
        usage_error(f'--start={start} but split {split} of {config} has {size} examples')
    rows = []
    for ex in tfds.as_numpy(builder.as_dataset(split=f'{split}[{start}:{min(start + num, size)}]')):
        boxes, labels = ex['objects']['bbox'], ex['objects']['label']
        images = [(ex['image'], DOMAINS[ex['domain']])] + [(im, 'night') for im in ex['image_night']]
        rows.append([annotate(im, boxes, labels, tile, f'{name} {ex["scene_id"]}') for im, name in images])
    return rows


def main(argv):
    del argv
    if FLAGS.source == 'render':
        rows = rendered_rows(FLAGS.split, FLAGS.start, FLAGS.num_scenes, _CONFIGS[FLAGS.config], FLAGS.tile)
    else:
        import adapt.datasets  # noqa: F401  registers the builders

        rows = tfds_rows(FLAGS.config, FLAGS.split, FLAGS.start, FLAGS.num_scenes, FLAGS.data_dir, FLAGS.tile)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    grid(rows, FLAGS.tile).save(FLAGS.out)
    print(f'wrote {len(rows)} scenes to {os.path.abspath(FLAGS.out)}')


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
