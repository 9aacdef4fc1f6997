"""A run killed with SIGKILL (between steps, or while writing a checkpoint) and restarted with the same
command ends with exactly the parameters of an uninterrupted run."""
import os
import subprocess
import sys

import numpy as np

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "toy_train.py")
STEPS = 10


def _train(workdir, *extra, expect=0):
    cmd = [sys.executable, SCRIPT, "--workdir", str(workdir), "--steps", str(STEPS), "--checkpoint_every", "3",
           "--out", str(workdir / "params.npz"), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def _assert_same_params(a, b):
    a, b = np.load(a), np.load(b)
    assert sorted(a) == sorted(b) and len(a) == 8  # 6 params + 2 BatchNorm statistics
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_sigkill_between_steps_and_during_save_then_resume_equals_uninterrupted(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir(), run.mkdir()
    _train(ref)
    # 1. Killed right after step 7 (checkpoints every 3 steps: 3 and 6 are on disk).
    _train(run, "--kill_at", "7", expect=-9)
    assert not (run / "params.npz").exists()
    assert sorted(os.listdir(run / "checkpoints")) == ["3", "6"]
    # 2. Restarted: resumes at 6, then killed while the step-9 checkpoint is being written.
    out = _train(run, "--kill_in_save_at", "9", expect=-9)
    assert "resumed from" in out and "at step 6" in out
    assert "tmp" in (run / "killed_during_save.txt").read_text()  # it really died mid-save
    # 3. Restarted again: the half-written step 9 is ignored (and cleaned up), step 6 was intact.
    out = _train(run)
    assert "at step 6" in out
    assert not any("tmp" in n for n in os.listdir(run / "checkpoints"))
    _assert_same_params(ref / "params.npz", run / "params.npz")
