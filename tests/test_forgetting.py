"""Linear CKA properties and the forgetting report on a tiny model."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import forgetting

# ---------------------------------------------------------------------------------------
# Linear CKA
# ---------------------------------------------------------------------------------------


def test_cka_of_identical_activations_is_one():
    x = np.random.default_rng(0).normal(size=(50, 20))
    assert kt.linear_cka(x, x) == pytest.approx(1.0)


def test_cka_of_independent_random_activations_is_near_zero():
    rng = np.random.default_rng(1)
    # E[CKA] of independent Gaussians is about sqrt(p_x p_y) / N for N >> p.
    assert kt.linear_cka(rng.normal(size=(2000, 10)), rng.normal(size=(2000, 10))) < 0.02


def test_cka_is_invariant_to_orthogonal_transforms_isotropic_scaling_and_shifts():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 12))
    y = x @ rng.normal(size=(12, 8)) + 0.5 * rng.normal(size=(60, 8))
    reference = kt.linear_cka(x, y)
    assert 0.1 < reference < 0.99
    orthogonal, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert kt.linear_cka(x @ orthogonal, y) == pytest.approx(reference, rel=1e-9)
    assert kt.linear_cka(7.5 * x + 3.0, y) == pytest.approx(reference, rel=1e-9)
    # Not invariant to arbitrary invertible maps (Kornblith et al.'s argument for CKA).
    stretch = np.diag(np.linspace(0.1, 10, 12))
    assert abs(kt.linear_cka(x @ stretch, y) - reference) > 1e-3


def test_cka_matches_the_feature_space_formula_and_flattens_maps():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 2, 2, 5)), rng.normal(size=(30, 7))
    xc = x.reshape(30, -1) - x.reshape(30, -1).mean(0)
    yc = y - y.mean(0)
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (
        np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    )
    assert kt.linear_cka(x, y) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="same examples"):
        kt.linear_cka(x, y[:10])


# ---------------------------------------------------------------------------------------
# The report on a tiny model
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    backbone = kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None, alpha=0.25)
    images = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    # Untrained BatchNormalization statistics make activations vanish with depth (1e-18 at
    # conv_dw_13); statistics of these images keep every block's output at unit scale.
    kt.recalibrate_batchnorm(backbone.model, [images / 127.5 - 1.0])
    return backbone, images


def _change_block(backbone, block_name, seed=0):
    block = kt.backbones.find_block(backbone.blocks, block_name)
    rng = np.random.default_rng(seed)
    for variable in block.variables:
        if "kernel" in variable.path:
            value = variable.numpy()
            variable.assign(value + rng.normal(size=value.shape).astype("float32") * 0.5)


def _head():
    return keras.Sequential(
        [
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(
                10,
                activation="softmax",
                kernel_initializer=keras.initializers.RandomNormal(stddev=3.0, seed=1),
            ),
        ]
    )


def test_report_shows_the_changed_top_block_and_unchanged_lower_blocks(tiny, tmp_path):
    pretrained, images = tiny
    fine_tuned = forgetting.pretrained_copy(pretrained)
    _change_block(fine_tuned, "conv_dw_13")
    report = kt.forgetting_report(pretrained, fine_tuned, images, source_head=_head())
    cka = report["block_cka"]
    assert list(cka) == pretrained.block_names()
    for name in pretrained.block_names()[:-1]:
        assert cka[name] == pytest.approx(1.0, abs=1e-6), name
    assert cka["conv_dw_13"] < 0.99
    assert report["least_similar_block"] == "conv_dw_13"
    assert report["num_probe_images"] == 16
    assert 0.0 <= report["source_top1_agreement"] <= 1.0
    assert report["source_mean_kl"] > 1e-4
    json.dumps(report)  # a plain dict of numbers: it goes into results.json as is
    path = tmp_path / "drift.png"
    report.plot(path)
    assert path.stat().st_size > 1000


def test_report_of_an_untouched_copy_and_a_classifier_of_it(tiny):
    pretrained, images = tiny
    model = kt.create_classifier(forgetting.pretrained_copy(pretrained), 3)
    head = _head()
    # Another probe size is resized; a dataset of (images, labels) works too.
    bigger = tf.image.resize(images, (40, 40)).numpy()
    probe = tf.data.Dataset.from_tensor_slices((bigger, np.zeros(16))).batch(5)
    report = kt.forgetting_report(pretrained, model, probe, source_head=head)
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in report["block_cka"].values())
    assert report["source_top1_agreement"] == 1.0
    assert report["source_mean_kl"] == pytest.approx(0.0, abs=1e-6)


def test_report_bad_input(tiny):
    pretrained, images = tiny
    with pytest.raises(ValueError, match="too few for CKA"):
        kt.forgetting_report(pretrained, pretrained, images[:3])
    with pytest.raises(ValueError, match="one image"):
        kt.forgetting_report(pretrained, pretrained, images[0])
    with pytest.raises(ValueError, match=r"\(N, height, width, 3\)"):
        kt.forgetting_report(pretrained, pretrained, images[..., :1])
    cut = pretrained.cut("conv_dw_5")
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Softmax()])
    with pytest.raises(ValueError, match="cut at a feature_block"):
        kt.forgetting_report(pretrained, cut, images, source_head=head)
    # Without the source head, a cut fine-tuned backbone compares the blocks it has.
    report = kt.forgetting_report(pretrained, cut, images)
    assert list(report["block_cka"]) == pretrained.block_names()[:6]


def test_diagnostics_summary_has_the_results_json_fields(tiny, tmp_path):
    pretrained, images = tiny
    fine_tuned = kt.create_classifier(forgetting.pretrained_copy(pretrained), 2)
    _change_block(fine_tuned, "conv_dw_12")
    labels = np.arange(16) % 2
    images = images.copy()
    images[labels == 1, ..., 0] += 100
    train = tf.data.Dataset.from_tensor_slices((np.clip(images, 0, 255), labels)).batch(8)
    with_top = keras.applications.MobileNet(
        weights=None, input_shape=(32, 32, 3), alpha=0.25, classes=5
    )
    for layer in pretrained.model.layers:
        if layer.weights:
            with_top.get_layer(layer.name).set_weights(layer.get_weights())
    summary = forgetting.diagnostics_summary(
        pretrained, fine_tuned, train, images, source_head=with_top, drift_plot=tmp_path / "d.png"
    )
    assert set(summary) >= {"transferability", "block_cka", "source_top1_agreement"}
    assert set(summary["transferability"]["logme"]) == set(pretrained.block_names())
    assert summary["transferability"]["best_block_by_logme"] in pretrained.block_names()
    assert summary["transferability"]["leep"] < 0.0
    assert summary["block_cka"]["conv_dw_11"] == pytest.approx(1.0, abs=1e-6)
    assert summary["block_cka"]["conv_dw_12"] < 0.99
    assert (tmp_path / "d.png").is_file()
    json.dumps(summary)
