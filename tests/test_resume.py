"""Kill -9 a two-phase run during fine-tuning, rerun it: it resumes where it stopped.

The script runs in subprocesses so that the kill is a real SIGKILL: no Python cleanup,
no `on_train_end`, files possibly half written.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras
    import numpy as np
    import tensorflow as tf
    import keras_transfer as kt
    from keras_transfer.training import extraction
    from keras_transfer.training import two_phase as training

    backup_dir, out, kill_at, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    extract = extraction.extract_features

    def counting_extract(*args, **kwargs):
        # How often this process ran the backbone over a dataset to cache features.
        with open(out + ".extractions", "a") as f:
            f.write("x")
        return extract(*args, **kwargs)

    extraction.extract_features = counting_extract
    keras.utils.set_random_seed(0)
    model = kt.create_classifier(
        "mobilenet", 2, input_shape=(32, 32, 3), weights=None, alpha=0.25, head={"dropout": 0.0}
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    y = (np.arange(32) % 2).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    class Probe(keras.callbacks.Callback):
        # What the model looks like when each epoch starts, in this process.
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_epoch_begin(self, epoch, logs=None):
            opt = self.model.optimizer
            self.seen.append({
                "epoch": epoch,
                "trainable": len(self.model.trainable_weights),
                "iterations": int(opt.iterations),
                "learning_rate": float(opt.learning_rate),
                "optimizer": type(opt).__name__,
            })
            with open(out + ".seen.json", "w") as f:
                json.dump(self.seen, f)
            if epoch == kill_at:
                print("READY", flush=True)
                time.sleep(600)  # the test kills us here

    def fine_tune_optimizer(learning_rate):
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=40)
        return keras.optimizers.Adam(schedule)

    probe = Probe()
    cached = {"head_features": kt.FeatureCache(batch_size=8)} if mode == "cached" else {}
    lora = {"fine_tune": "lora", "lora_rank": 2} if mode == "lora" else {}
    history = training.fit_two_phase(
        model, data, data, **cached, **lora, head_epochs=2, fine_tune_epochs=3, head_lr=1e-2,
        fine_tune_lr=1e-3, fine_tune_optimizer=fine_tune_optimizer, lr_decay=0.8,
        unfreeze=4, callbacks=[probe], backup_dir=backup_dir or None, verbose=0,
    )
    np.savez(out + ".weights.npz", *model.get_weights())
    with open(out + ".history.json", "w") as f:
        json.dump({"epoch": history.epoch, "phases": history.phases,
                   "history": history.history, "unfrozen": history.unfrozen_blocks}, f)
    print("DONE", flush=True)
    """
)


def _start(script, backup_dir, out, kill_at, mode):
    return subprocess.Popen(
        [sys.executable, str(script), str(backup_dir), str(out), str(kill_at), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process, timeout=150):
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    assert "DONE" in stdout
    return stdout


def _load(out):
    weights = np.load(f"{out}.weights.npz")
    with open(f"{out}.history.json") as f:
        history = json.load(f)
    with open(f"{out}.seen.json") as f:
        seen = json.load(f)
    return [weights[f"arr_{i}"] for i in range(len(weights.files))], history, seen


def _extractions(out):
    path = f"{out}.extractions"
    return len(open(path).read()) if os.path.exists(path) else 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["images", "cached", "lora"])
def test_sigkill_during_fine_tuning_resumes_without_lost_or_repeated_epochs(tmp_path, mode):
    """Both phase-1 paths: through the frozen backbone, and on cached features (a finished
    cached phase 1 is not repeated, extraction included); and LoRA fine-tuning, whose
    matrices Keras' weights files do not keep (merged into the kernels, reloaded as zeros)."""
    script = tmp_path / "two_phase.py"
    script.write_text(SCRIPT)
    backup = tmp_path / "backup"
    # The uninterrupted reference runs alongside the run that gets killed.
    reference = _start(script, "", tmp_path / "reference", -1, mode)
    killed = _start(script, backup, tmp_path / "killed", 3, mode)  # epoch 3: phase 2's second
    deadline = time.time() + 150
    line = ""
    while "READY" not in line and time.time() < deadline and killed.poll() is None:
        line = killed.stdout.readline()
    assert "READY" in line, killed.stderr.read()[-3000:]
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert (backup / "two_phase_state.json").exists()

    resumed = _start(script, backup, tmp_path / "resumed", -1, mode)
    _finish(resumed)
    _finish(reference)

    ref_weights, ref_history, ref_seen = _load(tmp_path / "reference")
    weights, history, seen = _load(tmp_path / "resumed")
    # The rerun skipped phase 1 and the finished phase-2 epoch, and ran only epochs 3, 4 ...
    assert [s["epoch"] for s in seen] == [3, 4]
    # ... without caching features again (the cached runs extract train and validation once).
    assert _extractions(tmp_path / "resumed") == 0
    assert _extractions(tmp_path / "reference") == (2 if mode == "cached" else 0)
    # ... starting with the same trainable set, optimizer, step count and learning rate as
    # the uninterrupted run had at epoch 3.
    assert seen == ref_seen[3:]
    assert seen[0]["iterations"] == 4 and seen[0]["optimizer"].startswith("Layerwise")
    # The returned history covers every epoch exactly once, in the right phase.
    assert history["epoch"] == ref_history["epoch"] == [0, 1, 2, 3, 4]
    assert history["phases"] == ["feature_extraction"] * 2 + ["fine_tune"] * 3
    assert history["unfrozen"] == ref_history["unfrozen"]
    for key, values in ref_history["history"].items():
        np.testing.assert_allclose(history["history"][key], values, rtol=1e-5, atol=1e-6)
    # Same final model as the run that was never interrupted (LoRA: W, A and B each).
    assert len(weights) == len(ref_weights)
    for got, want in zip(weights, ref_weights):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # A completed run cleans up its backup.
    assert not backup.exists()
