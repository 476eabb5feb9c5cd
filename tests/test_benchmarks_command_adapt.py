"""benchmarks/command_adapt.py: each arm's command flags, unlabeled target folders, the
summary line, and runs that resume from the runs file."""

import json

import numpy as np
import pytest
from conftest import load_benchmark


@pytest.fixture
def bench():
    return load_benchmark("command_adapt")


def test_source_only_gets_the_target_folder_without_adapt(bench, tmp_path):
    assert bench.arm_flags("source_only", tmp_path) == [f"--target_dir={tmp_path}"]
    assert bench.arm_flags("tent", tmp_path) == [f"--target_dir={tmp_path}", "--adapt=tent"]


def test_target_images_are_written_flat_so_the_command_sees_no_labels(bench, tmp_path):
    images = np.full((3, 8, 8, 3), 100.0, dtype="float32")
    bench._write_unlabeled(tmp_path / "target", images)
    written = sorted(p.relative_to(tmp_path / "target") for p in (tmp_path / "target").iterdir())
    assert [str(p) for p in written] == ["00000.png", "00001.png", "00002.png"]


def test_summary_line_says_which_arms_beat_source_only(bench):
    line = bench.summary_line(
        "t", {"source_only": [0.6, 0.7], "dann": [0.7, 0.7], "tent": [0.6, 0.6]}
    )
    assert line["arms"]["source_only"] == pytest.approx(0.65)
    assert line["beats_source_only"] == {"dann": True, "tent": False}


def test_main_runs_each_arm_and_seed_once_and_resumes(bench, tmp_path, monkeypatch):
    calls = []

    def fake_run(task, arm, seed, built, weights, work, extra):
        calls.append((task, arm, seed))
        accuracy = {"source_only": 0.60, "coral": 0.70}[arm] + seed / 100
        splits = {"train": 16, "validation": 4, "test": 10}
        return {"test_accuracy": accuracy, "val_accuracy": 0.9, "splits": splits, "command": "x"}

    monkeypatch.setattr(bench, "run_arm", fake_run)
    monkeypatch.setattr(bench, "build_task", lambda name, assets, work: {"flags": []})
    monkeypatch.setattr(bench._common, "assets_dir", lambda flag, needs: tmp_path)
    args = ["--task", "digits_m", "--arms", "source_only,coral", "--seeds", "3"]
    args += ["--runs_file", str(tmp_path / "runs.jsonl"), "--output", str(tmp_path / "out.json")]

    line = bench.main(args)
    assert sorted(calls) == [
        ("digits_m", arm, seed) for arm in ("coral", "source_only") for seed in (0, 1, 2)
    ]
    assert line["beats_source_only"] == {"coral": True}
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["arms"]["coral"]["test_accuracy"]["per_seed"] == pytest.approx([0.70, 0.71, 0.72])
    assert record["comparisons"] == [["source_only", "coral"]]
    assert bench._common.validate_results(record) == []

    calls.clear()
    assert bench.main(args) == line
    assert calls == []
