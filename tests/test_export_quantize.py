"""Quantized exports and their checks (`kt.export`, `keras-transfer export --quantize`): the
TFLite modes run in TensorFlow Lite's interpreter, int8 is smaller than float32, export.json
holds agreement, accuracy and probability differences against the Keras model on the
run's validation images, an impossible `--min_agreement` exits 1 leaving no file, Keras'
own int8 names the layers it left in float, and LoRA is merged before quantizing.

One tiny trained run folder (MobileNet alpha 0.25 at 32 px, head trained on colour-coded
images) serves every test; the TFLite modes are exported once, from one SavedModel."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT
from conftest import make_tiny_classifier
from conftest import tiny_run_settings
from conftest import write_image_folder

import keras_transfer as kt
from keras_transfer.apps import export_folder
from keras_transfer.apps import image_config
from keras_transfer.apps import image_reports

# The tests run TensorFlow's own interpreter, which points to LiteRT's.
pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")

CLASSES = ["ants", "bees"]
TFLITE_MODES = [None, "dynamic", "float16", "int8"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """(model folder, data folder, model): what `keras-transfer train` leaves, made
    directly: model.keras (backbone frozen, head fitted), labels.txt and config.json."""
    root = tmp_path_factory.mktemp("export_quantize")
    data_dir, model_dir = root / "images", root / "run"
    write_image_folder(data_dir, {name: 12 for name in CLASSES}, size=(40, 48))
    keras.utils.set_random_seed(0)
    model = make_tiny_classifier(fitted_norms=True)
    kt.freeze(model)
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    data = kt.image_folder_dataset(data_dir, image_size=32, validation_split=0.25, seed=42)
    model.fit(data.train, epochs=8, verbose=0)
    settings = tiny_run_settings(data_dir, model_dir, validation_split=0.25, head_lr=0.05)
    config = image_config.Config(**settings).resolved(32)
    image_reports.write_model_folder(model, CLASSES, str(model_dir), {"config.json": config})
    return model_dir, data_dir, kt.load_model(model_dir / "model.keras")


def validation_images(data_dir):
    """The run's validation images and labels as its own loader batches them."""
    data = kt.image_folder_dataset(data_dir, image_size=32, validation_split=0.25, seed=42)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in data.validation])
    return np.concatenate(images), np.concatenate(labels)


