"""benchmarks/backbone_costs.py in its smoke mode (tiny models at 32 px): it builds each
backbone as a user does (keras.applications by name, KerasHub from a saved preset folder, TF
Hub from the SavedModel), times extraction and a fine-tuning step per round, and writes a
timing file that follows the results schema; the table of docs/guide/choosing-a-backbone.md
is rendered from such a file (tests/test_benchmarks_report.py)."""

import importlib
import json
import pathlib
import statistics
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"

pytest.importorskip("keras_hub", reason="the KerasHub backbones need keras-hub")


@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("_common")


def _smoke(tmp_path, *arguments) -> tuple[dict, dict]:
    """(the results file, the last line printed) of a smoke run."""
    output = tmp_path / "backbone_costs.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "backbone_costs.py"), "--smoke", "--output",
         str(output), *arguments],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(output.read_text()), json.loads(completed.stdout.strip().splitlines()[-1])


def test_smoke_run_writes_a_timing_file_with_one_arm_per_backbone_built(common, tmp_path):
    record, summary = _smoke(
        tmp_path, "--backbones=mobilenet,clip_b32,hub_mobilenet_v1", f"--assets={tmp_path}"
    )
    assert common.validate_results(record) == []
    assert record["kind"] == "timing" and record["repeats"] == 2
    assert record["splits"] == {"batch": 4} and record["selection"]["pairing"]
    # The TF Hub SavedModel is not under --assets: skipped, saying why.
    assert list(record["arms"]) == ["mobilenet", "clip_b32"]
    assert (
        "tfhub/mobilenet_v1_100_224_feature_vector not found"
        in (record["details"]["skipped"]["hub_mobilenet_v1"])
    )
    facts = record["details"]["backbones"]
    # MobileNet alpha 0.25 pools 256 channels; the tiny CLIP tower's class token has 16.
    assert (facts["mobilenet"]["source"], facts["mobilenet"]["feature_dim"]) == (
        "keras.applications",
        256,
    )
    assert (facts["clip_b32"]["source"], facts["clip_b32"]["feature_dim"]) == ("KerasHub", 16)
    assert all(f["input_size"] == 32 and f["keras_file_bytes"] > 0 for f in facts.values())
    # Two rounds, the order rotated in the second; ms per image of each timed call.
    rounds = record["details"]["rounds"]
    assert [list(r) for r in rounds] == [["mobilenet", "clip_b32"], ["clip_b32", "mobilenet"]]
    for name, metrics in record["arms"].items():
        per_round = [1000 * r[name]["train_step_seconds"] / 4 for r in rounds]
        assert metrics["train_step_ms_per_image"]["per_seed"] == pytest.approx(per_round)
        # The last line: the median over the rounds, and the parameters.
        assert summary[name] == {
            "params": facts[name]["params"],
            "extract_ms_per_image": statistics.median(metrics["extract_ms_per_image"]["per_seed"]),
            "train_step_ms_per_image": statistics.median(per_round),
        }


@pytest.mark.slow
def test_smoke_run_builds_every_keras_hub_architecture_and_the_tf_hub_model(
    common, tmp_path, assets
):
    record, _ = _smoke(tmp_path, f"--assets={assets}", "--peak_rss")
    assert common.validate_results(record) == []
    assert list(record["arms"]) == [
        "mobilenet", "vit_b16", "dinov2_s14", "clip_b32", "siglip_b16", "keras_hub_resnet50",
        "hub_mobilenet_v1",
    ]  # fmt: skip
    facts = record["details"]["backbones"]
    assert facts["hub_mobilenet_v1"]["source"] == "TF Hub"
    assert facts["hub_mobilenet_v1"]["feature_dim"] == 1024
    # Each peak comes from a process of its own: TensorFlow's own memory at least.
    assert all(f["peak_rss_mb"] > 100 for f in facts.values())
