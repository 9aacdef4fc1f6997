"""The default alignment levels of a dense family: the fewest head levels holding most of the source's positives.

Image-level alignment (dann_image, mmd, coral) on one deep map misses where a detector of small objects
detects them: the quick SSD finds the synthetic objects (about 8 % of the image side) on its shallow levels.
So the default is where the source's objects are learnt: match every source training box to the anchors with
the family's own matcher (`DenseDetector.positives`; each box alone, as the only object of an image), count
the positive anchors of each head level, and take the fewest levels that hold at least `POSITIVE_SHARE` of
them. adapt.models.families registers `derive_alignment_levels` as a data-derived setting of the dense
families, so the choice is made once before a run starts and run.json stores it (`model.alignment_levels`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adapt.models.data_settings import settings_family
from adapt.models.detector import DETECTORS

POSITIVE_SHARE = 0.8
CHUNK = 512  # boxes matched per call (one compiled program; the IoUs of a chunk stay small)


def fewest_levels(counts, names, share: float = POSITIVE_SHARE) -> tuple:
    """The fewest of `names` whose `counts` sum to at least `share` of the total (the largest counts first; on
    a tie the earlier level), in the order of `names`. ValueError (one line) when every count is 0."""
    counts = np.asarray(counts, np.int64)
    if counts.sum() == 0:
        raise ValueError(f'no positive anchor on any level of {", ".join(names)}: set model.alignment_levels')
    order = np.argsort(-counts, kind='stable')
    reached = np.cumsum(counts[order]) >= share * counts.sum() - 1e-9  # 1e-9: the round-off of share x total
    chosen = set(order[:int(np.argmax(reached)) + 1].tolist())
    return tuple(name for i, name in enumerate(names) if i in chosen)


def positives_per_level(detector, boxes) -> np.ndarray:
    """Positive anchors [levels] of each head level of a DenseDetector when every box of `boxes` [N, 4]
    (normalised yxyx) is matched alone, as the one object of an image."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)

    @jax.jit
    def per_anchor(chunk, mask):
        batch = {'boxes': chunk[:, None], 'labels': jnp.zeros((len(chunk), 1), jnp.int32), 'mask': mask[:, None]}
        return jnp.sum(detector.positives(batch), axis=0, dtype=jnp.int32)

    sizes = [h * w * per_location for _, (h, w), per_location in detector.head_levels]
    total = np.zeros(sum(sizes), np.int64)
    for start in range(0, len(boxes), CHUNK):
        chunk = boxes[start:start + CHUNK]
        padded = np.zeros((CHUNK, 4), np.float32)
        padded[:len(chunk)] = chunk
        total += np.asarray(per_anchor(padded, np.arange(CHUNK) < len(chunk)))
    return np.add.reduceat(total, np.cumsum([0] + sizes[:-1]))


def derive_alignment_levels(config, boxes, image_size) -> dict:
    """{'alignment_levels': [names]}: `fewest_levels` of the config's dense family (built with the settings
    derived before this one, e.g. YOLO's priors) on the positives of `boxes`."""
    detector = DETECTORS.get(settings_family(config))(config, 1, tuple(image_size))
    counts = positives_per_level(detector, boxes)
    return {'alignment_levels': list(fewest_levels(counts, [name for name, _, _ in detector.head_levels]))}
