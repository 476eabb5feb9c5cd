"""Shared set-up of the benchmark scripts: where the assets are, the output folder, the tiny
synthetic image folder of the `--smoke` runs, and the results files: their schema
(`validate_results`) and their one writer (`start_run`, then `write_results`).

A results file is a verdict only if it follows the schema: what was tuned and on which split
is recorded when the run starts (`start_run(selection)`), accuracies are measured on a test
split that selected nothing, over at least `MIN_SEEDS` seeds (`MIN_SEEDS_CLOSE` paired runs
where two compared arms end within `CLOSE_MARGIN`: seeds, times the tasks an arm averages per
seed in a suite, `tasks_per_seed`), and every metric keeps its per-seed values beside
their mean, standard deviation and 95% confidence half-width. `benchmarks/report.py` renders
the tables of benchmarks/README.md and README.md from these files and checks them.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import math
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MOBILENET_WEIGHTS = "weights/mobilenet_1_0_224_tf_no_top.h5"
DATASETS = {
    "hymenoptera": "datasets/hymenoptera_data",
    "cats_and_dogs": "datasets/cats_and_dogs_filtered",
}


def assets_dir(flag: str | None, needs: str) -> pathlib.Path:
    """`--assets`, else `$KERAS_TRANSFER_ASSETS`, else `../shared/assets`; exits with the
    fix when `needs` (a path inside it) is missing."""
    path = pathlib.Path(
        flag or os.environ.get("KERAS_TRANSFER_ASSETS") or REPO_ROOT.parent / "shared" / "assets"
    )
    if not (path / needs).exists():
        raise SystemExit(
            f"{needs} not found under {path}: pass --assets or set KERAS_TRANSFER_ASSETS "
            "(or run with --smoke)."
        )
    return path


# The image files the benchmark subsets link to (the package's loader reads WebP too).
SUBSET_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def image_subset(folder: pathlib.Path, per_class: int, prefix: str) -> pathlib.Path:
    """A new temporary folder of symbolic links to `per_class` images of each class of
    `folder`, the first in a stable hash order of their names (the same subset on every run)."""
    from keras_transfer.data import splits as splits_lib

    root = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    for source in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [p for p in source.iterdir() if p.suffix.lower() in SUBSET_EXTENSIONS]
        files.sort(key=lambda p: (splits_lib.stable_unit(p.name, 0), p.name))
        (root / source.name).mkdir()
        for path in files[:per_class]:
            (root / source.name / path.name).symlink_to(path.resolve())
    return root


def results_path(output: str | None, smoke: bool, name: str) -> pathlib.Path:
    """`--output` if given; else a smoke run's file in a new temporary folder (never
    benchmarks/results/), else benchmarks/results/<name>.json."""
    if output:
        return pathlib.Path(output)
    if smoke:
        return pathlib.Path(tempfile.mkdtemp(prefix=f"{name}_smoke_")) / f"{name}_smoke.json"
    return REPO_ROOT / "benchmarks" / "results" / f"{name}.json"


class RunsFile:
    """Finished runs of a benchmark run in parts, one JSON object per line, keyed
    `task|arm|seed|commit`: a run already in the file is not run again.

    Args:
        flag: the script's `--runs_file`; default `benchmarks/results/partial/<name>_runs.jsonl`,
            or a new temporary folder's file for a smoke run.
        smoke: whether this is a smoke run.
        name: the benchmark's name.
    """

    def __init__(self, flag: str | None, smoke: bool, name: str):
        if flag:
            self.path = pathlib.Path(flag)
        elif smoke:
            self.path = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}_smoke_")) / "runs.jsonl"
        else:
            self.path = REPO_ROOT / "benchmarks" / "results" / "partial" / f"{name}_runs.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.runs = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    run = json.loads(line)
                    self.runs[run["key"]] = run

    @staticmethod
    def key(task: str, arm: str, seed: int, commit: str) -> str:
        return f"{task}|{arm}|{seed}|{commit}"

    @staticmethod
    def runs_commit(pinned: str | None, current: str) -> str:
        """The commit whose runs a script reads: `pinned` (a `--runs_commit`, as the full
        hash the keys hold) or else `current`, this checkout's."""
        return (_git("rev-parse", pinned) or pinned) if pinned else current

    def to_run(self, key: str, pinned: bool) -> bool:
        """Whether the run `key` must still be trained: it is not in the file. With a
        pinned commit nothing trains here, so a missing run is an error."""
        if key in self.runs:
            return False
        if pinned:
            raise SystemExit(f"{key} is not in {self.path}: run it from that commit.")
        return True

    def add(self, key: str, run: dict) -> dict:
        """Appends `run` (with its key) to the file and returns it."""
        task, arm, seed, _ = key.split("|")
        self.runs[key] = {"key": key, "task": task, "arm": arm, "seed": int(seed), **run}
        with self.path.open("a") as out:
            out.write(json.dumps(self.runs[key]) + "\n")
        return self.runs[key]


