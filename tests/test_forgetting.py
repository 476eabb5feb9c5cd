"""Linear CKA properties and the forgetting report on a tiny model."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_png_image
from conftest import load_benchmark

import keras_transfer as kt
from keras_transfer.diagnostics import forgetting

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


# ---------------------------------------------------------------------------------------
# benchmarks/forgetting.py: the matched-accuracy comparison and the smoke run
# ---------------------------------------------------------------------------------------


def _curve(*points):
    return [
        {"epoch": i + 1, "val_accuracy": acc, "source_top1_agreement": agree, "source_mean_kl": kl}
        for i, (acc, agree, kl) in enumerate(points)
    ]


def test_matched_comparison_reads_each_arm_at_its_first_epoch_within_a_point_of_the_lowest_best():
    script = load_benchmark("forgetting")
    curves = {
        # best 0.85: the lowest best, so T = 0.85 and this arm is read at epoch 3.
        "fine_tune_1e-4": _curve((0.55, 0.1, 5.0), (0.80, 0.05, 6.0), (0.85, 0.0, 6.5)),
        "fine_tune_1e-5": _curve((0.93, 0.9, 0.1), (0.94, 0.8, 0.2), (0.93, 0.7, 0.3)),
        # 0.842 >= 0.85 - 0.01: read at epoch 2, not at its best epoch 3.
        "l2sp_1e-4": _curve((0.70, 0.5, 1.0), (0.842, 0.4, 2.0), (0.90, 0.2, 3.0)),
        "lora": _curve((0.95, 0.95, 0.05), (0.95, 0.9, 0.1), (0.96, 0.9, 0.1)),
    }
    agrees = {
        "fine_tune_1e-5": [None, None, None],
        "lora": [None, None, None],
    }
    agrees["fine_tune_1e-5"][0] = np.array([True] * 9 + [False])
    agrees["lora"][0] = np.array([True] * 10)
    matched = script.matched_comparison(curves, agrees)
    assert matched["target_accuracy"] == 0.85
    assert {arm: hit["epoch"] for arm, hit in matched["arms"].items()} == {
        "fine_tune_1e-4": 3,
        "fine_tune_1e-5": 1,
        "l2sp_1e-4": 2,
        "lora": 1,
    }
    assert matched["arms"]["l2sp_1e-4"]["source_top1_agreement"] == 0.4
    assert matched["arms"]["l2sp_1e-4"]["within_one_point"]
    assert not matched["arms"]["lora"]["within_one_point"]  # read at 0.95, 10 points above
    assert matched["arms"]["lora"]["accuracy_minus_target"] == pytest.approx(0.10)
    # L2-SP beats plain 1e-4 (0.4 vs 0.0) but not plain 1e-5 (0.9): not "keeps more".
    assert matched["l2sp_keeps_more"] is False
    assert matched["l2sp_keeps_more_at_same_lr"] is True
    assert matched["lora_keeps_more"] is True  # 0.95 > 0.9 and > 0.0
    difference = matched["agreement_differences"]["lora - fine_tune_1e-5"]
    assert difference["difference"] == pytest.approx(0.05)
    # Paired per-image differences: one 1 among ten 0s.
    assert difference["standard_error"] == pytest.approx(np.std([1] + [0] * 9, ddof=1) / 10**0.5)
    assert "standard_error" not in matched["agreement_differences"]["lora - fine_tune_1e-4"]
    without_plain = script.matched_comparison({"lora": curves["lora"]}, {})
    assert without_plain["lora_keeps_more"] is None
    assert without_plain["l2sp_keeps_more"] is None


@pytest.mark.slow
def test_forgetting_benchmark_smoke_records_curves_and_the_matched_comparison(tmp_path):
    script = load_benchmark("forgetting")
    output = tmp_path / "forgetting.json"
    arms = ["fine_tune_1e-4", "l2sp_1e-4", "lora"]
    result = script.main(["--smoke", "--arms", ",".join(arms), "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(result))
    assert result["complete"] is True
    epochs = result["budget"]["fine_tune_epochs"]
    assert epochs == 2
    for arm in arms:
        entry = result["arms"][arm]
        curve = entry["curve"]
        assert [point["epoch"] for point in curve] == list(range(1, epochs + 1))
        # The callback's last point and forgetting_report measure the same final model.
        assert entry["val_accuracy"] == curve[-1]["val_accuracy"]
        assert entry["curve_vs_report_max_abs_difference"] < 1e-6
        assert set(curve[-1]["block_cka"]) == set(entry["block_cka"])
        # Fine-tuning (full or LoRA) moved the top block away from the pretrained one.
        assert entry["block_cka"]["conv_dw_13"] < 0.999
    matched = result["matched"]
    best = {arm: max(p["val_accuracy"] for p in result["arms"][arm]["curve"]) for arm in arms}
    assert matched["target_accuracy"] == min(best.values())
    for arm in arms:
        curve = result["arms"][arm]["curve"]
        first = next(p for p in curve if p["val_accuracy"] >= matched["target_accuracy"] - 0.01)
        hit = matched["arms"][arm]
        assert hit["epoch"] == first["epoch"]
        assert hit["source_top1_agreement"] == first["source_top1_agreement"]
        assert hit["source_mean_kl"] == first["source_mean_kl"]
    plain = matched["arms"]["fine_tune_1e-4"]["source_top1_agreement"]
    assert matched["l2sp_keeps_more"] == (
        matched["arms"]["l2sp_1e-4"]["source_top1_agreement"] > plain
    )
    assert matched["lora_keeps_more"] == (matched["arms"]["lora"]["source_top1_agreement"] > plain)
    script.plot_curves(tmp_path / "curves.png", result["arms"], matched)
    assert_png_image(tmp_path / "curves.png")
