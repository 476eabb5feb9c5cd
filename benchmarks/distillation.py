"""Knowledge distillation (`kt.distill`) of a fine-tuned teacher into a cheaper student.

For each task: fine-tune the teacher, then train the same student twice from the same seed,
for the same epochs, through the same `kt.distill` call: once on the labels only
(`alpha=1`, the teacher term is off) and once distilled (`alpha=--alpha`,
`temperature=--temperature`). Temperature and alpha are fixed in advance (T=4, alpha=0.1: the
weight Keras' distillation guide gives the labels, and a temperature in the 2-5 range that
Hinton et al. found best for small students); they are not tuned on the validation set whose
accuracy is reported, and neither are the epochs: the reported accuracy is the last epoch's.

- `--task text`: SMS spam (stratified 80/20 split, seed 42, as examples/text_classifier.py).
  Teacher: the example's all-MiniLM-L6-v2 classifier (`apps.text_classifier.build_classifier`),
  all blocks and the head fine-tuned together for `--teacher_epochs` (per-block learning rates,
  `lr_decay`), wrapped with its tokenizer so that it reads raw strings like the student.
  Student: the example's from-scratch embedding bag (its `--baseline`: word-index
  vectorisation, 64-d embedding bag, softmax), `--student_epochs` (10), Adam 1e-3. The
  teacher's outputs are computed once (`cache_teacher=True`).
- `--task images` (`--consistent`: see its flag): ants vs bees (hymenoptera), the real ImageNet MobileNet V1 weights.
  Teacher: MobileNet at 224 px, head on cached features then all blocks fine-tuned
  (`fit_two_phase_cached`). Student: the same pretrained MobileNet at 112 px (4x fewer
  multiply-adds) behind a `Resizing(112, 112)` layer, so it takes the teacher's 224 px images;
  head trained with the backbone frozen (`--head_epochs`), then all blocks fine-tuned
  (`--fine_tune_epochs`): two `kt.distill` calls per arm, on the unaugmented training images
  with the teacher's outputs cached.

`--teacher_cache DIR` keeps the fine-tuned teacher in `DIR` (`kt.save_model`, one `.keras`
file per task, dataset, seed and teacher schedule) and reuses it when present, so student
experiments do not pay for the teacher again (fine-tuning MiniLM costs 5-11 minutes here) and
compare against the same teacher (fine-tuning is not bit-reproducible). The JSON says whether
the teacher came from the cache (`teacher_from_cache`).

Patient schedules (Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and
consistent", CVPR): `--student_epochs` (text) and `--fine_tune_epochs` (images) set the
student schedule, the same for both arms; `--tag patient` names the results file. The
per-epoch accuracies of both arms are in the JSON (`curves`); `--validation_freq N`
validates every N epochs (a validation epoch with `--consistent` runs the teacher too).

ms/image: `model.predict` of teacher and student on the same validation batch, after a
warm-up call, median of 5 (the machine is shared: timings are noisy).

    python benchmarks/distillation.py --task images
    python benchmarks/distillation.py --task text
    python benchmarks/distillation.py --task images --smoke   # seconds: synthetic, weights=None
    python benchmarks/distillation.py --task text --smoke --text_file any.tsv  # 200 texts

The last line printed is one JSON object; it is also written to
`benchmarks/results/distillation_<dataset>[_consistent][_<tag>].json`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transfer as kt  # noqa: E402

TEXT_FILE = "datasets/sms_spam/SMSSpamCollection.tsv"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("text", "images"), required=True)
    parser.add_argument("--assets", default=None, help="default: $KERAS_TRANSFER_ASSETS")
    parser.add_argument("--output_dir", default=None, help="default: benchmarks/results")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.1, help="weight of the labels' loss")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--teacher_epochs", type=int, default=1, help="text: fine-tuning epochs")
    parser.add_argument("--student_epochs", type=int, default=10, help="text student epochs")
    parser.add_argument("--student_size", type=int, default=112, help="images: student px")
    parser.add_argument("--head_epochs", type=int, default=15, help="images: student head")
    parser.add_argument("--fine_tune_epochs", type=int, default=5, help="images: student")
    parser.add_argument("--max_examples", type=int, default=0, help="text: 0 = all")
    parser.add_argument(
        "--transfer_copies",
        type=int,
        default=0,
        help="text: distil on a transfer set of the training texts plus this many augmented "
        "copies of each (Tang et al. 2019: words masked with p=0.1, then with p=0.25 one "
        "random 1-5-gram kept); the labels-only student trains on the same set, and a third "
        "student on the original texts only. 0: the training texts only",
    )
    parser.add_argument(
        "--consistent",
        action="store_true",
        help="images: both students train on flip+crop augmented batches and the teacher "
        "runs on the same augmented views at every step (Beyer et al. 2022, 'Knowledge "
        "distillation: a good teacher is patient and consistent'); default: unaugmented "
        "images, teacher outputs cached",
    )
    parser.add_argument(
        "--teacher_cache",
        default=None,
        help="folder keeping the fine-tuned teacher (one .keras file per task, dataset, seed "
        "and teacher schedule); reused when present. Default: train it every run",
    )
    parser.add_argument(
        "--validation_freq", type=int, default=1, help="validate the students every N epochs"
    )
    parser.add_argument("--tag", default="", help="results file suffix, e.g. patient")
    parser.add_argument(
        "--text_file", default=None, help=f"text: a TSV (default: <assets>/{TEXT_FILE})"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic run (seconds)")
    return parser


def teacher_from_cache(
    cache_dir: str | None, key: str, train: Callable[[], keras.Model]
) -> tuple[keras.Model, bool, float]:
    """`(teacher, from_cache, seconds)`: the teacher an earlier run saved as
    `<cache_dir>/<key>.keras`, else `train()`'s, saved there for the next run (when
    `cache_dir` is given). `seconds` is the time to load or to train it."""
    start = time.perf_counter()
    path = pathlib.Path(cache_dir) / f"{key}.keras" if cache_dir else None
    if path is not None and path.exists():
        teacher = kt.load_model(path)
        print(f"teacher: reusing {path} (fine-tuned by an earlier run)", flush=True)
        return teacher, True, time.perf_counter() - start
    teacher = train()
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        kt.save_model(teacher, path)
        print(f"teacher: saved to {path} for later runs", flush=True)
    return teacher, False, seconds


class Curves(keras.callbacks.Callback):
    """Per-epoch training and validation accuracy of every `fit` it is passed to, appended
    (the two phases of an image student make one curve)."""

    def __init__(self):
        super().__init__()
        self.accuracy, self.val_accuracy, self.val_epochs = [], [], []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.accuracy.append(round(float(logs["accuracy"]), 4))
        if "val_accuracy" in logs:
            self.val_accuracy.append(round(float(logs["val_accuracy"]), 4))
            self.val_epochs.append(len(self.accuracy))

    def as_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "val_accuracy": self.val_accuracy,
            "val_epochs": self.val_epochs,
        }


def gap_closed(teacher_acc: float, baseline_acc: float, distilled_acc: float) -> float | None:
    """The fraction of the baseline student's gap to the teacher that distillation closed
    (None when the baseline is not below the teacher)."""
    gap = teacher_acc - baseline_acc
    return round((distilled_acc - baseline_acc) / gap, 3) if gap > 0 else None


def ms_per_image(model: keras.Model, batch) -> float:
    """Median wall time of `model.predict` on `batch`, per example, after a warm-up."""
    n = int(keras.tree.flatten(batch)[0].shape[0])
    model.predict(batch, batch_size=n, verbose=0)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model.predict(batch, batch_size=n, verbose=0)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times)) / n


def accuracy(model: keras.Model, data) -> float:
    """Validation accuracy; `data` is unshuffled, so `predict` keeps the labels' order."""
    labels = np.concatenate([np.asarray(y) for _, y in data])
    scores = model.predict(data.map(lambda x, y: x), verbose=0)
    return float(np.mean(np.argmax(scores, axis=-1) == labels))