def run_tflite(path, images):
    """The interpreter on `images`, quantizing the input and dequantizing the output of a
    full-integer model by their stored scale and zero point."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, images.shape)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if source["dtype"] != np.float32:
        scale, zero = source["quantization"]
        images = np.clip(np.round(images / scale + zero), 0, 255).astype(source["dtype"])
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    output = interpreter.get_tensor(target["index"])
    if target["dtype"] != np.float32:
        scale, zero = target["quantization"]
        output = (output.astype("float32") - zero) * scale
    return output


@pytest.fixture(scope="module")
def tflite_reports(run_folder):
    model_dir, _, _ = run_folder
    return export_folder.export_model_dir(str(model_dir), "tflite", TFLITE_MODES, io_dtype="uint8")


@pytest.mark.tensorflow_only
def test_each_tflite_mode_runs_and_int8_is_the_smallest(run_folder, tflite_reports):
    model_dir, data_dir, model = run_folder
    images, _ = validation_images(data_dir)
    names = ["model.tflite", "model_dynamic.tflite", "model_float16.tflite", "model_int8.tflite"]
    assert [report["file"] for report in tflite_reports] == names
    sizes = {name: os.path.getsize(model_dir / name) for name in names}
    assert sizes["model_int8.tflite"] < sizes["model_float16.tflite"] < sizes["model.tflite"]
    assert sizes["model_int8.tflite"] < 0.5 * sizes["model.tflite"]
    expected = model.predict(images, verbose=0)
    for name in names:
        output = run_tflite(model_dir / name, images)
        assert output.shape == expected.shape
        np.testing.assert_allclose(output.sum(axis=1), 1.0, atol=0.02)
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(model_dir / "model_int8.tflite"))
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8  # io_dtype="uint8"
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    # The float32 file is the model itself.
    np.testing.assert_allclose(run_tflite(model_dir / "model.tflite", images), expected, atol=1e-4)
    assert not [p for p in os.listdir(model_dir) if p.startswith(".partial-")]
    assert not (model_dir / "saved_model").exists()


@pytest.mark.tensorflow_only
def test_export_json_holds_the_check_against_the_keras_model(run_folder, tflite_reports):
    model_dir, data_dir, model = run_folder
    images, labels = validation_images(data_dir)
    assert len(images) == 5  # about a quarter of each class (`data.splits`)
    expected = model.predict(images, verbose=0)
    record = json.loads((model_dir / "export.json").read_text())["exports"]
    assert set(record) == {report["file"] for report in tflite_reports}
    for name, entry in record.items():
        output = run_tflite(model_dir / name, images)
        check = entry["check"]
        assert check["images"] == 5 and check["on"].startswith("5 validation images")
        agreement = np.mean(output.argmax(1) == expected.argmax(1))
        assert check["top1_agreement"] == pytest.approx(agreement)
        assert check["keras_accuracy"] == pytest.approx(np.mean(expected.argmax(1) == labels))
        assert check["export_accuracy"] == pytest.approx(np.mean(output.argmax(1) == labels))
        difference = np.abs(output - expected).max()
        assert check["max_probability_difference"] == pytest.approx(difference, abs=1e-6)
        assert entry["written"] and entry["bytes"] == os.path.getsize(model_dir / name)
    assert record["model.tflite"]["check"]["max_probability_difference"] < 1e-4
    assert record["model.tflite"]["check"]["keras_accuracy"] > 0.5  # a learnt task
    assert record["model_int8.tflite"]["representative_images"] == 19  # every training image
    assert record["model_int8.tflite"]["io_dtype"] == "uint8"


@pytest.mark.tensorflow_only
def test_the_converter_folds_batch_normalization(run_folder):
    import tensorflow as tf

    model_dir, _, model = run_folder
    norms = [
        layer
        for layer in model.backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        tf.lite.experimental.Analyzer.analyze(model_path=str(model_dir / "model.tflite"))
    operators = [
        line.split()[1].split("(")[0]
        for line in printed.getvalue().splitlines()
        if line.strip().startswith("Op#")
    ]
    assert len(norms) > 20 and "CONV_2D" in operators
    # A BatchNormalization left unfolded would be a MUL and an ADD of its own.
    assert operators.count("MUL") + operators.count("ADD") < len(norms) / 4


def test_keras_int8_names_the_layers_it_leaves_in_float(run_folder, tmp_path):
    model_dir, _, model = run_folder
    (report,) = export_folder.export_model_dir(
        str(model_dir), "keras", ["int8"], output_dir=str(tmp_path)
    )
    assert report["file"] == "model_int8.keras" and report["written"]
    assert report["quantized_layers"] == ["head/predictions"]
    assert report["float_layer_types"]["Conv2D"] > 5
    assert report["float_layer_types"]["BatchNormalization"] > 5
    assert len(report["float_layers"]) == sum(report["float_layer_types"].values())
    loaded = kt.load_model(tmp_path / "model_int8.keras")
    assert loaded.head.output_dense.dtype_policy.quantization_mode == "int8"
    assert loaded.head.output_dense.kernel.dtype == "int8"
    record = json.loads((tmp_path / "export.json").read_text())["exports"]["model_int8.keras"]
    assert record["float_layers"] == report["float_layers"]
    assert record["check"]["top1_agreement"] >= 0.8  # only the head's weights are rounded


def test_an_impossible_min_agreement_exits_1_and_leaves_no_file(run_folder, tmp_path):
    model_dir, _, _ = run_folder
    (tmp_path / "model_int8.keras").write_bytes(b"an earlier export")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_transfer",
            "export",
            f"--model_dir={model_dir}",
            "--format=keras",
            "--quantize=int8",
            "--min_agreement=1.01",
            f"--output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert process.returncode == 1, process.stderr[-3000:]
    assert re.search(
        r"^keras-transfer export: error: model_int8\.keras agrees with the Keras model on "
        r"[01]\.\d{4} of 5 images' top-1 labels, below min_agreement=1\.01: not written\.$",
        process.stderr,
        re.MULTILINE,
    ), process.stderr[-2000:]
    assert "FAILED" in process.stdout and "NOT WRITTEN" in process.stdout
    assert sorted(os.listdir(tmp_path)) == ["export.json"]
    entry = json.loads((tmp_path / "export.json").read_text())["exports"]["model_int8.keras"]
    assert entry["written"] is False and entry["check"]["passed"] is False


@pytest.mark.tensorflow_only
def test_onnx_is_checked_in_onnx_runtime(run_folder, tmp_path):
    for package in ("tf2onnx", "onnxruntime"):
        pytest.importorskip(package, reason="the onnx extra is not installed")
    import onnxruntime

    _, data_dir, model = run_folder
    images, labels = validation_images(data_dir)
    report = kt.export(model, tmp_path / "model.onnx", check_data=(images, labels))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    output = session.run(None, {session.get_inputs()[0].name: images})[0]
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(output, expected, atol=1e-4)
    check = report["check"]
    assert check["top1_agreement"] == 1.0 and check["keras_accuracy"] == check["export_accuracy"]
    assert check["max_probability_difference"] == pytest.approx(
        np.abs(output - expected).max(), abs=1e-6
    )
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_lora_is_merged_before_quantizing(run_folder, tmp_path):
    _, data_dir, trained = run_folder
    images, _ = validation_images(data_dir)
    model = make_tiny_classifier(fitted_norms=True)
    model.set_weights(trained.get_weights())
    base = keras.ops.convert_to_numpy(model(images, training=False))
    kt.enable_lora(model, rank=2, top_blocks=2)
    rng = np.random.default_rng(0)
    for layer in kt.lora.lora_layers(model):
        layer.lora_kernel_b.assign(rng.normal(0, 0.5, layer.lora_kernel_b.shape))
    adapted = keras.ops.convert_to_numpy(model(images, training=False))
    assert np.abs(adapted - base).max() > 0.1  # the update changes the predictions
    report = kt.export(model, tmp_path / "q.keras", quantize="int8", check_data=images)
    assert report["lora_merged"] and kt.lora.lora_layers(model)  # the model keeps its LoRA
    loaded = kt.load_model(tmp_path / "q.keras")
    assert not [v.path for v in loaded.weights if "lora" in v.path]
    assert np.abs(loaded.predict(images, verbose=0) - adapted).max() < 0.05
    assert report["check"]["max_probability_difference"] < 0.05


def test_requests_that_cannot_work_are_refused_before_any_work(tmp_path):
    model = make_tiny_classifier()
    refused = {
        "takes quantize=one of int8, not 'float16'": dict(path="m.keras", quantize="float16"),
        "takes quantize=none, not 'int8'": dict(path="m.onnx", quantize="int8"),
        "pass quantize='int8'": dict(path="m.keras"),
        "min_agreement needs check_data": dict(path="m.keras", quantize="int8", min_agreement=0.9),
    }
    if keras.backend.backend() == "tensorflow":
        refused["is for format='tflite' with quantize='int8'"] = dict(
            path="m.tflite", quantize="dynamic", io_dtype="uint8"
        )
        refused["representative images: pass representative_data"] = dict(
            path="m.tflite", quantize="int8"
        )
    for says, options in refused.items():
        path = tmp_path / options.pop("path")
        with pytest.raises(ValueError, match=re.escape(says)):
            kt.export(model, path, **options)
    assert not [p for p in os.listdir(tmp_path) if not p.startswith(".partial-")]


@pytest.mark.jax_only
def test_tflite_is_refused_on_jax_and_keras_int8_works(run_folder, tmp_path):
    model_dir, _, model = run_folder
    with pytest.raises(kt.BackendError, match="TFLite export needs the TensorFlow backend"):
        kt.export(model, tmp_path / "m.tflite", quantize="dynamic")
    assert not os.listdir(tmp_path)
    (report,) = export_folder.export_model_dir(
        str(model_dir), "keras", ["int8"], output_dir=str(tmp_path)
    )
    assert report["written"] and report["check"]["top1_agreement"] >= 0.8
