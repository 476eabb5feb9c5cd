"""The example's config files (keras_transfer/apps/config.py): YAML/JSON, recipe aliases, unknown keys
and bad values, flags on top."""

import dataclasses
import json

import pytest
from conftest import REPO_ROOT

from keras_transfer.apps import config as config_lib
from keras_transfer.apps import image_config


@dataclasses.dataclass
class _Settings:
    backbone: str = "mobilenet"
    head_epochs: int = 1
    fine_tune_epochs: int = 1
    head_lr: float = 1e-3
    fine_tune_lr: float = 1e-4
    lr_decay: float | None = None
    mixed_precision: bool = False


def test_yaml_with_transfer_config_key_and_aliases(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "transfer_config:\n"
        "  source_model: efficientnet_b0\n"
        "  backbone_lr: 1e-5\n"  # YAML 1.1 reads this as a string
        "  lr_decay_per_layer: 0.8\n"
        "  epochs: {head: 3, fine_tune: 4}\n"
        "  mixed_precision: true\n"
    )
    settings = config_lib.build_config(_Settings, config_lib.read_config_file(path))
    assert settings == _Settings(
        backbone="efficientnet_b0",
        head_epochs=3,
        fine_tune_epochs=4,
        fine_tune_lr=1e-5,
        lr_decay=0.8,
        mixed_precision=True,
    )


def test_json_and_overrides_win(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"head_lr": 0.01, "head_epochs": 7}))
    settings = config_lib.build_config(
        _Settings, config_lib.read_config_file(path), overrides={"head_epochs": 2}
    )
    assert (settings.head_lr, settings.head_epochs) == (0.01, 2)


def test_unknown_key_names_the_closest(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"'head_lrr' \(did you mean 'head_lr'\?\)"):
        config_lib.build_config(_Settings, {"head_lrr": 1e-3}, source="run.yaml")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"head_epochs": "ten"}, "`head_epochs` in the config must be int"),
        ({"head_epochs": 2.5}, "`head_epochs`"),
        ({"mixed_precision": "yes"}, "`mixed_precision`"),
        ({"head_lr": "fast"}, "`head_lr`"),
        ({"epochs": 10}, "epochs"),
    ],
)
def test_bad_values_are_clear_errors(values, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.build_config(_Settings, values)


def test_bad_files(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="does not exist"):
        config_lib.read_config_file(tmp_path / "missing.yaml")
    (tmp_path / "run.toml").write_text("")
    with pytest.raises(config_lib.ConfigError, match=".yaml, .yml or .json"):
        config_lib.read_config_file(tmp_path / "run.toml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(config_lib.ConfigError, match="Cannot parse"):
        config_lib.read_config_file(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(config_lib.ConfigError, match="mapping"):
        config_lib.read_config_file(tmp_path / "list.yaml")


def test_example_config_choices_are_checked(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("freeze_strategy: sometimes\n")
    with pytest.raises(config_lib.ConfigError, match="freeze_strategy='sometimes'"):
        image_config.load_config(str(path), {})
    with pytest.raises(config_lib.ConfigError, match="needs unfreeze_schedule"):
        image_config.load_config(None, {"freeze_strategy": "gradual"})
    with pytest.raises(ValueError, match="epoch:blocks"):
        image_config.load_config(None, {"unfreeze_schedule": "soon"})
    with pytest.raises(config_lib.ConfigError, match="Unknown export"):
        image_config.load_config(None, {"export": "onnx"})
    with pytest.raises(config_lib.ConfigError, match="tfds:<name>"):
        image_config.load_config(None, {"dataset": "tf_flowers"})


@pytest.mark.parametrize(
    "name",
    [
        "ants_vs_bees.yaml",
        pytest.param("tf_flowers_tpu.yaml", marks=pytest.mark.tensorflow_only),  # TFLite export
        "smoke.json",
    ],
)
def test_shipped_example_configs_load(name):
    path = REPO_ROOT / "examples" / "configs" / name
    config = image_config.load_config(str(path), {"model_dir": "/tmp/x"})
    assert config.model_dir == "/tmp/x"


@pytest.mark.jax_only
def test_tflite_example_config_is_refused_on_other_backends():
    path = REPO_ROOT / "examples" / "configs" / "tf_flowers_tpu.yaml"
    with pytest.raises(
        config_lib.ConfigError, match=r"^export=tflite needs the TensorFlow backend, but Keras"
    ):
        image_config.load_config(str(path), {"model_dir": "/tmp/x"})


def test_test_set_settings_are_checked(tmp_path):
    for overrides, message in (
        ({"test_split": 1.0}, r"test_split must lie in \[0, 1\)"),
        ({"test_split": 0.2, "test_dir": "held_out"}, "Give one of test_dir .* and test_split"),
        ({"test_split": 0.5, "validation_split": 0.5}, "their sum must be below 1"),
        ({"test_split": 0.2, "dataset": "tfds:tf_flowers"}, "test_dir and test_split are for"),
    ):
        with pytest.raises(config_lib.ConfigError, match=message):
            image_config.load_config(None, overrides)
    config = image_config.load_config(
        None, {"data_dir": str(tmp_path), "model_dir": "out", "test_dir": str(tmp_path / "no")}
    )
    with pytest.raises(FileNotFoundError, match=r"test_dir=.*\(--test_dir\) is not a folder"):
        image_config.check_config(config)
    # Folder-only settings: config.json of a TFDS run leaves them out.
    resolved = image_config.Config(dataset="tfds:tf_flowers", head_lr=1e-3).resolved(224)
    assert "test_split" not in resolved and "test_dir" not in resolved
    assert (
        image_config.Config(data_dir="d", test_split=0.2, head_lr=1e-3).resolved(224)["test_split"]
        == 0.2
    )


def test_fit_two_phase_snippets_show_the_defaults_the_command_uses():
    # One set of defaults: the README's and the docs' fit_two_phase snippets, the function's
    # own defaults and the command's plan="fixed" agree.
    import inspect
    import re

    import keras_transfer as kt

    signature = inspect.signature(kt.fit_two_phase).parameters
    defaults = {name: signature[name].default for name in ("head_epochs", "fine_tune_epochs")}
    defaults.update(
        head_lr=signature["head_lr"].default, fine_tune_lr=signature["fine_tune_lr"].default
    )
    fixed = image_config.FIXED_DEFAULTS
    assert {name: fixed[name] for name in defaults} == defaults
    for path in ("README.md", "docs/index.md", "docs/guide/freezing.md"):
        text = (REPO_ROOT / path).read_text()
        snippet = text[text.index("kt.fit_two_phase(") :].split("\n)\n")[0]
        for name, value in defaults.items():
            written = re.search(rf"\b{name}=([0-9.e-]+)", snippet)
            assert written and float(written.group(1)) == value, (path, name)


def test_the_ants_vs_bees_example_config_writes_out_the_defaults():
    # One set of defaults everywhere: the example's settings are the command's fixed plan.
    path = REPO_ROOT / "examples" / "configs" / "ants_vs_bees.yaml"
    config = image_config.load_config(str(path), {"model_dir": "/tmp/x"})
    written = {
        name: getattr(config, name)
        for name in image_config.FIXED_DEFAULTS
        if getattr(config, name) is not None
    }
    assert set(written) >= {"head_epochs", "fine_tune_epochs", "head_lr", "ema_momentum"}
    assert written == {name: image_config.FIXED_DEFAULTS[name] for name in written}
