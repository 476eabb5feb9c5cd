"""LoRA against full fine-tuning: test accuracy, trainable parameters and train time, each
arm's learning rate chosen on the validation split from one grid.

LoRA: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022
(arXiv:2106.09685), through `kt.fit_two_phase(fine_tune="lora")` (Keras' `enable_lora`).

Per seed, each step in its own Python process (so that each run's peak RSS is its own):

1. `head`: the pretrained backbone frozen, the head trained for a fixed number of epochs on
   cached features (`fit_feature_extractor`, images) or on the frozen encoder (text); saved
   as `head.keras`. It is the `head_only` arm and the start of every fine-tuning run.
2. one fine-tuning run per arm and learning rate: `full` (every block, BatchNorm in
   inference mode), `lora` (rank `--lora_rank` on every block; MiniLM: query/value) and,
   with `--arms ...,full_frozen_depthwise`, full fine-tuning with the `DepthwiseConv2D`
   layers frozen (Keras LoRA cannot adapt them). The kept epoch is the one with the lowest
   validation loss (its weights restored). The saved artefact is `model.keras`, or the LoRA
   adapter (`adapter.weights.h5`).
3. `test`: once per seed, after every choice: the head and each arm's artefact at its chosen
   rate (the adapter loaded into a fresh copy of `head.keras`), on the test split.

Learning rates: every arm takes its rate from the same `--lr_grid`; the rate whose kept epoch
has the highest validation accuracy (ties: lower validation loss, then the smaller rate) is
chosen on the first seed (`--select_lr first_seed`, the default) and used on every seed, or
chosen again on each seed (`--select_lr per_seed`, three times the runs).

Splits. Images: the dataset's `val/` folder is the test split; the validation split is 20% of
each class held out of `train/` (stable hash of the seed and the path, so it changes with the
seed; the test split does not: `split_scheme="fixed"`). Cats vs dogs uses
`--train_per_class 500` of the 1000 training images per class by default (a stable hash
order), to fit 2 CPU cores; every test image is used. Text (`sms_spam`, the
all-MiniLM-L6-v2 encoder of keras_transfer/apps/text_classifier.py): `--max_examples 2000`
messages, 20% test and 15% validation held out per seed (`split_scheme="repeated_stratified"`).

The verdict runs (5 seeds each, the default), alone on the machine; durations on 2 CPU cores
are estimates, scaled from the per-epoch times of earlier single runs to these
training-set sizes and the number of runs (7 per fine-tuning arm with `first_seed`):

    python benchmarks/peft.py --dataset hymenoptera     # estimate: about 2 h
    python benchmarks/peft.py --dataset cats_and_dogs   # estimate: about 1 h 15 min
    python benchmarks/peft.py --dataset sms_spam        # estimate: about 1 h 20 min
    python benchmarks/peft.py --smoke                   # minutes: synthetic images,
                                                        # weights=None, a temporary output

Writes `benchmarks/results/peft_<dataset>.json` through `_common.write_results` (arms
`head_only`, `full`, `lora`; metrics per seed: `test_accuracy` (primary),
`trainable_params`, `train_seconds`, `val_accuracy`, `learning_rate`, `peak_rss_mb`); the
grid's validation results, the chosen rates and the adapter size are in `details`. The last
line printed is that record as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common  # noqa: E402

DEFAULTS = {
    "hymenoptera": {"head_epochs": 50, "fine_tune_epochs": 5, "head_dropout": 0.5},
    "cats_and_dogs": {
        "head_epochs": 10,
        "fine_tune_epochs": 2,
        "head_dropout": 0.2,
        "train_per_class": 500,
    },
    "sms_spam": {
        "head_epochs": 2,
        "fine_tune_epochs": 1,
        "head_dropout": 0.1,
        "max_examples": 2000,
    },
}
TEXT_FILE = "datasets/sms_spam/SMSSpamCollection.tsv"
FINE_TUNE_ARMS = ("full", "lora", "full_frozen_depthwise")
VALIDATION_SPLIT = 0.2  # images: of train/
TEXT_VALIDATION_SPLIT, TEXT_TEST_SPLIT = 0.15, 0.2
SMOKE_DEFAULTS = ["--seeds", "0", "--lr_grid", "1e-4,1e-3"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default="hymenoptera")
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results JSON path")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated")
    parser.add_argument("--lr_grid", default="1e-5,1e-4,1e-3", help="one grid for every arm")
    parser.add_argument("--select_lr", choices=("first_seed", "per_seed"), default="first_seed")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--head_epochs", type=int, default=None)
    parser.add_argument("--fine_tune_epochs", type=int, default=None)
    parser.add_argument("--head_lr", type=float, default=1e-3)
    parser.add_argument("--head_dropout", type=float, default=None)
    parser.add_argument("--lora_rank", type=int, default=4)
    parser.add_argument("--lora_alpha", type=float, default=None)
    parser.add_argument("--max_examples", type=int, default=None, help="text: 0 for all")
    parser.add_argument("--train_per_class", type=int, default=None, help="images: 0 for all")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--arms",
        default="full,lora",
        help="comma-separated: full, lora, full_frozen_depthwise (images: full fine-tuning "
        "with the DepthwiseConv2D layers frozen, as LoRA leaves them)",
    )
    # Internal: run one step in this process.
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--artefacts", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--test_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    return parser


def _setting(args, name):
    value = getattr(args, name)
    return DEFAULTS[args.dataset].get(name, 0) if value is None else value


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ---------------------------------------------------------------------------------------
# One step, in a subprocess
# ---------------------------------------------------------------------------------------


def _image_data(args):
    import keras_transfer as kt

    return kt.image_folder_dataset(
        args.data_dir,
        image_size=args.image_size,
        batch_size=args.batch_size,
        validation_split=VALIDATION_SPLIT,
        test_dir=args.test_dir,
        augment="flip,crop",
        seed=args.seed,
    )


def _text_data(args):
    """`(train, validation, test, class_names, sizes)`: the seed's stratified hold-outs."""
    from keras_transfer.apps import text_classifier as text_lib

    max_examples = _setting(args, "max_examples")
    config = text_lib.Config(data_path=args.data_dir, model_dir="", max_examples=max_examples)
    texts, labels, class_names = text_lib.load_text_data(config)
    parts = text_lib.split_data(
        texts,
        labels,
        validation_split=TEXT_VALIDATION_SPLIT,
        test_split=TEXT_TEST_SPLIT,
        seed=args.seed,
        max_examples=max_examples,
    )
    preprocessor = text_lib.build_preprocessor(text_lib.default_preset(), 64)

    def batches(part, shuffle):
        return text_lib.token_dataset(preprocessor, *part, args.batch_size, shuffle, args.seed)

    sizes = {name: len(part[1]) for name, part in zip(("train", "validation", "test"), parts)}
    return (
        batches(parts[0], True),
        batches(parts[1], False),
        batches(parts[2], False),
        class_names,
        sizes,
    )


