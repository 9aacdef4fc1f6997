"""adapt: domain adaptation for object detection in JAX.

Importing adapt turns off XLA:CPU's YNNPACK convolution fusions for this process (appended to
XLA_FLAGS, which must happen before JAX starts its backends; GPU/TPU ignore the flag). Measured here
(jax 0.10.2, 2 cores): through YNNPACK a 5x5 conv on a batch of 8 64x64 images ran at ~26 GFLOP/s against
~135 with XLA's own convolutions, and the UNIT step was ~2.5x faster without it. A process that started
JAX before importing adapt keeps its setting; ADAPT_KEEP_YNNPACK=1 keeps YNNPACK on (for measurements).
"""
import os

YNN_OFF = '--xla_cpu_experimental_ynn_fusion_type='


def use_fast_cpu_convolutions(environ=os.environ) -> None:
    """Append the YNNPACK switch to XLA_FLAGS (never replacing what is there, e.g. a device count)."""
    flags = environ.get('XLA_FLAGS', '')
    if YNN_OFF not in flags:
        environ['XLA_FLAGS'] = f'{flags} {YNN_OFF}'.strip()


if not os.environ.get('ADAPT_KEEP_YNNPACK'):
    use_fast_cpu_convolutions()
