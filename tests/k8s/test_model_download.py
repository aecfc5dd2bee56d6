"""Model versions fetched from `s3://` at replica start (serve.loading): botocore's Stubber answers
list_objects_v2 / get_object (and validates our requests against the S3 service model), the registry
manifest decides what is served. No network, no Ray, no trained model."""
from __future__ import annotations

import io
import json

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from models.registry import Registry, RegistryError
from serve import loading

BUCKET, PREFIX = "models-bucket", "mangaassist/registry"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    """Fake credentials for the default chain; no profile, no instance metadata."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))


@pytest.fixture
def published(tmp_path):
    """A registered version (as `mangaassist build` leaves it) and its files as S3 objects."""
    registry = Registry(tmp_path / "source")
    staged = registry.staging("intent")
    (staged / "model.int8.onnx").write_bytes(bytes(range(256)) * 64)
    (staged / "tokenizer").mkdir()
    (staged / "tokenizer" / "tokenizer.json").write_text('{"model": "wordpiece"}')
    version = registry.register("intent", staged, "f" * 64, {"accuracy": 0.9})
    folder = registry.root / "intent" / version
    objects = {f"{PREFIX}/intent/{version}/{p.relative_to(folder).as_posix()}": p.read_bytes()
               for p in sorted(folder.rglob("*")) if p.is_file()}
    return version, objects


def client():
    return boto3.session.Session().client("s3", region_name="eu-west-1")


def expect_download(stub: Stubber, version: str, objects: dict[str, bytes], pages: int = 1) -> None:
    keys = list(objects)
    prefix = f"{PREFIX}/intent/{version}/"
    chunks = [keys[i::pages] for i in range(pages)]
    for i, chunk in enumerate(chunks):
        params = {"Bucket": BUCKET, "Prefix": prefix}
        response = {"Contents": [{"Key": k, "Size": len(objects[k])} for k in chunk],
                    "IsTruncated": i < pages - 1, "KeyCount": len(chunk)}
        if i:
            params["ContinuationToken"] = f"token-{i}"
        if i < pages - 1:
            response["NextContinuationToken"] = f"token-{i + 1}"
        stub.add_response("list_objects_v2", response, params)
    for chunk in chunks:
        for key in chunk:
            data = objects[key]
            stub.add_response("get_object", {"Body": StreamingBody(io.BytesIO(data), len(data)),
                                             "ContentLength": len(data)}, {"Bucket": BUCKET, "Key": key})


def test_downloads_a_version_and_verifies_it(published, tmp_path):
    version, objects = published
    s3 = client()
    with Stubber(s3) as stub:
        expect_download(stub, version, objects, pages=2)  # paginated listing: every page is fetched
        folder = loading.fetch_s3_version(f"s3://{BUCKET}/{PREFIX}/intent/{version}", tmp_path / "cache", s3)
        stub.assert_no_pending_responses()
    assert folder == tmp_path / "cache" / "intent" / version
    for key, data in objects.items():
        assert (folder / key.split(f"{version}/", 1)[1]).read_bytes() == data
    assert json.loads((folder / "manifest.json").read_text())["version"] == version
    assert [p.name for p in (tmp_path / "cache" / "intent").iterdir()] == [version]  # no staging left

    # the next replica on this pod finds the verified copy: no S3 call at all (the stub has no answers)
    with Stubber(s3):
        assert loading.fetch_s3_version(f"s3://{BUCKET}/{PREFIX}/intent/{version}/", tmp_path / "cache", s3) == folder


def test_a_corrupted_object_is_never_served_nor_kept(published, tmp_path):
    version, objects = published
    key = next(k for k in objects if k.endswith(".onnx"))
    tampered = {**objects, key: objects[key][:-1] + b"\x00"}
    s3 = client()
    with Stubber(s3) as stub, pytest.raises(RegistryError, match="checksum mismatch model.int8.onnx"):
        expect_download(stub, version, tampered)
        loading.fetch_s3_version(f"s3://{BUCKET}/{PREFIX}/intent/{version}", tmp_path / "cache", s3)
    assert not (tmp_path / "cache" / "intent" / version).exists()


def test_a_damaged_cached_copy_is_fetched_again(published, tmp_path):
    version, objects = published
    uri = f"s3://{BUCKET}/{PREFIX}/intent/{version}"
    s3 = client()
    with Stubber(s3) as stub:
        expect_download(stub, version, objects)
        folder = loading.fetch_s3_version(uri, tmp_path / "cache", s3)
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")  # e.g. a pod killed mid-write by hand
    with Stubber(s3) as stub:
        expect_download(stub, version, objects)
        assert loading.fetch_s3_version(uri, tmp_path / "cache", s3) == folder
        stub.assert_no_pending_responses()
    Registry(tmp_path / "cache").verify("intent", version)


def test_missing_version_and_bad_keys_fail_clearly(published, tmp_path):
    version, objects = published
    s3 = client()
    with Stubber(s3) as stub:
        stub.add_response("list_objects_v2", {"KeyCount": 0, "IsTruncated": False},
                          {"Bucket": BUCKET, "Prefix": f"{PREFIX}/intent/v-missing/"})
        with pytest.raises(RegistryError, match="no objects under this prefix"):
            loading.fetch_s3_version(f"s3://{BUCKET}/{PREFIX}/intent/v-missing", tmp_path / "cache", s3)
    with Stubber(s3) as stub:
        stub.add_response("list_objects_v2", {"Contents": [{"Key": f"{PREFIX}/intent/{version}/../../evil"}],
                                              "IsTruncated": False, "KeyCount": 1},
                          {"Bucket": BUCKET, "Prefix": f"{PREFIX}/intent/{version}/"})
        with pytest.raises(RegistryError, match="outside the version folder"):
            loading.fetch_s3_version(f"s3://{BUCKET}/{PREFIX}/intent/{version}", tmp_path / "cache", s3)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / "intent" / version).exists()
    with pytest.raises(RegistryError, match="expected s3://bucket"):
        loading.fetch_s3_version("s3://bucket-only/intent", tmp_path / "cache", s3)


def test_resolve_model_routes_s3_refs_to_the_model_cache(published, tmp_path, monkeypatch):
    version, objects = published
    monkeypatch.setenv("MANGAASSIST_MODEL_CACHE", str(tmp_path / "pod-cache"))
    s3 = client()
    monkeypatch.setattr(loading, "s3_client", lambda: s3)
    with Stubber(s3) as stub:
        expect_download(stub, version, objects)
        folder = loading.resolve_model(f"s3://{BUCKET}/{PREFIX}/intent/{version}")
    assert folder == tmp_path / "pod-cache" / "intent" / version
    # a registry path keeps working as before (no S3 involved)
    assert loading.resolve_model(str(tmp_path / "source" / "intent" / version)) == tmp_path / "source" / "intent" / version