# --- text ------------------------------------------------------------------------------


class Tokenize(keras.layers.Layer):
    """Raw strings -> the MiniLM classifier's token inputs (benchmark-only: the KerasHub
    preprocessor cannot take a symbolic string input itself)."""

    def __init__(self, preprocessor, sequence_length: int, **kwargs):
        super().__init__(**kwargs)
        self.preprocessor = preprocessor
        self.sequence_length = sequence_length

    def call(self, texts):
        return {k: tf.cast(v, "int32") for k, v in self.preprocessor(texts).items()}

    def compute_output_spec(self, texts):
        shape = (texts.shape[0], self.sequence_length)
        return {
            key: keras.KerasTensor(shape, dtype="int32")
            for key in ("token_ids", "segment_ids", "padding_mask")
        }


def embedding_bag(train_texts, num_classes: int, sequence_length: int, dropout: float):
    """The student: text_classifier.train_baseline's model, built without training it."""
    vectorizer = keras.layers.TextVectorization(
        max_tokens=20_000, output_sequence_length=sequence_length
    )
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(train_texts).batch(256))
    return keras.Sequential(
        [
            keras.Input((), dtype="string"),
            vectorizer,
            keras.layers.Embedding(20_000, 64),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(num_classes, activation="softmax"),
        ],
        name="embedding_bag",
    )


