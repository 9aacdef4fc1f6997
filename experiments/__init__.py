"""absl-flag experiment scripts (python -m experiments.NAME --help). Importing this package (every entry
point does, before JAX starts) turns off XLA:CPU's slow YNNPACK convolutions: see adapt/__init__.py."""
import adapt  # noqa: F401