def _compile(model, text: bool, learning_rate: float = 1e-3):
    import keras

    if text:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    else:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate))


def _accuracy(model, data, text: bool) -> float:
    _compile(model, text)
    return float(model.evaluate(data, verbose=0, return_dict=True)["accuracy"])


def _load(path):
    import keras

    import keras_transfer  # noqa: F401 (registers the package's classes)

    return keras.saving.load_model(path, compile=False)


def _trainable_params(model) -> int:
    return int(sum(int(v.numpy().size) for v in model.trainable_weights))


def _head_step(args, text, train, validation, class_names, head_path) -> dict:
    import keras_transfer as kt

    if text:
        from keras_transfer.apps import text_classifier as text_lib

        model, _ = text_lib.build_classifier(
            text_lib.default_preset(), len(class_names), 64, _setting(args, "head_dropout")
        )
        kt.freeze(model)
        _compile(model, True, args.head_lr)
        start = time.perf_counter()
        model.fit(train, epochs=_setting(args, "head_epochs"), verbose=2)
        seconds = time.perf_counter() - start
    else:
        backbone = kt.create_backbone(
            "mobilenet", input_shape=(args.image_size, args.image_size, 3), weights=args.weights
        )
        extraction = kt.fit_feature_extractor(
            backbone,
            train,
            validation,
            num_classes=len(class_names),
            class_names=class_names,
            head={"dropout": _setting(args, "head_dropout")},
            epochs=_setting(args, "head_epochs"),
            learning_rate=args.head_lr,
            seed=args.seed,
            verbose=0,
        )
        model, seconds = extraction.model, sum(extraction.seconds.values())
    model.save(head_path)
    return {"trainable_params": _trainable_params(model), "seconds": round(seconds, 1)}