def augment_texts(texts, copies: int, seed: int, mask_probability=0.1, ngram_probability=0.25):
    """`copies` augmented versions of every text, in order (copy 1 of each text, copy 2, ...).

    Tang et al. 2019 ("Distilling task-specific knowledge from BERT into simple neural
    networks", section 3.3): each word is replaced by `[MASK]` with `mask_probability`, then
    with `ngram_probability` only a random n-gram (n uniform in 1..5) of the text is kept.
    Their part-of-speech-guided word replacement is left out (it needs a tagger).
    """
    rng = np.random.default_rng(seed)
    augmented = []
    for _ in range(copies):
        for text in texts:
            words = ["[MASK]" if rng.random() < mask_probability else w for w in text.split()]
            if len(words) > 1 and rng.random() < ngram_probability:
                n = min(int(rng.integers(1, 6)), len(words))
                first = int(rng.integers(0, len(words) - n + 1))
                words = words[first : first + n]
            augmented.append(" ".join(words))
    return augmented


def run_text(args) -> dict:
    from keras_transfer.apps import text_classifier as text_lib

    if args.text_file:
        data_path = args.text_file
    else:
        data_path = str(_common.assets_dir(args.assets, TEXT_FILE) / TEXT_FILE)
    config = text_lib.Config(
        data_path=data_path,
        model_dir="",
        max_examples=200 if args.smoke else args.max_examples,
    )
    keras.utils.set_random_seed(args.seed)
    texts, labels, class_names = text_lib.load_text_data(config)
    train, validation = text_lib.split(
        texts, labels, config.validation_split, args.seed, config.max_examples
    )
    print(f"{len(train[0])} train / {len(validation[0])} validation texts", flush=True)
    preset = text_lib.default_preset()
    preprocessor = text_lib.build_preprocessor(preset, config.sequence_length)

    def fine_tune_teacher() -> keras.Model:
        classifier, _ = text_lib.build_classifier(
            preset, len(class_names), config.sequence_length, config.dropout
        )
        token_train = text_lib.token_dataset(
            preprocessor, *train, config.batch_size, True, args.seed
        )  # the example's own pipeline
        kt.fit_two_phase(
            classifier,
            token_train,
            head_epochs=0,
            fine_tune_epochs=args.teacher_epochs,
            fine_tune_lr=1e-4,
            lr_decay=0.7,  # head 1e-4, top block 7e-5 ... embeddings 8e-6
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            verbose=2,
        )
        return classifier

    dataset = "synthetic" if args.text_file else "sms_spam"
    key = (
        f"text_{dataset}_minilm_l6_seed{args.seed}_epochs{args.teacher_epochs}"
        f"_n{config.max_examples}_len{config.sequence_length}"
    )
    classifier, from_cache, teacher_seconds = teacher_from_cache(
        args.teacher_cache, key, fine_tune_teacher
    )
    strings = keras.Input((), dtype="string", name="text")
    teacher = keras.Model(
        strings, classifier(Tokenize(preprocessor, config.sequence_length)(strings)), name="teacher"
    )

    def batches(part, shuffle):
        data = tf.data.Dataset.from_tensor_slices((list(part[0]), part[1]))
        if shuffle:
            data = data.shuffle(len(part[0]), seed=args.seed, reshuffle_each_iteration=True)
        return data.batch(config.batch_size)

    train_data, validation_data = batches(train, True), batches(validation, False)
    teacher_acc = accuracy(teacher, validation_data)
    print(f"teacher validation accuracy {teacher_acc:.4f} ({teacher_seconds:.0f} s)", flush=True)

    arms = [("labels_only", 1.0, train_data), ("distilled", args.alpha, train_data)]
    if args.transfer_copies:
        # The transfer set keeps each copy's original label, for the labels' term (alpha)
        # and for the labels-only student trained on the same texts.
        copies = augment_texts(train[0], args.transfer_copies, args.seed)
        transfer = (
            list(train[0]) + copies,
            np.concatenate([train[1]] * (args.transfer_copies + 1)),
        )
        print(f"transfer set: {len(transfer[0])} texts, e.g. {copies[:3]}", flush=True)
        transfer_data = batches(transfer, True)
        arms = [
            ("labels_only_original", 1.0, train_data),
            ("labels_only", 1.0, transfer_data),
            ("distilled", args.alpha, transfer_data),
        ]

    students, curves = {}, {}
    epochs = 1 if args.smoke else args.student_epochs
    for arm, alpha, arm_data in arms:
        keras.utils.set_random_seed(args.seed)
        student = embedding_bag(train[0], len(class_names), config.sequence_length, config.dropout)
        curves[arm] = Curves()
        arm_start = time.perf_counter()
        kt.distill(
            teacher,
            student,
            arm_data,
            validation_data,
            temperature=args.temperature,
            alpha=alpha,
            epochs=epochs,
            learning_rate=1e-3,
            # Labels only: the teacher term is off and the teacher never runs.
            cache_teacher=alpha < 1.0,
            seed=args.seed,
            callbacks=[curves[arm]],
            validation_freq=args.validation_freq,
            verbose=2,
        )
        students[arm] = (student, accuracy(student, validation_data))
        print(f"student {arm}: {students[arm][1]:.4f} ({time.perf_counter() - arm_start:.0f} s)")

    probe = tf.constant(list(validation[0][:256]))
    transfer_set = {}
    if args.transfer_copies:
        original = students["labels_only_original"][1]
        transfer_set = {
            "transfer_copies": args.transfer_copies,
            "num_transfer": len(train[0]) * (args.transfer_copies + 1),
            "student_labels_only_original_acc": original,
            "gap_closed_vs_original": gap_closed(teacher_acc, original, students["distilled"][1]),
        }
    return {
        "dataset": dataset,
        "teacher_acc": teacher_acc,
        "student_labels_only_acc": students["labels_only"][1],
        "student_distilled_acc": students["distilled"][1],
        **transfer_set,
        "teacher_ms_per_image": ms_per_image(teacher, probe),
        "student_ms_per_image": ms_per_image(students["distilled"][0], probe),
        "teacher_params": int(classifier.count_params()),
        "student_params": int(students["distilled"][0].count_params()),
        "num_train": len(train[0]),
        "num_validation": len(validation[0]),
        "teacher_training": f"MiniLM-L6 + head, all blocks {args.teacher_epochs} epoch(s), "
        "Adam 1e-4 with lr_decay 0.7",
        "teacher_from_cache": from_cache,
        "teacher_seconds": round(teacher_seconds, 1),
        "student_epochs": epochs,
        "curves": {arm: c.as_dict() for arm, c in curves.items()},
    }


