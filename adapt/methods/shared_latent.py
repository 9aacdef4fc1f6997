"""shared_latent: a detection head trained on labelled source images in the UNIT shared latent space.

The shared_latent detector (adapt.models.shared_latent) reads a finished UNIT run's encoders; this method
trains its head from scratch on source labels through the day encoder, and evaluation sends night (and,
by default, dusk) images through the night encoder (`shared_latent.target_inputs`). With
`shared_latent.train_encoder` off the detector keeps its encoder frozen (`Detector.frozen_params`: its
parameters stay bit-identical); on, it is fine-tuned with the head.
"""
from __future__ import annotations

from adapt.methods.base import Method, register_method
from adapt.runs import RunError, read_run


def configure(config) -> Method:
    """The method, once the config is checked: ValueError (one line) unless it trains the shared_latent
    detector on a finished UNIT run."""
    if config.detector != 'shared_latent':
        raise ValueError('method shared_latent trains the shared_latent detector: add --config.detector=shared_latent '
                         '(or use experiments/configs/shared_latent_quick.py)')
    if not config.shared_latent.unit_run:
        raise ValueError('shared_latent.unit_run is empty: set it to a finished train_unit workdir')
    try:
        read_run(config.shared_latent.unit_run, 'unit')
    except RunError as error:
        raise ValueError(f'shared_latent.unit_run: {error}') from None
    return SHARED_LATENT


SHARED_LATENT = register_method(Method(
    'shared_latent', 'a detection head on the UNIT shared latent space (shared_latent.unit_run), trained on '
    'source labels through the day encoder; night inputs go through the night encoder',
    supervised=('source',), configure=configure, unit_run_setting='shared_latent.unit_run'))
