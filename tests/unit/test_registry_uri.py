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
    assert reg.clean_partial(older_than_s=0) == 1 and reg.resolve("linear:latest") == ("linear", "v3")


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
    assert reg.remote and reg.root.parent == home.root / "cache" / "registry"  # a folder per URI
    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", "nosuchscheme://x/y")
    with pytest.raises(RegistryError, match="nosuchscheme"):
        open_registry(home)


def test_training_runs_are_kept_beside_a_shared_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.models.registry import runs_location

    monkeypatch.delenv("MAILROUTE_REGISTRY_URI", raising=False)
    assert runs_location(tmp_path / "runs") == str(tmp_path / "runs")
    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", "s3://acme-ml/mailroute/registry/")
    assert runs_location(tmp_path / "runs", "tune") == "s3://acme-ml/mailroute/runs/tune"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://acme-ml/registry", "s3://acme-ml/runs/tune"),
        ("s3://acme-ml/mailroute/registry?region=eu-west-1", "s3://acme-ml/mailroute/runs/tune?region=eu-west-1"),
        ("file:///srv/shared/registry", "file:///srv/shared/runs/tune"),
        ("/srv/shared/registry", "/srv/shared/runs/tune"),
    ],
)
def test_runs_sit_beside_the_registry_whatever_the_uri_looks_like(
    uri: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.models.registry import runs_location

    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", uri)
    assert runs_location(tmp_path / "runs", "tune") == expected


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("s3://acme-ml", "root of a bucket"),  # its runs would be s3://runs, another bucket
        ("s3://acme-ml/", "root of a bucket"),
        ("registry", "relative path"),  # each process (a Ray worker in its own folder) would read another one
        ("./shared/registry", "relative path"),
        ("s3://AKIAEXAMPLE:hunter2secret@acme-ml/registry", "credentials"),
        ("s3://acme-ml/registry?access_key=AKIAEXAMPLE&secret_key=hunter2secret", "credentials"),
        ("gs://acme-ml/registry?access_token=hunter2secret", "credentials"),
    ],
)
def test_a_registry_uri_that_cannot_be_shared_safely_is_refused(
    uri: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URI a user could plausibly write but that would misbehave: refused in one line that never repeats a
    secret (the URI travels to every replica's environment and into logs)."""
    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", uri)
    with pytest.raises(RegistryError, match=reason) as refused:
        open_registry(Home(tmp_path / "home"))
    assert "hunter2secret" not in str(refused.value) and "AKIAEXAMPLE" not in str(refused.value)
    assert "\n" not in str(refused.value)


def test_each_registry_uri_has_its_own_local_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two registries (a staging and a production bucket) both have linear:v1: a node that switches from one to
    the other must not serve the first one's copy."""
    home = Home(tmp_path / "home")
    first, second = (f"memory://bucket-{uuid.uuid4().hex[:8]}/registry" for _ in range(2))
    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", first)
    _register(open_registry(home), "staging weights")
    assert (open_registry(home).get("linear:v1").path / "model.bin").read_text() == "staging weights"
    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", second)
    _register(ModelRegistry(second, cache=tmp_path / "trainer"), "production weights")
    assert (open_registry(home).get("linear:v1").path / "model.bin").read_text() == "production weights"


@pytest.mark.parametrize("rel", ["../../outside.bin", "/etc/hostname"])
def test_a_meta_naming_a_file_outside_its_version_is_corrupt(rel: str, tmp_path: Path) -> None:
    import json

    reg = ModelRegistry(tmp_path / "registry")
    _register(reg)
    meta_path = tmp_path / "registry" / "linear" / "v1" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["files"][rel] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="outside its folder"):
        reg.get("linear:v1")


def test_an_unreachable_remote_registry_is_unavailable_not_a_bad_request(bucket: str, tmp_path: Path) -> None:
    """A store that fails (network, permissions) is RegistryUnavailableError — a 503 to try again — whichever call
    meets it, never a raw OSError or a 422 as if the request were wrong."""
    from serving.models.registry import RegistryUnavailableError

    reg = ModelRegistry(bucket, cache=tmp_path / "cache")
    _register(reg)

    class Failing:
        def __getattr__(self, name: str) -> object:
            def fail(*args: object, **kwargs: object) -> None:
                raise OSError("connection reset by peer")

            return fail

    reg._fs = Failing()  # type: ignore[assignment]
    for call in (reg.names, lambda: reg.resolve("linear"), lambda: reg.get("linear:v1"),
                 lambda: reg.promote("linear:v1")):  # fmt: skip
        with pytest.raises(RegistryUnavailableError, match="unreachable"):
            call()


def test_cleaning_leaves_an_upload_that_may_still_be_running(bucket: str, tmp_path: Path) -> None:
    """Found in review: clean_partial removed every folder without meta.json, another trainer's upload in progress
    among them. Only what is older than a day (by default) is a dead upload."""
    reg = ModelRegistry(bucket, cache=tmp_path / "cache")
    _register(reg)
    fsspec.filesystem("memory").pipe(f"{bucket.removeprefix('memory://')}/linear/v2/model.bin", b"uploading now")
    (tmp_path / "cache" / "linear" / ".tmp-inprogress").mkdir()  # this node's staging of a registration running now
    assert reg.clean_partial() == 0
    assert reg.clean_partial(older_than_s=0) == 2


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hdfs:///mailroute/registry", "hdfs:///mailroute/runs/x"),
        (
            "abfs://models@acme.dfs.core.windows.net/mailroute/registry",
            "abfs://models@acme.dfs.core.windows.net/mailroute/runs/x",
        ),
        (
            "s3://acme/registry?sse_kms_key_id=alias/mr&endpoint_override=minio:9000",
            "s3://acme/runs/x?sse_kms_key_id=alias/mr&endpoint_override=minio:9000",
        ),
    ],
)
def test_valid_uris_found_in_review_are_accepted(uri: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: an Azure container@account URI read as credentials, a KMS key id as a secret, and an empty
    host lost its '//'."""
    from serving.models.registry import checked_uri, runs_location

    assert checked_uri(uri) == uri
    monkeypatch.setenv("MAILROUTE_REGISTRY_URI", uri)
    assert runs_location(Path("/unused"), "x") == expected


@pytest.mark.parametrize(
    "uri",
    [
        "/",
        "file:///",
        "abfs://models@acme.dfs.core.windows.net/?account_key=hunter2secret",
        # found in review: these names carry keys too
        "s3://acme/registry?api_key=hunter2secret",
        "s3://acme/registry?apikey=hunter2secret",
        "gs://acme/registry?private_key=hunter2secret",
        "s3://acme/registry?AWSAccessKeyId=hunter2secret",
        "s3://acme/registry?passwd=hunter2secret",
        "s3://acme/registry?pwd=hunter2secret",
        "s3://acme/registry?auth=hunter2secret",
    ],
)
def test_roots_and_account_keys_are_refused(uri: str) -> None:
    from serving.models.registry import checked_uri

    with pytest.raises(RegistryError) as refused:
        checked_uri(uri)
    assert "hunter2secret" not in str(refused.value)


def test_a_dead_upload_is_cleaned_by_its_start_marker_not_by_file_times(bucket: str, tmp_path: Path) -> None:
    """Found in review: object stores (and fsspec's adapter) give no modification times, so age by file time never
    removed anything. An upload writes a start marker first; its time decides."""
    import json
    from datetime import UTC, datetime, timedelta

    reg = ModelRegistry(bucket, cache=tmp_path / "cache")
    _register(reg)
    fs, root = fsspec.filesystem("memory"), bucket.removeprefix("memory://")
    assert fs.exists(f"{root}/linear/v1/.upload.json")  # written before the files
    for version, age in (("v2", timedelta(days=2)), ("v3", timedelta(minutes=5))):
        started = (datetime.now(UTC) - age).isoformat()
        fs.pipe(f"{root}/linear/{version}/.upload.json", json.dumps({"started": started}).encode())
        fs.pipe(f"{root}/linear/{version}/tokenizer/vocab.txt", b"half an upload")  # no meta.json: it died
    fs.pipe(f"{root}/linear/v4/model.bin", b"no marker")  # from before markers: its age is unknown
    assert reg.clean_partial() == 1 and not fs.exists(f"{root}/linear/v2")
    assert fs.exists(f"{root}/linear/v3") and fs.exists(f"{root}/linear/v4")
    assert (reg.get("linear:v1").path / "model.bin").read_text() == "weights"  # the marker is no unlisted file


def test_an_upload_started_on_a_simulated_clock_is_aged_by_the_wall_clock(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the marker was written on the process's clock (the demo runs a simulated one, days ahead)
    and compared with the wall clock, so a fresh upload looked days old and another trainer's could be removed."""
    import json
    from datetime import UTC, datetime

    from serving import clock

    monkeypatch.setenv(clock.ENV, clock.scaled(datetime(2031, 1, 1, tzinfo=UTC), 500.0).to_env())
    reg = ModelRegistry(bucket, cache=tmp_path / "cache")
    _register(reg)
    fs, root = fsspec.filesystem("memory"), bucket.removeprefix("memory://")
    started = datetime.fromisoformat(json.loads(fs.cat(f"{root}/linear/v1/.upload.json"))["started"])
    assert abs(started.timestamp() - datetime.now(UTC).timestamp()) < 60


def test_only_the_top_level_marker_and_meta_are_the_registrys_own(bucket: str, tmp_path: Path) -> None:
    """Found in review: a model's own nested meta.json was never uploaded, and a nested .upload.json was taken for
    the marker; a top-level .upload.json of the version's own would overwrite the marker."""
    reg = ModelRegistry(bucket, cache=tmp_path / "cache")

    def nested(folder: Path) -> None:
        (folder / "model.bin").write_text("weights")
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "meta.json").write_text("{}")
        (folder / "tokenizer" / ".upload.json").write_text("{}")

    meta = reg.register("linear", nested, kind="linear", labels=["billing", "technical"], preprocessing_version="1",
                        data_fingerprint="sha256:abc", metrics={}, params={})  # fmt: skip
    other = ModelRegistry(bucket, cache=tmp_path / "other-cache")  # another node: reads the upload
    path = other.get(f"linear:{meta.version}").path
    assert (path / "tokenizer" / "meta.json").read_text() == "{}"
    assert (path / "tokenizer" / ".upload.json").read_text() == "{}"

    def reserved(folder: Path) -> None:
        (folder / "model.bin").write_text("weights")
        (folder / ".upload.json").write_text("{}")

    with pytest.raises(RegistryError, match=r"\.upload\.json"):
        reg.register("linear", reserved, kind="linear", labels=["billing", "technical"], preprocessing_version="1",
                     data_fingerprint="sha256:abc", metrics={}, params={})  # fmt: skip

    def own_meta(folder: Path) -> None:  # would be overwritten by the registry's, then read as corrupt forever
        (folder / "model.bin").write_text("weights")
        (folder / "meta.json").write_text("{}")

    with pytest.raises(RegistryError, match=r"top-level meta\.json"):
        reg.register("linear", own_meta, kind="linear", labels=["billing", "technical"], preprocessing_version="1",
                     data_fingerprint="sha256:abc", metrics={}, params={})  # fmt: skip
