import json
from pathlib import Path

import pytest

from models.registry import Registry, RegistryError, version_for


def _stage(reg: Registry, content: bytes = b"weights") -> "Path":
    staged = reg.staging("intent")
    (staged / "hf").mkdir()
    (staged / "hf" / "model.safetensors").write_bytes(content)
    (staged / "labels.json").write_text(json.dumps(["a", "b"]))
    return staged


def test_register_verify_and_current(tmp_path):
    reg = Registry(tmp_path)
    version = reg.register("intent", _stage(reg), "ab" * 32, {"acc": 0.9})
    assert version == version_for("ab" * 32)
    assert reg.current("intent") == version
    folder = reg.verify("intent")
    assert (folder / "hf" / "model.safetensors").read_bytes() == b"weights"
    manifest = reg.manifest("intent")
    assert set(manifest["files"]) == {"hf/model.safetensors", "labels.json"}
    assert manifest["metrics"] == {"acc": 0.9}
    assert reg.resolve("intent") == reg.resolve(f"intent:{version}") == reg.resolve(str(folder)) == folder
    assert not list((tmp_path / "intent").glob(".staging-*"))


@pytest.mark.parametrize("tamper", ["modify", "delete", "add"])
def test_tampering_fails_loudly(tmp_path, tamper):
    reg = Registry(tmp_path)
    reg.register("intent", _stage(reg), "cd" * 32, {})
    folder = reg.root / "intent" / reg.current("intent")
    if tamper == "modify":
        (folder / "hf" / "model.safetensors").write_bytes(b"weightz")
    elif tamper == "delete":
        (folder / "labels.json").unlink()
    else:
        (folder / "hf" / "extra.bin").write_bytes(b"x")
    with pytest.raises(RegistryError, match={"modify": "checksum mismatch", "delete": "missing",
                                            "add": "unexpected file"}[tamper]):
        reg.resolve("intent")


def test_unknown_model_and_versions(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="mangaassist build"):
        reg.resolve("reranker")
    a = reg.register("intent", _stage(reg, b"1"), "11" * 32, {})
    b = reg.register("intent", _stage(reg, b"2"), "22" * 32, {})
    assert reg.versions("intent") == sorted([a, b]) and reg.current("intent") == b
    reg.set_current("intent", a)
    assert reg.resolve("intent").name == a
    with pytest.raises(RegistryError):
        reg.set_current("intent", "v-nope")
