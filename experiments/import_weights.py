"""Convert keras.applications ImageNet weights into an orbax backbone checkpoint.

    python -m experiments.import_weights --keras_file=resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 \
        --backbone=resnet50 --out=/tmp/resnet50_imagenet

Training starts from it with `--config.init_from=/tmp/resnet50_imagenet`; feed the backbone
`adapt.models.backbones.preprocess(backbone, images01)`.
"""
from absl import app, flags
import jax

from adapt.models import keras_import
from experiments.common import parse_flags, usage_error

FLAGS = flags.FLAGS
flags.DEFINE_string('keras_file', None, 'keras.applications model or weights file (.keras or .h5).', required=True)
flags.DEFINE_enum('backbone', None, list(keras_import.KERAS_BACKBONES), 'Architecture stored in the file.',
                  required=True)
flags.DEFINE_string('out', None, 'Directory of the orbax checkpoint to write (replaced if present).',
                    required=True)


def main(argv):
    del argv
    try:
        variables, meta = keras_import.import_keras_backbone(FLAGS.keras_file, FLAGS.backbone)
    except (OSError, ValueError) as error:  # missing/unreadable file, or a file of another architecture
        usage_error(f'cannot import {FLAGS.keras_file}: {" ".join(str(error).split())}')
    keras_import.save_backbone_checkpoint(FLAGS.out, variables, meta)
    count = sum(x.size for x in jax.tree.leaves(variables))
    print(f'wrote {FLAGS.backbone} (width {meta["width"]}, {count:,} weights) to {FLAGS.out}')


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
