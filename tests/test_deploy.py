"""Serving exports measured and checked: the single-image latency of a `.tflite` or `.onnx`
file (`export_latency.measure_latency`, `keras-transfer export --measure_latency`), the
check `keras-transfer train --export` runs (the export command's own), the one reader of a
run's config.json and the one file digest, and benchmarks/deploy.py --smoke."""

import hashlib
import importlib
import importlib.util
import json
import pathlib
import subprocess
import sys

import keras
import pytest
from conftest import make_tiny_classifier
from conftest import tiny_run_settings
from conftest import write_image_folder

import keras_transfer as kt
from keras_transfer.apps import export_check
from keras_transfer.apps import export_folder
from keras_transfer.apps import export_latency
from keras_transfer.apps import image_config
from keras_transfer.apps import image_reports
from keras_transfer.apps import predict as predict_lib
from keras_transfer.utils import reliability

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ["ants", "bees"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """(model folder, model, resolved config): what `keras-transfer train` leaves, made
    directly from a tiny classifier whose head was fitted on colour-coded images."""
    root = tmp_path_factory.mktemp("deploy")
    data_dir, model_dir = root / "images", root / "run"
    write_image_folder(data_dir, {name: 8 for name in CLASSES}, size=(40, 48))
    keras.utils.set_random_seed(0)
    model = make_tiny_classifier(fitted_norms=True)
    kt.freeze(model)
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    data = kt.image_folder_dataset(data_dir, image_size=32, validation_split=0.25, seed=42)
    model.fit(data.train, epochs=4, verbose=0)
    settings = tiny_run_settings(data_dir, model_dir, validation_split=0.25, head_lr=0.05)
    config = image_config.Config(**settings).resolved(32)
    image_reports.write_model_folder(model, CLASSES, str(model_dir), {"config.json": config})
    return model_dir, model, config


@pytest.mark.tensorflow_only
def test_latency_of_a_tflite_file_is_positive_and_records_its_threads(tmp_path):
    path = tmp_path / "model.tflite"
    kt.export(make_tiny_classifier(), path)
    default = export_latency.measure_latency(path, runs=5, warmup=1)
    assert default["threads"] == 1  # the stated default
    latency = export_latency.measure_latency(path, threads=2, runs=7, warmup=2)
    assert latency["latency_ms_median"] > 0
    assert latency["latency_ms_p90"] >= latency["latency_ms_median"]
    assert (latency["threads"], latency["runs"], latency["warmup"]) == (2, 7, 2)
    assert latency["runtime"] == "tflite"


@pytest.mark.tensorflow_only
@pytest.mark.skipif(
    importlib.util.find_spec("tf2onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="needs the onnx extra (tf2onnx, onnxruntime)",
)
def test_latency_of_an_onnx_file_runs_in_onnx_runtime(tmp_path):
    path = tmp_path / "model.onnx"
    model = make_tiny_classifier()
    image = keras.ops.convert_to_numpy(keras.random.uniform((32, 32, 3), 0, 255, seed=0))
    model.predict(image[None], verbose=0)  # Keras' ONNX export needs a called model
    kt.export(model, path)
    latency = export_latency.measure_latency(path, image, runs=5)
    assert latency["latency_ms_median"] > 0 and latency["runtime"] == "onnx"
    assert latency["threads"] == 1


def test_latency_refuses_other_files_and_bad_settings(tmp_path):
    with pytest.raises(ValueError, match=r"\.tflite, \.onnx files, not .*model\.keras"):
        export_latency.measure_latency(tmp_path / "model.keras")
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"):
        export_latency.measure_latency(tmp_path / "model.tflite", threads=0)
    with pytest.raises(ValueError, match="format=tflite and format=onnx, not 'saved_model'"):
        export_folder.check_settings("saved_model", [None], measure_latency=True)


@pytest.mark.tensorflow_only
def test_export_command_records_the_latency_in_export_json(run_folder, tmp_path):
    model_dir, _, _ = run_folder
    reports = export_folder.export_model_dir(
        str(model_dir),
        "tflite",
        [None, "int8"],
        output_dir=str(tmp_path),
        measure_latency=True,
        latency_threads=1,
    )
    record = json.loads((tmp_path / "export.json").read_text())["exports"]
    assert set(record) == {"model.tflite", "model_int8.tflite"}
    for entry in record.values():
        assert entry["latency_ms_median"] > 0
        assert entry["latency"]["threads"] == 1 and entry["latency"]["runs"] == 50
    assert "ms per image (median of 50 runs, tflite, 1 thread(s))" in (
        export_folder.format_report(reports[0])
    )


@pytest.mark.tensorflow_only
def test_train_export_runs_the_export_commands_check(run_folder, tmp_path):
    model_dir, model, config = run_folder
    # What `keras-transfer train --export=tflite` runs, with the run's resolved settings.
    report = image_reports.export(model, str(tmp_path), "tflite", CLASSES, config)
    (command,) = export_folder.export_model_dir(str(model_dir), "tflite", [None])
    assert report["file"] == "model.tflite" and (tmp_path / "model.tflite").is_file()
    assert report["check"]["on"] == command["check"]["on"]
    assert f"{report['check']['images']} validation images of " in report["check"]["on"]
    for key in ("top1_agreement", "keras_accuracy", "export_accuracy"):
        assert report["check"][key] == pytest.approx(command["check"][key])


@pytest.mark.tensorflow_only
def test_train_export_of_a_run_without_image_folder_is_unchecked(run_folder, tmp_path):
    _, model, _ = run_folder
    # A run without a config to list its images from (a TFDS run) is exported unchecked.
    unchecked = image_reports.export(model, str(tmp_path), "saved_model", CLASSES, None)
    assert unchecked["file"] == "saved_model" and unchecked["written"]
    assert "check" not in unchecked and (tmp_path / "saved_model" / "saved_model.pb").is_file()


def test_read_run_config_is_the_one_reader_of_config_json(tmp_path):
    assert predict_lib.read_run_config(str(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match=r"config\.json' does not exist, so the run"):
        export_check.run_files(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"is not a JSON object: restore the run's config"):
        predict_lib.decode_settings(str(tmp_path))
    with pytest.raises(ValueError, match=r"is not a JSON object"):
        export_check.run_files(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"Cannot read .*config\.json"):
        predict_lib.read_run_config(str(tmp_path), required="so nothing")
    (tmp_path / "config.json").write_text(json.dumps({"resize": "squash"}))
    assert predict_lib.read_run_config(str(tmp_path)) == {"resize": "squash"}
    assert predict_lib.decode_settings(str(tmp_path))["resize"] == "squash"


def test_file_sha256_is_the_digest_of_the_whole_file_across_chunks(tmp_path):
    content = bytes(range(256)) * (5 * 4096 + 7)  # over 5 MiB: several 1 MiB chunks
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    assert reliability.file_sha256(path) == hashlib.sha256(content).hexdigest()
    assert "file_sha256" in reliability.__all__


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_deploy_smoke_prints_the_summary_and_writes_a_schema_file(tmp_path):
    output = tmp_path / "deploy.json"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "deploy.py"), "--smoke"]
        + ["--output", str(output)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert set(summary) == {"formats", "float_accuracy"}
    names = {"tflite_float32", "tflite_dynamic", "tflite_float16", "tflite_int8", "onnx"}
    assert set(summary["formats"]) == names
    for values in summary["formats"].values():
        assert set(values) == {"bytes", "latency_ms_median", "accuracy", "agreement_with_keras"}
        assert isinstance(values["bytes"], int) and values["bytes"] > 0
        assert values["latency_ms_median"] > 0
    assert (
        summary["formats"]["tflite_int8"]["bytes"] < summary["formats"]["tflite_float32"]["bytes"]
    )
    record = json.loads(output.read_text())
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        problems = importlib.import_module("_common").validate_results(record)
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    assert all("seed" in problem for problem in problems), problems  # one smoke seed
    assert record["benchmark"] == "deploy" and record["evaluated_on"] == "test"
    goals = record["details"]["goals"]
    assert set(goals) == {
        "int8_accuracy_within_1_point_of_float_keras",
        "int8_at_least_3_5x_smaller_than_float32_tflite",
        "int8_at_least_1_5x_faster_than_float32_tflite",
    }
    assert all(isinstance(goal["passed"], bool) for goal in goals.values())
    assert record["details"]["latency"]["threads"] == 1
