"""Renders the benchmark tables from the results files, and checks them.

Every table of results in benchmarks/README.md and README.md sits between two comments,
`<!-- report:NAME -->` and `<!-- /report:NAME -->`, and is generated from
`benchmarks/results/*.json` (the current runs; superseded files live in
`benchmarks/results/archive/` and are not read):

- `index` (benchmarks/README.md): one row per current results file;
- `<benchmark>` (benchmarks/README.md): each current file of that benchmark, its selection,
  command and commit, and a table of mean ± 95% confidence half-width (n seeds) per arm
  and metric; for an accuracy file, each of its `comparisons` paired by seed (the mean
  difference of the primary metric in points, its 95% half-width, the seeds above);
- `summary` (README.md): the primary metric of every arm of every current file (of a suite
  of tasks, its `suite:` arms);
- `backbone_costs` (docs/guide/choosing-a-backbone.md, and benchmarks/README.md): the cost
  table of `backbone_costs.py`, one row per backbone: what was measured once (parameters,
  feature dimension, `.keras` size, memory) and the median time per image over the rounds.

A timing file's section ends with the history of its ratios (`ratio_*`, `speedup_*`): the
same command's earlier runs in `archive/` that follow the schema, oldest first, and the
change of the current run against the previous one; a drop of more than 10%
(`REGRESSION`) is marked, so a performance regression shows in the table.

    python benchmarks/report.py            # rewrites the tables from the files
    python benchmarks/report.py --check    # exit 1 listing each stale table, each region
                                           # missing, and each file breaking the schema

Reads JSON only: no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

TARGETS = {
    "benchmarks/README.md": ("index",),
    "README.md": ("summary",),
    "docs/guide/choosing-a-backbone.md": ("backbone_costs",),
}
# A marker is a line of its own (a marker quoted inside a sentence is not one).
REGION = re.compile(
    r"^<!-- report:(?P<name>[\w.-]+) -->\n(?P<body>.*?)^<!-- /report:(?P=name) -->$",
    re.S | re.M,
)
OPENING = re.compile(r"^<!-- report:([\w.-]+) -->$", re.M)
NO_RESULTS = (
    "No current results file: the verdicts are being re-measured under the "
    "train/validation/test protocol. Earlier runs are kept as history in "
    "`benchmarks/results/archive/`; they are not results."
)


REGRESSION = 0.10  # a ratio more than 10% below the previous run's is marked
HISTORY_RUNS = 5  # archived runs shown per history table


def load_results(root: pathlib.Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """The current results files (`benchmarks/results/*.json`, sorted) that follow the schema,
    as (path relative to `root`, record), and one problem per file that does not."""
    valid, problems = [], []
    for path in sorted((root / "benchmarks" / "results").glob("*.json")):
        name = path.relative_to(root).as_posix()
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            problems.append(f"{name}: not readable JSON ({error})")
            continue
        found = _common.validate_results(record)
        if found:
            problems.append(
                f"{name}: breaks the results schema (write it with _common.write_results, "
                "or move it to benchmarks/results/archive/): " + "; ".join(found)
            )
        else:
            valid.append((name, record))
    return valid, problems


def load_archive(root: pathlib.Path) -> list[tuple[str, dict]]:
    """The archived results files that follow the schema (older formats carry no history
    this report can read), as (path relative to `root`, record)."""
    archived = []
    for path in sorted((root / "benchmarks" / "results" / "archive").glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not _common.validate_results(record):
            archived.append((path.relative_to(root).as_posix(), record))
    return archived


def _same_command(command: str) -> str:
    """`command` without the arguments that only say where files are."""
    words = command.split()
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("--output", "--assets", "--output_dir"):
            skip = True
            continue
        if not word.startswith(("--output=", "--assets=", "--output_dir=")):
            kept.append(word)
    return " ".join(kept)


def _ratio_metrics(record: dict) -> list[tuple[str, str]]:
    return [
        (arm, metric)
        for arm, metrics in record["arms"].items()
        for metric in metrics
        if metric.startswith(("ratio", "speedup"))
    ]


def render_history(record: dict, archived: list[tuple[str, dict]]) -> list[str]:
    """The history table of a timing file's ratios (module docstring), or `[]`."""
    ratios = _ratio_metrics(record)
    if record["kind"] != "timing" or not ratios:
        return []
    earlier = sorted(
        (r for _, r in archived if r["benchmark"] == record["benchmark"]
         and r["dataset"] == record["dataset"]
         and _same_command(r["command"]) == _same_command(record["command"])
         and r["finished_at"] < record["finished_at"]),
        key=lambda r: r["finished_at"],
    )[-HISTORY_RUNS:]  # fmt: skip
    if not earlier:
        return [
            "History: no earlier run of this command in `archive/` follows the schema; the "
            "next run is compared with this one.",
            "",
        ]
    runs = [*earlier, record]
    lines = [
        f"History of the ratios (each run: the mean over its repeats), a drop "
        f"of more than {REGRESSION:.0%} against the previous run marked:",
        "",
        "| arm | metric | " + " | ".join(f"`{r['git_commit'][:7]}` {r['finished_at'][:10]}"
                                          for r in runs) + " | change |",
        "|---|---|" + "---|" * (len(runs) + 1),
    ]  # fmt: skip
    for arm, metric in ratios:
        means = [r["arms"].get(arm, {}).get(metric, {}).get("mean") for r in runs]
        cells = [_number(m) if m is not None else "–" for m in means]
        previous = next((m for m in reversed(means[:-1]) if m is not None), None)
        change = "–"
        if previous:
            relative = means[-1] / previous - 1
            change = f"{relative:+.1%}" + (" **drop**" if relative < -REGRESSION else "")
        lines.append(f"| {_cell(arm)} | {_cell(metric)} | " + " | ".join(cells) + f" | {change} |")
    return [*lines, ""]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: float) -> str:
    return f"{value:.4g}"


