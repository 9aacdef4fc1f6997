"""Test-wide set-up: several host CPU devices, quiet TensorFlow, no GPU for TF."""
import os
import tempfile

# Must happen before JAX initialises its backends, so sharded code runs on 4 CPU devices.
# Tiny test programs run in milliseconds but compile in seconds: skipping LLVM's expensive optimisations
# cuts the compile time by about a third (measured on the tiny detector's train step: 16 s -> 11 s), and
# XLA:CPU's older loop emitters instead of its MLIR fusion emitters by about as much again (the tiny DANN
# step's compile: 9.1 s -> 5.2 s). One LLVM module per program instead of XLA's 32 parts compiled in parallel
# threads: the suite keeps every core busy anyway, and the split costs CPU time (the tiny every-term
# step's code generation: 2.1-2.5 s -> 1.8 s).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0 "
                                   "--xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false "
                                   "--xla_cpu_parallel_codegen_split_count=1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def _session_dir(name):
    """A fresh directory for this test session, one for all its processes: the pytest-xdist workers of one
    run share it (keyed by the run's id), and so do the scripts they start."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        return tempfile.mkdtemp(prefix=f"adapt-{name}-")
    path = os.path.join(tempfile.gettempdir(), f"adapt-{name}-{run}")
    os.makedirs(path, exist_ok=True)
    return path


# One persistent XLA compilation cache for the session (its workers and the scripts they start): tests
# that build the same program again (a fresh step function, a rerun script) load it instead of compiling.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _session_dir("xla-cache"))
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


@pytest.fixture(scope='session')
def source_run(env):
    """(workdir, stdout) of one finished tiny source-only `train_detector` run, shared by the script tests
    (resume, evaluate_detector, adapt_detector's init_run; read-only there) so it is trained once per
    session: the first worker process to need it trains it under a lock, the others wait and read it."""
    import fcntl
    from tests.script_runner import TINY, finish, start
    root = _session_dir('source-run')
    workdir, log = os.path.join(root, 'run'), os.path.join(root, 'stdout.txt')
    with open(os.path.join(root, 'lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(log):
            out = finish(start([f'--workdir={workdir}', f'--data_dir={env[1]}', *TINY], env))[1]
            with open(log + '.tmp', 'w') as f:
                f.write(out)
            os.replace(log + '.tmp', log)
    with open(log) as f:
        return workdir, f.read()


@pytest.fixture(scope='session')
def unit_run(tmp_path_factory):
    """Workdir of a tiny UNIT run (tests/scripts/unit_tiny.py's architecture, n_downsample 2, an untrained
    generator saved at step 0): the frozen translator or shared encoder of the methods that read one.
    Untrained weights still make a fixed, non-trivial function, which is all those tests compare."""
    import sys

    import jax

    from adapt.runs import write_run
    from adapt.trainers.unit import init_state
    from adapt.training import Checkpointer
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'scripts'))
    import unit_tiny

    workdir = str(tmp_path_factory.mktemp('unit_run') / 'run')
    config = unit_tiny.config(image_size=32)
    config.model.n_downsample = 2
    state = jax.device_get(init_state(config))
    write_run(workdir, 'unit', config)
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
    try:
        ckpt.save(0, state)
    finally:
        ckpt.close()
    return workdir


# The test files measured slowest (most first), handed out first: pytest-xdist gives each worker the next
# file in collection order, and longest-first keeps one worker from running a long file alone at the end.
SLOWEST_FILES = ('test_mean_teacher.py', 'test_day2night.py', 'test_detection_aware.py', 'test_unit_training.py',
                 'test_pseudo_label.py', 'test_training_free.py', 'test_train_detector.py', 'test_faster_rcnn.py', 'test_yolo.py',
                 'test_unit_model.py', 'test_methods.py', 'test_detect.py', 'test_training_multiprocess.py',
                 'test_adapt_detector.py', 'test_translate_train.py', 'test_benchmark_frames.py', 'test_bdd100k.py',
                 'test_translate_cli.py', 'test_pipeline.py', 'test_postprocess.py')


def pytest_configure(config):
    """pytest-xdist's --dist loadfile hands the files out by their number of tests, most first (its
    --loadscope-reorder, on by default), which leaves the long files of few tests (the end-to-end runs) for
    last, one worker running them alone at the end: hand them out in SLOWEST_FILES' order instead."""
    if hasattr(config.option, 'loadscopereorder'):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
