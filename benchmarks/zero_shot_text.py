"""Zero-shot and few-shot text classification against fine-tuning, on SMS spam (macro F1).

One stable stratified split of the messages (`text_classifier.split_data`, split seed 0:
a hash of the seed and each text; `--max_examples` messages kept per label share, 20% test,
15% validation), the same for every arm and seed:

- `zero_shot`: `kt.zero_shot_text_classifier` with the all-MiniLM-L6-v2 encoder of
  keras_transfer/apps/text_classifier.py and the label descriptions in `DESCRIPTIONS`
  (written before any run, never changed after looking at a result): cosine similarity of a
  message's mean-pooled embedding to each description's. Nothing is drawn, so its value is
  the same on every seed.
- `few_shot@k=<k>`: k training messages per class drawn per seed
  (`np.random.default_rng([seed, k])`), merged into the description vectors by
  `refine_class_vectors` (prototypical networks with the description counting as one
  example; keras_transfer/apps/zero_shot_text.py gives the rule); no training.
- `examples_only@k=<k>`: the same draws, the description given weight 0 (the examples'
  prototypes alone), to show what the description adds.
- `fine_tuned`: the text classifier application's default training on the whole training
  split (`text_classifier.build_classifier` and `train_model` with `Config()`'s defaults:
  2 head epochs at 1e-3, 2 fine-tuning epochs of every block at 5e-5, dropout 0.1), the kept
  epoch the one with the lowest validation loss over both phases
  (`kt.ValidatedEarlyStopping(carry_over=True)`); seeded per seed.

The encoder runs once over the training and test messages (`embed_texts`); the zero- and
few-shot arms score those cached embeddings with their heads. The test split is read once
per arm and seed, after every choice; the validation split is used by `fine_tuned` only.

    python benchmarks/zero_shot_text.py            # about 8 minutes on 2 CPU cores (462 s)
    python benchmarks/zero_shot_text.py --smoke    # about a minute: a tiny random encoder,
                                                   # synthetic messages, one seed, one epoch
                                                   # per phase, a temporary output

The estimate (2000 messages: about 1300 train, 300 validation, 400 test) is scaled from the
per-epoch times of benchmarks/peft.py's SMS runs of the same encoder: about 30 s to embed
the training and test messages, and about 165 s per `fine_tuned` seed (2 frozen-encoder
epochs, 2 full fine-tuning epochs, 4 validations, one test pass), 3 seeds, plus the
tracing of the Keras functions (about 20 s a seed on a loaded machine).

Writes `benchmarks/results/zero_shot_text.json` through `_common.write_results` (arms above;
metrics per seed: `test_macro_f1` (primary), `test_accuracy`; `fine_tuned` also
`kept_epoch` and `train_seconds`; `details.summary`, the line below). The last line printed is
`{"zero_shot_macro_f1": x, "shots": {"1": x, "4": x, "16": x}, "fine_tuned_macro_f1": x}`:
the means over the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common  # noqa: E402
import numpy as np  # noqa: E402

TEXT_FILE = "datasets/sms_spam/SMSSpamCollection.tsv"
# Fixed before any run: what a reader of the dataset's description would write.
DESCRIPTIONS = {
    "ham": "A personal text message between friends, family or colleagues about everyday "
    "plans, feelings and chat.",
    "spam": "An unsolicited advertising text message offering a free prize, cash, a contest "
    "or a service, asking to call or text a number.",
}
SHOTS = "1,4,16"
SPLIT_SEED = 0
VALIDATION_SPLIT, TEST_SPLIT = 0.15, 0.2
DESCRIPTION_WEIGHT = 1.0
# The smoke run: a tiny random encoder whose vocabulary is these words.
SMOKE_WORDS = {
    "ham": ["lunch", "home", "later", "mum", "dinner", "see", "you", "tonight"],
    "spam": ["win", "free", "prize", "cash", "call", "claim", "text", "now"],
}
SMOKE_DESCRIPTIONS = {"ham": "see you at home for dinner", "spam": "win a free cash prize now"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results JSON path")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--shots", default=SHOTS, help="examples per class, comma-separated")
    parser.add_argument("--max_examples", type=int, default=2000, help="0 for all")
    parser.add_argument("--sequence_length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    args.epochs = None  # fine_tuned: the text classifier's default epochs
    return args


def selection(args) -> dict:
    """What this run tunes, and on which split: recorded before any training."""
    return {
        "tuned": (
            "fine_tuned: the kept epoch, the lowest validation loss over its head and "
            "fine-tuning epochs (ValidatedEarlyStopping, carried across the phases). Fixed "
            "in advance: the label descriptions (in the script), the description weight "
            f"{DESCRIPTION_WEIGHT:g}, the temperature, the shots {args.shots}, the text "
            "classifier's default epochs, rates and dropout. Splits: "
            f"{args.max_examples or 'all'} messages, {TEST_SPLIT:g} test and "
            f"{VALIDATION_SPLIT:g} validation held out by a stable stratified hash of split "
            f"seed {SPLIT_SEED} and the text, the same for every seed; shots drawn from the "
            "training split per seed. The test split is read once per arm and seed."
        ),
        "tuned_on": "validation",
    }


def smoke_inputs() -> tuple[str, str]:
    """`(preset folder, TSV file)` in a new temporary folder: a tiny random BertBackbone
    and tokenizer (`save_to_preset`), and 60 messages per label from `SMOKE_WORDS`."""
    import keras
    import keras_hub

    root = pathlib.Path(tempfile.mkdtemp(prefix="zero_shot_text_smoke_"))
    words = sorted({w for group in SMOKE_WORDS.values() for w in group} | {"at", "a", "for"})
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    keras.utils.set_random_seed(0)
    preset = str(root / "preset")
    keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
    ).save_to_preset(preset)
    keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True).save_to_preset(preset)
    rng = np.random.default_rng(0)
    rows = ["Label\tSMS"]
    for label, group in SMOKE_WORDS.items():
        for _ in range(60):
            rows.append(f"{label}\t" + " ".join(rng.choice(group, size=5)))
    data = root / "sms.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return preset, str(data)


def load_splits(data_path: str, max_examples: int):
    """`(train, validation, test, class names)`, each split `(texts, labels)`."""
    from keras_transfer.apps import text_classifier as text_lib

    config = text_lib.Config(data_path=data_path, model_dir="")
    texts, labels, class_names = text_lib.load_text_data(config)
    train, validation, test = text_lib.split_data(
        texts,
        labels,
        validation_split=VALIDATION_SPLIT,
        test_split=TEST_SPLIT,
        seed=SPLIT_SEED,
        max_examples=max_examples,
    )
    return train, validation, test, class_names


def scores(true, predicted, num_classes: int) -> dict:
    from keras_transfer.diagnostics import reports

    matrix = reports.confusion_matrix(true, predicted, num_classes)
    return {
        "test_macro_f1": reports.macro_f1(matrix),
        "test_accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
    }


def head_scores(head, x, y) -> dict:
    predicted = np.asarray(head(x)).argmax(axis=-1)
    return scores(y, predicted, head.num_classes)


def draw(seed: int, k: int, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """k training indices per class (seeded by `[seed, k]`)."""
    rng = np.random.default_rng([seed, k])
    picked = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            raise SystemExit(f"class {c} has {len(members)} training messages, fewer than {k}.")
        picked.append(rng.choice(members, size=k, replace=False))
    return np.concatenate(picked)


def without_description(head):
    """A copy of `head` whose description vectors count as 0 examples."""
    import keras

    from keras_transfer.few_shot.prototype_head import PrototypeHead

    copy = PrototypeHead(head.num_classes, temperature=head.temperature, linear=True)
    copy.build((None, head.feature_dim))
    weights = [keras.ops.convert_to_numpy(w) for w in (head.centre, head.class_means)]
    copy.set_prototypes(*weights, np.zeros(head.num_classes, np.float32))
    return copy


def shot_arms(head, train, test, shots, seeds) -> tuple[dict, dict]:
    """`({arm: {metric: [per seed]}}, {seed: {k: drawn indices}})` of the few-shot arms."""
    from keras_transfer.apps.zero_shot_text import refine_class_vectors

    (train_x, train_y), (test_x, test_y) = train, test
    bare = without_description(head)
    arms, drawn = {}, {}
    for seed in seeds:
        for k in shots:
            index = draw(seed, k, train_y, head.num_classes)
            drawn.setdefault(str(seed), {})[str(k)] = index.tolist()
            for arm, start in ((f"few_shot@k={k}", head), (f"examples_only@k={k}", bare)):
                refined = refine_class_vectors(start, train_x[index], train_y[index])
                for metric, value in head_scores(refined, test_x, test_y).items():
                    arms.setdefault(arm, {}).setdefault(metric, []).append(value)
    return arms, drawn


def fine_tuned_run(args, preset, train, validation, test, class_names, seed) -> dict:
    """The text classifier's default training (kept epoch by validation loss); test scores."""
    import keras

    import keras_transfer as kt
    from keras_transfer.apps import text_classifier as text_lib
    from keras_transfer.diagnostics import reports

    keras.utils.set_random_seed(seed)
    config = text_lib.Config(
        data_path="",
        model_dir="",
        preset=preset,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        seed=seed,
        verbose=0,
        **dict(zip(("head_epochs", "fine_tune_epochs"), args.epochs or ())),
    )
    model, preprocessor = text_lib.build_classifier(
        preset, len(class_names), config.sequence_length, config.dropout
    )

    def data(part, shuffle):
        return text_lib.token_dataset(preprocessor, *part, config.batch_size, shuffle, seed)

    epochs = config.head_epochs + config.fine_tune_epochs
    keep = kt.ValidatedEarlyStopping(
        monitor="val_loss", patience=epochs, restore_best_weights=True, carry_over=True
    )
    start = time.perf_counter()
    history = text_lib.train_model(
        config, model, data(train, True), data(validation, False), callbacks=[keep]
    )
    seconds = time.perf_counter() - start
    losses = [float(v) for v in history.history["val_loss"]]
    true, predicted = reports.predict_labels(model, data(test, False))  # the one test read
    result = scores(true, predicted, len(class_names))
    result["kept_epoch"] = losses.index(min(losses)) + 1
    result["train_seconds"] = round(seconds, 1)
    return result