def _estimate(summary: dict, scale: float = 1.0) -> str:
    n = len(summary["per_seed"])
    mean = _number(scale * summary["mean"])
    if summary["ci95"] is None:
        return f"{mean} (n={n})"
    return f"{mean} ± {_number(scale * summary['ci95'])} (n={n})"


def _runs_over(record: dict) -> str:
    if record["kind"] in _common.METRIC_RANGE:
        return "seeds " + ", ".join(str(s) for s in record["seeds"])
    return f"{record['repeats']} repeats"


def _splits(record: dict) -> str:
    return " / ".join(f"{name} {size}" for name, size in record["splits"].items())


def _load(record: dict) -> str:
    def one(values):
        return " ".join(f"{v:g}" for v in values) if values else "unknown"

    load = record["load_average"]
    return f"{one(load['start'])} → {one(load['end'])}"


def _commit(record: dict) -> str:
    return record["git_commit"][:10] + (" (uncommitted changes)" if record["git_dirty"] else "")


def render_index(results: list[tuple[str, dict]]) -> str:
    if not results:
        return NO_RESULTS
    rows = [
        "Current runs: the files in `benchmarks/results/`. A superseded run is moved to "
        "`benchmarks/results/archive/` and leaves these tables.",
        "",
        "| results file | benchmark | kind | dataset | splits | evaluated on | runs over | "
        "commit | finished | seconds | load average (1, 5, 15 min) start → end |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results:
        cells = (
            f"`{name}`",
            r["benchmark"],
            r["kind"],
            r["dataset"],
            f"{_splits(r)} ({r['split_scheme']})",
            r["evaluated_on"],
            _runs_over(r),
            f"`{_commit(r)}`",
            r["finished_at"],
            f"{r['seconds']:g}",
            _load(r),
        )
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)


