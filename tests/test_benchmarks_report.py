"""The benchmark results files and the tables made from them: `_common.write_results` (the one
writer), `_common.validate_results` (the schema), `benchmarks/report.py` (the tables of
benchmarks/README.md and README.md, and `--check`), and the scripts that write the schema."""

import importlib
import json
import math
import pathlib
import shutil
import subprocess
import sys
import types

import pytest
from conftest import load_benchmark

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"


@pytest.fixture
def common(monkeypatch):
    """benchmarks/_common.py, importable as the scripts import it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("_common")


@pytest.fixture
def report(common):
    return load_benchmark("report")


def accuracy_file(common, path, arms, seeds=(1, 2, 3, 4, 5), **overrides):
    run = common.start_run(
        {"tuned": "epochs on the validation loss", "tuned_on": "validation"},
        script=str(BENCHMARKS / "imbalance.py"),
        argv=["--seeds", "1,2,3,4,5"],
    )
    arguments = dict(
        kind="accuracy",
        benchmark="imbalance",
        dataset="cats_and_dogs",
        splits={"train": 1600, "validation": 400, "test": 1000},
        evaluated_on="test",
        seeds=list(seeds),
        arms=arms,
        primary_metric="balanced_accuracy",
        details={"note": "synthetic"},
    )
    arguments.update(overrides)
    return common.write_results(path, run, **arguments)


def test_write_results_summarises_each_metric_per_seed_with_a_t_interval(common, tmp_path):
    path = tmp_path / "results.json"
    record = accuracy_file(
        common,
        path,
        {
            "weighted": {"balanced_accuracy": [0.80, 0.85, 0.90, 0.95, 1.00]},
            "unweighted": {"balanced_accuracy": [0.60, 0.62, 0.64, 0.60, 0.64]},
        },
    )
    assert json.loads(path.read_text()) == record
    weighted = record["arms"]["weighted"]["balanced_accuracy"]
    # By hand: mean 0.9, std (ddof 1) sqrt(0.00625), t(0.975, 4) = 2.776445.
    assert weighted["mean"] == pytest.approx(0.9)
    assert weighted["std"] == pytest.approx(math.sqrt(0.00625))
    assert weighted["ci95"] == pytest.approx(2.776445 * math.sqrt(0.00625) / math.sqrt(5))
    assert weighted["ci95"] == pytest.approx(0.098162, abs=1e-6)
    assert weighted["per_seed"] == [0.80, 0.85, 0.90, 0.95, 1.00]
    three = common.summarize([0.90, 0.92, 0.94])  # t(0.975, 2) = 4.302653
    assert (three["mean"], three["std"]) == (pytest.approx(0.92), pytest.approx(0.02))
    assert three["ci95"] == pytest.approx(0.049683, abs=1e-6)
    assert common.summarize([0.5]) == {"mean": 0.5, "std": None, "ci95": None, "per_seed": [0.5]}
    # What a reader needs to trust and rerun it.
    assert record["schema_version"] == common.SCHEMA_VERSION
    assert record["seeds"] == [1, 2, 3, 4, 5]
    assert record["command"] == "python benchmarks/imbalance.py --seeds 1,2,3,4,5"
    assert len(record["git_commit"]) == 40 and isinstance(record["git_dirty"], bool)
    assert set(record["load_average"]) == {"start", "end"}
    assert record["selection"]["tuned_on"] == "validation"
    assert record["selection"]["recorded_at"] <= record["finished_at"]
    assert record["comparisons"] == [["weighted", "unweighted"]]
    assert record["seconds"] >= 0 and record["details"] == {"note": "synthetic"}
    assert common.validate_results(record) == []


def test_validate_results_names_every_broken_rule(common, tmp_path):
    close = {
        "a": {"balanced_accuracy": [0.90, 0.91, 0.92]},
        "b": {"balanced_accuracy": [0.91, 0.92, 0.93]},
    }
    record = accuracy_file(common, tmp_path / "close.json", close, seeds=(1, 2, 3))
    (problem,) = common.validate_results(record)
    assert "differ by 1.00 points" in problem and "needs 5 paired runs" in problem
    assert "not 3" in problem
    # Arms that average 8 tasks per seed (a suite) pair 3 x 8 = 24 runs: enough.
    suite = accuracy_file(
        common, tmp_path / "suite.json", close, seeds=(1, 2, 3), tasks_per_seed={"a": 8, "b": 8}
    )
    assert suite["tasks_per_seed"] == {"a": 8, "b": 8}
    assert common.validate_results(suite) == []
    # The pair counts the arm with fewer tasks: one task a seed is 3 runs again.
    mixed = accuracy_file(
        common, tmp_path / "mixed.json", close, seeds=(1, 2, 3), tasks_per_seed={"a": 8}
    )
    assert any("not 3" in p for p in common.validate_results(mixed))
    mixed["tasks_per_seed"] = {"a": 8, "b": 0, "c": 8}
    problems = common.validate_results(mixed)
    assert any(p.startswith("tasks_per_seed.b: a positive whole number") for p in problems)
    assert any(p.startswith("tasks_per_seed.c:") for p in problems)

    apart = {
        "a": {"balanced_accuracy": [0.90, 0.91, 0.92]},
        "b": {"balanced_accuracy": [0.70, 0.71, 0.72]},
    }
    record = accuracy_file(common, tmp_path / "apart.json", apart, seeds=(1, 2, 3))
    assert common.validate_results(record) == []  # 3 seeds suffice 20 points apart

    two = {arm: {"balanced_accuracy": v["balanced_accuracy"][:2]} for arm, v in apart.items()}
    record = accuracy_file(common, tmp_path / "two.json", two, seeds=(1, 2))
    assert any("2 seed(s)" in p and "at least 3" in p for p in common.validate_results(record))

    broken = accuracy_file(common, tmp_path / "x.json", apart, seeds=(1, 2, 3))
    del broken["selection"]
    problems = common.validate_results(broken)
    assert any(p.startswith("missing fields: selection") for p in problems)
    assert any(p.startswith("selection: missing") for p in problems)

    on_test = accuracy_file(common, tmp_path / "t.json", apart, seeds=(1, 2, 3))
    on_test["selection"]["tuned_on"] = "test"
    assert any("tuned on the 'test' split" in p for p in common.validate_results(on_test))

    no_test = accuracy_file(
        common,
        tmp_path / "v.json",
        apart,
        seeds=(1, 2, 3),
        splits={"train": 100, "validation": 50},
        evaluated_on="validation",
    )
    assert any("held-out test split" in p for p in common.validate_results(no_test))

    edited = accuracy_file(common, tmp_path / "e.json", apart, seeds=(1, 2, 3))
    edited["arms"]["a"]["balanced_accuracy"]["mean"] = 0.95
    (problem,) = common.validate_results(edited)
    assert problem.startswith("arms.a.balanced_accuracy: mean 0.95 does not match")


def test_timing_files_have_repeats_and_a_pairing_rule_but_no_seed_minimum(common, tmp_path):
    def timing(selection, repeats=1):
        run = common.start_run(selection, script=str(BENCHMARKS / "throughput.py"), argv=[])
        return common.write_results(
            tmp_path / "timing.json",
            run,
            kind="timing",
            benchmark="throughput",
            dataset="synthetic",
            splits={"train": 64},
            evaluated_on="train",
            repeats=repeats,
            arms={"ours": {"images_per_second": [30.0] * repeats}},
            primary_metric="images_per_second",
        )

    paired = {"tuned": "nothing", "tuned_on": None, "pairing": "arms back to back per round"}
    assert common.validate_results(timing(paired)) == []
    problems = common.validate_results(timing({"tuned": "nothing", "tuned_on": None}, 3))
    assert problems == [
        "selection: a timing benchmark states its pairing rule (selection['pairing']: how "
        "the repeats of the arms are paired)"
    ]


def test_report_check_passes_on_the_repository_as_committed():
    done = subprocess.run(
        [sys.executable, "benchmarks/report.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The tables come from JSON alone: rendering them imports no TensorFlow.
    code = (
        "import runpy, sys; sys.argv = ['report.py', '--check']\n"
        "try:\n    runpy.run_path('benchmarks/report.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "assert not {'tensorflow', 'keras'} & set(sys.modules), 'TensorFlow was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def copy_of_the_repository(root: pathlib.Path) -> pathlib.Path:
    """The files whose tables report.py writes (`report.TARGETS`), in a new root."""
    (root / "benchmarks" / "results" / "archive").mkdir(parents=True)
    for target in ("README.md", "benchmarks/README.md", "docs/guide/choosing-a-backbone.md"):
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / target, root / target)
    return root


def test_report_renders_the_tables_and_check_fails_when_a_cell_is_edited(
    common, report, tmp_path, capsys
):
    root = copy_of_the_repository(tmp_path)
    results = root / "benchmarks" / "results"
    arms = {
        "weighted@0.1": {"balanced_accuracy": [0.96, 0.97, 0.98], "recall_dogs": [0.9] * 3},
        "unweighted@0.1": {"balanced_accuracy": [0.60, 0.61, 0.62], "recall_dogs": [0.2] * 3},
    }
    accuracy_file(common, results / "imbalance_cats_and_dogs.json", arms, seeds=(1, 2, 3))
    # Archived files are history: never read, whatever their shape.
    (results / "archive" / "old.json").write_text('{"accuracy": 0.99}')

    assert report.main(["--root", str(root), "--check"]) == 1  # tables not rendered yet
    assert "table 'imbalance' differs" in capsys.readouterr().out
    assert report.main(["--root", str(root)]) == 0
    bench = (root / "benchmarks" / "README.md").read_text()
    cell = "0.97 ± 0.02484 (n=3)"  # mean 0.97, std 0.01, t(0.975, 2) 4.302653 / sqrt(3)
    assert f"| weighted@0.1 | 3 | {cell} | 0.9 ± 0 (n=3) |" in bench
    assert "**`benchmarks/results/imbalance_cats_and_dogs.json`** (current run; commit" in bench
    # Each comparison paired by seed, in points: 0.60 - 0.96, 0.61 - 0.97, 0.62 - 0.98.
    assert "| unweighted@0.1 − weighted@0.1 | -36 ± 0 (n=3) | 0 of 3 |" in bench
    assert "`benchmarks/results/imbalance_cats_and_dogs.json`" in bench.split("report:index")[1]
    summary = (root / "README.md").read_text().split("<!-- report:summary -->")[1]
    assert f"| imbalance | cats_and_dogs | weighted@0.1 | balanced_accuracy (test) | {cell} |" in (
        summary
    )
    capsys.readouterr()
    assert report.main(["--root", str(root), "--check"]) == 0
    assert capsys.readouterr().out == "report: every table matches benchmarks/results/*.json\n"

    (root / "benchmarks" / "README.md").write_text(bench.replace(cell, "0.99 ± 0.02484 (n=3)"))
    assert report.main(["--root", str(root), "--check"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "benchmarks/README.md: table 'imbalance' differs from what the results files give "
        "(run python benchmarks/report.py)"
    ]


def test_report_check_refuses_a_file_off_the_schema_and_a_file_without_its_table(
    common, report, tmp_path, capsys
):
    root = copy_of_the_repository(tmp_path)
    results = root / "benchmarks" / "results"
    (results / "accuracy_hymenoptera.json").write_text('{"two_phase_acc": 0.961}')
    arms = {"a": {"balanced_accuracy": [0.9, 0.91, 0.92]}}
    accuracy_file(common, results / "new.json", arms, seeds=(1, 2, 3), benchmark="unknown")
    assert report.main(["--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "benchmarks/results/accuracy_hymenoptera.json: breaks the results schema" in out
    assert "missing fields: schema_version" in out
    assert "benchmarks/results/new.json: benchmarks/README.md has no <!-- report:unknown -->" in (
        out
    )
    assert report.main(["--root", str(root), "--check"]) == 1


def test_imbalance_and_few_shot_arms_keep_one_value_per_seed_in_seed_order(common):
    imbalance = load_benchmark("imbalance")

    def score(balanced, dogs):
        recall = {"cats": 1.0, "dogs": dogs}
        return {"balanced_acc": balanced, "accuracy": balanced, "recall_per_class": recall}

    runs = {
        "0.1": [
            {"unweighted": score(0.90 + s / 100, 0.8), "weighted": score(0.95, 0.9)}
            for s in range(3)
        ]
    }
    arms = imbalance.results_arms(runs, [score(0.98, 0.97)] * 3, ["cats", "dogs"])
    assert list(arms) == ["unweighted@0.1", "weighted@0.1", "all_dogs"]
    assert arms["unweighted@0.1"]["balanced_accuracy"] == [0.90, 0.91, 0.92]
    assert arms["weighted@0.1"]["recall_dogs"] == [0.9] * 3
    assert set(arms["all_dogs"]) == {"balanced_accuracy", "accuracy", "recall_cats", "recall_dogs"}

    few_shot = load_benchmark("few_shot")
    per_k = {
        1: {"accuracy": {"prototype": [0.6, 0.7], "linear": [0.5, 0.6]}, "temperature": [0.1] * 2}
    }
    assert few_shot.results_arms(per_k) == {
        "prototype@k=1": {"accuracy": [0.6, 0.7], "temperature": [0.1, 0.1]},
        "linear@k=1": {"accuracy": [0.5, 0.6]},
    }


def test_decompression_bomb_writes_a_timing_file_with_rotated_rounds(common, tmp_path, monkeypatch):
    script = load_benchmark("decompression_bomb")
    folder = tmp_path / "images"
    (folder / "train" / "ants").mkdir(parents=True)
    monkeypatch.setattr(common, "smoke_image_folder", lambda per_class: folder)
    calls = []

    def run_arm(directory, max_pixels):
        calls.append(max_pixels)
        peak = 3000.0 if max_pixels == "none" else 600.0 + len(calls)
        return {"seconds": 1.0, "peak_rss_mb": peak, "train_images": 32, "skipped": 0}

    monkeypatch.setattr(script, "run_arm", run_arm)
    output = tmp_path / "bomb.json"
    record = script.main(["--side", "64", "--repeats", "3", "--output", str(output)])
    assert json.loads(output.read_text()) == record
    assert common.validate_results(record) == []
    assert record["kind"] == "timing" and record["repeats"] == 3
    # Round r starts at arm r: clean first, then bombs first, then bombs_no_limit first.
    limit = "50000000"
    assert calls == [limit, limit, "none", limit, "none", limit, "none", limit, limit]
    assert record["arms"]["clean"]["peak_rss_mb"]["per_seed"] == [601.0, 606.0, 608.0]
    ratio = record["arms"]["bombs_no_limit"]["peak_rss_vs_clean"]["per_seed"]
    assert ratio == pytest.approx([3000 / 601, 3000 / 606, 3000 / 608])
    assert "pairing" in record["selection"]


def test_timing_scripts_arms_pair_each_round_with_its_reference(common, tmp_path):
    throughput = load_benchmark("throughput")
    arms, comparisons = throughput.results_arms(
        {
            "images_per_second": {"ours": [20.0, 30.0], "plain": [40.0, 30.0]},
            "extract_images_per_second": [50.0, 60.0],
            "predict_images_per_second": [100.0, 60.0],
        }
    )
    assert arms["ours"]["ratio_vs_plain"] == [0.5, 1.0]
    assert arms["extract"]["ratio_vs_predict"] == [0.5, 1.0]
    assert comparisons == [["ours", "plain"], ["extract", "predict"]]
    run = common.start_run(
        {"tuned": "nothing", "tuned_on": None, "pairing": "per round"},
        script=str(BENCHMARKS / "throughput.py"),
        argv=[],
    )
    main_run = {
        "dataset": "hymenoptera",
        "train_images": 245,
        "images_per_second": {"plain": [40.0, 30.0]},
    }
    record = throughput.write(
        tmp_path / "t.json", run, types.SimpleNamespace(scale=False, rounds=2), main_run
    )
    assert common.validate_results(record) == [] and record["splits"] == {"train": 245}
    scale_run = {
        "images": 2000,
        "extract_seconds": 20.0,
        "extract_images_per_second": 100.0,
        "peak_rss_mb": 900.0,
        "head_epoch_from_disk_seconds": 2.0,
    }
    record = throughput.write(
        tmp_path / "s.json", run, types.SimpleNamespace(scale=True), scale_run
    )
    assert common.validate_results(record) == []
    assert record["arms"]["extract_to_disk"]["images_per_second"]["per_seed"] == [100.0]

    overhead = load_benchmark("optimizer_overhead")
    wall = {"plain": [1.0, 2.0], "wrapper": [1.5, 2.0], "multioptimizer": [3.0, 4.0]}
    wall["plain_again"] = [1.0, 1.0]
    arms = overhead.results_arms(
        {"blocks": {"per_round_step_ms": wall, "per_round_cpu_step_ms": wall}}
    )
    assert arms["blocks/wrapper"]["ratio_vs_plain"] == [1.5, 1.0]
    assert arms["blocks/multioptimizer"]["ratio_vs_wrapper"] == [2.0, 2.0]
    assert "ratio_vs_plain" not in arms["blocks/plain"]


def test_ranking_files_hold_rank_correlations_per_seed_on_a_test_split(common, report, tmp_path):
    """kind "ranking" (transferability.py): Kendall's tau of a score against test accuracies,
    per seed. A negative tau is a valid result; the seed minimum and the test split apply."""
    arms = {
        "logme": {"kendall_tau": [0.40, 0.45, 0.50]},
        "depth_baseline": {"kendall_tau": [-0.30, -0.25, -0.20]},
    }
    record = accuracy_file(
        common,
        tmp_path / "ranking.json",
        arms,
        seeds=(0, 1, 2),
        kind="ranking",
        benchmark="transferability",
        primary_metric="kendall_tau",
    )
    assert common.validate_results(record) == []
    assert report.render("transferability", [("r.json", record)]).count("seeds 0, 1, 2") == 1
    assert "| depth_baseline | 3 | -0.25 ± 0.1242 (n=3) |" in report.render(
        "transferability", [("r.json", record)]
    )

    beyond = {"logme": {"kendall_tau": [1.5, 1.5, 1.5]}, "depth_baseline": arms["depth_baseline"]}
    record = accuracy_file(
        common, tmp_path / "b.json", beyond, seeds=(0, 1, 2), kind="ranking",
        primary_metric="kendall_tau",
    )  # fmt: skip
    assert common.validate_results(record) == [
        "arms.logme.kendall_tau: a ranking metric lies in [-1, 1]"
    ]
    two = {arm: {"kendall_tau": v["kendall_tau"][:2]} for arm, v in arms.items()}
    record = accuracy_file(
        common, tmp_path / "two.json", two, seeds=(0, 1), kind="ranking",
        primary_metric="kendall_tau", evaluated_on="validation",
    )  # fmt: skip
    problems = common.validate_results(record)
    assert any("2 seed(s); a ranking verdict needs at least 3" in p for p in problems)
    assert any("held-out test split" in p for p in problems)


def test_report_shows_each_ratio_against_the_same_commands_earlier_runs(common, report, tmp_path):
    root = copy_of_the_repository(tmp_path)
    results = root / "benchmarks" / "results"
    pairing = {"tuned": "nothing", "tuned_on": None, "pairing": "guide and cached per round"}

    def timing(path, speedups, finished_at, argv=("--rounds", "3")):
        run = common.start_run(pairing, script=str(BENCHMARKS / "feature_cache.py"), argv=argv)
        common.write_results(
            path,
            run,
            kind="timing",
            benchmark="feature_cache",
            dataset="hymenoptera",
            splits={"train": 244, "validation": 153},
            evaluated_on="validation",
            repeats=len(speedups),
            arms={
                "guide": {"seconds": [100.0] * len(speedups)},
                "cached": {"seconds": [10.0] * len(speedups), "speedup_vs_guide": speedups},
            },
            primary_metric="seconds",
        )
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "finished_at": finished_at}))

    archive = results / "archive"
    timing(archive / "feature_cache_a.json", [9.0, 9.2, 9.1], "2026-11-01T10:00:00Z")
    timing(archive / "feature_cache_b.json", [8.0, 8.0, 8.0], "2026-11-20T10:00:00Z")
    # Another command (other settings) is not this run's history.
    timing(archive / "feature_cache_c.json", [1.0] * 3, "2026-11-25T10:00:00Z", ("--epochs", "2"))
    timing(results / "feature_cache.json", [6.8, 7.0, 7.2], "2026-12-01T10:00:00Z")
    assert report.main(["--root", str(root)]) == 0
    bench = (root / "benchmarks" / "README.md").read_text()
    section = bench.split("<!-- report:feature_cache -->")[1].split("<!-- /report:")[0]
    history = section.split("History of the ratios")[1]
    row = next(line for line in history.splitlines() if line.startswith("| cached |"))
    # Oldest first, then the current run; 7 is 12.5% below the previous 8.
    assert row.endswith("| 9.1 | 8 | 7 | -12.5% **drop** |"), row
    assert "| 1 |" not in section

    timing(results / "feature_cache.json", [7.6, 7.6, 7.6], "2026-12-01T10:00:00Z")
    report.main(["--root", str(root)])
    bench = (root / "benchmarks" / "README.md").read_text()
    assert "| 9.1 | 8 | 7.6 | -5.0% |" in bench  # within 10%: shown, not marked


def test_the_backbone_cost_table_of_the_guide_comes_from_its_results_file(common, report, tmp_path):
    root = copy_of_the_repository(tmp_path)
    guide = root / "docs" / "guide" / "choosing-a-backbone.md"

    def region(path):
        return path.read_text().split("<!-- report:backbone_costs -->")[1].split("<!-- /")[0]

    # Without a results file (the copy has none) the region says so.
    report.main(["--root", str(root)])
    assert region(guide).strip() == "`backbone_costs`: " + report.NO_RESULTS
    pairing = {"tuned": "nothing", "tuned_on": None, "pairing": "rotated rounds"}
    run = common.start_run(pairing, script=str(BENCHMARKS / "backbone_costs.py"), argv=[])
    facts = {
        "vit_b16": {"source": "KerasHub", "input_size": 224, "params": 85_798_656,
                    "feature_dim": 768, "keras_file_bytes": 343_500_000, "peak_rss_mb": 2048.0},
        "mobilenet": {"source": "keras.applications", "input_size": 224, "params": 3_228_864,
                      "feature_dim": 1024, "keras_file_bytes": None, "peak_rss_mb": None},
    }  # fmt: skip
    common.write_results(
        root / "benchmarks" / "results" / "backbone_costs.json",
        run,
        kind="timing",
        benchmark="backbone_costs",
        dataset="random_images",
        splits={"batch": 32},
        evaluated_on="batch",
        repeats=3,
        arms={
            "vit_b16": {
                "extract_ms_per_image": [270.0, 250.0, 300.0],
                "train_step_ms_per_image": [12000.0, 12500.0, 11000.0],
            },
            "mobilenet": {
                "extract_ms_per_image": [9.5, 9.0, 10.25],
                "train_step_ms_per_image": [30.0, 31.0, 29.0],
            },
        },
        primary_metric="train_step_ms_per_image",
        comparisons=[],
        details={"backbones": facts, "skipped": {"hub_mobilenet_v1": "no assets"}},
    )
    assert report.main(["--root", str(root)]) == 0
    table = region(guide)
    # Measured once: parameters in millions, the file in MB; times: median (min-max, n).
    assert (
        "| vit_b16 | KerasHub | 224 | 85.8 | 768 | 343.5 | 2048 | 270 (250–300, n=3) | "
        "12000 (11000–12500, n=3) |" in table
    )
    assert "| mobilenet | keras.applications | 224 | 3.229 | 1024 | – | – | 9.5 (9–10.25" in table
    assert "Not measured: `hub_mobilenet_v1`: no assets" in table
    # benchmarks/README.md shows the same table; the index and the summary list the file.
    assert region(root / "benchmarks" / "README.md") == table
    assert "`benchmarks/results/backbone_costs.json`" in (root / "README.md").read_text()
    assert report.main(["--root", str(root), "--check"]) == 0
    guide.write_text(guide.read_text().replace("| 85.8 |", "| 85.9 |"))
    assert report.main(["--root", str(root), "--check"]) == 1
    # A run without --peak_rss has no memory column.
    record = json.loads((root / "benchmarks" / "results" / "backbone_costs.json").read_text())
    for known in record["details"]["backbones"].values():
        known["peak_rss_mb"] = None
    plain = report.render("backbone_costs", [("r.json", record)])
    assert "peak memory MB" not in plain and "| 768 | 343.5 | 270 (250–300, n=3) |" in plain


def test_the_readme_summary_lists_a_suites_suite_level_arms_only(common, report, tmp_path):
    arms = {
        "ants:fixed": {"balanced_accuracy": [0.9, 0.91, 0.92]},
        "ants:ema": {"balanced_accuracy": [0.91, 0.92, 0.93]},
        "suite:fixed": {"balanced_accuracy": [0.8, 0.81, 0.82]},
        "suite:ema": {"balanced_accuracy": [0.81, 0.82, 0.83]},
    }
    path = tmp_path / "defaults_suite.json"
    record = accuracy_file(common, path, arms, seeds=(0, 1, 2))
    summary = report.render_summary([("benchmarks/results/defaults_suite.json", record)])
    assert "| suite:fixed |" in summary and "| suite:ema |" in summary
    assert "ants:" not in summary
