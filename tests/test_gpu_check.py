"""benchmarks/gpu_check.py cannot rot: its --smoke run (CPU, tiny sizes) must produce every
field, with positive numbers, from arms that ran as described."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


def _run(*args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="this machine has a GPU")
def test_without_a_gpu_it_exits_with_a_clear_message():
    completed = _run()
    assert completed.returncode != 0
    assert "needs a GPU" in completed.stderr and "--smoke" in completed.stderr


def _positive(arms):
    for name, arm in arms.items():
        assert arm["images_per_second"] > 0, name
        assert arm["loss_finite"], name
        assert all(t > 0 for t in arm["step_ms"]), name


@pytest.mark.slow
def test_smoke_run_reports_every_check():
    completed = _run("--smoke")
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    for key in ("mixed_vs_fp32", "jit_vs_nojit", "optimizers", "hub", "example", "seconds"):
        assert key in result, key
    assert result["mixed_vs_fp32"] > 0 and result["jit_vs_nojit"] > 0

    arms = result["precision_and_jit"]["arms"]
    _positive(arms)
    # The mixed arm computed in float16 with float32 variables; the others in float32.
    assert arms["mixed_float16_jit"]["compute_dtypes"] == ["float16"]
    assert arms["mixed_float16_jit"]["variable_dtypes"] == ["float32"]
    assert arms["float32_jit"]["compute_dtypes"] == ["float32"]
    assert arms["float32_jit"]["jit_compile"] is True
    assert arms["float32_nojit"]["jit_compile"] is False

    optimizers = result["optimizers"]
    assert optimizers["keras_has_multioptimizer"] is True  # Keras 3.15 ships one
    for groups in (20, 100):
        entry = optimizers[f"groups_{groups}"]
        assert entry["groups"] == groups
        assert entry["wrapper_vs_plain"] > 0 and entry["wrapper_vs_multioptimizer"] > 0
        _positive(entry["arms"])
        assert entry["arms"]["multioptimizer"]["optimizer"] == "MultiOptimizer"
        assert entry["arms"]["wrapper"]["optimizer"] != entry["arms"]["plain"]["optimizer"]

    hub = result["hub"]["arms"]
    _positive(hub)
    assert hub["mixed_float16_jit"]["jit_compile"] is True
    assert hub["mixed_float16_jit"]["compute_dtypes"] == ["float16"]
    assert result["hub"]["mixed_jit_vs_fp32_nojit"] > 0

    example = result["example"]
    assert example["seconds"] > 0 and 0 <= example["val_accuracy"] <= 1
    assert example["num_train"] > 0 and example["num_validation"] > 0
    # On a CPU, --mixed_precision keeps float32 (measured faster there).
    assert example["dtype_policy"] == "float32"
    assert all(seconds > 0 for seconds in example["phase_seconds"].values())