def _fine_tune_step(args, text, train, validation, work) -> dict:
    """One fine-tuning run of arm `args.step` at `args.lr`, from `head.keras`; the epoch
    with the lowest validation loss is kept and saved."""
    import keras

    import keras_transfer as kt
    from keras_transfer.peft import adapters

    model = _load(str(work / "head.keras"))
    epochs = _setting(args, "fine_tune_epochs")
    keep_best = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=epochs, restore_best_weights=True
    )
    if args.step == "full_frozen_depthwise":
        kt.unfreeze(model, "all")
        for layer in model.backbone.layers:
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                layer.trainable = False
        _compile(model, text, args.lr)
        start = time.perf_counter()
        history = model.fit(
            train, validation_data=validation, epochs=epochs, callbacks=[keep_best], verbose=2
        ).history
        seconds = time.perf_counter() - start
    else:
        fit_kwargs = {}
        if text:
            fit_kwargs = {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}
        two_phase = kt.fit_two_phase(
            model,
            train,
            validation,
            head_epochs=0,
            fine_tune_epochs=epochs,
            fine_tune_lr=args.lr,
            unfreeze="all",
            fine_tune=args.step,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            callbacks=[keep_best],
            verbose=2,
            **fit_kwargs,
        )
        history, seconds = two_phase.history, two_phase.seconds["fine_tune"]
    losses = [float(v) for v in history["val_loss"]]
    best = losses.index(min(losses))
    result = {
        "learning_rate": args.lr,
        "val_loss": losses[best],
        "val_accuracy": float(history["val_accuracy"][best]),
        "kept_epoch": best + 1,
        "epochs": len(losses),
        "seconds": round(seconds, 1),
        "trainable_params": _trainable_params(model),
    }
    if args.step == "lora":
        artefact = work / f"lora_{args.lr:g}.adapter.weights.h5"
        result["lora_layers"] = len(adapters.save_adapter(model, artefact)["layers"])
        result["adapter_bytes"] = os.path.getsize(artefact)
    else:
        artefact = work / f"{args.step}_{args.lr:g}.keras"
        model.save(str(artefact))
    result["artefact"] = str(artefact)
    return result


def _test_step(args, text, test, work) -> dict:
    """Test accuracy of each chosen artefact (`--artefacts`, JSON `{arm: path}`): the only
    place the test split is read."""
    from keras_transfer.peft import adapters

    head_path = str(work / "head.keras")
    accuracies = {}
    for arm, path in json.loads(args.artefacts).items():
        if path.endswith(".adapter.weights.h5"):
            model = _load(head_path)
            adapters.load_adapter(model, path)
        else:
            model = _load(path)
        accuracies[arm] = _accuracy(model, test, text)
    return {"test_accuracy": accuracies}


def run_step(args) -> dict:
    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(args.seed)
    text = args.dataset == "sms_spam"
    if text:
        from keras_transfer.apps import text_classifier as text_lib

        text_lib.register_bert_blocks()
        train, validation, test, class_names, sizes = _text_data(args)
        head_train = train
    else:
        data = _image_data(args)
        train, validation, test = data.train, data.validation, data.test
        class_names, head_train = data.class_names, data.train_unaugmented
        sizes = {"train": data.num_train, "validation": data.num_validation}
        sizes["test"] = data.num_test
    work = pathlib.Path(args.workdir)
    if args.step == "head":
        result = _head_step(args, text, head_train, validation, class_names, work / "head.keras")
        result["splits"] = sizes
        if args.weights:
            result["backbone_weights_bytes"] = os.path.getsize(args.weights)
    elif args.step == "test":
        result = _test_step(args, text, test, work)
    else:
        result = _fine_tune_step(args, text, train, validation, work)
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return result


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def run_in_subprocess(argv: list[str], step: str, extra: list[str]) -> dict:
    """Runs one step (`head`, an arm, `test`) in a fresh process; its result dict."""
    command = [sys.executable, os.path.abspath(__file__), *argv, "--step", step, *extra]
    completed = subprocess.run(command, capture_output=True, text=True)
    sys.stderr.write(completed.stderr[-4000:] if completed.returncode else "")
    if completed.returncode:
        raise SystemExit(f"step {step} failed ({completed.returncode})")
    for line in completed.stdout.splitlines():
        if not line.startswith("STEP "):
            print(f"  [{step}] {line}")
    return json.loads(
        next(line[5:] for line in completed.stdout.splitlines() if line.startswith("STEP "))
    )


