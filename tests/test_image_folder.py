"""adapt.datasets.image_folder: which files of a folder count, their pixels, and one-line reasons for the
files that cannot be read."""
import io

import numpy as np
import pytest
from PIL import Image

from adapt.datasets import image_folder


def _pixels(seed, h=6, w=5):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_lossless_files_of_every_extension_give_their_pixels_in_name_order(tmp_path):
    saved = {'b.png': ('PNG', _pixels(0)), 'a.BMP': ('BMP', _pixels(1)), 'c.webp': ('WEBP', _pixels(2)),
             'd.gif': ('GIF', np.full((4, 3, 3), 200, np.uint8))}  # one colour: exact in GIF's palette
    for name, (kind, pixels) in saved.items():
        Image.fromarray(pixels).save(tmp_path / name, kind, **({'lossless': True} if kind == 'WEBP' else {}))
    (tmp_path / 'notes.txt').write_text('ignored')
    (tmp_path / 'sub.png').mkdir()
    names = image_folder.list_images(str(tmp_path))
    assert names == ['a.BMP', 'b.png', 'c.webp', 'd.gif']
    read = dict(image_folder.read_images(str(tmp_path), names, workers=2, depth=1))
    assert list(read) == names
    for name, (_, pixels) in saved.items():
        np.testing.assert_array_equal(read[name], pixels, err_msg=name)


def test_unreadable_files_are_one_line_reasons_and_the_others_still_read(tmp_path):
    Image.fromarray(_pixels(3)).save(tmp_path / 'good.png')
    jpeg = io.BytesIO()
    Image.fromarray(_pixels(4, 64, 64)).save(jpeg, format='JPEG')
    (tmp_path / 'cut.jpg').write_bytes(jpeg.getvalue()[:len(jpeg.getvalue()) // 2])
    (tmp_path / 'empty.jpg').write_bytes(b'')
    (tmp_path / 'text.png').write_text('not an image')
    read = dict(image_folder.read_images(str(tmp_path), image_folder.list_images(str(tmp_path))))
    reasons = {n: str(v) for n, v in read.items() if isinstance(v, image_folder.UnreadableImage)}
    assert sorted(reasons) == ['cut.jpg', 'empty.jpg', 'text.png']
    assert reasons['empty.jpg'] == 'empty file'
    assert reasons['text.png'].startswith('not a JPEG, PNG, BMP, GIF or WebP image')
    assert all('\n' not in r for r in reasons.values())
    np.testing.assert_array_equal(read['good.png'], _pixels(3))


@pytest.mark.parametrize('make, message', [
    (lambda p: p / 'missing', 'no such folder'),
    (lambda p: (p / 'file.png').write_text('x') and p / 'file.png', 'not a folder'),
    (lambda p: (p / 'notes.txt').write_text('x') and p, 'no image files (.jpg, .jpeg, .png, .bmp, .gif, .webp)'),
])
def test_an_unusable_folder_is_one_error(tmp_path, make, message):
    with pytest.raises(image_folder.FolderError, match=message.replace('(', r'\(').replace(')', r'\)')):
        image_folder.list_images(str(make(tmp_path)))
