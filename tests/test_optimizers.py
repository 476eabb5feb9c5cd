"""Per-variable learning rates: exactness against plain optimizers, Keras features, saving,
bad input, the block helper and two-phase training. Distributed runs are in
test_optimizers_distributed.py."""

import json
import math
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.optimizers.layerwise import LayerwiseLearningRate
from keras_transfer.optimizers.layerwise import layer_decay_multipliers
from keras_transfer.optimizers.layerwise import layerwise_optimizer_class
from keras_transfer.optimizers.layerwise import with_layerwise_lr

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LR = 0.01
MULTIPLIERS = {"^a$": 0.3, "^b$": 1.0, "^c$": 0.0}

CASES = {
    "adam": (keras.optimizers.Adam, {}),
    "adamw": (keras.optimizers.AdamW, {"weight_decay": 0.2}),
    "sgd_momentum": (keras.optimizers.SGD, {"momentum": 0.9, "nesterov": True}),
    "rmsprop": (keras.optimizers.RMSprop, {"momentum": 0.5}),
    "lion": (keras.optimizers.Lion, {"weight_decay": 0.1}),
}


def _initial():
    return {
        "a": np.linspace(-1, 1, 6).reshape(2, 3).astype("float32"),
        "b": np.linspace(0.5, 2, 3).astype("float32"),
        "c": np.linspace(-2, 3, 4).astype("float32"),
    }


def _gradients(step):
    return {
        "a": (np.sin(np.arange(6) + step).reshape(2, 3) * 0.3).astype("float32"),
        "b": np.cos(np.arange(3) * (step + 1)).astype("float32"),
        "c": (np.arange(4) - 1.5 + step).astype("float32"),
    }