def held_out_folder(root: pathlib.Path) -> pathlib.Path:
    """The dataset's own held-out folder (`val/`, `validation/` or `valid/`, as the package's
    loader finds them): hymenoptera_data has `val/`, cats_and_dogs_filtered `validation/`."""
    for name in ("val", "validation", "valid"):
        if (root / name).is_dir():
            return root / name
    sys.exit(f"{root} has no val/, validation/ or valid/ folder to use as the test split.")


def output_dir(flag: str | None, name: str) -> pathlib.Path:
    path = pathlib.Path(flag) if flag else REPO_ROOT / "benchmarks" / "results" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def smoke_image_folder(per_class: int = 8, size: int = 40) -> pathlib.Path:
    """A temporary folder with train/ and validation/ splits of two colour-coded classes."""
    import tensorflow as tf

    root = pathlib.Path(tempfile.mkdtemp(prefix="keras_transfer_smoke_"))
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for label, name in enumerate(("ants", "bees")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = rng.uniform(0, 80, (size, size + 8, 3))
                image[..., label] += 150
                encoded = tf.io.encode_jpeg(tf.constant(image.clip(0, 255).astype("uint8")))
                (folder / f"{i}.jpg").write_bytes(encoded.numpy())
    return root


def write_json(path: pathlib.Path, result: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def mobilenet_features(
    assets: pathlib.Path, dataset: str, image_size: int = 224, cache_dir: str | None = None
) -> dict:
    """Average-pooled ImageNet MobileNet V1 features of a dataset's training (central crop,
    no augmentation) and validation images, one backbone pass per image.

    The arrays are kept in `cache_dir` (default: a folder in the system temp directory,
    never in the repository), so that several benchmarks (and reruns) share one extraction.
    Returns `{"train_x", "train_y", "val_x", "val_y", "class_names", "extract_seconds",
    "from_cache"}`; `extract_seconds` is the time of the extraction that wrote the cache.
    """
    import keras_transfer as kt

    folder = pathlib.Path(cache_dir or tempfile.gettempdir()) / "keras_transfer_bench_features"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"mobilenet_v1_{dataset}_{image_size}.npz"
    if path.exists():
        with np.load(path) as saved:
            result = {key: saved[key] for key in saved.files}
        result["class_names"] = [str(n) for n in result["class_names"]]
        result["extract_seconds"] = float(result["extract_seconds"])
        result["from_cache"] = True
        return result
    data = kt.image_folder_dataset(
        assets / DATASETS[dataset], image_size, batch_size=32, augment=False, shuffle=False
    )
    backbone = kt.create_backbone(
        "mobilenet",
        input_shape=(image_size, image_size, 3),
        weights=str(assets / MOBILENET_WEIGHTS),
    )
    extractor = kt.feature_extractor(backbone)
    train = kt.extract_features(extractor, data.train_unaugmented, verbose=0)
    validation = kt.extract_features(extractor, data.validation, verbose=0)
    result = {
        "train_x": np.asarray(train.features),
        "train_y": np.asarray(train.labels).astype(np.int64),
        "val_x": np.asarray(validation.features),
        "val_y": np.asarray(validation.labels).astype(np.int64),
        "class_names": list(data.class_names),
        "extract_seconds": train.seconds + validation.seconds,
    }
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in result.items()})
    os.replace(tmp, path)
    result["from_cache"] = False
    return result


