"""The registry at a URI (`$MAILROUTE_REGISTRY_URI`): `file://` is a folder; a filesystem without atomic rename
(fsspec's in-memory one here, standing in for an object store) is written meta.json last and read through checked
local copies, so training on one node and serving on another share one registry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from serving.config import Home
from serving.models.registry import ModelRegistry, RegistryError, open_registry

pytestmark = pytest.mark.unit


def _register(reg: ModelRegistry, payload: str = "weights") -> str:
    def write(folder: Path) -> None:
        (folder / "model.bin").write_text(payload)
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "vocab.txt").write_text("a b c")

    meta = reg.register("linear", write, kind="linear", labels=["billing", "technical"], preprocessing_version="1",
                        data_fingerprint="sha256:abc", metrics={}, params={})  # fmt: skip
    return meta.version


@pytest.fixture
def bucket() -> Iterator[str]:
    """A fresh 'bucket' on fsspec's process-wide in-memory filesystem."""
    name = f"memory://bucket-{uuid.uuid4().hex[:8]}/mailroute/registry"
    yield name
    fs, root = fsspec.filesystem("memory"), "/" + name.removeprefix("memory://").split("/")[0]
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_a_file_uri_is_the_folder_it_names(tmp_path: Path) -> None:
    reg = ModelRegistry(f"file://{tmp_path / 'shared'}")
    assert not reg.remote
    assert _register(reg) == "v1"
    info = reg.get("linear")
    assert info.path == tmp_path / "shared" / "linear" / "v1" and (info.path / "model.bin").read_text() == "weights"


def test_two_nodes_share_a_remote_registry_through_their_own_copies(bucket: str, tmp_path: Path) -> None:
    trainer = ModelRegistry(bucket, cache=tmp_path / "node-a")
    server = ModelRegistry(bucket, cache=tmp_path / "node-b")
    assert trainer.remote and [_register(trainer, f"w{i}") for i in range(2)] == ["v1", "v2"]
    trainer.promote("linear:v1")
    trainer.promote("linear:v2", "canary")
    assert server.resolve("linear") == ("linear", "v1") and server.resolve("linear:canary") == ("linear", "v2")
    info = server.get("linear:canary")  # copied to node b, checked against meta.json's checksums
    assert info.path == tmp_path / "node-b" / "linear" / "v2"
    assert (info.path / "model.bin").read_text() == "w1" and (info.path / "tokenizer" / "vocab.txt").is_file()
    assert not (tmp_path / "node-b" / "linear" / "v1").exists()  # only what is read is copied
    with pytest.raises(RegistryError, match="no earlier champion"):  # refused, as on a folder
        server.rollback("linear")
    trainer.promote("linear:v2")
    assert server.rollback("linear").meta.version == "v1"  # one stages.json, whichever node writes it
    assert trainer.resolve("linear") == ("linear", "v1")


def test_a_remote_upload_that_died_before_its_meta_is_no_version(bucket: str, tmp_path: Path) -> None:
    reg = ModelRegistry(bucket, cache=tmp_path / "cache")
    _register(reg)
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{bucket.removeprefix('memory://')}/linear/v2/model.bin", b"half an upload")  # no meta.json
    assert reg.resolve("linear:latest") == ("linear", "v1")
    with pytest.raises(RegistryError, match="has no version 'v2'"):
        reg.get("linear:v2")
    assert _register(reg) == "v3"  # the dead upload's number is not reused
    assert reg.clean_partial() == 1 and reg.resolve("linear:latest") == ("linear", "v3")


def test_a_remote_file_changed_after_registration_is_refused(bucket: str, tmp_path: Path) -> None:
    _register(ModelRegistry(bucket, cache=tmp_path / "trainer"))  # the trainer keeps what it uploaded as its copy
    fsspec.filesystem("memory").pipe(f"{bucket.removeprefix('memory://')}/linear/v1/model.bin", b"tampered")
    with pytest.raises(RegistryError, match=r"checksum mismatch in model\.bin"):  # another node's copy is checked
        ModelRegistry(bucket, cache=tmp_path / "server").get("linear:v1")


def test_the_environment_names_the_registry_every_process_uses(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Home(tmp_path / "home")
    monkeypatch.delenv("MAILROUTE_REGISTRY_URI", raising=False)
    assert open_registry(home).root == home.registry
    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", bucket)
    reg = open_registry(home)
    assert reg.remote and reg.root == home.root / "cache" / "registry"
    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", "nosuchscheme://x/y")
    with pytest.raises(RegistryError, match="nosuchscheme"):
        open_registry(home)


def test_training_runs_are_kept_beside_a_shared_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.models.registry import runs_location

    monkeypatch.delenv("MAILROUTE_REGISTRY_URI", raising=False)
    assert runs_location(tmp_path / "runs") == str(tmp_path / "runs")
    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", "s3://acme-ml/mailroute/registry/")
    assert runs_location(tmp_path / "runs", "tune") == "s3://acme-ml/mailroute/runs/tune"
