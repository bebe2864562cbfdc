"""The model registry: versions, stages, rollback, atomic writes and corrupt artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from serving.models.registry import ModelRegistry, RegistryError, VersionInfo

pytestmark = pytest.mark.unit


def _register(reg: ModelRegistry, name: str = "linear", payload: str = "weights") -> str:
    def write(folder: Path) -> None:
        (folder / "model.bin").write_text(payload)

    meta = reg.register(
        name,
        write,
        kind="linear",
        labels=["billing", "technical"],
        preprocessing_version="1",
        data_fingerprint="sha256:abc",
        metrics={"accuracy": 0.9},
        params={},
    )
    return meta.version


def test_versions_are_numbered_and_resolved(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    assert [_register(reg) for _ in range(3)] == ["v1", "v2", "v3"]
    assert reg.resolve("linear") == ("linear", "v3")  # no champion yet: latest
    assert reg.resolve("linear:champion") == ("linear", "v3")
    assert reg.resolve("linear:latest") == ("linear", "v3")
    assert reg.resolve("linear:v2") == ("linear", "v2")
    info = reg.get("linear:v1")
    assert info.meta.labels == ("billing", "technical")
    assert info.stage == "candidate"
    assert set(info.meta.files) == {"model.bin"}


def test_promote_and_rollback(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    for _ in range(3):
        _register(reg)
    reg.promote("linear:v1")
    reg.promote("linear:v2")
    reg.promote("linear:v3", "canary")
    assert reg.resolve("linear") == ("linear", "v2")
    assert reg.get("linear:v3").stage == "canary"
    assert reg.get("linear:v1").stage == "archived"
    reg.promote("linear:v3")
    assert reg.get("linear:v3").stage == "champion"
    assert reg.rollback("linear").meta.version == "v2"
    assert reg.get("linear:v3").stage == "archived"
    assert reg.rollback("linear").meta.version == "v1"  # goes further back, does not toggle
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback("linear")
    with pytest.raises(RegistryError, match="already the champion"):
        reg.promote("linear:v1")


@pytest.mark.parametrize(
    "ref, message",
    [("nope", "no model named 'nope'"), ("linear:v9", "no version 'v9'"), ("linear:canary", "no canary")],
)
def test_unknown_references(tmp_path: Path, ref: str, message: str) -> None:
    reg = ModelRegistry(tmp_path)
    _register(reg)
    with pytest.raises(RegistryError, match=message):
        reg.get(ref)


def test_corrupt_artifact_is_refused_and_registry_stays_usable(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    _register(reg)
    _register(reg)
    (tmp_path / "linear" / "v1" / "model.bin").write_text("tampered")
    with pytest.raises(RegistryError, match="checksum mismatch"):
        reg.get("linear:v1")
    (tmp_path / "linear" / "v2" / "meta.json").write_text("{not json")
    with pytest.raises(RegistryError, match=r"meta\.json is invalid"):
        reg.get("linear:v2")
    listed = list(reg.versions())
    assert [x[2] for x in listed if not isinstance(x, VersionInfo)] == [
        "model linear:v2 is corrupt: meta.json is invalid (Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1))"
    ]
    assert _register(reg) == "v3"  # still writable
    assert reg.get("linear:v3").meta.version == "v3"


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)

    def explode(folder: Path) -> None:
        (folder / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        reg.register(
            "linear",
            explode,
            kind="linear",
            labels=["a", "b"],
            preprocessing_version="1",
            data_fingerprint="",
            metrics={},
            params={},
        )
    assert list(reg.versions()) == []
    assert not list((tmp_path / "linear").glob(".tmp-*"))


def test_kill_during_write_never_shows_a_half_version(tmp_path: Path) -> None:
    """SIGKILL a writer in the middle of writing its files: no version appears, and the next write works."""
    marker = tmp_path / "writing"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from serving.models.registry import ModelRegistry

        def slow(folder):
            (folder / "model.bin").write_bytes(b"x" * 1_000_000)
            Path({str(marker)!r}).touch()
            time.sleep(60)

        ModelRegistry(Path({str(tmp_path / "reg")!r})).register(
            "linear", slow, kind="linear", labels=["a", "b"], preprocessing_version="1",
            data_fingerprint="", metrics={{}}, params={{}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, "writer exited early"
        assert time.monotonic() < deadline, "writer never started writing"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reg = ModelRegistry(tmp_path / "reg")
    assert list(reg.versions()) == []
    with pytest.raises(RegistryError):
        reg.get("linear")
    assert reg.clean_partial(older_than_s=0) == 1
    assert _register(reg) == "v1"


def test_stage_file_is_plain_json(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    _register(reg)
    reg.promote("linear:v1")
    stages = json.loads((tmp_path / "linear" / "stages.json").read_text())
    assert stages["champion"] == "v1"


def test_a_file_added_after_registration_is_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    version = _register(reg)
    (tmp_path / "linear" / version / "linear").mkdir()
    (tmp_path / "linear" / version / "linear" / "model.joblib").write_bytes(b"not what was registered")
    with pytest.raises(RegistryError, match=r"linear/model\.joblib was not registered") as err:
        reg.get(f"linear:{version}")
    assert "\n" not in str(err.value)


def test_meta_written_before_warnings_existed_still_reads(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    version = _register(reg)
    meta_path = tmp_path / "linear" / version / "meta.json"
    data = json.loads(meta_path.read_text())
    data.pop("warnings")
    meta_path.write_text(json.dumps(data))
    assert reg.get(f"linear:{version}").meta.warnings == ()


@pytest.mark.parametrize("ref", ["../outside:v1", "../outside", "linear/../../outside:v1", "/tmp/outside:v1"])
def test_a_name_that_leaves_the_registry_is_refused(tmp_path: Path, ref: str) -> None:
    """Found in review: resolve and read_meta took any name, so `../outside:v1` read (and an arm would load with
    joblib) a folder outside the registry; an admin's PUT /v1/experiments could name one."""
    root = tmp_path / "registry"
    reg = ModelRegistry(root)
    _register(reg)
    outside = ModelRegistry(tmp_path / "elsewhere")
    _register(outside, "outside")
    (tmp_path / "outside").symlink_to(tmp_path / "elsewhere" / "outside")  # the folder a ../ name would reach
    with pytest.raises(RegistryError, match="not a model name"):
        reg.get(ref)
    with pytest.raises(RegistryError, match="not a model name"):
        reg.read_meta(ref.partition(":")[0], "v1")


@pytest.mark.parametrize("version", ["../v1", "v1/../../x", ".", "v1\n"])
def test_a_version_that_leaves_its_model_is_refused(tmp_path: Path, version: str) -> None:
    reg = ModelRegistry(tmp_path)
    _register(reg)
    with pytest.raises(RegistryError, match="not a version"):
        reg.read_meta("linear", version)
