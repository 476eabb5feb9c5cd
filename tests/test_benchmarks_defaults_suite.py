"""benchmarks/defaults_suite.py: the leave-one-task-out advisor, the suite's last line and
results file, and runs that resume from the runs file."""

import json

import pytest
from conftest import load_benchmark


@pytest.fixture
def suite():
    return load_benchmark("defaults_suite")


def test_the_advisor_of_a_task_is_chosen_on_the_other_tasks_only(suite):
    # mixup gains 5 points on a and b and loses 10 on c: leaving c out, it wins; leaving a
    # or b out, its mean gain on the others is (5 - 10) / 2 < 0. ema gains 1 point on b
    # only: it wins leaving a out, and ties with fixed (ties: fixed) leaving b out.
    accuracy = {
        "a": {"fixed": 0.80, "mixup": 0.85, "ema": 0.80},
        "b": {"fixed": 0.70, "mixup": 0.75, "ema": 0.71},
        "c": {"fixed": 0.90, "mixup": 0.80, "ema": 0.90},
    }
    choices = suite.advisor_choices(accuracy)
    assert choices == {"a": "ema", "b": "fixed", "c": "mixup"}


def test_suite_summary_reports_every_arm_and_the_advisors_gain(suite):
    per_seed = {
        "a": {"fixed": [0.8, 0.8, 0.8], "mixup": [0.85, 0.85, 0.85], "advisor_rules": [0.7] * 3},
        "b": {"fixed": [0.7, 0.7, 0.7], "mixup": [0.75, 0.75, 0.75], "advisor_rules": [0.6] * 3},
    }
    summary = suite.suite_summary(per_seed)
    assert summary["advisor_choice"] == {"a": "mixup", "b": "mixup"}
    assert summary["mean_gain_vs_fixed"] == pytest.approx(0.05)
    assert summary["worst_gain_vs_fixed"] == pytest.approx(0.05)
    task = summary["tasks"]["a"]
    assert task["fixed"]["per_seed"] == [0.8] * 3 and task["fixed"]["mean"] == pytest.approx(0.8)
    assert task["advisor"]["arm"] == "mixup" and task["advisor"]["mean"] == pytest.approx(0.85)
    assert task["advisor_rules"]["mean"] == pytest.approx(0.7)
    assert set(task["recipes"]) == {"mixup"}


def test_main_runs_each_task_arm_and_seed_once_and_resumes_from_the_runs_file(
    suite, tmp_path, monkeypatch
):
    calls = []

    def fake_run(name, seed, train_dir, test_dir, weights, extra, work, flags=None):
        calls.append((str(train_dir), name, seed, tuple(flags)))
        accuracy = {"fixed": 0.80, "label_smoothing": 0.85}[name] + seed / 100
        splits = {"train": 16, "validation": 4, "test": 10}
        return {"test_accuracy": accuracy, "splits": splits, "command": "x"}

    monkeypatch.setattr(suite.defaults, "run_config", fake_run)
    monkeypatch.setattr(
        suite,
        "build_task",
        lambda name, assets, work: {"train_dir": name, "test_dir": "t", "flags": ["--x"]},
    )
    monkeypatch.setattr(suite._common, "assets_dir", lambda flag, needs: tmp_path)
    args = ["--tasks", "t1,t2", "--arms", "fixed,label_smoothing", "--seeds", "3"]
    args += ["--runs_file", str(tmp_path / "runs.jsonl"), "--output", str(tmp_path / "out.json")]

    summary = suite.main(args)

    assert len(calls) == 12
    assert ("t1", "label_smoothing", 2, ("--plan=fixed", "--label_smoothing=0.1")) in calls
    assert summary["tasks"]["t1"]["recipes"]["label_smoothing"]["per_seed"] == pytest.approx(
        [0.85, 0.86, 0.87]
    )
    assert summary["advisor_choice"] == {"t1": "label_smoothing", "t2": "label_smoothing"}
    assert summary["mean_gain_vs_fixed"] == pytest.approx(0.05)
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["arms"]["t2:fixed"]["test_accuracy"]["per_seed"] == pytest.approx(
        [0.80, 0.81, 0.82]
    )
    assert record["details"]["summary"] == summary
    assert suite._common.validate_results(record) == []

    calls.clear()
    assert suite.main(args) == summary
    assert calls == []  # every run came from the runs file


def test_seeds_is_a_count_or_a_list(suite):
    assert suite.parse_seeds("3") == [0, 1, 2]
    assert suite.parse_seeds("0,4,7") == [0, 4, 7]
