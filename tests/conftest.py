"""Test-wide set-up: several host CPU devices, quiet TensorFlow, no GPU for TF."""
import os
import tempfile

# Must happen before JAX initialises its backends, so sharded code runs on 4 CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One persistent XLA compilation cache for the session (this process and the scripts it starts): tests
# that build the same program again (a fresh step function, a rerun script) load it instead of compiling.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="adapt-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
import adapt  # noqa: E402,F401  (appends the YNNPACK switch to XLA_FLAGS before JAX starts)

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def env(tmp_path_factory):
    """(environment, TFDS data dir) for experiment-script subprocesses: daynight_synth/tiny prepared once,
    one XLA compilation cache shared by every script run of the session."""
    from tests.script_runner import script_env
    return script_env(tmp_path_factory.mktemp('scripts'))