def _run(make_optimizer, names=("a", "b", "c"), steps=6):
    """Applies the same gradient sequence to fresh variables; returns their final values."""
    variables = [keras.Variable(_initial()[n], name=n) for n in names]
    optimizer = make_optimizer()
    for step in range(steps):
        grads = _gradients(step)
        optimizer.apply([grads[n] for n in names], variables)
    if getattr(optimizer, "use_ema", False):
        optimizer.finalize_variable_values(variables)
    return {n: np.array(v) for n, v in zip(names, variables, strict=True)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_variable_follows_the_plain_optimizer_at_its_scaled_rate(case):
    cls, kwargs = CASES[case]
    layerwise = _run(lambda: with_layerwise_lr(cls, MULTIPLIERS, learning_rate=LR, **kwargs))
    for name, multiplier in MULTIPLIERS.items():
        name = name.strip("^$")
        if multiplier == 0:
            # Bit-identical, weight decay included.
            np.testing.assert_array_equal(layerwise[name], _initial()[name])
            continue
        plain = _run(lambda m=multiplier: cls(learning_rate=LR * m, **kwargs), names=(name,))
        np.testing.assert_allclose(layerwise[name], plain[name], rtol=1e-6, atol=1e-7)
        assert not np.allclose(layerwise[name], _initial()[name])


def test_adam_distinguishes_learning_rate_from_gradient_scale():
    # Guards the test above against a broken reference: for Adam, a scaled gradient
    # gives (almost) the unscaled update, a scaled learning rate does not.
    scaled_lr = _run(lambda: keras.optimizers.Adam(LR * 0.3), names=("a",))["a"]
    plain = _run(lambda: keras.optimizers.Adam(LR), names=("a",))["a"]
    layerwise = _run(lambda: with_layerwise_lr("adam", {"a": 0.3}, learning_rate=LR), ("a",))
    np.testing.assert_allclose(layerwise["a"], scaled_lr, rtol=1e-6)
    assert np.abs(layerwise["a"] - plain).max() > 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
def test_uniform_multiplier_equals_plain_optimizer_with_scaled_rate(case):
    cls, kwargs = CASES[case]
    layerwise = _run(
        lambda: with_layerwise_lr(cls, None, default_multiplier=0.5, learning_rate=LR, **kwargs)
    )
    plain = _run(lambda: cls(learning_rate=LR * 0.5, **kwargs))
    for name in plain:
        np.testing.assert_allclose(layerwise[name], plain[name], rtol=1e-6, atol=1e-7)


def test_adamw_decay_uses_the_scaled_rate():
    # With zero gradients only the decoupled decay moves the weights: w * (1 - lr*m*wd)^steps.
    variable = keras.Variable(np.ones(3, "float32"), name="w")
    optimizer = with_layerwise_lr(
        keras.optimizers.AdamW, {"w": 0.1}, learning_rate=0.5, weight_decay=0.2
    )
    for _ in range(4):
        optimizer.apply([np.zeros(3, "float32")], [variable])
    np.testing.assert_allclose(np.array(variable), (1 - 0.5 * 0.1 * 0.2) ** 4, rtol=1e-6)


FEATURES = {
    "schedule": lambda m: {
        "learning_rate": keras.optimizers.schedules.ExponentialDecay(LR * m, 2, 0.5)
    },
    "clipnorm": lambda m: {"learning_rate": LR * m, "clipnorm": 0.5},
    "global_clipnorm": lambda m: {"learning_rate": LR * m, "global_clipnorm": 0.5},
    "accumulation": lambda m: {"learning_rate": LR * m, "gradient_accumulation_steps": 3},
    "ema": lambda m: {"learning_rate": LR * m, "use_ema": True, "ema_overwrite_frequency": 2},
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_keras_optimizer_features(feature):
    """Schedules, clipping, gradient accumulation and EMA keep per-variable exactness."""
    make_kwargs = FEATURES[feature]
    kwargs = make_kwargs(1.0)
    if feature == "schedule":
        kwargs["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(LR, 2, 0.5)
    layerwise = _run(
        lambda: with_layerwise_lr(keras.optimizers.AdamW, MULTIPLIERS, weight_decay=0.1, **kwargs)
    )
    np.testing.assert_array_equal(layerwise["c"], _initial()["c"])
    for name, multiplier in (("a", 0.3), ("b", 1.0)):
        if feature == "global_clipnorm":
            continue  # the global norm couples variables; checked below as a whole
        plain = _run(
            lambda m=multiplier: keras.optimizers.AdamW(weight_decay=0.1, **make_kwargs(m)),
            names=(name,),
        )
        np.testing.assert_allclose(layerwise[name], plain[name], rtol=1e-5, atol=1e-7)
        assert not np.array_equal(layerwise[name], _initial()[name])
    if feature == "global_clipnorm":
        uniform = _run(
            lambda: with_layerwise_lr(
                keras.optimizers.AdamW, None, default_multiplier=0.3, weight_decay=0.1, **kwargs
            )
        )
        plain = _run(lambda: keras.optimizers.AdamW(weight_decay=0.1, **make_kwargs(0.3)))
        for name in plain:
            np.testing.assert_allclose(uniform[name], plain[name], rtol=1e-5, atol=1e-7)


def _dense_model(seed=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="low")(inputs)
    x = keras.layers.Dense(8, activation="relu", name="mid")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="out", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, 32)


def _fit(optimizer, jit_compile=False, epochs=2, model=None):
    model = model or _dense_model()
    model.compile(
        optimizer=optimizer, loss="sparse_categorical_crossentropy", jit_compile=jit_compile
    )
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False)
    return model


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_fit_with_jit_compile_and_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    initial = _dense_model().get_weights()
    uniform = _fit(
        with_layerwise_lr(
            "adamw", None, default_multiplier=0.5, learning_rate=LR, weight_decay=0.1
        ),
        jit_compile=True,
    )
    if policy == "mixed_float16":
        assert isinstance(uniform.optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(uniform.optimizer.inner_optimizer, LayerwiseLearningRate)
    plain = _fit(keras.optimizers.AdamW(LR * 0.5, weight_decay=0.1), jit_compile=True)
    for got, want in zip(uniform.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    frozen = _fit(
        with_layerwise_lr("adamw", {"^low/": 0.0}, learning_rate=LR, weight_decay=0.1),
        jit_compile=True,
    )
    np.testing.assert_array_equal(np.array(frozen.get_layer("low").kernel), initial[0])
    np.testing.assert_array_equal(np.array(frozen.get_layer("low").bias), initial[1])
    assert not np.array_equal(np.array(frozen.get_layer("mid").kernel), initial[2])


def test_config_round_trip():
    optimizer = with_layerwise_lr(
        keras.optimizers.SGD,
        {"^low/": 0.25, "kernel$": 0.5},
        default_multiplier=0.75,
        learning_rate=keras.optimizers.schedules.CosineDecay(0.1, 100),
        momentum=0.9,
    )
    config = keras.optimizers.serialize(optimizer)
    json.dumps(config)
    assert config["registered_name"] == "keras_transfer>LayerwiseSGD"
    restored = keras.optimizers.deserialize(config)
    assert type(restored) is type(optimizer)
    assert restored.multipliers == (("^low/", 0.25), ("kernel$", 0.5))
    assert restored.default_multiplier == 0.75
    assert restored.momentum == 0.9
    assert isinstance(restored._learning_rate, keras.optimizers.schedules.CosineDecay)
    assert restored.get_config() == optimizer.get_config()


@keras.saving.register_keras_serializable(package="keras_transfer_tests")
def halve_kernels(variable):
    return 0.5 if variable.path.endswith("kernel") else None


def test_function_multipliers_round_trip():
    optimizer = with_layerwise_lr("adam", halve_kernels, learning_rate=LR)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    variables = _dense_model().trainable_variables
    assert restored.resolve_multipliers(variables) == [0.5, 1.0] * 3


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_keras_file_keeps_multipliers_and_optimizer_state(tmp_path, policy):
    keras.config.set_dtype_policy(policy)
    optimizer = with_layerwise_lr(
        keras.optimizers.AdamW, {"^low/": 0.0, "^mid/": 0.3}, learning_rate=LR, weight_decay=0.1
    )
    model = _fit(optimizer, epochs=1)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    inner = restored.optimizer
    if policy == "mixed_float16":
        inner = inner.inner_optimizer
    assert isinstance(inner, optimizers.LayerwiseAdamW)
    assert inner.multipliers == (("^low/", 0.0), ("^mid/", 0.3))
    for got, want in zip(restored.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Training on from the file equals training on in memory.
    low_before = np.array(restored.get_layer("low").kernel)
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    restored.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for got, want in zip(restored.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.array(restored.get_layer("low").kernel), low_before)


def test_first_matching_pattern_wins():
    optimizer = with_layerwise_lr("adam", {"^low/kernel": 0.1, "^low/": 0.2, "kernel": 0.3})
    variables = _dense_model().trainable_variables
    assert [v.path for v in variables][:3] == ["low/kernel", "low/bias", "mid/kernel"]
    assert optimizer.resolve_multipliers(variables) == [0.1, 0.2, 0.3, 1.0, 0.3, 1.0]


def test_pattern_matching_nothing_lists_real_paths():
    optimizer = with_layerwise_lr("adam", {"^low/": 0.5, "^blok_3_": 0.1})
    model = _dense_model()
    with pytest.raises(ValueError, match=r"\['\^blok_3_'\].*low/kernel"):
        model.compile(optimizer=optimizer, loss="mse")
        optimizer.build(model.trainable_variables)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.5", True])
def test_bad_multiplier_values(bad):
    with pytest.raises(ValueError, match="multiplier"):
        with_layerwise_lr("adam", {"^low/": bad})
    optimizer = with_layerwise_lr("adam", lambda variable: bad)
    with pytest.raises(ValueError, match="multiplier"):
        optimizer.build(_dense_model().trainable_variables)


def test_other_bad_input():
    with pytest.raises(ValueError, match="Invalid multiplier pattern"):
        with_layerwise_lr("adam", {"(": 0.5})
    with pytest.raises(ValueError, match="default_multiplier"):
        with_layerwise_lr("adam", None, default_multiplier=-1.0)
    with pytest.raises(TypeError, match="own weight decay"):
        layerwise_optimizer_class(keras.optimizers.Muon)
    with pytest.raises(TypeError, match="wraps other optimizers"):
        layerwise_optimizer_class(keras.optimizers.LossScaleOptimizer)
    with pytest.raises(TypeError, match="Optimizer subclass"):
        layerwise_optimizer_class(dict)
    used = keras.optimizers.Adam()
    used.build(_dense_model().trainable_variables)
    with pytest.raises(ValueError, match="not its state"):
        with_layerwise_lr(used, {})


def test_instance_config_is_copied_and_kwargs_override():
    optimizer = with_layerwise_lr(
        keras.optimizers.AdamW(learning_rate=0.002, weight_decay=0.3, beta_1=0.8),
        {"^low/": 0.5},
        beta_1=0.7,
    )
    assert isinstance(optimizer, optimizers.LayerwiseAdamW)
    assert (optimizer.weight_decay, optimizer.beta_1) == (0.3, 0.7)
    assert math.isclose(float(np.array(optimizer.learning_rate)), 0.002, rel_tol=1e-6)


def test_custom_optimizer_class():
    @keras.saving.register_keras_serializable(package="keras_transfer_tests")
    class PlainSGD(keras.optimizers.Optimizer):
        def update_step(self, gradient, variable, learning_rate):
            self.assign_sub(variable, gradient * keras.ops.cast(learning_rate, variable.dtype))

    cls = layerwise_optimizer_class(PlainSGD)
    assert layerwise_optimizer_class(PlainSGD) is cls
    result = _run(lambda: cls(learning_rate=LR, multipliers=MULTIPLIERS), steps=2)
    expected = _initial()["a"] - 0.3 * LR * (_gradients(0)["a"] + _gradients(1)["a"])
    np.testing.assert_allclose(result["a"], expected, rtol=1e-6)
    config = keras.optimizers.serialize(cls(learning_rate=LR, multipliers=MULTIPLIERS))
    assert type(keras.optimizers.deserialize(config)) is cls


@pytest.fixture(scope="module")
def classifier():
    backbone = kt.create_backbone("mobilenet_v2", input_shape=(32, 32, 3), weights=None)
    return kt.create_classifier(backbone, 3)


def test_layer_decay_over_blocks_and_summary(classifier):
    blocks = kt.get_blocks(classifier)
    kt.unfreeze(classifier, top_blocks=3)
    multipliers = layer_decay_multipliers(classifier, 0.5)
    assert list(multipliers.values()) == [0.5**3, 0.5**2, 0.5]
    optimizer = with_layerwise_lr(keras.optimizers.AdamW, multipliers, learning_rate=1e-3)
    variables = classifier.trainable_variables
    resolved = dict(
        zip([v.path for v in variables], optimizer.resolve_multipliers(variables), strict=True)
    )
    top_block = blocks[-1]
    for variable in top_block.variables:
        if variable.path in resolved:
            assert resolved[variable.path] == 0.5
    assert resolved["head/predictions/kernel"] == 1.0
    # Only trainable BN-free layers of the 3 top blocks and the head reach the optimizer.
    assert {m for m in resolved.values()} == {0.125, 0.25, 0.5, 1.0}
    summary = optimizer.multiplier_summary(classifier)
    print(summary)
    lines = summary.splitlines()
    assert any(line.startswith("stem") and "frozen" in line for line in lines)
    assert any(line.startswith(top_block.name) and " 0.5 " in line for line in lines)
    assert any(line.startswith("head") and " 1 " in line for line in lines)

    kt.freeze(classifier)
    with pytest.raises(ValueError, match="Unfreeze blocks first"):
        layer_decay_multipliers(classifier, 0.5)
    with pytest.raises(ValueError, match="decay"):
        layer_decay_multipliers(classifier, 1.5)


def test_fit_two_phase_with_lr_decay(classifier):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 8)
    blocks = kt.get_blocks(classifier)
    frozen_kernel = blocks[2].layers[0].weights[0]
    result = kt.fit_two_phase(
        classifier,
        x,
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=2,
        lr_decay=0.5,
        y=y,
        batch_size=4,
        verbose=0,
    )
    optimizer = classifier.optimizer
    assert isinstance(optimizer, LayerwiseLearningRate)
    assert sorted(set(optimizer._lr_multipliers)) == [0.25, 0.5, 1.0]
    assert result.unfrozen_blocks == [b.name for b in blocks[-2:]]
    before = np.array(frozen_kernel)  # frozen in phase 2: unchanged by a further epoch
    classifier.fit(x, y, batch_size=4, epochs=1, verbose=0)
    np.testing.assert_array_equal(np.array(frozen_kernel), before)
    with pytest.raises(ValueError, match="lr_decay"):
        kt.fit_two_phase(classifier, x, y=y, lr_decay=0.0, verbose=0)


@pytest.mark.tensorflow_only  # the benchmark's reference gradients come from tf.GradientTape
def test_benchmark_smoke():
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "optimizer_overhead.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    for key in (
        "wrapper_vs_plain",
        "multioptimizer_vs_wrapper",
        "groups",
        "trace_wrapper_vs_plain",
        "max_abs_diff_vs_reference",
    ):
        assert key in result
    assert result["max_abs_diff_vs_reference"] < 1e-4
