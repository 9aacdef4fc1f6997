"""Test-wide set-up: several host CPU devices, quiet TensorFlow, no GPU for TF."""
import os

# Must happen before JAX initialises its backends, so sharded code runs on 4 CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import adapt  # noqa: E402,F401  (appends the YNNPACK switch to XLA_FLAGS before JAX starts)
