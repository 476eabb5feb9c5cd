"""benchmarks/command_adapt.py: each arm's command flags, unlabeled target folders, the
summary line, and runs that resume from the runs file."""

import json
import pathlib

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

    def fake_run(task, arm, seed, built, weights, work, extra, source=None):
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
    # Another commit's runs, read by a later checkout: nothing trains, a missing run is an error.
    commit = record["git_commit"]
    again = [*args[:8], "--output", str(tmp_path / "again.json"), "--runs_commit", commit]
    bench.main([*again, "--compare", "coral..source_only"])
    record = json.loads((tmp_path / "again.json").read_text())
    assert calls == [] and record["details"]["runs_commit"] == commit
    assert record["comparisons"] == [["coral", "source_only"]]
    with pytest.raises(SystemExit, match=r"\|3\|.* is not in .*run it from that commit"):
        bench.main([*args[:5], "4", *args[6:], "--runs_commit", commit])


def test_comparisons_are_against_source_only_or_the_first_arm_or_as_given(bench):
    assert bench.comparisons(["source_only", "dann"], None) == [["source_only", "dann"]]
    assert bench.comparisons(["dann", "mcc", "mcc:x=1"], None) == [
        ["dann", "mcc"],
        ["dann", "mcc:x=1"],
    ]
    given = bench.comparisons(["dann", "mcc", "mcc:x=1"], "dann..mcc,mcc:x=1..mcc")
    assert given == [["dann", "mcc"], ["mcc:x=1", "mcc"]]
    with pytest.raises(SystemExit, match="give a..b with a and b among --arms"):
        bench.comparisons(["dann", "mcc"], "dann..tent")


def _report(accuracy):
    return {
        "accuracy": accuracy,
        "balanced_accuracy": accuracy,
        "macro_f1": accuracy,
        "accuracy_ci95": [accuracy - 0.1, accuracy + 0.1],
    }


def test_adapt_after_arms_adapt_the_same_seeds_source_model(bench, tmp_path, monkeypatch):
    source = tmp_path / "t" / "source_only_0"
    source.mkdir(parents=True)
    trained = {"test": _report(0.6), "num_train": 16, "num_validation": 4, "num_test": 10}
    (source / "results.json").write_text(json.dumps(trained))
    commands, source_read = [], {"accuracy": 0.6}

    def fake_command(command, label):
        commands.append(command)
        output = pathlib.Path(command[-1].removeprefix("--output_dir="))
        output.mkdir()
        test = {"before": _report(source_read["accuracy"]), "after": _report(0.7)}
        (output / "adapt.json").write_text(json.dumps({"method": "shot", "test": test}))
        return 12.0

    monkeypatch.setattr(bench.defaults, "run_command", fake_command)
    built = {"target_dir": tmp_path / "target", "test_dir": tmp_path / "test"}
    recorded = {"test_accuracy": 0.6}

    def run(arm, seed=0, source=recorded):
        return bench.run_arm("t", arm, seed, built, "weights", tmp_path, [], source=source)

    result = run("adapt_shot")
    assert commands[0][2:4] == ["keras_transfer", "adapt"]
    assert f"--model_dir={source}" in commands[0] and "--method=shot" in commands[0]
    assert f"--test_dir={tmp_path / 'test'}" in commands[0]
    assert result["test_accuracy"] == 0.7 and result["source_test_accuracy"] == 0.6
    assert result["splits"] == {"train": 16, "validation": 4, "test": 10}
    assert result["adaptation"]["method"] == "shot"
    # Settings after colons become the command's flags.
    run("adapt_shot:learning_rate=1e-5:unfreeze_blocks=2")
    assert commands[-1][-4:-1] == ["--method=shot", "--learning_rate=1e-5", "--unfreeze_blocks=2"]
    with pytest.raises(SystemExit, match="a setting is flag=value"):
        run("adapt_shot:learning_rate")
    # A training arm's settings are the training command's flags.
    assert bench.arm_flags("mcc:train_bn=false", tmp_path)[1:] == [
        "--adapt=mcc",
        "--train_bn=false",
    ]
    # The adapt command read the test images otherwise than the training run: refused.
    source_read["accuracy"] = 0.55
    with pytest.raises(SystemExit, match="read the test images differently"):
        run("adapt_tent")
    # The folder's model is not the recorded source_only run's: refused.
    with pytest.raises(SystemExit, match="holds another model than the recorded"):
        run("adapt_tent", source={"test_accuracy": 0.5})
    # No recorded source_only run of that seed, or no model of it: refused, saying what to run.
    with pytest.raises(SystemExit, match="list source_only before adapt_shot"):
        run("adapt_shot", source=None)
    with pytest.raises(SystemExit, match="list source_only before adapt_shot"):
        run("adapt_shot:epochs=1", seed=1)
