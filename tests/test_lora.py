"""LoRA by backbone block: what trains, merging, adapter files, resume after reload, bad
input, distribution, mixed precision, image families and the KerasHub text encoder."""

import json
import os
import subprocess
import sys
import textwrap

import h5py
import keras
import numpy as np
import pytest
from helpers import tiny_config

import keras_transfer as kt
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.peft import adapters
from keras_transfer.peft import lora
from keras_transfer.peft import lora_targets
from keras_transfer.training import callbacks
from keras_transfer.training import two_phase_state

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
Y = np.array([0, 0, 0, 1, 1, 1, 1, 0])


def tiny_mobilenet(seed=1, num_classes=2):
    """MobileNet V1 (alpha 0.25, 32 px, random weights) with BatchNorm statistics computed on
    X: with the initial statistics its features vanish and every output is the same."""
    keras.utils.set_random_seed(seed)
    model = kt.create_classifier(
        "mobilenet", num_classes, input_shape=(32, 32, 3), weights=None, alpha=0.25
    )
    callbacks.recalibrate_batchnorm(model, [X])
    return model


def snapshot(model):
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


def changed_paths(before, model):
    now = snapshot(model)
    return {path for path, value in before.items() if not np.array_equal(value, now[path])}


def train(model, epochs=2, lr=1e-2):
    model.compile(optimizer=keras.optimizers.Adam(lr))
    model.fit(X, Y, epochs=epochs, batch_size=4, verbose=0, shuffle=False)


