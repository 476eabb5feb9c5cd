"""Strategies and mixed precision. What runs here: the default strategy, MirroredStrategy over
two logical CPU devices and MultiWorkerMirroredStrategy with two worker processes on
127.0.0.1, each training the image classifier example end to end (in subprocesses, since
logical devices must be configured before TensorFlow initialises). There is no TPU here: the
TPU path is exercised up to what needs one (the error without a TPU, the policy, the hub load
options and the static batch shapes)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_run_settings
from helpers import train_plain_model

from keras_transfer import heads
from keras_transfer.apps import image_classifier as image_classifier_lib
from keras_transfer.training import two_phase as training
from keras_transfer.utils import distribute

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN = textwrap.dedent(
    """
    import json, os, sys
    import tensorflow as tf
    devices = int(os.environ.get("LOGICAL_CPUS", "1"))
    if devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices
        )
    sys.path.insert(0, sys.argv[1])
    from keras_transfer.apps import image_classifier as image_classifier_lib
    config = image_classifier_lib.Config(**json.loads(sys.argv[2]))
    results = image_classifier_lib.run(config)
    print("RESULTS " + json.dumps({"replicas": results["replicas"],
                                   "val_accuracy": results["fine_tune"]["val_accuracy"]}))
    """
)


def _settings(data_dir, model_dir, strategy):
    # The tiny run (fixed plan: the advisor's early stopping and best-weights restore are
    # tested in test_image_classifier.py) with the command's validation split, as a dict
    # the worker processes receive as JSON.
    return tiny_run_settings(data_dir, model_dir, validation_split=0.2, strategy=strategy)


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _results(stdout):
    line = [line for line in stdout.splitlines() if line.startswith("RESULTS ")][-1]
    return json.loads(line[len("RESULTS ") :])


def test_create_strategy_names_and_errors():
    assert distribute.create_strategy("default") is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="Unknown strategy 'horovod'"):
        distribute.create_strategy("horovod")
    with pytest.raises(ValueError, match="pass strategy='tpu'"):
        distribute.create_strategy("mirrored", tpu="local")
    assert distribute.is_chief(tf.distribute.get_strategy())


def test_multi_worker_fit_fix_is_a_no_op_elsewhere():
    assert not distribute.is_multi_worker(tf.distribute.get_strategy())
    assert not distribute.is_multi_worker(None)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert distribute.enable_multi_worker_fit(model) is model
    assert "train_step" not in vars(model)  # nothing patched outside a multi-worker cluster
    assert issubclass(heads.TransferClassifier, distribute.MultiWorkerFitMixin)


def test_tpu_strategy_without_a_tpu_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="No TPU found"):
        distribute.create_strategy("tpu")


def _pretend_gpu(monkeypatch):
    monkeypatch.setattr(
        tf.config, "list_logical_devices", lambda kind=None: ["gpu:0"] if kind == "GPU" else []
    )


def test_mixed_precision_policy_per_hardware(monkeypatch, caplog):
    assert distribute.mixed_precision_policy(False) == "float32"
    assert distribute.mixed_precision_policy("mixed_float16") == "mixed_float16"
    with pytest.raises(ValueError, match="mixed_precision must be"):
        distribute.mixed_precision_policy("half")
    # This machine has no GPU: "auto" keeps float32 and says why; an explicit policy is kept.
    assert distribute.accelerator() == "CPU"
    with caplog.at_level("INFO", logger="keras_transfer"):
        assert distribute.mixed_precision_policy(True) == "float32"
    assert "keeping float32" in caplog.text and "bf16_vs_fp32_cpu" in caplog.text
    assert distribute.mixed_precision_policy("mixed_bfloat16") == "mixed_bfloat16"
    _pretend_gpu(monkeypatch)
    assert distribute.accelerator() == "GPU"
    assert distribute.mixed_precision_policy(True) == "mixed_float16"
    monkeypatch.setattr(distribute, "is_tpu", lambda strategy: True)
    assert distribute.accelerator(object()) == "TPU"
    assert distribute.mixed_precision_policy(True, object()) == "mixed_bfloat16"
    assert distribute.hub_load_options(object()) == {"experimental_io_device": "/job:localhost"}
    assert distribute.static_batches(object())


def test_set_mixed_precision_on_cpu_keeps_float32_unless_forced():
    try:
        assert distribute.set_mixed_precision(True) == "float32"
        assert keras.config.dtype_policy().name == "float32"
        assert distribute.set_mixed_precision("mixed_bfloat16") == "mixed_bfloat16"
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    finally:
        keras.config.set_dtype_policy("float32")


def _tiny_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def test_default_jit_compile_per_hardware(monkeypatch, caplog):
    model = _tiny_model()
    with caplog.at_level("INFO", logger="keras_transfer"):
        assert distribute.default_jit_compile(model=model) is False
    assert "jit_compile=False: on CPU" in caplog.text
    _pretend_gpu(monkeypatch)
    assert distribute.default_jit_compile(model=model) is True
    # A layer without XLA support turns it off.
    model.layers[-1].supports_jit = False
    assert distribute.default_jit_compile(model=model) is False

    class TwoReplicas:
        num_replicas_in_sync = 2

    assert distribute.default_jit_compile(TwoReplicas()) is False
    monkeypatch.setattr(distribute, "is_tpu", lambda strategy: True)
    assert distribute.default_jit_compile(object()) is False


def test_fit_two_phase_compiles_with_the_default_jit_choice(
    monkeypatch, tiny_classifier, tiny_dataset
):
    choices = []

    def choose(strategy=None, model=None):
        choices.append(model)
        return True

    monkeypatch.setattr(distribute, "default_jit_compile", choose)
    compiled = []
    compile_ = tiny_classifier.compile
    monkeypatch.setattr(
        tiny_classifier,
        "compile",
        lambda **kwargs: (compiled.append(kwargs.get("jit_compile")), compile_(**kwargs))[1],
    )
    training.fit_two_phase(
        tiny_classifier, tiny_dataset, head_epochs=1, fine_tune_epochs=1, unfreeze=1, verbose=0
    )
    assert choices == [tiny_classifier]
    assert compiled == [True, True]  # both phases' compile
    assert tiny_classifier.jit_compile is True
    # An explicit value wins and the default is not consulted.
    training.fit_two_phase(
        tiny_classifier,
        tiny_dataset,
        head_epochs=0,
        fine_tune_epochs=1,
        verbose=0,
        compile_kwargs={"jit_compile": False},
    )
    assert len(choices) == 1 and compiled[-1] is False


def test_tpu_settings_give_static_batch_shapes(image_folder):
    root = image_folder({"a": 10, "b": 9})
    config = image_classifier_lib.Config(data_dir=str(root), model_dir="unused", batch_size=4)
    assert distribute.hub_load_options(tf.distribute.get_strategy()) is None
    data = image_classifier_lib.load_data(config, 32, drop_remainder=True)
    for dataset in (data.train, data.validation):
        assert dataset.element_spec[0].shape.as_list() == [4, 32, 32, 3]
        assert dataset.element_spec[1].shape.as_list() == [4]
    # The partial last batch is dropped.
    assert data.num_train % 4
    assert sum(1 for _ in data.train) == data.num_train // 4
    dynamic = image_classifier_lib.load_data(config, 32, drop_remainder=False)
    assert dynamic.train.element_spec[0].shape.as_list() == [None, 32, 32, 3]


def test_mixed_precision_run_keeps_float32_on_cpu_and_trains_in_bfloat16_when_chosen(
    image_folder, tmp_path, monkeypatch
):
    root = image_folder({"a": 6, "b": 6})
    settings = _settings(root, tmp_path / "out", "default")
    settings.update(mixed_precision=True, fine_tune_epochs=0, validation_split=0.25)
    # On this CPU --mixed_precision keeps float32 (measured faster).
    results = image_classifier_lib.run(image_classifier_lib.Config(**settings))
    assert results["dtype_policy"] == "float32"
    # Where bfloat16 is the hardware's choice (a TPU), the run trains in it.
    monkeypatch.setattr(distribute, "accelerator", lambda strategy=None: "TPU")
    settings["model_dir"] = str(tmp_path / "bf16")
    results = image_classifier_lib.run(image_classifier_lib.Config(**settings))
    assert results["dtype_policy"] == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # restored after the run
    model = keras.saving.load_model(tmp_path / "bf16" / "model.keras")
    assert model.backbone.layers[2].dtype_policy.name == "mixed_bfloat16"
    assert model.output.dtype == "float32"


_MIRRORED = textwrap.dedent(
    """
    import json, os, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    from keras_transfer.apps import image_classifier as image_classifier_lib
    from helpers import train_two_phase_cached

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    images = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")

    class FinalPredictions(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            # The last image model's call is the fine-tuning phase's (phase 1 trains a
            # model over cached feature vectors).
            if len(self.model.input_shape) == 4:
                self.predictions = self.model.predict(images, verbose=0).tolist()

    final = FinalPredictions()
    settings = image_classifier_lib.Config(**json.loads(sys.argv[2]))
    results = image_classifier_lib.run(settings, mirrored, [final])
    for name, strategy in (("single", tf.distribute.get_strategy()), ("mirrored", mirrored)):
        weights, history = train_two_phase_cached(strategy)
        np.savez(os.path.join(sys.argv[3], name + ".npz"), *weights)
        results[name + "_history"] = history
    print("RESULTS " + json.dumps({"replicas": results["replicas"],
                                   "phases": results["history"]["phase"],
                                   "predictions": final.predictions,
                                   "single_history": results["single_history"],
                                   "mirrored_history": results["mirrored_history"]}))
    """
)


# About 40 s on two cores (the marker's 30 s): MirroredStrategy's equality with one device
# stays in the fast suite through the optimizers', LoRA's, TF Hub's and DANN's tests.
@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_one_device(image_folder, tmp_path):
    """Under MirroredStrategy over two logical CPUs: the image classifier example runs end to
    end and saves the model it trained; and two-phase training with a cached phase 1 ends
    with the weights and per-epoch metrics of the same training on one device."""
    root = image_folder({"a": 10, "b": 10})  # 16 train, 4 validation: even splits
    settings = _settings(root, tmp_path / "out", "mirrored")
    settings["ema_momentum"] = 0.0  # the saved weights are then the last step's
    completed = subprocess.run(
        [sys.executable, "-c", _MIRRORED, REPO_ROOT, json.dumps(settings), str(tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = _results(completed.stdout)
    assert results["replicas"] == 2
    assert results["phases"] == [training.PHASE_HEAD, training.PHASE_FINE_TUNE]
    saved = keras.saving.load_model(tmp_path / "out" / "model.keras")
    images = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        saved.predict(images, verbose=0), results["predictions"], rtol=1e-5, atol=1e-6
    )

    single, mirrored = _load(tmp_path / "single.npz"), _load(tmp_path / "mirrored.npz")
    assert len(single) == len(mirrored)
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert results["mirrored_history"]["phase"] == results["single_history"]["phase"]
    for name, values in results["single_history"].items():
        if name != "phase":
            np.testing.assert_allclose(
                results["mirrored_history"][name], values, rtol=1e-4, err_msg=name
            )
    # Not vacuous: fine-tuning moved the backbone far beyond the tolerance.
    assert results["single_history"]["backbone_change"] > 1e-3


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import keras
    import numpy as np
    import tensorflow as tf
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    from keras_transfer.utils import distribute
    from keras_transfer.apps import image_classifier as image_classifier_lib
    from helpers import train_plain_model

    class FinalWeights(keras.callbacks.Callback):
        def on_train_end(self, logs=None):  # the last call is the fine-tuning phase's
            self.weights = self.model.get_weights()

    strategy = distribute.create_strategy("multi_worker")
    total = strategy.reduce(
        "SUM", strategy.run(lambda: tf.constant(1.0 + strategy.cluster_resolver.task_id)), axis=None
    )
    plain_weights, plain_history = train_plain_model(strategy)
    settings = json.loads(sys.argv[2])
    if not distribute.is_chief(strategy):
        settings["model_dir"] += "_worker"  # must stay untouched: only the chief writes
    final = FinalWeights()
    results = image_classifier_lib.run(image_classifier_lib.Config(**settings), strategy, [final])
    np.savez(sys.argv[3], *final.weights)
    np.savez(sys.argv[4], *plain_weights)
    print("RESULTS " + json.dumps({"replicas": strategy.num_replicas_in_sync,
                                   "sum": float(total), "chief": distribute.is_chief(strategy),
                                   "history": results["history"],
                                   "plain_history": plain_history}))
    """
)


