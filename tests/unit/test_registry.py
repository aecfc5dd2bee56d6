import json
from pathlib import Path

import pytest

from models.registry import Registry, RegistryError, version_for


def _stage(reg: Registry, content: bytes = b"weights", name: str = "intent") -> "Path":
    staged = reg.staging(name)
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


def test_models_list_shows_gates_only_where_a_model_has_them(tmp_path, monkeypatch, capsys):
    from models.cli import cmd_models_list

    reg = Registry(tmp_path)
    reg.register("intent", _stage(reg, b"1"), "11" * 32, {"gates_passed": True, "test_accuracy": 0.95})
    reg.register("reranker", _stage(reg, b"2", "reranker"), "22" * 32, {"gates_passed": False})
    reg.register("drift-reference", _stage(reg, b"3", "drift-reference"), "33" * 32, {"rows": 400})  # never gated
    monkeypatch.setattr("models.registry.registry_dir", lambda: tmp_path)
    assert cmd_models_list(None) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"registry: {tmp_path}" and lines[1].split() == ["model", "version", "current", "created",
                                                                        "metrics", "gates"]
    rows = {line.split()[0]: line.split()[-1] for line in lines[2:]}
    assert rows == {"intent": "pass", "reranker": "FAIL", "drift-reference": "-"}
