"""LoRA against full fine-tuning on a real dataset: accuracy, trainable fraction, adapter
size, time and peak memory.

Three steps, each in its own Python process (so that each arm's peak RSS is its own):

1. `head`: the pretrained backbone frozen, the head trained on cached features
   (`fit_feature_extractor`, images) or on the frozen encoder (text); saved as `head.keras`.
   Its validation accuracy is `head_only_acc`.
2. `full`: `head.keras` loaded, every block fine-tuned (`fit_two_phase(head_epochs=0,
   fine_tune="full")`, BatchNorm in inference mode) at `--full_lr`; saved as `model.keras`,
   reloaded, evaluated: `full_acc`.
3. `lora`: `head.keras` loaded, `fit_two_phase(head_epochs=0, fine_tune="lora",
   lora_rank=--lora_rank)` on every block at `--lora_lr`; the adapter is saved
   (`adapter.weights.h5`), loaded into a fresh copy of `head.keras` (`load_adapter`) and that
   model evaluated: `lora_acc`.
4. optional (`--arms ...,full_frozen_depthwise`): as `full`, but with the `DepthwiseConv2D`
   layers frozen, which Keras LoRA cannot adapt: `full_frozen_depthwise_acc`.

Both arms use the same data, seed, head and number of epochs. Images: the real ImageNet
MobileNet V1 weights, 224 px, flip+crop augmentation in phase 2. Text (`sms_spam`): the
all-MiniLM-L6-v2 encoder of keras_transfer/apps/text_classifier.py (LoRA on query/value).

    python benchmarks/peft.py --dataset hymenoptera
    python benchmarks/peft.py --dataset cats_and_dogs
    python benchmarks/peft.py --dataset sms_spam
    python benchmarks/peft.py --smoke          # seconds: synthetic images, weights=None

The last line printed is one JSON object; it is also written to
`benchmarks/results/peft_<dataset>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common  # noqa: E402

DEFAULTS = {
    "hymenoptera": {"head_epochs": 50, "fine_tune_epochs": 5, "head_dropout": 0.5, "full_lr": 5e-6},
    "cats_and_dogs": {
        "head_epochs": 10,
        "fine_tune_epochs": 2,
        "head_dropout": 0.2,
        "full_lr": 2e-5,
    },
    "sms_spam": {"head_epochs": 2, "fine_tune_epochs": 1, "head_dropout": 0.1, "full_lr": 5e-5},
}
TEXT_FILE = "datasets/sms_spam/SMSSpamCollection.tsv"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default="hymenoptera")
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results JSON path")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--head_epochs", type=int, default=None)
    parser.add_argument("--fine_tune_epochs", type=int, default=None)
    parser.add_argument("--head_lr", type=float, default=1e-3)
    parser.add_argument("--head_dropout", type=float, default=None)
    parser.add_argument("--full_lr", type=float, default=None)
    parser.add_argument("--lora_lr", type=float, default=5e-4)
    parser.add_argument("--lora_rank", type=int, default=4)
    parser.add_argument("--lora_alpha", type=float, default=None)
    parser.add_argument("--max_examples", type=int, default=0, help="text: 0 for all")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--arms",
        default="full,lora",
        help="comma-separated: full, lora, full_frozen_depthwise (images: full fine-tuning "
        "with the DepthwiseConv2D layers frozen, as LoRA leaves them)",
    )
    # Internal: run one step in this process.
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    return parser


def _setting(args, name):
    value = getattr(args, name)
    return DEFAULTS[args.dataset][name] if value is None else value


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
        augment="flip,crop",
        seed=args.seed,
    )


def _text_data(args):
    from keras_transfer.apps import text_classifier as text_lib

    config = text_lib.Config(data_path=args.data_dir, model_dir="", max_examples=args.max_examples)
    texts, labels, class_names = text_lib.load_text_data(config)
    train, validation = text_lib.split(texts, labels, 0.2, args.seed, args.max_examples)
    _, preprocessor = text_lib.build_classifier(
        text_lib.default_preset(), len(class_names), 64, 0.1
    )

    def batches(part, shuffle):
        return text_lib.token_dataset(preprocessor, *part, args.batch_size, shuffle, args.seed)

    return batches(train, True), batches(validation, False), class_names


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


def _accuracy(model, validation, text: bool) -> float:
    _compile(model, text)
    return float(model.evaluate(validation, verbose=0, return_dict=True)["accuracy"])


def _load(path):
    import keras

    import keras_transfer  # noqa: F401 (registers the package's classes)

    return keras.saving.load_model(path, compile=False)


def run_step(args) -> dict:
    import keras
    import tensorflow as tf

    import keras_transfer as kt
    from keras_transfer.peft import adapters

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(args.seed)
    text = args.dataset == "sms_spam"
    if text:
        from keras_transfer.apps import text_classifier as text_lib

        text_lib.register_bert_blocks()
        train, validation, class_names = _text_data(args)
        train_head = train
    else:
        data = _image_data(args)
        train, validation, class_names = data.train, data.validation, data.class_names
    work = pathlib.Path(args.workdir)
    head_path = str(work / "head.keras")
    result: dict = {}
    start = time.perf_counter()
    if args.step == "head":
        if text:
            model, _ = text_lib.build_classifier(
                text_lib.default_preset(), len(class_names), 64, _setting(args, "head_dropout")
            )
            kt.freeze(model)
            _compile(model, True, args.head_lr)
            model.fit(train_head, epochs=_setting(args, "head_epochs"), verbose=2)
        else:
            backbone = kt.create_backbone(
                "mobilenet",
                input_shape=(args.image_size, args.image_size, 3),
                weights=args.weights,
            )
            extraction = kt.fit_feature_extractor(
                backbone,
                data.train_unaugmented,
                validation,
                num_classes=len(class_names),
                class_names=class_names,
                head={"dropout": _setting(args, "head_dropout")},
                epochs=_setting(args, "head_epochs"),
                learning_rate=args.head_lr,
                seed=args.seed,
                verbose=0,
            )
            model = extraction.model
        model.save(head_path)
        result["head_only_acc"] = _accuracy(_load(head_path), validation, text)
        if not text:
            result["backbone_weights_bytes"] = (
                os.path.getsize(args.weights) if args.weights else None
            )
    else:
        model = _load(head_path)
        fine_tune = args.step
        lr = args.full_lr if fine_tune == "full" else args.lora_lr
        fit_kwargs = {}
        if text:
            fit_kwargs = {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}
        if fine_tune == "full_frozen_depthwise":
            # The depthwise layers LoRA cannot adapt, frozen in full fine-tuning too: what
            # leaving them out costs, apart from the low rank.
            import keras

            kt.unfreeze(model, "all")
            for layer in model.backbone.layers:
                if isinstance(layer, keras.layers.DepthwiseConv2D):
                    layer.trainable = False
            _compile(model, text, args.full_lr)
            start_fit = time.perf_counter()
            keras_history = model.fit(
                train, validation_data=validation, epochs=args.fine_tune_epochs, verbose=2
            )
            result["seconds"] = round(time.perf_counter() - start_fit, 1)
            result["last_epoch_val_accuracy"] = keras_history.history["val_accuracy"][-1]
            model.save(str(work / "model_frozen_depthwise.keras"))
            path = str(work / "model_frozen_depthwise.keras")
            result["acc"] = _accuracy(_load(path), validation, text)
            result["step_seconds"] = round(time.perf_counter() - start, 1)
            result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
            return result
        history = kt.fit_two_phase(
            model,
            train,
            validation,
            head_epochs=0,
            fine_tune_epochs=args.fine_tune_epochs,
            fine_tune_lr=lr,
            unfreeze="all",
            fine_tune=fine_tune,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            verbose=2,
            **fit_kwargs,
        )
        result["seconds"] = round(history.seconds["fine_tune"], 1)
        result["last_epoch_val_accuracy"] = history.history["val_accuracy"][-1]
        if fine_tune == "full":
            model.save(str(work / "model.keras"))
            result["acc"] = _accuracy(_load(str(work / "model.keras")), validation, text)
        else:
            adapter = str(work / "adapter.weights.h5")
            metadata = adapters.save_adapter(model, adapter)
            trainable = sum(int(v.numpy().size) for v in model.trainable_weights)
            total = sum(int(v.numpy().size) for v in model.weights)
            result["lora_trainable_fraction"] = trainable / total
            result["lora_trainable_params"] = trainable
            result["adapter_bytes"] = os.path.getsize(adapter)
            result["lora_layers"] = len(metadata["layers"])
            fresh = _load(head_path)
            adapters.load_adapter(fresh, adapter)
            result["acc"] = _accuracy(fresh, validation, text)
            if text:
                encoder = kt.freezing.backbone_and_blocks(fresh)[0]
                result["backbone_weights_bytes"] = 4 * encoder.count_params()
    result["step_seconds"] = round(time.perf_counter() - start, 1)
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return result


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def _run_in_subprocess(argv: list[str], step: str, extra: list[str]) -> dict:
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


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.step:
        print("STEP " + json.dumps(run_step(args)))
        return {}
    args.fine_tune_epochs = _setting(args, "fine_tune_epochs")
    args.full_lr = _setting(args, "full_lr")
    extra = ["--fine_tune_epochs", str(args.fine_tune_epochs), "--full_lr", str(args.full_lr)]
    if args.smoke:
        data_dir, weights = str(_common.smoke_image_folder()), None
        extra += ["--image_size", "32", "--head_epochs", "2", "--fine_tune_epochs", "1"]
        args.fine_tune_epochs = 1
    elif args.dataset == "sms_spam":
        data_dir, weights = str(_common.assets_dir(args.assets, TEXT_FILE) / TEXT_FILE), None
    else:
        assets = _common.assets_dir(args.assets, _common.DATASETS[args.dataset])
        data_dir = str(assets / _common.DATASETS[args.dataset])
        weights = str(assets / _common.MOBILENET_WEIGHTS)
    workdir = tempfile.mkdtemp(prefix="keras_transfer_peft_")
    extra += ["--workdir", workdir, "--data_dir", data_dir]
    if weights:
        extra += ["--weights", weights]
    print(f"load average at start: {_common.load_average()}")
    head = _run_in_subprocess(argv, "head", extra)
    print(f"head: {head}")
    arms = {}
    for arm in args.arms.split(","):
        arms[arm] = _run_in_subprocess(argv, arm, extra)
        print(f"{arm}: {arms[arm]}")
    full, low_rank = arms.get("full", {}), arms.get("lora", {})
    result = {
        "dataset": "smoke" if args.smoke else args.dataset,
        "head_only_acc": head["head_only_acc"],
        "full_acc": full.get("acc"),
        "lora_acc": low_rank.get("acc"),
        "lora_rank": args.lora_rank,
        "lora_trainable_fraction": low_rank.get("lora_trainable_fraction"),
        "adapter_bytes": low_rank.get("adapter_bytes"),
        "backbone_weights_bytes": head.get("backbone_weights_bytes")
        or low_rank.get("backbone_weights_bytes"),
        "full_seconds": full.get("seconds"),
        "lora_seconds": low_rank.get("seconds"),
        "full_peak_rss_mb": full.get("peak_rss_mb"),
        "lora_peak_rss_mb": low_rank.get("peak_rss_mb"),
        "full_frozen_depthwise_acc": arms.get("full_frozen_depthwise", {}).get("acc"),
        "lora_alpha": args.lora_alpha,
        "lora_lr": args.lora_lr,
        "full_lr": args.full_lr,
        "fine_tune_epochs": args.fine_tune_epochs,
        "lora_layers": low_rank.get("lora_layers"),
        "lora_trainable_params": low_rank.get("lora_trainable_params"),
        "seed": args.seed,
        "load_average_at_end": _common.load_average(),
        "command": "python benchmarks/peft.py " + " ".join(argv),
    }
    if not args.smoke:
        output = pathlib.Path(
            args.output
            or _common.REPO_ROOT / "benchmarks" / "results" / f"peft_{args.dataset}.json"
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        _common.write_json(output, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