def choose(runs: list[dict]) -> dict:
    """The run with the highest validation accuracy of its kept epoch; ties: the lower
    validation loss, then the smaller learning rate."""
    return min(runs, key=lambda r: (-r["val_accuracy"], r["val_loss"], r["learning_rate"]))


def _inputs(args) -> tuple[str, list[str]]:
    """The dataset's name in the results, and the data arguments of every step."""
    if args.smoke:
        root = _common.smoke_image_folder()
        return "smoke", ["--data_dir", str(root / "train"), "--test_dir", str(root / "validation")]
    if args.dataset == "sms_spam":
        return args.dataset, [
            "--data_dir",
            str(_common.assets_dir(args.assets, TEXT_FILE) / TEXT_FILE),
        ]
    assets = _common.assets_dir(args.assets, _common.DATASETS[args.dataset])
    root = assets / _common.DATASETS[args.dataset]
    train_dir, per_class = root / "train", _setting(args, "train_per_class")
    if per_class:
        train_dir = _common.image_subset(train_dir, per_class, "keras_transfer_peft_subset_")
    extra = ["--data_dir", str(train_dir), "--test_dir", str(_common.held_out_folder(root))]
    return args.dataset, [*extra, "--weights", str(assets / _common.MOBILENET_WEIGHTS)]


def selection(args) -> dict:
    """What this run tunes, and on which split: recorded before any training."""
    if args.dataset == "sms_spam" and not args.smoke:
        splits = (
            f"text: {_setting(args, 'max_examples') or 'all'} messages (stratified by a hash "
            f"of the seed), {TEXT_TEST_SPLIT:g} test and {TEXT_VALIDATION_SPLIT:g} validation "
            "held out per seed (stable stratified hash of the seed and the text)"
        )
    else:
        per_class = 0 if args.smoke else _setting(args, "train_per_class")
        splits = (
            "images: the dataset's val/ folder is the test split (every image); validation is "
            f"{VALIDATION_SPLIT:g} of each class held out of train/ by a stable hash of the "
            "seed and the path"
            + (f"; train/ subsampled to {per_class} images per class" if per_class else "")
        )
    return {
        "tuned": (
            f"each fine-tuning arm's learning rate, from the same grid {args.lr_grid} for "
            "every arm, by the validation accuracy of the kept epoch (ties: lower validation "
            "loss, then the smaller rate), "
            + (
                "on the first seed only, then fixed"
                if args.select_lr == "first_seed"
                else "on each seed"
            )
            + "; in every fine-tuning run the kept epoch is the one with the lowest "
            "validation loss. Fixed in advance: head epochs, head rate, head dropout, "
            "fine-tuning epochs, LoRA rank. Splits: " + splits + ". The test split is read "
            "once per seed, on the chosen artefacts only."
        ),
        "tuned_on": "validation",
    }


def _seed_runs(args, argv, extra, seed, work, chosen) -> dict:
    """One seed: the head, the fine-tuning runs (the grid, or each arm's chosen rate), the
    test step. Updates `chosen` ({arm: learning rate}) when the grid ran."""
    common = [*extra, "--seed", str(seed), "--workdir", str(work)]
    head = run_in_subprocess(argv, "head", common)
    runs, kept = {}, {}
    for arm in args.arms:
        grid = args.lr_grid if arm not in chosen else [chosen[arm]]
        runs[arm] = [run_in_subprocess(argv, arm, [*common, "--lr", repr(lr)]) for lr in grid]
        kept[arm] = choose(runs[arm])
        if args.select_lr == "first_seed":
            chosen.setdefault(arm, kept[arm]["learning_rate"])
    artefacts = {"head_only": str(work / "head.keras")}
    artefacts.update({arm: kept[arm]["artefact"] for arm in args.arms})
    test = run_in_subprocess(argv, "test", [*common, "--artefacts", json.dumps(artefacts)])
    return {"head": head, "runs": runs, "kept": kept, "test": test["test_accuracy"]}


