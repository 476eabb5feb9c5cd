"""Source-free adaptation from the command: `keras-transfer train --adapt=adabn|tent|shot`
adapts the trained model at the end, `keras-transfer adapt` a trained model folder, and
`--adapt=mcc` replaces the fine-tuning phase like DANN, CORAL and MMD."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import make_tiny_classifier
from conftest import write_image_folder

import keras_transfer as kt
from keras_transfer.apps import adapt as adapt_lib
from keras_transfer.apps import image_classifier as image_classifier_lib


def _mean_entropy(model, target):
    p = adapt_lib.target_predictions(model, target.unshuffled)
    return float(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1).mean())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_run_config):
    """A tiny trained model folder, and a labelled target folder of darker images."""
    root = tmp_path_factory.mktemp("adapt")
    write_image_folder(root / "images", {"a": 8, "b": 8}, size=(40, 40))
    write_image_folder(root / "target", {"a": 4, "b": 4}, size=(48, 40), seed=5)
    model_dir = root / "run"
    # The target folder is labelled, so it also serves as the run's test folder.
    image_classifier_lib.run(
        tiny_run_config(root / "images", model_dir, test_dir=str(root / "target"))
    )
    return model_dir, root / "target"


def test_train_with_a_source_free_method_saves_the_adapted_model(
    trained_run, tiny_run_config, tmp_path
):
    _, target_dir = trained_run
    images = tmp_path / "images"
    write_image_folder(images, {"a": 8, "b": 8}, size=(40, 40))
    model_dir = tmp_path / "out"
    config = tiny_run_config(images, model_dir, target_dir=str(target_dir), adapt="adabn")
    results = image_classifier_lib.run(config)

    adaptation = results["adaptation"]
    assert adaptation["method"] == "adabn" and adaptation["target_images"] == 8
    assert adaptation["target_labelled"] is True
    assert adaptation["settings"]["epochs"] == 0
    assert adaptation["collapse"]["kept"] == "adapted"  # AdaBN kept: nothing collapsed
    free = adaptation["label_free"]
    assert sum(free["class_shares_after"]) == pytest.approx(1.0, abs=1e-3)
    # The saved model is the adapted one: its target predictions give the "after" entropy.
    saved = keras.saving.load_model(model_dir / "model.keras")
    target = kt.data.target_image_dataset(target_dir, ["a", "b"], image_size=32)
    assert _mean_entropy(saved, target) == pytest.approx(free["mean_entropy_after"], abs=1e-4)
    # results.json holds the same report; fine-tuning ran as usual before it.
    written = json.loads((model_dir / "results.json").read_text())
    assert written["adaptation"]["label_free"] == free
    assert written["history"]["phase"][-1] == "fine_tune"


def test_adapt_model_dir_writes_a_new_folder_and_leaves_the_trained_one(trained_run, tmp_path):
    model_dir, target_dir = trained_run
    before = {name: (model_dir / name).read_bytes() for name in ("model.keras", "labels.txt")}
    output = tmp_path / "adapted"
    settings = adapt_lib.AdaptSettings("adabn")
    report = adapt_lib.adapt_model_dir(str(model_dir), str(target_dir), str(output), settings)

    assert {p.name for p in output.iterdir()} >= {
        "model.keras",
        "labels.txt",
        "config.json",
        "adapt.json",
    }
    assert json.loads((output / "adapt.json").read_text())["method"] == "adabn"
    # The run's decoding settings travel with the adapted model (predict reads them).
    assert json.loads((output / "config.json").read_text()) == json.loads(
        (model_dir / "config.json").read_text()
    )
    assert {n: (model_dir / n).read_bytes() for n in before} == before
    adapted = keras.saving.load_model(output / "model.keras")
    original = keras.saving.load_model(model_dir / "model.keras")
    # AdaBN moved the BatchNormalization statistics to the target's and nothing else.
    for a, b in zip(adapted.weights, original.weights):
        moved = not np.allclose(np.array(a), np.array(b))
        assert moved == (moved and "moving_" in a.path), a.path
    assert any(
        not np.allclose(np.array(a), np.array(b))
        for a, b in zip(adapted.weights, original.weights)
        if "moving_mean" in a.path
    )
    assert report["target_accuracy_before"] is not None
    assert "test" not in report

    with pytest.raises(FileExistsError, match="is not empty"):
        adapt_lib.adapt_model_dir(str(model_dir), str(target_dir), str(output), settings)
    with pytest.raises(ValueError, match="the trained model's folder"):
        adapt_lib.adapt_model_dir(str(model_dir), str(target_dir), str(model_dir), settings)
    with pytest.raises(ValueError, match="the methods without source data are"):
        adapt_lib.AdaptSettings("dann").resolved()
    with pytest.raises(ValueError, match="needs epochs >= 1"):
        adapt_lib.AdaptSettings("tent", epochs=0).resolved()
    with pytest.raises(ValueError, match="min_unchanged must be between 0"):
        adapt_lib.AdaptSettings("shot", min_unchanged=2.0).resolved()
    # SHOT's label-free stop: the declared default, and 0 for none.
    assert adapt_lib.AdaptSettings("shot").resolved()["min_unchanged"] == 0.8
    assert adapt_lib.AdaptSettings("shot", min_unchanged=0).resolved()["min_unchanged"] == 0


def test_adapt_model_dir_tests_the_model_before_and_after_on_a_labelled_test_dir(
    trained_run, tmp_path
):
    model_dir, target_dir = trained_run
    settings = adapt_lib.AdaptSettings("adabn")
    report = adapt_lib.adapt_model_dir(
        str(model_dir), str(target_dir), str(tmp_path / "out"), settings, test_dir=str(target_dir)
    )
    before, after = report["test"]["before"], report["test"]["after"]
    # The model before adaptation, read as the training run read its test folder.
    trained = json.loads((model_dir / "results.json").read_text())
    assert before == trained["test"]
    # The test folder is the target folder here, so the reports match the target accuracies.
    assert before["accuracy"] == report["target_accuracy_before"]
    assert after["accuracy"] == report["target_accuracy_after"]
    assert json.loads((tmp_path / "out" / "adapt.json").read_text())["test"] == report["test"]
    flat = tmp_path / "flat"
    flat.mkdir()
    for image in sorted((target_dir / "a").iterdir()):
        (flat / image.name).write_bytes(image.read_bytes())
    with pytest.raises(ValueError, match="has no labels to test with"):
        adapt_lib.adapt_model_dir(
            str(model_dir), str(target_dir), str(tmp_path / "o2"), settings, test_dir=str(flat)
        )
    assert not (tmp_path / "o2").exists()  # refused before any work


def test_adapt_model_with_shot_trains_the_backbone_on_the_fixed_order_images(tmp_path):
    write_image_folder(tmp_path / "target", {"a": 4, "b": 4}, size=(40, 40), seed=5)
    target = kt.data.target_image_dataset(tmp_path / "target", ["a", "b"], image_size=32)
    model = make_tiny_classifier(fitted_norms=True)
    head = [np.array(w) for w in model.head.weights]
    kernels = [w for w in model.backbone.weights if w.path.endswith("kernel")]
    before = [np.array(w) for w in kernels]
    # What SHOT trains, kept even if its predictions collapse (the tiny random model's do)
    # or change (min_unchanged=0: no label-free stop).
    settings = adapt_lib.AdaptSettings(
        "shot", epochs=2, learning_rate=1e-3, min_unchanged=0, revert_collapse=False
    )
    report = adapt_lib.adapt_model(model, target, settings)
    assert report["settings"]["epochs"] == 2 and report["target_labelled"] is True
    # Each epoch's share of unchanged top classes, the last one the adapted model's.
    assert report["epochs"]["kept"] == 2 and len(report["epochs"]["unchanged_top1"]) == 2
    assert report["epochs"]["unchanged_top1"][-1] == pytest.approx(
        report["label_free"]["unchanged_top1"], abs=1e-6
    )
    assert any(not np.allclose(b, np.array(w)) for b, w in zip(before, kernels))
    for b, w in zip(head, model.head.weights):
        np.testing.assert_array_equal(b, np.array(w))
    # The label-free "after" measure is the adapted model's.
    assert _mean_entropy(model, target) == pytest.approx(
        report["label_free"]["mean_entropy_after"], abs=1e-4
    )


def test_adapt_model_with_shot_trains_only_the_top_blocks_asked_for(tmp_path):
    write_image_folder(tmp_path / "target", {"a": 4, "b": 4}, size=(40, 40), seed=5)
    target = kt.data.target_image_dataset(tmp_path / "target", ["a", "b"], image_size=32)
    model = make_tiny_classifier(fitted_norms=True)
    blocks = kt.get_blocks(model)

    def kernels(block):
        return [np.array(w) for layer in block.layers for w in layer.weights if "kernel" in w.path]

    before = [kernels(block) for block in blocks]
    settings = adapt_lib.AdaptSettings(
        "shot", epochs=1, learning_rate=1e-2, unfreeze="1", min_unchanged=0, revert_collapse=False
    )
    report = adapt_lib.adapt_model(model, target, settings)

    assert report["settings"]["unfreeze"] == "1" and report["settings"]["train_bn"] is False
    moved = [
        any(not np.allclose(b, a) for b, a in zip(old, kernels(block)))
        for old, block in zip(before, blocks)
    ]
    assert moved[-1] and not any(moved[:-1])  # the top block alone
    # The blocks and BatchNormalization are SHOT's settings: refused for the others.
    for method in ("adabn", "tent"):
        with pytest.raises(ValueError, match="are SHOT's settings"):
            adapt_lib.AdaptSettings(method, unfreeze=2).resolved()
        with pytest.raises(ValueError, match="are SHOT's settings"):
            adapt_lib.AdaptSettings(method, train_bn=True).resolved()


def test_collapse_is_half_the_class_share_entropy_lost():
    balanced = np.array([[0.9, 0.1], [0.2, 0.8]] * 4)
    assert adapt_lib.class_share_entropy(balanced) == pytest.approx(np.log(2))
    onto_one = np.array([[0.1, 0.9]] * 8)
    assert adapt_lib.class_share_entropy(onto_one) == 0.0
    assert adapt_lib.collapsed(balanced, onto_one)
    # 3 of 4 images in one class keeps 0.56 of 0.69 nats: more than half, no collapse.
    three_to_one = np.array([[0.9, 0.1]] * 6 + [[0.2, 0.8]] * 2)
    assert not adapt_lib.collapsed(balanced, three_to_one)
    # Predictions that were on one class already cannot collapse further.
    assert not adapt_lib.collapsed(onto_one, onto_one)


@pytest.mark.parametrize("revert", [True, False])
def test_adapt_model_undoes_an_adaptation_whose_predictions_collapse(tmp_path, monkeypatch, revert):
    write_image_folder(tmp_path / "target", {"a": 4, "b": 4}, size=(40, 40), seed=5)
    target = kt.data.target_image_dataset(tmp_path / "target", ["a", "b"], image_size=32)
    model = make_tiny_classifier(fitted_norms=True)
    initial = [np.array(w) for w in model.weights]

    def collapsing_method(model, images, steps=None):
        # What a collapse does to the weights: the head now says class 1 for every image.
        bias = model.head.weights[-1]
        # One sigmoid unit or one unit per class: class 1 (of 2) wins by far either way.
        bias.assign(np.array([50.0] if bias.shape[0] == 1 else [-50.0, 50.0], "float32"))

    monkeypatch.setattr(adapt_lib.test_time, "adapt_batchnorm", collapsing_method)
    # Balanced predictions before adaptation, whatever the random model says.
    before = [np.array([[0.9, 0.1], [0.2, 0.8]] * 4)]
    real_predictions = adapt_lib.target_predictions
    monkeypatch.setattr(
        adapt_lib,
        "target_predictions",
        lambda model, images: before.pop() if before else real_predictions(model, images),
    )
    settings = adapt_lib.AdaptSettings("adabn", revert_collapse=revert)
    report = adapt_lib.adapt_model(model, target, settings)

    collapse = report["collapse"]
    assert collapse["detected"] is True and collapse["class_share_entropy_after"] == 0.0
    assert report["label_free"]["class_shares_after"] == [0.0, 1.0]  # what the method did
    restored = all(np.array_equal(a, np.array(w)) for a, w in zip(initial, model.weights))
    if revert:
        assert collapse["kept"] == "before_adaptation" and restored
    else:
        assert collapse["kept"] == "adapted" and not restored


@pytest.mark.slow
def test_adapt_command_prints_what_changed_and_refuses_a_bad_method(trained_run, tmp_path):
    model_dir, target_dir = trained_run
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "keras_transfer", "adapt", f"--model_dir={model_dir}"]
    # As the issue writes it: no --output_dir, so the folder beside the trained one.
    done = subprocess.run(
        [*command, f"--target_dir={target_dir}", f"--test_dir={target_dir}", "--method=tent"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tent on 8 target images: mean entropy" in done.stdout
    written = pathlib.Path(f"{model_dir}_tent")
    assert f"Wrote {written}" in done.stdout and (written / "model.keras").exists()
    assert "target accuracy" in done.stdout and (model_dir / "model.keras").exists()
    test = json.loads((written / "adapt.json").read_text())["test"]
    assert f"test accuracy {test['before']['accuracy']:.4f} -> " in done.stdout
    bad = subprocess.run(
        [*command, f"--target_dir={target_dir}", "--output_dir=x", "--method=dann"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.tensorflow_only
def test_train_with_mcc_replaces_the_fine_tuning_phase(trained_run, tiny_run_config, tmp_path):
    _, target_dir = trained_run
    images = tmp_path / "images"
    write_image_folder(images, {"a": 8, "b": 8}, size=(40, 40))
    config = tiny_run_config(images, tmp_path / "out", target_dir=str(target_dir), adapt="mcc")
    results = image_classifier_lib.run(config)
    history = results["history"]
    assert history["phase"][-1] == "fine_tune"
    assert history["alignment_loss"][-1] > 0  # the class confusion of the target batches
    assert results["domain"]["method"] == "mcc"


@pytest.mark.jax_only
def test_train_with_mcc_is_refused_on_other_backends_before_any_work(tiny_run_config, tmp_path):
    from keras_transfer.apps.config import ConfigError

    write_image_folder(tmp_path / "target", {"a": 2, "b": 2}, size=(40, 40))
    with pytest.raises(
        ConfigError, match=r"^adapt=mcc needs the TensorFlow backend, .*adapt=adabn\|tent\|shot"
    ):
        tiny_run_config(
            tmp_path / "images", tmp_path / "out", target_dir=str(tmp_path / "target"), adapt="mcc"
        )
    assert not (tmp_path / "out").exists()
