"""A versioned, checksummed model registry on the filesystem (outside git).

    <registry>/<name>/<version>/manifest.json   sha256 of every file, metrics, fingerprint
    <registry>/<name>/current                   the version served by default

A version is content-addressed by the fingerprint of its inputs (data, config, code), which is
what makes `mangaassist build` idempotent.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

from .paths import registry_dir

MANIFEST = "manifest.json"


class RegistryError(RuntimeError):
    pass


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def version_for(fingerprint: str) -> str:
    return f"v-{fingerprint[:12]}"


class Registry:
    def __init__(self, root: Path | None = None):
        self.root = Path(root or registry_dir())

    def staging(self, name: str) -> Path:
        """A scratch folder on the same filesystem, so that `register` is an atomic rename."""
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=base))

    def register(self, name: str, staged: Path, fingerprint: str, metrics: dict, extra: dict | None = None) -> str:
        version = version_for(fingerprint)
        files = {
            str(p.relative_to(staged)): sha256_file(p)
            for p in sorted(staged.rglob("*")) if p.is_file() and p.name != MANIFEST
        }
        manifest = {
            "name": name, "version": version, "fingerprint": fingerprint,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metrics": metrics, "files": files, **(extra or {}),
        }
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        target = self.root / name / version
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
        self.set_current(name, version)
        return version

    def set_current(self, name: str, version: str) -> None:
        if not (self.root / name / version / MANIFEST).exists():
            raise RegistryError(f"{name}: no version {version!r} in {self.root}")
        tmp = self.root / name / ".current.tmp"
        tmp.write_text(version + "\n")
        tmp.replace(self.root / name / "current")

    def current(self, name: str) -> str | None:
        pointer = self.root / name / "current"
        return pointer.read_text().strip() if pointer.exists() else None

    def versions(self, name: str) -> list[str]:
        base = self.root / name
        return sorted(p.name for p in base.iterdir() if (p / MANIFEST).exists()) if base.exists() else []

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.exists() else []

    def manifest(self, name: str, version: str | None = None) -> dict:
        version = version or self.current(name)
        path = self.root / name / str(version) / MANIFEST
        if version is None or not path.exists():
            raise RegistryError(f"model {name!r} version {version!r} is not registered in {self.root}; run `mangaassist build`")
        return json.loads(path.read_text())

    def verify(self, name: str, version: str | None = None) -> Path:
        """Check every file against the manifest; raise on anything missing, extra or altered."""
        manifest = self.manifest(name, version)
        folder = self.root / name / manifest["version"]
        problems = []
        present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
        for rel, digest in manifest["files"].items():
            if rel not in present:
                problems.append(f"missing {rel}")
            elif sha256_file(folder / rel) != digest:
                problems.append(f"checksum mismatch {rel}")
        problems += [f"unexpected file {rel}" for rel in sorted(present - set(manifest["files"]))]
        if problems:
            raise RegistryError(f"{name} {manifest['version']} failed verification: {'; '.join(problems)}")
        return folder

    def resolve(self, ref: str) -> Path:
        """`name`, `name:version` or a path to a version folder -> verified folder."""
        if Path(ref).is_dir() and (Path(ref) / MANIFEST).exists():
            folder = Path(ref)
            manifest = json.loads((folder / MANIFEST).read_text())
            return Registry(folder.parent.parent).verify(manifest["name"], manifest["version"])
        name, _, version = ref.partition(":")
        return self.verify(name, version or None)
