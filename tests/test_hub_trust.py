"""Safe-mode trust of TF Hub SavedModels and the hub cache (issue 17, items 11 and 12)."""

import hashlib
import json
import os
import shutil
import socket
import sys
import types
import zipfile

import keras
import pytest

from keras_transfer.backbones import hub


@pytest.fixture
def saved(tmp_path, export_tiny_module, hub_classifier):
    """A SavedModel at a path, a `.keras` file naming it, and a process that trusts only what
    it loads from here on."""
    module = export_tiny_module(tmp_path / "module")
    hub_classifier(module).save(tmp_path / "model.keras")
    hub.clear_trusted()
    return module, tmp_path / "model.keras"


def _edit_hub_config(path, **changes):
    """Rewrites the HubBackbone's config inside a `.keras` file, as an attacker could."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])

    def visit(node):
        if isinstance(node, dict):
            if node.get("class_name") == "HubBackbone":
                node["config"].update(changes)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)


def test_a_savedmodel_replaced_after_its_load_is_refused(saved, export_tiny_module, hub_classifier):
    module, model_file = saved
    hub_classifier(module)  # the user loads the benign SavedModel: trusted
    keras.saving.load_model(model_file)  # safe mode: fine
    shutil.rmtree(module)
    export_tiny_module(module, reusable_api=False)  # another graph at the same path
    with pytest.raises(ValueError, match="changed since this process loaded it.*safe_mode=False"):
        keras.saving.load_model(model_file)


def test_trust_is_added_only_after_a_successful_load(saved):
    module, model_file = saved
    with pytest.raises(ValueError, match="no signature 'missing'"):
        hub.HubBackbone(module, signature="missing")
    with pytest.raises(ValueError, match="safe mode refuses it"):
        keras.saving.load_model(model_file)


def test_the_file_cannot_change_how_a_trusted_savedmodel_is_loaded(saved, hub_classifier):
    module, model_file = saved
    hub_classifier(module)
    _edit_hub_config(model_file, tags=["serve"])
    with pytest.raises(ValueError, match=r"tags.*\['serve'\].*safe mode refuses it"):
        keras.saving.load_model(model_file)
    _edit_hub_config(model_file, tags=None, arguments={"training": True})
    with pytest.raises(ValueError, match="arguments.*safe mode refuses it"):
        keras.saving.load_model(model_file)


def test_trust_a_handle_explicitly(saved):
    module, model_file = saved
    with pytest.raises(ValueError, match="safe mode refuses it.*hub.trust"):
        keras.saving.load_model(model_file)
    digest = hub.trust(module)
    assert len(digest) == 64
    _edit_hub_config(model_file, tags=["serve"])  # explicit trust covers any call settings
    reloaded = keras.saving.load_model(model_file)
    assert reloaded.output_shape == (None, 2)
    # A symlink to the same folder is the same SavedModel.
    os.symlink(module, f"{module}-link")
    _edit_hub_config(model_file, handle=f"{module}-link")
    keras.saving.load_model(model_file)


# --- the cache ----------------------------------------------------------------------------

HANDLE = "https://tfhub.dev/google/imagenet/mobilenet_v1_100_224/feature_vector/5"


def test_default_cache_is_per_user(monkeypatch, tmp_path):
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.cache_dir() == str(tmp_path / ".cache" / "tfhub_modules")
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "mine"))
    assert hub.cache_dir() == str(tmp_path / "mine")


def test_tensorflow_hub_downloads_into_the_checked_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(
        socket, "create_connection", lambda *a, **k: types.SimpleNamespace(close=lambda: None)
    )
    seen = {}

    def resolve(handle):
        seen["cache"] = os.environ.get("TFHUB_CACHE_DIR")
        return "/resolved"

    monkeypatch.setitem(sys.modules, "tensorflow_hub", types.SimpleNamespace(resolve=resolve))
    assert hub.resolve_handle(HANDLE) == "/resolved"
    cache = tmp_path / "xdg" / "tfhub_modules"
    assert seen["cache"] == str(cache)
    assert os.stat(cache).st_mode & 0o077 == 0  # created private
    assert "TFHUB_CACHE_DIR" not in os.environ


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_cache_writable_by_others_is_refused(monkeypatch, tmp_path, mode):
    cache = tmp_path / "shared_cache"
    cache.mkdir()
    cache.chmod(mode)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network used"))
    # A module planted there is not used.
    planted = cache / hashlib.sha1(HANDLE.encode("utf8")).hexdigest()
    planted.mkdir()
    (planted / "saved_model.pb").write_bytes(b"planted")
    with pytest.raises(hub.UnsafeCacheError, match="writable by other users.*chmod go-w"):
        hub.resolve_handle(HANDLE)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a folder to another user")
def test_a_cache_owned_by_another_user_is_refused(monkeypatch, tmp_path):
    cache = tmp_path / "their_cache"
    cache.mkdir(mode=0o755)
    os.chown(cache, 4242, 4242)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # as an ordinary user
    with pytest.raises(hub.UnsafeCacheError, match="owned by another user.*uid 4242"):
        hub.resolve_handle(HANDLE)