def perturb(model, seed=0):
    """What training would do, without its cost: random LoRA B matrices and head kernel."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.path.endswith("lora_kernel_b") or variable.path.endswith("predictions/kernel"):
            variable.assign(rng.normal(0, 0.1, variable.shape).astype("float32"))


def lora_paths(model):
    return {v.path for v in model.weights if "lora_kernel" in v.path}


def test_fit_changes_only_lora_matrices_and_head():
    model = tiny_mobilenet()
    summary = kt.enable_lora(model, rank=4)
    before = snapshot(model)
    train(model)
    head = {v.path for v in model.head.weights}
    assert len(lora_paths(model)) == 2 * 14
    assert changed_paths(before, model) == lora_paths(model) | head
    # BatchNorm stayed in inference mode: its statistics are among the unchanged.
    assert summary.trainable_params == sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def test_summary_lists_depthwise_layers_and_fraction():
    model = tiny_mobilenet()
    summary = kt.enable_lora(model, rank=4, top_blocks=3)
    assert summary.blocks == ["conv_dw_11", "conv_dw_12", "conv_dw_13"]
    assert summary.adapted == ["conv_pw_11", "conv_pw_12", "conv_pw_13"]
    assert summary.not_adaptable == [(f"conv_dw_{i}", "DepthwiseConv2D") for i in (11, 12, 13)]
    lora_params = sum(int(np.prod(v.shape)) for v in model.weights if "lora_kernel" in v.path)
    head_params = sum(int(np.prod(v.shape)) for v in model.head.weights)
    assert summary.trainable_params == lora_params + head_params
    assert summary.total_params == model.count_params()
    assert summary.trainable_fraction == pytest.approx(
        summary.trainable_params / summary.total_params
    )
    text = str(summary)
    assert "conv_dw_12 (DepthwiseConv2D)" in text and "rank 4" in text
    assert f"{100 * summary.trainable_fraction:.2f}%" in text
    # Layers of other blocks keep no trainable weights.
    assert {v.path.split("/")[0] for v in model.trainable_weights} == {
        "conv_pw_11",
        "conv_pw_12",
        "conv_pw_13",
        "head",
    }


def test_merge_gives_same_predictions_and_no_lora_variables():
    model = tiny_mobilenet()
    kt.enable_lora(model, rank=4, alpha=8)
    perturb(model)
    expected = model.predict(X, verbose=0)
    assert np.ptp(expected[:, 0]) > 1e-3  # the outputs differ between images
    merged = kt.merge_lora(model)
    assert not lora_paths(merged) and not lora.lora_layers(merged)
    # float32 through 14 blocks, merged kernels summed in another order: 1.4e-5 seen on JAX.
    np.testing.assert_allclose(merged.predict(X, verbose=0), expected, atol=5e-5)
    assert lora.lora_layers(model)  # the original is unchanged


def test_adapter_round_trip_on_a_fresh_model_with_the_same_base(tmp_path):
    model = tiny_mobilenet()
    base = model.get_weights()
    kt.enable_lora(model, rank=4, alpha=2)
    perturb(model)
    path = tmp_path / "adapter.weights.h5"
    metadata = kt.save_adapter(model, path)
    assert metadata["rank"] == 4 and metadata["alpha"] == 2 and metadata["backbone"] == "mobilenet"
    with h5py.File(path) as f:
        stored = sorted(d.attrs["path"] for d in f["variables"].values())
    assert stored == sorted(lora_paths(model) | {v.path for v in model.head.weights})

    fresh = tiny_mobilenet(seed=1)
    fresh.set_weights(base)
    kt.load_adapter(fresh, path)
    np.testing.assert_array_equal(fresh.predict(X, verbose=0), model.predict(X, verbose=0))
    assert lora_paths(fresh) == lora_paths(model)
    assert {v.path for v in fresh.trainable_weights} == {v.path for v in model.trainable_weights}


def test_adapter_errors_name_the_problem(tmp_path):
    model = tiny_mobilenet()
    base = model.get_weights()
    kt.enable_lora(model, rank=4)
    path = tmp_path / "adapter.weights.h5"
    kt.save_adapter(model, path)

    other_base = tiny_mobilenet(seed=7)
    before = snapshot(other_base)
    with pytest.raises(ValueError, match="other base weights"):
        kt.load_adapter(other_base, path)
    assert not lora.lora_layers(other_base) and not changed_paths(before, other_base)

    other_rank = tiny_mobilenet()
    other_rank.set_weights(base)
    kt.enable_lora(other_rank, rank=2)
    with pytest.raises(ValueError, match="rank 4 but the model's LoRA layers have rank"):
        kt.load_adapter(other_rank, path)

    three_classes = tiny_mobilenet(num_classes=3)
    with pytest.raises(ValueError, match="Shape mismatch for 'head/predictions/"):
        kt.load_adapter(three_classes, path)

    with h5py.File(path, "a") as f:
        for key, dataset in f["variables"].items():
            if dataset.attrs["path"] == "conv_pw_5/lora_kernel_b":
                del f["variables"][key]
    same = tiny_mobilenet()
    same.set_weights(base)
    with pytest.raises(ValueError, match="conv_pw_5/lora_kernel_b"):
        kt.load_adapter(same, path)
    assert not lora.lora_layers(same)


def _trainable_state(model):
    return (
        [layer.trainable for layer in lora.leaf_layers([model])],
        [v.path for v in model.trainable_weights],
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": 0}, "rank must be an integer >= 1"),
        ({"rank": 2.5}, "rank must be an integer >= 1"),
        ({"rank": 9}, r"'conv1' \(Conv2D, kernel \(3, 3, 3, 8\)\) allows at most rank 8"),
        ({"rank": 4, "alpha": 0}, "alpha must be a number > 0"),
        ({"rank": 4, "alpha": -1.0}, "alpha must be a number > 0"),
        ({"rank": 4, "top_blocks": 99}, "Cannot unfreeze the top 99 blocks"),
        ({"rank": 4, "targets": "convs"}, "targets must be None"),
        ({"rank": 4, "targets": ["nope"]}, r"targets \['nope'\] name no LoRA-capable layer"),
        ({"rank": 4, "blocks": ["conv_dw_13"], "top_blocks": 2}, "not both"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(kwargs, message):
    model = tiny_mobilenet()
    state = _trainable_state(model)
    with pytest.raises(ValueError, match=message):
        kt.enable_lora(model, **kwargs)
    assert not lora.lora_layers(model)
    assert _trainable_state(model) == state


def test_enabling_twice_and_models_without_a_known_backbone():
    model = tiny_mobilenet()
    kt.enable_lora(model, rank=2)
    state = _trainable_state(model)
    with pytest.raises(ValueError, match="already enabled on 14 layers"):
        kt.enable_lora(model, rank=2)
    assert _trainable_state(model) == state

    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="LoRA needs a known backbone"):
        kt.enable_lora(plain)
    assert not lora.lora_layers(plain)


@pytest.mark.tensorflow_only
def test_tf_hub_backbone_is_a_clear_error(tmp_path, export_tiny_module, hub_classifier):
    model = hub_classifier(export_tiny_module(tmp_path / "tiny"))
    with pytest.raises(ValueError, match="cannot adapt the TF Hub backbone"):
        kt.enable_lora(model, rank=2)


def test_resume_after_keras_reload_trains_again(tmp_path):
    model = tiny_mobilenet()
    kt.enable_lora(model, rank=4)
    train(model)
    expected = model.predict(X, verbose=0)
    model.save(tmp_path / "model.keras")

    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(X, verbose=0), expected, atol=1e-5)
    # What Keras gives back: both LoRA matrices zero, hence both gradients zero.
    assert not any(
        np.any(keras.ops.convert_to_numpy(v)) for v in reloaded.weights if "lora" in v.path
    )
    resumed = kt.resume_lora(reloaded)
    assert len(resumed) == 14
    np.testing.assert_allclose(reloaded.predict(X, verbose=0), expected, atol=1e-5)
    before = snapshot(reloaded)
    train(reloaded)
    assert np.abs(reloaded.predict(X, verbose=0) - expected).max() > 1e-3
    head = {v.path for v in reloaded.head.weights}
    assert changed_paths(before, reloaded) == lora_paths(reloaded) | head


def test_fit_two_phase_lora_and_layerwise_multipliers():
    model = tiny_mobilenet()
    base = {p: v for p, v in snapshot(model).items() if not p.startswith("head/")}
    history = kt.fit_two_phase(
        model,
        X,
        None,
        y=Y,
        batch_size=4,
        head_epochs=1,
        fine_tune_epochs=1,
        head_lr=1e-2,
        fine_tune_lr=1e-2,
        unfreeze=2,
        fine_tune="lora",
        lora_rank=2,
        lora_alpha=4,
        lr_decay=0.5,
        verbose=0,
    )
    assert history.unfrozen_blocks == ["conv_dw_12", "conv_dw_13"]
    assert {layer.name for layer in lora.lora_layers(model)} == {"conv_pw_12", "conv_pw_13"}
    assert all(layer.lora_alpha == 4 for layer in lora.lora_layers(model))
    now = snapshot(model)
    assert all(np.array_equal(now[p], v) for p, v in base.items())
    by_path = dict(
        zip(
            [v.path for v in model.trainable_variables],
            model.optimizer.resolve_multipliers(model.trainable_variables),
        )
    )
    assert by_path["conv_pw_13/lora_kernel_a"] == by_path["conv_pw_13/lora_kernel_b"] == 0.5
    assert by_path["conv_pw_12/lora_kernel_b"] == 0.25
    assert by_path["head/predictions/kernel"] == 1.0


def test_fit_two_phase_checks_lora_arguments_before_training():
    model = tiny_mobilenet()
    before = snapshot(model)
    for kwargs, message in [
        ({"fine_tune": "partial"}, "fine_tune must be 'full' or 'lora'"),
        ({"fine_tune": "lora", "lora_rank": 0}, "rank must be an integer >= 1"),
        ({"fine_tune": "lora", "lora_alpha": -2}, "alpha must be a number > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            kt.fit_two_phase(model, X, None, y=Y, head_epochs=1, fine_tune_epochs=1, **kwargs)
    assert not changed_paths(before, model)


@pytest.mark.parametrize(
    "text, targets",
    [
        ("", None),
        ("  ", None),
        ("all", "all"),
        ("all_dense", "all_dense"),
        ("conv_pw_13", ["conv_pw_13"]),
        ("conv_pw_12, conv_pw_13", ["conv_pw_12", "conv_pw_13"]),
        ("block_(1|2)/.*/query$,value", ["block_(1|2)/.*/query$", "value"]),
        ("dense_{1,2}$,[a,b]x", ["dense_{1,2}$", "[a,b]x"]),
        (r"a\,b,c", [r"a\,b", "c"]),
    ],
)
def test_parse_lora_targets_splits_at_the_commas_outside_brackets(text, targets):
    assert lora_targets.parse_lora_targets(text) == targets


@pytest.mark.parametrize(
    "text, message",
    [
        ("conv_pw_12,,conv_pw_13", "has an empty entry"),
        ("conv_pw_13,all", "'all' stands alone"),
        ("conv_pw_13,block_(1/.*", "entry 'block_\\(1/.\\*' is not a valid regular expression"),
    ],
)
def test_parse_lora_targets_names_the_bad_entry(text, message):
    with pytest.raises(ValueError, match=message):
        lora_targets.parse_lora_targets(text)


def test_fit_two_phase_lora_targets_choose_the_layers_and_are_part_of_the_backup(tmp_path):
    model = tiny_mobilenet()
    common = dict(
        y=Y, batch_size=4, head_epochs=1, fine_tune_epochs=1, fine_tune="lora", lora_rank=2,
        backup_dir=tmp_path / "backup", keep_backup=True, verbose=0,
    )  # fmt: skip
    # A layer name and a layer-path pattern, in the top 3 blocks (conv_dw_11 ... conv_dw_13).
    history = kt.fit_two_phase(
        model, X, None, unfreeze=3, lora_targets=["conv_pw_13", "pw_11$"], **common
    )
    assert history.unfrozen_blocks == ["conv_dw_11", "conv_dw_12", "conv_dw_13"]
    assert [layer.name for layer in lora.lora_layers(model)] == ["conv_pw_11", "conv_pw_13"]
    # Other targets would adapt other layers: the kept backup refuses them, naming them.
    with pytest.raises(two_phase_state.BackupSettingsError, match="lora_targets"):
        kt.fit_two_phase(
            tiny_mobilenet(), X, None, unfreeze=3, lora_targets=["conv_pw_12"], **common
        )


def test_fit_two_phase_lora_targets_naming_no_layer_fail_before_training():
    model = tiny_mobilenet()
    before = snapshot(model)
    # The pattern names a layer, but not one of the block to fine-tune (conv_dw_13).
    with pytest.raises(
        ValueError,
        match=r"targets \['pw_12\$'\] name no LoRA-capable layer in blocks \['conv_dw_13'\]: .*"
        r"The LoRA-capable layers there: conv_pw_13\.$",
    ):
        kt.fit_two_phase(
            model, X, None, y=Y, head_epochs=1, fine_tune_epochs=1, unfreeze=1,
            fine_tune="lora", lora_targets=["pw_12$"], verbose=0,
        )  # fmt: skip
    assert not changed_paths(before, model) and not lora.lora_layers(model)


def test_layer_decay_multipliers_reach_lora_variables():
    model = tiny_mobilenet()
    kt.enable_lora(model, rank=2, top_blocks=2)
    optimizer = optimizers.with_layerwise_lr(
        keras.optimizers.Adam, optimizers.layer_decay_multipliers(model, 0.5)
    )
    values = optimizer.resolve_multipliers(model.trainable_variables)
    by_path = dict(zip([v.path for v in model.trainable_variables], values))
    assert by_path == {
        "conv_pw_12/lora_kernel_a": 0.25,
        "conv_pw_12/lora_kernel_b": 0.25,
        "conv_pw_13/lora_kernel_a": 0.5,
        "conv_pw_13/lora_kernel_b": 0.5,
        "head/predictions/kernel": 1.0,
        "head/predictions/bias": 1.0,
    }


@pytest.mark.parametrize("policy", ["mixed_float16"])
def test_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    model = tiny_mobilenet()
    kt.enable_lora(model, rank=4, top_blocks=3)
    layer = lora.lora_layers(model)[0]
    assert layer.compute_dtype == policy.split("_")[1] and layer.lora_kernel_a.dtype == "float32"
    before = snapshot(model)
    optimizer = keras.optimizers.Adam(1e-2)
    if policy == "mixed_float16":
        # Keras' default initial loss scale (2**15) overflows float16 in the first steps,
        # which are then skipped.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=8)
    model.compile(optimizer=optimizer)
    model.fit(X, Y, epochs=1, batch_size=4, verbose=0)
    assert changed_paths(before, model) == lora_paths(model) | {v.path for v in model.head.weights}
    predictions = model.predict(X, verbose=0)
    assert predictions.dtype == np.float32 and np.isfinite(predictions).all()
    merged = kt.merge_lora(model)
    assert merged.dtype_policy.name == policy and not lora.lora_layers(merged)
    # The merge is float32 arithmetic on float32 variables (W + alpha / rank * A B), so it is
    # checked in float32. Under mixed precision the merged and unmerged models round different
    # products to float16 (x (W + A B) against x W + (x A) B), each product with a relative
    # error of up to 2**-11 that compounds through every layer and BatchNorm after it: a
    # tolerance on float16 outputs measures that rounding and the CPU's kernels (oneDNN or
    # not), not the merge. So both models' weights go into float32 twins and their
    # predictions are compared there, at the float32 test's tolerance.
    keras.config.set_dtype_policy("float32")
    unmerged_twin = tiny_mobilenet()
    kt.enable_lora(unmerged_twin, rank=4, top_blocks=3)
    unmerged_twin.set_weights(model.get_weights())
    merged_twin = tiny_mobilenet()
    merged_twin.set_weights(merged.get_weights())
    unmerged = unmerged_twin.predict(X, verbose=0)
    np.testing.assert_allclose(merged_twin.predict(X, verbose=0), unmerged, atol=1e-5)
    for variable in unmerged_twin.weights:  # what the adapters add is far above that tolerance
        if variable.path.endswith("lora_kernel_b"):
            variable.assign(np.zeros(variable.shape, "float32"))
    assert np.abs(unmerged_twin.predict(X, verbose=0) - unmerged).max() > 1e-3


_MIRRORED = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import keras_transfer as kt
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = kt.create_classifier("mobilenet", 2, input_shape=(32, 32, 3), weights=None,
                                     alpha=0.25)
        kt.callbacks.recalibrate_batchnorm(model, [x])
        summary = kt.enable_lora(model, rank=2, top_blocks=2)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = {v.path: np.array(v).copy() for v in model.weights}
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    changed = sorted(v.path for v in model.weights if not np.array_equal(before[v.path], np.array(v)))
    kt.save_adapter(model, sys.argv[1])
    print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "changed": changed}))
    """
)


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", _MIRRORED, str(tmp_path / "adapter.weights.h5")],
        env={**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["replicas"] == 2
    assert result["changed"] == sorted(
        [f"conv_pw_{i}/lora_kernel_{m}" for i in (12, 13) for m in "ab"]
        + ["head/predictions/bias", "head/predictions/kernel"]
    )
    assert (tmp_path / "adapter.weights.h5").exists()


@pytest.mark.parametrize(
    "name, kwargs, depthwise",
    [
        ("mobilenet_v2", {"alpha": 0.35}, True),
        ("efficientnet_b0", {}, True),
        # Its depthwise convolutions are grouped Conv2D layers, which Keras LoRA adapts.
        ("convnext_tiny", {}, False),
    ],
)
def test_image_families(name, kwargs, depthwise):
    keras.utils.set_random_seed(0)
    model = kt.create_classifier(name, 2, input_shape=(32, 32, 3), weights=None, **kwargs)
    summary = kt.enable_lora(model, rank=2, top_blocks=2)
    chosen_layers = [
        layer
        for block in kt.get_blocks(model)
        if block.name in summary.blocks
        for layer in block.layers
    ]
    depthwise_layers = [
        layer.name
        for layer in chosen_layers
        if isinstance(layer, keras.layers.DepthwiseConv2D | keras.layers.SeparableConv2D)
    ]
    assert bool(depthwise_layers) == depthwise
    assert {path for path, _ in summary.not_adaptable} >= set(depthwise_layers)
    adapted = [lora.layer_path(layer) for layer in lora.lora_layers(model)]
    assert adapted and sorted(adapted) == sorted(summary.adapted)
    assert {v.path.rsplit("/", 1)[0] for v in model.trainable_weights} == set(summary.adapted) | {
        "head/predictions"
    }
    perturb(model)
    x = X[:2]
    predictions = model.predict(x, verbose=0)
    np.testing.assert_allclose(kt.merge_lora(model).predict(x, verbose=0), predictions, atol=1e-5)


@pytest.mark.parametrize("name", ["mobilenet", "mobilenet_v2", "mobilenet_v3_small"])
def test_depthwise_layers_of_mobilenets_are_listed_not_adaptable(name):
    model = kt.create_classifier(name, 2, input_shape=(32, 32, 3), weights=None)
    summary = kt.enable_lora(model, rank=2)
    depthwise = {
        layer.name
        for layer in model.backbone.layers
        if isinstance(layer, keras.layers.DepthwiseConv2D)
    }
    assert depthwise
    assert {path for path, kind in summary.not_adaptable if kind == "DepthwiseConv2D"} == depthwise
    assert not {layer.name for layer in lora.lora_layers(model)} & depthwise


def tiny_bert_classifier(seed=0):
    keras_hub = pytest.importorskip("keras_hub")
    from keras_transfer.apps import text_classifier as text_classifier_lib

    text_classifier_lib.register_bert_blocks()
    keras.utils.set_random_seed(seed)
    encoder = keras_hub.models.BertBackbone(**tiny_config("bert"))
    inputs = {
        name: keras.Input((8,), dtype="int32", name=name)
        for name in ("token_ids", "segment_ids", "padding_mask")
    }
    pooled = keras.layers.GlobalAveragePooling1D()(encoder(inputs)["sequence_output"])
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(pooled)
    return keras.Model(inputs, outputs)


TEXT_X = {
    "token_ids": np.random.default_rng(0).integers(1, 50, (8, 8)).astype("int32"),
    "segment_ids": np.zeros((8, 8), "int32"),
    "padding_mask": np.ones((8, 8), "int32"),
}


def test_kerashub_bert_encoder_default_targets_query_and_value():
    model = tiny_bert_classifier()
    summary = kt.enable_lora(model, rank=4)
    assert sorted(summary.adapted) == [
        f"transformer_layer_{i}/self_attention_layer/{name}"
        for i in (0, 1)
        for name in ("query", "value")
    ]
    assert ("position_embedding", "PositionEmbedding") in summary.not_adaptable
    assert "transformer_layer_0/self_attention_layer/key" in summary.not_targeted
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    before = snapshot(model)
    model.fit(TEXT_X, Y, epochs=2, batch_size=4, verbose=0)
    assert changed_paths(before, model) == lora_paths(model) | {
        "predictions/kernel",
        "predictions/bias",
    }
    predictions = model.predict(TEXT_X, verbose=0)
    merged = kt.merge_lora(model)
    assert not lora_paths(merged)
    np.testing.assert_allclose(merged.predict(TEXT_X, verbose=0), predictions, atol=1e-5)


def test_kerashub_bert_encoder_all_dense(tmp_path):
    model = tiny_bert_classifier()
    base = model.get_weights()
    summary = kt.enable_lora(model, rank=4, targets="all_dense")
    names = {path.rsplit("/", 1)[-1] for path in summary.adapted}
    assert names == {
        "query",
        "key",
        "value",
        "attention_output",
        "feedforward_intermediate_dense",
        "feedforward_output_dense",
    }
    assert len(summary.adapted) == 12
    assert summary.not_targeted == ["token_embedding", "segment_embedding"]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(TEXT_X, Y, epochs=2, batch_size=4, verbose=0)
    kt.save_adapter(model, tmp_path / "adapter.weights.h5")
    fresh = tiny_bert_classifier()
    fresh.set_weights(base)
    kt.load_adapter(fresh, tmp_path / "adapter.weights.h5")
    np.testing.assert_array_equal(
        fresh.predict(TEXT_X, verbose=0), model.predict(TEXT_X, verbose=0)
    )


@pytest.mark.assets
def test_real_mobilenet_weights(assets, tmp_path):
    weights = assets / "weights" / "mobilenet_1_0_224_tf_no_top.h5"
    model = kt.create_classifier("mobilenet", 2, input_shape=(96, 96, 3), weights=str(weights))
    base = model.get_weights()
    summary = kt.enable_lora(model, rank=4)
    assert len(summary.adapted) == 14 and len(summary.not_adaptable) == 13
    assert summary.trainable_fraction < 0.02
    x = np.random.default_rng(0).uniform(0, 255, (4, 96, 96, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(x, np.array([0, 1, 0, 1]), epochs=2, batch_size=4, verbose=0)
    predictions = model.predict(x, verbose=0)
    path = tmp_path / "adapter.weights.h5"
    kt.save_adapter(model, path)
    assert os.path.getsize(path) <= 0.03 * os.path.getsize(weights)
    fresh = kt.create_classifier("mobilenet", 2, input_shape=(96, 96, 3), weights=str(weights))
    np.testing.assert_array_equal(fresh.get_weights()[0], base[0])
    kt.load_adapter(fresh, path)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), predictions)


def test_image_example_writes_the_adapter_beside_the_model(image_folder, tmp_path):
    from keras_transfer.apps import image_classifier as image_classifier_lib

    root = image_folder({"cats": 6, "dogs": 6})
    config = image_classifier_lib.Config(
        data_dir=str(root),
        model_dir=str(tmp_path / "out"),
        backbone="mobilenet",
        weights=None,
        image_size=32,
        batch_size=4,
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze_blocks="2",
        fine_tune="lora",
        lora_rank=2,
        verbose=0,
    )
    results = image_classifier_lib.run(config)
    assert results["unfrozen_blocks"] == ["conv_dw_12", "conv_dw_13"]
    metadata, values = adapters.read_adapter(tmp_path / "out" / "adapter.weights.h5")
    assert metadata["rank"] == 2 and metadata["layers"] == ["conv_pw_12", "conv_pw_13"]
    assert "conv_pw_13/lora_kernel_b" in values
    with pytest.raises(Exception, match="fine_tune"):
        image_classifier_lib.Config(data_dir="x", model_dir="y", fine_tune="adapter")


def _lora_command_config(root, out, **overrides):
    from keras_transfer.apps import image_config

    settings = dict(
        data_dir=str(root), model_dir=str(out), backbone="mobilenet", weights=None,
        image_size=32, batch_size=4, head_epochs=1, fine_tune_epochs=1, unfreeze_blocks="2",
        fine_tune="lora", lora_rank=2, verbose=0,
    )  # fmt: skip
    return image_config.Config(**{**settings, **overrides})


def test_command_lora_targets_choose_the_adapter_layers_and_go_to_config_json(
    image_folder, tmp_path
):
    from keras_transfer.apps import image_classifier as image_classifier_lib

    config = _lora_command_config(
        image_folder({"cats": 6, "dogs": 6}), tmp_path / "out", lora_targets="conv_pw_1(3|4)$"
    )
    image_classifier_lib.run(config)
    metadata, _ = adapters.read_adapter(tmp_path / "out" / "adapter.weights.h5")
    assert metadata["layers"] == ["conv_pw_13"]
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["lora_targets"] == "conv_pw_1(3|4)$" and saved["fine_tune"] == "lora"


def test_command_lora_targets_naming_no_layer_fail_once_the_model_is_built(
    image_folder, tmp_path, monkeypatch
):
    from keras_transfer.apps import image_classifier as image_classifier_lib

    def no_later_step(*args, **kwargs):
        raise AssertionError("the run went on past building the model")

    monkeypatch.setattr(image_classifier_lib, "check_diagnostics", no_later_step)
    monkeypatch.setattr(image_classifier_lib, "train_model", no_later_step)
    config = _lora_command_config(
        image_folder({"cats": 6, "dogs": 6}), tmp_path / "out", lora_targets="conv_pw_11$"
    )
    with pytest.raises(
        ValueError,
        match=r"targets \['conv_pw_11\$'\] name no LoRA-capable layer in blocks "
        r"\['conv_dw_12', 'conv_dw_13'\]: .* there: conv_pw_12, conv_pw_13\.",
    ):
        image_classifier_lib.run(config)
    assert not (tmp_path / "out").exists()