def _file_section(name: str, r: dict) -> list[str]:
    selection = r["selection"]
    tuned_on = selection.get("tuned_on")
    lines = [
        f"**`{name}`** (current run; commit `{_commit(r)}`, finished {r['finished_at']}, "
        f"{r['seconds']:g} s): {r['kind']} on `{r['dataset']}`, evaluated on the "
        f"{r['evaluated_on']} split ({_splits(r)}, {r['split_scheme']}), {_runs_over(r)}.",
        "",
        f"- Command: `{r['command']}`",
        f"- Selection (recorded {selection['recorded_at']}, before the run): "
        + " ".join(str(selection["tuned"]).split())
        + (f" (tuned on the {tuned_on} split)" if tuned_on else " (nothing tuned)"),
    ]
    if selection.get("pairing"):
        lines.append("- Pairing: " + " ".join(str(selection["pairing"]).split()))
    metrics = list(dict.fromkeys(m for arm in r["arms"].values() for m in arm))
    noun = "seeds" if r["kind"] in _common.METRIC_RANGE else "repeats"
    lines += [
        "",
        f"| arm | n {noun} | " + " | ".join(_cell(m) for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for arm, values in r["arms"].items():
        n = len(next(iter(values.values()))["per_seed"])
        cells = [_estimate(values[m]) if m in values else "–" for m in metrics]
        lines.append(f"| {_cell(arm)} | {n} | " + " | ".join(_cell(c) for c in cells) + " |")
    return lines + _paired_section(r)


def _paired(r: dict, pair: list) -> dict | None:
    """The per-seed differences `b - a` of the primary metric (seed k of each arm is one
    pair), summarised; `None` when the arms do not have one value per seed each."""
    metric, (a, b) = r["primary_metric"], pair
    values = [r["arms"][arm].get(metric, {}).get("per_seed") for arm in (a, b)]
    if r["kind"] != "accuracy" or any(v is None or len(v) != len(r["seeds"]) for v in values):
        return None
    differences = [after - before for before, after in zip(*values)]
    return {**_common.summarize(differences), "above": sum(d > 0 for d in differences)}


def _paired_section(r: dict) -> list[str]:
    """An accuracy file's `comparisons`, paired by seed: mean difference in points ± the
    95% t half-width, and on how many seeds the second arm is above the first."""
    rows = []
    for pair in r.get("comparisons") or []:
        paired = _paired(r, pair)
        if paired is None:
            continue
        n = len(paired["per_seed"])
        change = _estimate(paired, scale=100)
        rows.append(
            f"| {_cell(pair[1])} − {_cell(pair[0])} | {change} | {paired['above']} of {n} |"
        )
    if not rows:
        return []
    return [
        "",
        f"Paired by seed ({_cell(r['primary_metric'])}, points):",
        "",
        "| difference | mean ± 95% half-width (n) | seeds above |",
        "|---|---|---|",
        *rows,
    ]


def render_benchmark(
    benchmark: str, results: list[tuple[str, dict]], archived: list[tuple[str, dict]] = ()
) -> str:
    mine = [(name, r) for name, r in results if r["benchmark"] == benchmark]
    if not mine:
        return f"`{benchmark}`: " + NO_RESULTS
    lines = []
    for name, r in mine:
        lines += [*_file_section(name, r), "", *render_history(r, list(archived))]
    lines.append("Each cell: mean ± 95% confidence half-width (t-interval over the n values).")
    return "\n".join(lines)


def render_summary(results: list[tuple[str, dict]]) -> str:
    if not results:
        return NO_RESULTS
    rows = [
        "Mean ± 95% confidence half-width over n seeds (accuracy) or repeats (timing), from "
        "the current results files; every table, command and selection: "
        "[benchmarks/README.md](benchmarks/README.md).",
        "",
        "| benchmark | dataset | arm | metric (split) | mean ± ci95 (n) | results file | commit |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results:
        metric = r["primary_metric"]
        # A suite of tasks (defaults_suite.py) is summarised by its suite-level arms.
        arms = {a: v for a, v in r["arms"].items() if a.startswith("suite:")} or r["arms"]
        for arm, values in arms.items():
            cells = (
                r["benchmark"],
                r["dataset"],
                arm,
                f"{metric} ({r['evaluated_on']})",
                _estimate(values[metric]),
                f"`{name}`",
                f"`{_commit(r)}`",
            )
            rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)


def _amount(value: float) -> str:
    """4 significant digits, without an exponent from 1000 up (1234, 12345)."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _or_dash(value) -> str:
    if value is None:
        return "–"
    return _amount(value) if isinstance(value, float) else str(value)


def _median_range(summary: dict) -> str:
    values = summary["per_seed"]
    median, low, high = statistics.median(values), min(values), max(values)
    return f"{_amount(median)} ({_amount(low)}–{_amount(high)}, n={len(values)})"


def render_backbone_costs(results: list[tuple[str, dict]]) -> str:
    """The table of `backbone_costs.py`: per backbone, `details.backbones` (measured once;
    the peak memory column when the run measured it) and the median extraction and
    fine-tuning step time per image over the rounds."""
    mine = [(name, r) for name, r in results if r["benchmark"] == "backbone_costs"]
    if not mine:
        return "`backbone_costs`: " + NO_RESULTS
    lines = []
    for name, r in mine:
        details = r["details"]
        facts = details.get("backbones") or {}
        memory = any(known.get("peak_rss_mb") is not None for known in facts.values())
        lines += [
            f"**`{name}`** (commit `{_commit(r)}`, finished {r['finished_at']}, "
            f"{r['seconds']:g} s; {_runs_over(r)} of one batch of {_splits(r)} images on "
            f"{details.get('backend', 'an unrecorded backend')}; load average {_load(r)}): "
            f"`{r['command']}`",
            "",
            "| backbone | source | input px | parameters (M) | feature dim | `.keras` MB | "
            + ("peak memory MB | " if memory else "")
            + "extraction ms/image | fine-tuning step ms/image |",
            "|---|---|---|---|---|---|" + ("---|" if memory else "") + "---|---|",
        ]
        for arm, metrics in r["arms"].items():
            known = facts.get(arm, {})
            params, size = known.get("params"), known.get("keras_file_bytes")
            cells = [
                arm,
                known.get("source"),
                known.get("input_size"),
                params / 1e6 if params is not None else None,
                known.get("feature_dim"),
                size / 1e6 if size is not None else None,
                *([known.get("peak_rss_mb")] if memory else []),
                _median_range(metrics["extract_ms_per_image"]),
                _median_range(metrics["train_step_ms_per_image"]),
            ]
            lines.append("| " + " | ".join(_cell(_or_dash(c)) for c in cells) + " |")
        skipped = details.get("skipped") or {}
        if skipped:
            lines += ["", "Not measured: " + "; ".join(f"`{k}`: {v}" for k, v in skipped.items())]
        lines.append("")
    lines.append(
        "Times: median (min–max) over the n rounds, each one call on one batch after a warm-up. "
        "Peak memory (with `--peak_rss`): the peak resident memory of a process that built the "
        "backbone and ran its warm-up (TensorFlow, weights, gradients, Adam's slots, "
        "activations)."
    )
    return "\n".join(lines)


def render(name: str, results: list[tuple[str, dict]], archived=()) -> str:
    if name == "index":
        return render_index(results)
    if name == "summary":
        return render_summary(results)
    if name == "backbone_costs":
        return render_backbone_costs(results)
    return render_benchmark(name, results, archived)


def update(
    text: str, results: list[tuple[str, dict]], archived=()
) -> tuple[str, list[str], list[str]]:
    """`text` with every region re-rendered, the names of the regions, and the names of
    those whose content changed."""
    names, changed = [], []

    def replace(match: re.Match) -> str:
        name = match.group("name")
        names.append(name)
        body = f"\n{render(name, results, archived)}\n\n"
        if match.group("body") != body:
            changed.append(name)
        return f"<!-- report:{name} -->\n{body}<!-- /report:{name} -->"

    return REGION.sub(replace, text), names, changed


def run(root: pathlib.Path, check: bool) -> list[str]:
    """Renders (or, with `check`, compares) every region; returns the problems."""
    results, problems = load_results(root)
    archived = load_archive(root)
    rendered_benchmarks = set()
    for target, required in TARGETS.items():
        path = root / target
        if not path.is_file():
            problems.append(f"{target}: missing (it holds the tables {', '.join(required)})")
            continue
        text = path.read_text(encoding="utf-8")
        new, names, changed = update(text, results, archived)
        if target == "benchmarks/README.md":
            rendered_benchmarks.update(names)
        unclosed = sorted(set(OPENING.findall(text)) - set(names))
        problems += [f"{target}: <!-- report:{n} --> has no <!-- /report:{n} -->" for n in unclosed]
        problems += [
            f"{target}: no <!-- report:{n} --> ... <!-- /report:{n} --> region"
            for n in required
            if n not in names
        ]
        if check:
            problems += [
                f"{target}: table {n!r} differs from what the results files give "
                "(run python benchmarks/report.py)"
                for n in changed
            ]
        elif new != text:
            path.write_text(new, encoding="utf-8")
    for name, record in results:
        if record["benchmark"] not in rendered_benchmarks:
            problems.append(
                f"{name}: benchmarks/README.md has no <!-- report:{record['benchmark']} --> "
                f"... <!-- /report:{record['benchmark']} --> region for its table"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a table is stale"
    )
    parser.add_argument(
        "--root", default=str(_common.REPO_ROOT), help="the repository (default: this one)"
    )
    args = parser.parse_args(argv)
    problems = run(pathlib.Path(args.root), args.check)
    for problem in problems:
        print(problem)
    if not problems:
        print(
            "report: every table matches benchmarks/results/*.json"
            if args.check
            else "report: tables rewritten from benchmarks/results/*.json"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