def summarize(arms: dict, shots: list[int]) -> dict:
    """`{zero_shot_macro_f1, shots: {k: macro_f1}, fine_tuned_macro_f1}`: the means over the
    seeds of the test macro F1 of the zero-shot, few-shot and fine-tuned arms."""

    def mean(arm):
        return _common.summarize(arms[arm]["test_macro_f1"])["mean"]

    return {
        "zero_shot_macro_f1": mean("zero_shot"),
        "shots": {str(k): mean(f"few_shot@k={k}") for k in shots},
        "fine_tuned_macro_f1": mean("fine_tuned"),
    }


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.smoke:
        # One seed, one epoch per phase: the tiny encoder's tracing is most of the time.
        args.sequence_length, args.batch_size, args.max_examples = 16, 16, 0
        args.seeds, args.epochs = "0", (1, 1)
    run = _common.start_run(selection(args), script=__file__, argv=argv)
    import keras

    from keras_transfer.apps import text_classifier as text_lib
    from keras_transfer.apps import zero_shot_text

    if args.smoke:
        preset, data_path = smoke_inputs()
        descriptions, dataset = SMOKE_DESCRIPTIONS, "smoke"
    else:
        data_path = str(_common.assets_dir(args.assets, TEXT_FILE) / TEXT_FILE)
        preset, descriptions, dataset = text_lib.default_preset(), DESCRIPTIONS, "sms_spam"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    shots = [int(k) for k in args.shots.split(",") if k.strip()]
    train, validation, test, class_names = load_splits(data_path, args.max_examples)
    print(f"load average at start: {_common.load_average()}", flush=True)
    keras.utils.set_random_seed(SPLIT_SEED)
    model = zero_shot_text.zero_shot_text_classifier(
        preset,
        {name: descriptions[name] for name in class_names},
        sequence_length=args.sequence_length,
        description_weight=DESCRIPTION_WEIGHT,
        batch_size=args.batch_size,
    )
    start = time.perf_counter()
    train_x = zero_shot_text.embed_texts(model, train[0], args.batch_size)
    test_x = zero_shot_text.embed_texts(model, test[0], args.batch_size)
    embed_seconds = time.perf_counter() - start
    zero = head_scores(model.head, test_x, test[1])
    arms = {"zero_shot": {metric: [value] * len(seeds) for metric, value in zero.items()}}
    few, drawn = shot_arms(model.head, (train_x, train[1]), (test_x, test[1]), shots, seeds)
    arms.update(few)
    print(f"zero-shot {zero}; few-shot {few}", flush=True)
    tuned = [
        fine_tuned_run(args, preset, train, validation, test, class_names, seed) for seed in seeds
    ]
    arms["fine_tuned"] = {metric: [r[metric] for r in tuned] for metric in tuned[0]}
    output = _common.results_path(args.output, args.smoke, "zero_shot_text")
    summary = summarize(arms, shots)
    _common.write_results(
        output,
        run,
        kind="accuracy",
        benchmark="zero_shot_text",
        dataset=dataset,
        splits={"train": len(train[1]), "validation": len(validation[1]), "test": len(test[1])},
        evaluated_on="test",
        arms=arms,
        primary_metric="test_macro_f1",
        seeds=seeds,
        comparisons=[["zero_shot", "fine_tuned"]],
        details={
            "class_names": class_names,
            "descriptions": {name: descriptions[name] for name in class_names},
            "description_weight": DESCRIPTION_WEIGHT,
            "temperature": model.temperature,
            "encoder": "tiny random BERT (smoke)" if args.smoke else "all-MiniLM-L6-v2",
            "sequence_length": args.sequence_length,
            "max_examples": args.max_examples,
            "split_seed": SPLIT_SEED,
            "embed_seconds": round(embed_seconds, 1),
            "shot_indices": drawn,
            # The summary (what the last printed line shows), in the file too.
            "summary": summary,
        },
    )
    print(f"results: {output}", flush=True)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