def results_arms(per_seed: list[dict], arms: list[str]) -> dict:
    """`{arm: {metric: [one value per seed]}}` for `_common.write_results`."""
    out = {
        "head_only": {
            "test_accuracy": [s["test"]["head_only"] for s in per_seed],
            "trainable_params": [s["head"]["trainable_params"] for s in per_seed],
            "train_seconds": [s["head"]["seconds"] for s in per_seed],
            "peak_rss_mb": [s["head"]["peak_rss_mb"] for s in per_seed],
        }
    }
    for arm in arms:
        kept = [s["kept"][arm] for s in per_seed]
        out[arm] = {
            "test_accuracy": [s["test"][arm] for s in per_seed],
            "trainable_params": [k["trainable_params"] for k in kept],
            "train_seconds": [k["seconds"] for k in kept],
            "val_accuracy": [k["val_accuracy"] for k in kept],
            "learning_rate": [k["learning_rate"] for k in kept],
            "peak_rss_mb": [k["peak_rss_mb"] for k in kept],
        }
    return out


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.step:
        print("STEP " + json.dumps(run_step(args)))
        return {}
    if args.smoke:
        # One seed and a grid of two (given values win), tiny sizes (these win).
        tiny = ["--image_size", "32", "--batch_size", "8", "--head_epochs", "2"]
        argv = [*SMOKE_DEFAULTS, *argv, *tiny, "--fine_tune_epochs", "1"]
        args = _parser().parse_args(argv)
    run = _common.start_run(selection(args), script=__file__, argv=argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.lr_grid = [float(v) for v in args.lr_grid.split(",") if v.strip()]
    args.arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(args.arms) - set(FINE_TUNE_ARMS))
    if unknown:
        raise SystemExit(f"--arms: unknown arm(s) {unknown}; choose from {FINE_TUNE_ARMS}.")
    dataset, extra = _inputs(args)
    print(f"load average at start: {_common.load_average()}")
    chosen, per_seed = {}, []
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="keras_transfer_peft_"))
    try:
        for seed in seeds:
            work = workdir / f"seed_{seed}"
            work.mkdir()
            per_seed.append(_seed_runs(args, argv, extra, seed, work, chosen))
            print(f"seed {seed}: test {per_seed[-1]['test']}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    output = _common.results_path(
        args.output, args.smoke, "peft" if args.smoke else f"peft_{dataset}"
    )
    record = write(output, run, args, dataset, seeds, per_seed)
    print(json.dumps(record))
    return record


def write(output, run, args, dataset, seeds, per_seed) -> dict:
    """The results file of a finished run (see the module docstring)."""
    first = per_seed[0]
    comparisons = [["full", "lora"]] if {"full", "lora"} <= set(args.arms) else []
    if "full_frozen_depthwise" in args.arms and "lora" in args.arms:
        comparisons.append(["full_frozen_depthwise", "lora"])
    lora = [s["kept"]["lora"] for s in per_seed if "lora" in s["kept"]]
    grid = [
        {
            arm: [{k: v for k, v in r.items() if k != "artefact"} for r in runs]
            for arm, runs in s["runs"].items()
        }
        for s in per_seed
    ]
    return _common.write_results(
        output,
        run,
        kind="accuracy",
        benchmark="peft",
        dataset=dataset,
        splits=first["head"]["splits"],
        evaluated_on="test",
        arms=results_arms(per_seed, args.arms),
        primary_metric="test_accuracy",
        seeds=seeds,
        comparisons=comparisons or None,
        split_scheme="repeated_stratified" if dataset == "sms_spam" else "fixed",
        details={
            "lr_grid": args.lr_grid,
            "select_lr": args.select_lr,
            "runs_per_seed": grid,
            "splits_per_seed": [s["head"]["splits"] for s in per_seed],
            "lora_rank": args.lora_rank,
            "lora_alpha": args.lora_alpha,
            "lora_layers": lora[0]["lora_layers"] if lora else None,
            "adapter_bytes": lora[0]["adapter_bytes"] if lora else None,
            "backbone_weights_bytes": first["head"].get("backbone_weights_bytes"),
            "head_epochs": _setting(args, "head_epochs"),
            "fine_tune_epochs": _setting(args, "fine_tune_epochs"),
            "head_lr": args.head_lr,
            "image_size": args.image_size,
        },
    )


if __name__ == "__main__":
    main()