# --- images ----------------------------------------------------------------------------


def run_images(args) -> dict:
    if args.smoke:
        folder, weights, size = _common.smoke_image_folder(), None, 64
    else:
        assets = _common.assets_dir(args.assets, _common.DATASETS["hymenoptera"])
        folder = assets / _common.DATASETS["hymenoptera"]
        weights, size = str(assets / _common.MOBILENET_WEIGHTS), 224
    student_size = size // 2 if args.smoke else args.student_size
    keras.utils.set_random_seed(args.seed)
    data = kt.image_folder_dataset(
        folder, image_size=size, batch_size=32, augment="flip,crop", seed=args.seed
    )
    print(f"classes {data.class_names}", flush=True)

    teacher_head_epochs, teacher_fine_tune_epochs = (2, 1) if args.smoke else (20, 3)

    def fine_tune_teacher() -> keras.Model:
        teacher = kt.create_classifier(
            kt.create_backbone("mobilenet", input_shape=(size, size, 3), weights=weights),
            len(data.class_names),
            class_names=data.class_names,
        )
        kt.fit_two_phase_cached(
            teacher,
            data.train,
            data.validation,
            feature_data=data.train_unaugmented,
            head_epochs=teacher_head_epochs,
            fine_tune_epochs=teacher_fine_tune_epochs,
            head_lr=1e-3,
            fine_tune_lr=2e-5,
            verbose=2,
        )
        return teacher

    dataset = "synthetic" if args.smoke else "hymenoptera"
    key = (
        f"images_{dataset}_mobilenet{size}_seed{args.seed}"
        f"_head{teacher_head_epochs}_all{teacher_fine_tune_epochs}"
    )
    teacher, from_cache, teacher_seconds = teacher_from_cache(
        args.teacher_cache, key, fine_tune_teacher
    )
    teacher_acc = accuracy(teacher, data.validation)
    print(f"teacher validation accuracy {teacher_acc:.4f} ({teacher_seconds:.0f} s)", flush=True)

    def make_student():
        classifier = kt.create_classifier(
            kt.create_backbone(
                "mobilenet", input_shape=(student_size, student_size, 3), weights=weights
            ),
            len(data.class_names),
            class_names=data.class_names,
        )
        student = keras.Sequential(
            [
                keras.Input((size, size, 3)),
                keras.layers.Resizing(student_size, student_size, antialias=True),
                classifier,
            ],
            name=f"student_{student_size}px",
        )
        return student, classifier

    students, curves = {}, {}
    head_epochs = 2 if args.smoke else args.head_epochs
    fine_tune_epochs = 1 if args.smoke else args.fine_tune_epochs
    for arm, alpha in (("labels_only", 1.0), ("distilled", args.alpha)):
        keras.utils.set_random_seed(args.seed)
        student, classifier = make_student()
        curves[arm] = Curves()
        arm_start = time.perf_counter()
        phases = (
            ("head", {"epochs": head_epochs, "learning_rate": 1e-3}),
            ("all", {"epochs": fine_tune_epochs, "learning_rate": 2e-5}),
        )
        for phase, settings in phases:
            if phase == "head":
                kt.freeze(classifier)
            else:
                kt.unfreeze(classifier, "all")
            kt.distill(
                teacher,
                student,
                data.train if args.consistent else data.train_unaugmented,
                data.validation,
                temperature=args.temperature,
                alpha=alpha,
                cache_teacher=not args.consistent,
                seed=args.seed,
                callbacks=[curves[arm]],
                validation_freq=args.validation_freq,
                verbose=2,
                **settings,
            )
        students[arm] = (student, accuracy(student, data.validation))
        print(f"student {arm}: {students[arm][1]:.4f} ({time.perf_counter() - arm_start:.0f} s)")

    probe = next(iter(data.validation))[0][:32]
    return {
        "dataset": dataset,
        "teacher_acc": teacher_acc,
        "student_labels_only_acc": students["labels_only"][1],
        "student_distilled_acc": students["distilled"][1],
        "teacher_ms_per_image": ms_per_image(teacher, probe),
        "student_ms_per_image": ms_per_image(students["distilled"][0], probe),
        "teacher_px": size,
        "student_px": student_size,
        "num_train": int(sum(int(x.shape[0]) for x, _ in data.train_unaugmented)),
        "teacher_training": f"head {teacher_head_epochs} epochs on cached features (Adam "
        f"1e-3), all blocks {teacher_fine_tune_epochs} epochs at 2e-5 on flip+crop",
        "teacher_from_cache": from_cache,
        "teacher_seconds": round(teacher_seconds, 1),
        "head_epochs": head_epochs,
        "fine_tune_epochs": fine_tune_epochs,
        "curves": {arm: c.as_dict() for arm, c in curves.items()},
        "student_training": f"head {head_epochs} epochs at 1e-3 (backbone frozen), all "
        f"blocks {fine_tune_epochs} epochs at 2e-5, "
        + (
            "flip+crop augmented images, teacher on the same views every step"
            if args.consistent
            else "unaugmented images, teacher outputs cached"
        ),
    }


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    if args.validation_freq < 1:
        raise SystemExit(f"--validation_freq must be at least 1, got {args.validation_freq}.")
    start = time.perf_counter()
    result = run_text(args) if args.task == "text" else run_images(args)
    curves = result.pop("curves")
    result = {
        "task": args.task,
        **result,
        "gap_closed": gap_closed(
            result["teacher_acc"],
            result["student_labels_only_acc"],
            result["student_distilled_acc"],
        ),
        "speedup": round(result["teacher_ms_per_image"] / result["student_ms_per_image"], 2),
        "temperature": args.temperature,
        "alpha": args.alpha,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - start, 1),
        "load_average": _common.load_average(),
        # Last: long lists. Per epoch, both phases of an image student in one list.
        "curves": curves,
    }
    if not args.smoke or args.output_dir:
        suffix = ("_consistent" if args.consistent else "") + (f"_{args.tag}" if args.tag else "")
        path = (
            _common.output_dir(args.output_dir, "")
            / f"distillation_{result['dataset']}{suffix}.json"
        )
        _common.write_json(path, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
