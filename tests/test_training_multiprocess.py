"""Two JAX processes on localhost (gloo CPU collectives) run the same step as one process."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))
import multiprocess_step  # noqa: E402
import toy  # noqa: E402

from adapt.training import parallel  # noqa: E402
from adapt.training.optim import param_path  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_reference(num_devices):
    mesh = parallel.make_mesh(num_devices)
    model, state = toy.init_state(optax.sgd(0.1, momentum=0.9))
    state = parallel.replicate(state, mesh)
    step = parallel.data_parallel(toy.make_step(model), mesh)
    losses = []
    for i in range(multiprocess_step.STEPS):
        state, metrics, _ = step(state, parallel.shard_batch(toy.make_batch(0, i, multiprocess_step.GLOBAL_BATCH), mesh))
        losses.append(float(metrics["loss"]))
    flat = jax.tree_util.tree_flatten_with_path(parallel.to_host((state.params, state.batch_stats)))[0]
    return np.array(losses), {param_path(k): v for k, v in flat}


def test_two_processes_equal_single_process(tmp_path):
    port = _free_port()
    # 2 devices per process, and the session's other XLA flags (tests/conftest.py: fast compiles, as the
    # single-process reference below is compiled)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
    env = {**os.environ, "XLA_FLAGS": " ".join(["--xla_force_host_platform_device_count=2", *flags]),
           "JAX_PLATFORMS": "cpu"}
    script = os.path.join(HERE, "scripts", "multiprocess_step.py")
    outs = [str(tmp_path / f"p{i}.npz") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, script, str(i), "2", str(port), outs[i]], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=150)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("multi-process run hung (timeout)")
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    ref_loss, ref_params = _single_process_reference(1)
    for out in outs:
        got = dict(np.load(out))
        assert got.pop("devices").tolist() == [4, 2]  # 4 global devices, 2 local to each process
        np.testing.assert_allclose(got.pop("loss"), ref_loss, rtol=1e-5, atol=1e-6)
        assert set(got) == set(ref_params)
        for name, value in ref_params.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