def _load(path):
    arrays = np.load(path)
    return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


@pytest.mark.slow
def test_multi_worker_on_loopback(image_folder, tmp_path):
    """Two worker processes form a cluster on 127.0.0.1 and train with `model.fit`: a plain
    Sequential model (via `enable_multi_worker_fit`) and the image classifier example (a
    `TransferClassifier`, both phases). The workers end with the same weights, the plain
    model with the weights of the same training on one device, and only the chief writes."""
    root = image_folder({"a": 10, "b": 10})  # 16 train, 4 validation: even splits
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    settings = _settings(root, tmp_path / "out", "multi_worker")
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, REPO_ROOT, json.dumps(settings)]
                + [str(tmp_path / f"{name}{index}.npz") for name in ("example", "plain")],
                env=_env(TF_CONFIG=json.dumps(tf_config)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    results = []
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
        results.append(_results(stdout))
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["sum"] for r in results] == [3.0, 3.0]  # 1 + 2 across both workers
    assert [r["chief"] for r in results] == [True, False]

    # The example: both phases ran on both workers, in lockstep, to the same weights.
    chief, other = results
    assert chief["history"]["phase"] == [training.PHASE_HEAD, training.PHASE_FINE_TUNE]
    assert chief["history"] == other["history"]
    example = [_load(tmp_path / f"example{index}.npz") for index in range(2)]
    for a, b in zip(*example):
        np.testing.assert_array_equal(a, b)
    out = tmp_path / "out"
    assert {"model.keras", "results.json", "labels.txt"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "results.json").read_text())["replicas"] == 2
    saved = keras.saving.load_model(out / "model.keras").get_weights()
    for a, b in zip(saved, example[0]):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "out_worker").exists()

    # The plain model: the same training on one device gives the same weights and logs.
    weights, history = train_plain_model()
    for index in range(2):
        for a, b in zip(_load(tmp_path / f"plain{index}.npz"), weights):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for name, values in history.items():
            np.testing.assert_allclose(results[index]["plain_history"][name], values, rtol=1e-5)


class _NoChipsResolver:
    """A `TPUClusterResolver` stand-in: from the environment it finds nothing (ValueError,
    as on a TPU VM without TPU_NAME); "local" is built but reports no TPU chips."""

    attempts: list = []

    def __init__(self, tpu=None):
        _NoChipsResolver.attempts.append(tpu)
        if tpu is None:
            raise ValueError("Please provide a TPU Name to connect to.")

    def num_accelerators(self):
        return {}


def test_tpu_strategy_tries_the_local_tpu_before_giving_up(monkeypatch):
    _NoChipsResolver.attempts = []
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", _NoChipsResolver)

    with pytest.raises(RuntimeError, match=r"No TPU found \(from the environment: .*; local: "):
        distribute.create_strategy("tpu")

    assert _NoChipsResolver.attempts == [None, "local"]


def test_tpu_expected_reads_the_environment(monkeypatch):
    for name in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distribute.glob, "glob", lambda pattern: [])
    assert not distribute.tpu_expected()
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    assert distribute.tpu_expected()