# --- results files: the schema and its one writer ------------------------------------------

SCHEMA_VERSION = 1
KINDS = ("accuracy", "timing", "ranking")
# The range of the primary metric per kind with seeds: accuracies are fractions, rank
# correlations (Kendall's tau of a score against a measured accuracy) lie in [-1, 1].
METRIC_RANGE = {"accuracy": (0.0, 1.0), "ranking": (-1.0, 1.0)}
MIN_SEEDS = 3  # seeds behind every accuracy verdict
MIN_SEEDS_CLOSE = 5  # paired runs where two compared arms differ by less than CLOSE_MARGIN
CLOSE_MARGIN = 0.02  # 2 points of a metric in [0, 1]
SPLIT_SCHEMES = ("fixed", "repeated_stratified")
SUMMARY_KEYS = ("mean", "std", "ci95", "per_seed")
REQUIRED_KEYS = (
    "schema_version",
    "kind",
    "benchmark",
    "dataset",
    "splits",
    "split_scheme",
    "evaluated_on",
    "selection",
    "primary_metric",
    "comparisons",
    "arms",
    "command",
    "git_commit",
    "git_dirty",
    "load_average",
    "seconds",
    "started_at",
    "finished_at",
)

# t(0.975, df) for df = 1..30 (two-sided 95%), used when SciPy is not installed.
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
    2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
    2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
    2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom: SciPy's when it is
    installed, else the table above (df <= 30) or the Cornish-Fisher expansion (df > 30,
    within 1e-7 of the exact value)."""
    try:
        from scipy import stats
    except ImportError:
        if df <= len(_T975):
            return _T975[df - 1]
        z, n = 1.959963984540054, float(df)
        return (
            z
            + (z**3 + z) / (4 * n)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * n**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * n**4)
        )
    return float(stats.t.ppf(0.975, df))


def summarize(values) -> dict:
    """`{mean, std, ci95, per_seed}` of one metric's per-seed (or per-repeat) values: `std`
    with ddof=1, `ci95` the half-width of the two-sided 95% t-interval of the mean
    (`t(0.975, n - 1) * std / sqrt(n)`); both `None` for a single value."""
    per_seed = [float(v) for v in values]
    if not per_seed:
        raise ValueError("summarize needs at least one value (one per seed or repeat).")
    n = len(per_seed)
    mean = math.fsum(per_seed) / n
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "per_seed": per_seed}
    std = statistics.stdev(per_seed)
    return {
        "mean": mean,
        "std": std,
        "ci95": t_quantile_975(n - 1) * std / math.sqrt(n),
        "per_seed": per_seed,
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _load_triplet() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@dataclasses.dataclass(frozen=True)
class Run:
    """What `start_run` records before a run: the selection statement, the command, the
    commit the code comes from, the clock and the load average."""

    selection: dict
    command: str
    git_commit: str
    git_dirty: bool
    started_at: str
    start: float
    load_average_start: list[float] | None


def start_run(selection: dict, *, script: str, argv: list[str] | None = None) -> Run:
    """Records the selection before the run starts (call it before any training).

    `selection` says what was tuned or fixed and how: `{"tuned": "...", "tuned_on": split or
    None}` (`tuned_on` is the split that chose settings or epochs; never the split the
    metrics are evaluated on); a timing benchmark adds `"pairing"`, the rule that pairs its
    arms' repeats (e.g. "round r runs every arm back to back in a rotated order; ratios are
    taken within a round"). `script` is the benchmark's `__file__`, `argv` its arguments
    (default `sys.argv[1:]`); together they are the command written to the results file.
    """
    if not isinstance(selection, dict):
        raise TypeError(
            f"selection must be a dict like {{'tuned': ..., 'tuned_on': ...}}, got {selection!r}."
        )
    path = pathlib.Path(script).resolve()
    try:
        shown = path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        shown = str(path)
    args = list(sys.argv[1:] if argv is None else argv)
    return Run(
        selection={**selection, "recorded_at": _now()},
        command=shlex.join(["python", shown, *args]),
        git_commit=_git("rev-parse", "HEAD") or "unknown",
        git_dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
        started_at=_now(),
        start=time.perf_counter(),
        load_average_start=_load_triplet(),
    )


def write_results(
    path: str | os.PathLike,
    run: Run,
    *,
    kind: str,
    benchmark: str,
    dataset: str,
    splits: dict,
    evaluated_on: str,
    arms: dict,
    primary_metric: str,
    seeds: list[int] | None = None,
    repeats: int | None = None,
    comparisons: list | None = None,
    split_scheme: str = "fixed",
    details: dict | None = None,
    tasks_per_seed: dict[str, int] | None = None,
) -> dict:
    """Writes one results file (atomically) and returns its record.

    `arms` maps each arm to `{metric: [one value per seed (accuracy, ranking) or repeat
    (timing)]}`;
    each list becomes `summarize(values)`. `seeds` (accuracy) or `repeats` (timing) say what
    the lists run over; `comparisons` lists the arm pairs the verdict compares (default:
    every pair). `details` holds anything else the script measured (curves, settings).
    `tasks_per_seed` names the arms whose per-seed value is a mean over several tasks (a
    suite), with their number of tasks: a comparison of two such arms pairs tasks x seeds
    independent runs, which is what `MIN_SEEDS_CLOSE` counts.
    The file is written even when it breaks the schema (a long run is never lost); the
    problems are printed, and `report.py --check` refuses such a file in benchmarks/results/.
    """
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "benchmark": benchmark,
        "dataset": dataset,
        "splits": dict(splits),
        "split_scheme": split_scheme,
        "evaluated_on": evaluated_on,
        **({"seeds": list(seeds)} if seeds is not None else {}),
        **({"repeats": repeats} if repeats is not None else {}),
        "selection": run.selection,
        "primary_metric": primary_metric,
        "comparisons": [list(pair) for pair in comparisons]
        if comparisons is not None
        else [list(pair) for pair in itertools.combinations(arms, 2)],
        "arms": {
            arm: {metric: summarize(values) for metric, values in metrics.items()}
            for arm, metrics in arms.items()
        },
        "command": run.command,
        "git_commit": run.git_commit,
        "git_dirty": run.git_dirty,
        "load_average": {"start": run.load_average_start, "end": _load_triplet()},
        "seconds": round(time.perf_counter() - run.start, 1),
        "started_at": run.started_at,
        "finished_at": _now(),
        "details": details or {},
        **({"tasks_per_seed": dict(tasks_per_seed)} if tasks_per_seed else {}),
    }
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    problems = validate_results(record)
    if problems:
        print(
            f"{path} is not a verdict (it breaks the results schema): " + "; ".join(problems),
            file=sys.stderr,
        )
    return record


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_summary(where: str, summary, n: int) -> list[str]:
    """The problems of one `{mean, std, ci95, per_seed}`: shape, and agreement with the
    per-seed values (a hand-edited mean is caught here)."""
    if not isinstance(summary, dict) or set(summary) != set(SUMMARY_KEYS):
        return [f"{where}: must be {{mean, std, ci95, per_seed}}, got {summary!r}"]
    values = summary["per_seed"]
    if not isinstance(values, list) or not values or not all(_number(v) for v in values):
        return [f"{where}: per_seed must be a list of finite numbers, got {values!r}"]
    if len(values) != n:
        return [f"{where}: {len(values)} per-seed values for {n} seeds or repeats"]
    expected = summarize(values)
    problems = []
    for key in ("mean", "std", "ci95"):
        want, got = expected[key], summary[key]
        if want is None and got is None:
            continue
        if not _number(got) or not math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-9):
            problems.append(f"{where}: {key} {got!r} does not match its per-seed values ({want})")
    return problems


def _check_selection(record: dict) -> list[str]:
    selection = record.get("selection")
    if not isinstance(selection, dict) or not str(selection.get("tuned") or "").strip():
        return [
            "selection: missing; start_run(selection={'tuned': ..., 'tuned_on': ...}) records "
            "what was tuned, and on which split, before the run"
        ]
    problems = []
    if not isinstance(selection.get("recorded_at"), str):
        problems.append("selection: no recorded_at (record it with start_run before the run)")
    tuned_on = selection.get("tuned_on")
    if tuned_on is not None and not isinstance(tuned_on, str):
        problems.append(f"selection: tuned_on must be a split name or null, got {tuned_on!r}")
    if record.get("kind") in METRIC_RANGE and tuned_on == record.get("evaluated_on"):
        problems.append(
            f"selection: settings were tuned on the {tuned_on!r} split the accuracies are "
            "evaluated on; tune on the validation split and report the test split"
        )
    if record.get("kind") == "timing" and not str(selection.get("pairing") or "").strip():
        problems.append(
            "selection: a timing benchmark states its pairing rule (selection['pairing']: "
            "how the repeats of the arms are paired)"
        )
    return problems


def _check_accuracy(record: dict, seeds: list) -> list[str]:
    """Accuracy and ranking verdicts: a test split, enough seeds, 5 where compared arms are
    close, and the primary metric in its range (`METRIC_RANGE`)."""
    problems = []
    kind = record.get("kind")
    a_kind = f"an {kind}" if kind == "accuracy" else f"a {kind}"
    splits = record.get("splits") if isinstance(record.get("splits"), dict) else {}
    if record.get("evaluated_on") != "test" or not splits.get("test"):
        problems.append(
            f"evaluated_on {record.get('evaluated_on')!r} with splits {splits}: {a_kind} "
            "verdict is measured on a held-out test split (splits['test'] > 0, "
            "evaluated_on='test')"
        )
    if record.get("split_scheme") not in SPLIT_SCHEMES:
        problems.append(f"split_scheme must be one of {SPLIT_SCHEMES}")
    if len(seeds) < MIN_SEEDS:
        problems.append(f"seeds: {len(seeds)} seed(s); {a_kind} verdict needs at least {MIN_SEEDS}")
    arms, metric = record.get("arms") or {}, record.get("primary_metric")
    means = {
        arm: metrics[metric]["mean"]
        for arm, metrics in arms.items()
        if isinstance(metrics, dict)
        and isinstance(metrics.get(metric), dict)
        and _number(metrics[metric].get("mean"))
    }
    low, high = METRIC_RANGE[kind]
    for arm, mean in means.items():
        if not low <= mean <= high:
            problems.append(
                f"arms.{arm}.{metric}: {a_kind} metric lies in [{low:g}, {high:g}]"
                if kind != "accuracy"
                else f"arms.{arm}.{metric}: an accuracy metric is a fraction in [0, 1]"
            )
    for pair in record.get("comparisons") or []:
        if not (isinstance(pair, list) and len(pair) == 2 and all(a in arms for a in pair)):
            problems.append(f"comparisons: {pair!r} is not a pair of arms of this file")
            continue
        a, b = pair
        if a in means and b in means and abs(means[a] - means[b]) < CLOSE_MARGIN:
            runs = len(seeds) * min(_tasks_per_seed(record, a), _tasks_per_seed(record, b))
            if runs < MIN_SEEDS_CLOSE:
                problems.append(
                    f"arms {a} and {b} differ by {100 * abs(means[a] - means[b]):.2f} points "
                    f"of {metric} (< {100 * CLOSE_MARGIN:g}): the verdict needs "
                    f"{MIN_SEEDS_CLOSE} paired runs (seeds x tasks_per_seed), not {runs}"
                )
    return problems


def _tasks_per_seed(record: dict, arm: str) -> int:
    """How many tasks `arm`'s per-seed value averages (`write_results(tasks_per_seed=)`):
    1 unless the file says otherwise with a positive whole number."""
    count = (record.get("tasks_per_seed") or {}).get(arm, 1)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1


def _check_arms(record: dict, n: int) -> list[str]:
    arms, metric = record.get("arms"), record.get("primary_metric")
    if not isinstance(arms, dict) or not arms:
        return ["arms: missing or empty ({arm: {metric: {mean, std, ci95, per_seed}}})"]
    problems = []
    for arm, metrics in arms.items():
        if not isinstance(metrics, dict) or not metrics:
            problems.append(f"arms.{arm}: no metrics")
            continue
        if metric not in metrics:
            problems.append(f"arms.{arm}: no primary metric {metric!r}")
        for name, summary in metrics.items():
            problems += _check_summary(f"arms.{arm}.{name}", summary, n)
    return problems


def validate_results(record) -> list[str]:
    """Every way `record` (a results file's content) breaks the schema, one sentence each;
    `[]` for a file that is a verdict."""
    if not isinstance(record, dict):
        return [f"a results file holds one JSON object, got {type(record).__name__}"]
    missing = [key for key in REQUIRED_KEYS if key not in record]
    problems = [f"missing fields: {', '.join(missing)}"] if missing else []
    if record.get("schema_version") != SCHEMA_VERSION:
        problems.append(
            f"schema_version {record.get('schema_version')!r}, expected {SCHEMA_VERSION} "
            "(written by _common.write_results)"
        )
    kind = record.get("kind")
    if kind not in KINDS:
        problems.append(f"kind {kind!r}: one of {KINDS}")
    for key in ("benchmark", "dataset", "primary_metric", "command", "git_commit"):
        if key in record and not (isinstance(record[key], str) and record[key]):
            problems.append(f"{key}: a non-empty string")
    splits = record.get("splits")
    if not (
        isinstance(splits, dict)
        and splits
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in splits.values())
    ):
        problems.append(f"splits: {{split name: number of examples}}, got {splits!r}")
    problems += _check_selection(record)
    for arm, count in (record.get("tasks_per_seed") or {}).items():
        if arm not in (record.get("arms") or {}) or _tasks_per_seed(record, arm) != count:
            problems.append(
                f"tasks_per_seed.{arm}: a positive whole number of tasks for an arm of this "
                f"file, got {count!r}"
            )
    if kind in METRIC_RANGE:
        seeds = record.get("seeds")
        if not (isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)):
            problems.append(f"seeds: a list of integer seeds, got {seeds!r}")
            seeds = []
        elif len(set(seeds)) != len(seeds):
            problems.append(f"seeds: repeated seeds in {seeds}")
        problems += _check_accuracy(record, seeds)
        problems += _check_arms(record, len(seeds))
    elif kind == "timing":
        repeats = record.get("repeats")
        if not (isinstance(repeats, int) and not isinstance(repeats, bool) and repeats >= 1):
            problems.append(f"repeats: a timing file has repeats >= 1, got {repeats!r}")
            repeats = 0
        problems += _check_arms(record, repeats)
    seconds = record.get("seconds")
    if "seconds" in record and not (_number(seconds) and seconds >= 0):
        problems.append(f"seconds: a number >= 0, got {seconds!r}")
    load = record.get("load_average")
    if "load_average" in record and not (isinstance(load, dict) and {"start", "end"} <= set(load)):
        problems.append("load_average: {start: [1, 5, 15 min] or null, end: ...}")
    return problems
