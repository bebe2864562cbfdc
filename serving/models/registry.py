"""The model registry: versioned, immutable artifact folders plus a small stage file per model name.

Layout under the mailroute home::

    registry/<name>/v<N>/            one version: model files + meta.json (written last, with file checksums)
    registry/<name>/stages.json      which version is champion / canary, and the champion history for rollback
    registry/<name>/.tmp-*           a version being written; invisible until renamed into place

A version appears only through an atomic `rename` of a complete folder, so a crash mid-write never leaves a half
version visible. Stage changes rewrite `stages.json` through a temp file and `os.replace`.

Shared storage (`open_registry`, `$MAILROUTE_REGISTRY_URI`): the same layout under a URI, so that training on one
node and serving on another use one registry. `file://` (or a plain path, on NFS say) is the folder above. Any other
filesystem pyarrow reaches (`s3://`, `gs://`, `hdfs://`) or fsspec does (`abfs://`, `memory://`, ...) has no atomic
rename: a version's files are uploaded first and its meta.json last, so a version is visible only once it is
complete (a crashed upload leaves files without meta.json, which `clean_partial` removes a day later: the retrain
job calls it); `stages.json` is one object, replaced whole by each write. Serving and training read a version from a
local copy (`<home>/cache/registry/<hash of the URI>/<name>/<version>`), downloaded once and checked against
meta.json's checksums like a local version. Each upload writes a marker with its start time first (`UPLOAD_MARKER`:
object stores keep no folder times), by which `clean_partial` tells a dead upload from a running one. Object stores
have no compare-and-swap here: run one trainer per model name at a time (the retrain job does), and make stage
changes through the app's runtime changes, which hold the event store's change lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from serving import clock

if TYPE_CHECKING:
    import pyarrow.fs as pafs

    from serving.config import Home

log = logging.getLogger(__name__)

META_FILE = "meta.json"
STAGES_FILE = "stages.json"
STAGES = ("candidate", "canary", "champion", "archived")
REGISTRY_URI_ENV = "MAILROUTE_REGISTRY_URI"
PARTIAL_AGE_S = 86_400.0  # a write untouched this long is a dead one (`clean_partial`)
UPLOAD_MARKER = ".upload.json"  # first file of a remote upload: when it started (object stores keep no folder times)
_VERSION_RE = re.compile(r"^v(\d+)$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class RegistryError(ValueError):
    """A registry request that cannot be served: unknown model or version, corrupt artifact, bad stage change."""


class RegistryUnavailableError(RegistryError):
    """The registry's storage did not answer (network, permissions, a store down): worth a retry, not a bad request."""


# Query parameters of a URI that would carry a credential (s3's access_key/secret_key/session_token, gs's
# access_token, ...): the URI travels to every replica's environment and into logs, so credentials come from the
# filesystem's own environment instead (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, an instance role).
_SECRET_QUERY = re.compile(
    r"secret|token|passw|passwd|pwd|^auth$|authorization|credential|signature|access_?key|account_key|api_?key|"
    r"private_key|^key$|^sig$|^sas",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ModelMeta:
    """What the registry knows about one version; stored as meta.json beside the model files."""

    name: str
    version: str
    kind: str  # "linear" or "transformer": tells serving which loader to use
    labels: tuple[str, ...]
    preprocessing_version: str
    data_fingerprint: str
    metrics: dict[str, Any]
    params: dict[str, Any]
    parent: str | None
    created: str
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    # Sentences from the training guard (e.g. "below a linear model trained on the same rows"); shown by models show.
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["labels"] = list(self.labels)
        out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelMeta:
        return cls(**{**data, "labels": tuple(data["labels"]), "warnings": tuple(data.get("warnings", ()))})


@dataclass(frozen=True)
class VersionInfo:
    meta: ModelMeta
    stage: str
    path: Path  # the version's local folder (for a remote registry, its copy: made by a verified `get`)


def _checked_name(name: str) -> str:
    """A model name that stays inside the registry (letters, digits, . _ -; no path); RegistryError otherwise."""
    if not _NAME_RE.fullmatch(name):
        raise RegistryError(f"'{name[:40]}' is not a model name (lower-case letters, digits, . _ -)")
    return name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem a registry URI names and the path inside it: pyarrow's own (s3, gs, hdfs, file), else
    fsspec's, wrapped for pyarrow. A URI neither knows is a RegistryError."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(location)
    except pa.ArrowInvalid:  # not one of pyarrow's schemes: fsspec's (a missing backend package is named)
        import fsspec

        try:
            fsspec_fs, path = fsspec.core.url_to_fs(location)
        except (ImportError, ValueError) as err:
            raise RegistryError(f"registry URI {location}: {err}") from None
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs))
    except OSError as err:  # pyarrow reaches the store at once (an S3 bucket's region): unreachable, bad creds
        raise RegistryError(f"registry URI {location}: {' '.join(str(err).split())[:200]}") from None
    return fs, path.rstrip("/")


def checked_uri(uri: str) -> str:
    """A registry URI every process can share safely, else a one-line RegistryError that never repeats a secret:
    an absolute path or a URI, not a bucket's or a disk's root (its runs would land beside it, outside it), no
    credentials (a user:password or a key in the query string)."""
    parts = urlsplit(uri)
    if "://" not in uri:
        if not Path(uri).is_absolute():  # each process (a Ray worker in a folder of its own) would read another
            raise RegistryError(f"{REGISTRY_URI_ENV}: '{uri[:80]}' is a relative path; give an absolute path or a URI")
        if Path(uri).parent == Path(uri):
            raise RegistryError(
                f"{REGISTRY_URI_ENV}={uri} is the root of a disk: give a folder (the runs go beside it)"
            )
        return uri
    if parts.password is not None:  # a user alone is no secret (abfs://container@account.dfs.core.windows.net)
        raise RegistryError(
            f"{REGISTRY_URI_ENV} carries credentials (user:password@): take them out and give them the way the "
            "filesystem reads them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, a role)"
        )
    secret = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if _SECRET_QUERY.search(k)]
    if secret:
        raise RegistryError(
            f"{REGISTRY_URI_ENV} carries credentials in its query ({', '.join(sorted(set(secret)))}): give them the "
            "way the filesystem reads them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, a "
            "role), not in the URI"
        )
    if parts.path.strip("/") == "" and parts.scheme != "memory":  # memory://name: fsspec's test filesystem
        raise RegistryError(
            f"{REGISTRY_URI_ENV}={uri_label(uri)} is the root of {'a disk' if parts.scheme == 'file' else 'a bucket'}: "
            "give a folder in it (s3://bucket/mailroute/registry), so the training runs beside it stay in the bucket"
        )
    return uri


def uri_label(uri: str) -> str:
    """A URI without its query string (region and such; never a credential, `checked_uri` refuses those)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if "://" in uri else uri


def open_registry(home: Home) -> ModelRegistry:
    """The registry every mailroute process uses: `$MAILROUTE_REGISTRY_URI` when set (shared storage, the same on
    every node), else `<home>/registry`. Local copies of a remote registry's versions are kept per URI (two
    registries may both have a linear:v1)."""
    uri = os.environ.get(REGISTRY_URI_ENV)
    if not uri:
        return ModelRegistry(home.registry)
    key = hashlib.sha256(checked_uri(uri).encode()).hexdigest()[:16]
    return ModelRegistry(uri, cache=home.root / "cache" / "registry" / key)


def runs_location(default: Path, *sub: str) -> str:
    """Where Ray Train and Ray Tune keep a run's checkpoints (`storage_path`): beside the shared registry,
    `<registry URI>/../runs/...`, when $MAILROUTE_REGISTRY_URI is set, so that workers on every node reach it and
    the finished model registers from there; else the local `default` folder."""
    uri = os.environ.get(REGISTRY_URI_ENV)
    if not uri:
        return str(default)
    uri = checked_uri(uri)
    if "://" not in uri:
        return str(Path(uri).parent.joinpath("runs", *sub))
    parts = urlsplit(uri)
    path = posixpath.join(posixpath.dirname(parts.path.rstrip("/")), "runs", *sub)
    # Written out, not urlunsplit: that drops the '//' of an empty host (hdfs:///path would become hdfs:/path).
    return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{parts.query}" if parts.query else "")


class ModelRegistry:
    """The registry rooted at a folder (`<home>/registry`) or at a URI (the module's docstring)."""

    def __init__(self, root: Path | str, *, cache: Path | None = None) -> None:
        self.location = uri_label(str(root))  # what messages name
        self._fs: pafs.FileSystem | None = None
        if isinstance(root, str) and "://" in root:
            fs, path = _filesystem(checked_uri(root))
            import pyarrow.fs as pafs

            if isinstance(fs, pafs.LocalFileSystem):  # file://: a folder, with atomic rename
                root = Path(path)
            else:
                self._fs, self._base = fs, path
        self.root = Path(root)  # the folder (for a remote registry: its local copies)
        if self._fs is not None:
            self.root = cache or Path(tempfile.gettempdir()) / "mailroute-registry-cache"

    @property
    def remote(self) -> bool:
        """Whether versions live on a filesystem without atomic rename (an object store), read through copies."""
        return self._fs is not None

    # ---- storage: a local folder, or a remote filesystem ------------------------------------------------------
    def _remote_path(self, *parts: str) -> str:
        return "/".join([self._base, *parts])

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """A remote filesystem's failure (network, permissions, the store down) as RegistryUnavailableError, one line;
        a file that is not there stays FileNotFoundError, for the caller to say what is missing."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as err:
            raise self._unreachable(err) from None

    def _unreachable(self, err: OSError, doing: str = "") -> RegistryUnavailableError:
        during = f" {doing}" if doing else ""
        return RegistryUnavailableError(
            f"registry {self.location} is unreachable{during} ({' '.join(str(err).split())[:200]})"
        )

    def _list_dirs(self, *parts: str) -> list[str]:
        if self._fs is None:
            folder = self.root.joinpath(*parts)
            return [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        import pyarrow.fs as pafs

        with self._reaching():
            infos = self._fs.get_file_info(pafs.FileSelector(self._remote_path(*parts), allow_not_found=True))
        return [i.base_name for i in infos if i.type == pafs.FileType.Directory]

    def _read_text(self, *parts: str) -> str | None:
        """A file's text; None when it does not exist."""
        if self._fs is None:
            path = self.root.joinpath(*parts)
            return path.read_text(encoding="utf-8") if path.is_file() else None
        try:
            with self._reaching(), self._fs.open_input_stream(self._remote_path(*parts)) as fh:
                return bytes(fh.read()).decode("utf-8")
        except FileNotFoundError:
            return None

    def _write_json(self, data: Any, *parts: str) -> None:
        """Replace a file whole: a reader sees the old one or the new one."""
        if self._fs is None:
            _write_json_atomic(self.root.joinpath(*parts), data)
            return
        with self._reaching(), self._fs.open_output_stream(self._remote_path(*parts)) as fh:  # one PUT: replaced whole
            fh.write(json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))

    def _local_folder(self, name: str, version: str) -> Path:
        """The folder serving and training read a version from: the registry's own, or a checked local copy."""
        folder = self.root / name / version
        if self._fs is None or (folder / META_FILE).is_file():
            return folder
        import pyarrow.fs as pafs

        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=folder.parent))
        try:  # meta.json is copied with the rest: a copy is complete when it has one (renamed into place last)
            pafs.copy_files(self._remote_path(name, version), str(tmp), source_filesystem=self._fs,
                            destination_filesystem=pafs.LocalFileSystem())  # fmt: skip
            try:
                os.rename(tmp, folder)
            except OSError:  # another process copied it first: use theirs
                if not (folder / META_FILE).is_file():
                    raise
        except FileNotFoundError:  # listed a moment ago, gone now (removed by someone)
            raise RegistryError(f"model {name}:{version} is gone from {self.location}") from None
        except OSError as err:  # the store, or this node's cache (a full disk): said which in err
            raise self._unreachable(err, f"copying {name}:{version} to {folder.parent}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    # ---- reading -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(n for n in self._list_dirs() if _NAME_RE.fullmatch(n))

    def _versions(self, name: str) -> list[str]:
        found = [(int(m.group(1)), n) for n in self._list_dirs(_checked_name(name)) if (m := _VERSION_RE.match(n))]
        if self._fs is not None:  # an upload in progress (or crashed) has files but no meta.json yet: not a version
            found = [(k, v) for k, v in found if self._read_text(name, v, META_FILE) is not None]
        return [v for _, v in sorted(found)]

    def _stages(self, name: str) -> dict[str, Any]:
        where = f"{self.location}/{name}/{STAGES_FILE}"
        try:
            text = self._read_text(name, STAGES_FILE)
            if text is None:
                return {"champion": None, "canary": None, "history": [], "rolled_back": []}
            data = json.loads(text)
        except (OSError, json.JSONDecodeError) as err:
            raise RegistryError(f"registry file {where} is unreadable ({err})") from None
        return dict(data)

    def _stage_of(self, version: str, stages: dict[str, Any]) -> str:
        if stages.get("champion") == version:
            return "champion"
        if stages.get("canary") == version:
            return "canary"
        if version in stages.get("history", []) or version in stages.get("rolled_back", []):
            return "archived"
        return "candidate"

    def read_meta(self, name: str, version: str, *, verify: bool = False) -> ModelMeta:
        if not _VERSION_RE.fullmatch(version):
            raise RegistryError(f"'{version[:40]}' is not a version (v1, v2, ...)")
        if version not in self._list_dirs(_checked_name(name)):
            known = ", ".join(self._versions(name)) or "none"
            raise RegistryError(f"model '{name}' has no version '{version}' (known: {known})")
        try:
            text = self._read_text(name, version, META_FILE)
            if text is None:
                raise RegistryError(f"model {name}:{version} is corrupt: {META_FILE} is missing")
            meta = ModelMeta.from_json(json.loads(text))
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise RegistryError(f"model {name}:{version} is corrupt: {META_FILE} is invalid ({err})") from None
        outside = [rel for rel in meta.files if Path(rel).is_absolute() or ".." in Path(rel).parts]
        if outside:  # a file the checks would read (and a loader might open) outside the version's folder
            raise RegistryError(
                f"model {name}:{version} is corrupt: {META_FILE} names {outside[0][:80]}, outside its folder"
            )
        if verify:
            path = self._local_folder(name, version)
            for rel, expected in meta.files.items():
                target = path / rel
                if not target.is_file():
                    raise RegistryError(f"model {name}:{version} is corrupt: {rel} is missing")
                if _sha256(target) != expected:
                    raise RegistryError(f"model {name}:{version} is corrupt: checksum mismatch in {rel}")
            # A file nobody registered (a dropped-in pickle, say) would be loaded unverified: refuse it.
            own = (path / META_FILE, path / UPLOAD_MARKER)
            extra = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p not in own)
            unlisted = [rel for rel in extra if rel not in meta.files]
            if unlisted:
                raise RegistryError(f"model {name}:{version} is corrupt: {unlisted[0]} was not registered with it")
        return meta

    def resolve(self, ref: str) -> tuple[str, str]:
        """`name`, `name:champion`, `name:canary`, `name:latest` or `name:v3` -> (name, version).

        A bare name means its champion; until a champion is promoted, the latest version stands in.
        """
        name, _, selector = ref.partition(":")
        versions = self._versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise RegistryError(f"no model named '{name}' in the registry (known: {known})")
        stages = self._stages(name)
        if selector in ("", "champion", "canary"):
            chosen = stages.get(selector or "champion")
            if chosen:
                return name, chosen
            if selector == "canary":
                raise RegistryError(f"model '{name}' has no canary version; promote one with --stage canary")
            # Nothing promoted yet: the latest version stands in, so a fresh install serves right after training.
            return name, versions[-1]
        if selector == "latest":
            return name, versions[-1]
        if selector not in versions:
            raise RegistryError(f"model '{name}' has no version '{selector}' (known: {', '.join(versions)})")
        return name, selector

    def champion_history(self, name: str) -> list[str]:
        """The earlier champions of `name`, oldest first (what `rollback` goes back through)."""
        if not self._versions(name):
            raise RegistryError(f"no model named '{name}' in the registry")
        return list(self._stages(name).get("history", []))

    def get(self, ref: str, *, verify: bool = True) -> VersionInfo:
        name, version = self.resolve(ref)
        meta = self.read_meta(name, version, verify=verify)
        # A remote version is copied here only when it is read for use (verified): a stage change copies nothing.
        path = self._local_folder(name, version) if verify else self.root / name / version
        return VersionInfo(meta, self._stage_of(version, self._stages(name)), path)

    def versions(self, name: str | None = None) -> Iterator[VersionInfo | tuple[str, str, str]]:
        """Every version; a corrupt one is yielded as (name, version, error) so listing never fails."""
        for model in [name] if name else self.names():
            stages = self._stages(model)
            for version in self._versions(model):
                try:
                    meta = self.read_meta(model, version)
                except RegistryError as err:
                    yield (model, version, str(err))
                    continue
                yield VersionInfo(meta, self._stage_of(version, stages), self.root / model / version)

    # ---- writing -------------------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        write_files: Callable[[Path], None],
        *,
        kind: str,
        labels: list[str],
        preprocessing_version: str,
        data_fingerprint: str,
        metrics: dict[str, Any],
        params: dict[str, Any],
        parent: str | None = None,
        warnings: Sequence[str] = (),
    ) -> ModelMeta:
        """Write a new version: `write_files(tmp_dir)` fills a hidden folder that is renamed into place last."""
        if not _NAME_RE.fullmatch(name):
            raise RegistryError(f"invalid model name '{name}': use lowercase letters, digits, '-', '_', '.'")
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"  # for a remote registry: the upload's local staging
        tmp.mkdir()
        try:
            write_files(tmp)
            for own in (UPLOAD_MARKER, META_FILE):
                if (tmp / own).exists():
                    raise RegistryError(f"a version may not hold a top-level {own}: the registry writes it")
            files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            while True:  # another writer may take the same number: the rename then fails and we try the next
                # Remote: a crashed upload's folder keeps its number too (it has no meta.json, so it is no version).
                existing = self._versions(name) if self._fs is None else self._list_dirs(name)
                numbers = [int(m.group(1)) for v in existing if (m := _VERSION_RE.match(v))]
                version = f"v{max(numbers, default=0) + 1}"
                meta = ModelMeta(
                    name=name,
                    version=version,
                    kind=kind,
                    labels=tuple(labels),
                    preprocessing_version=preprocessing_version,
                    data_fingerprint=data_fingerprint,
                    metrics=metrics,
                    params=params,
                    parent=parent,
                    created=clock.now().isoformat(timespec="seconds"),
                    files=files,
                    warnings=tuple(warnings),
                )
                _write_json_atomic(tmp / META_FILE, meta.to_json())
                if self._fs is not None:
                    self._upload(tmp, name, version)
                    try:  # the staged files are this node's copy of the new version
                        os.rename(tmp, model_dir / version)
                    except OSError:
                        shutil.rmtree(tmp, ignore_errors=True)
                    log.info("registered %s:%s at %s", name, version, self.location)
                    return meta
                try:
                    os.rename(tmp, model_dir / version)
                except OSError:
                    if (model_dir / version).exists():
                        continue
                    raise
                log.info("registered %s:%s", name, version)
                return meta
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _upload(self, folder: Path, name: str, version: str) -> None:
        """Copy a complete version to the remote registry, meta.json last: until it lands the version is invisible."""
        import pyarrow.fs as pafs

        assert self._fs is not None
        target = self._remote_path(name, version)
        local = pafs.LocalFileSystem()
        try:
            with self._fs.open_output_stream(f"{target}/{UPLOAD_MARKER}") as fh:
                # The wall clock, not the process's (a simulated one runs ahead): clean_partial ages it by time.time.
                fh.write(json.dumps({"started": datetime.now(UTC).isoformat()}).encode("utf-8"))
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / META_FILE):
                rel = path.relative_to(folder).as_posix()
                self._fs.create_dir(f"{target}/{rel}".rsplit("/", 1)[0], recursive=True)
                pafs.copy_files(str(path), f"{target}/{rel}", source_filesystem=local, destination_filesystem=self._fs)
            pafs.copy_files(str(folder / META_FILE), f"{target}/{META_FILE}", source_filesystem=local,
                            destination_filesystem=self._fs)  # fmt: skip
        except OSError as err:
            raise self._unreachable(err, f"uploading {name}:{version}") from None

    def promote(self, ref: str, stage: str = "champion") -> VersionInfo:
        """Make a version the champion (the old one is kept in history for rollback) or the canary."""
        if stage not in ("champion", "canary"):
            raise RegistryError(f"cannot promote to stage '{stage}': use champion or canary")
        info = self.get(ref)
        name, version = info.meta.name, info.meta.version
        stages = self._stages(name)
        if stage == "champion":
            previous = stages.get("champion")
            if previous == version:
                raise RegistryError(f"{name}:{version} is already the champion")
            if previous:
                stages["history"] = [*stages.get("history", []), previous]
            stages["champion"] = version
            if stages.get("canary") == version:
                stages["canary"] = None
        else:
            stages["canary"] = version
        self._write_json(stages, name, STAGES_FILE)
        return self.get(f"{name}:{version}", verify=False)

    def rollback(self, name: str) -> VersionInfo:
        """Put the previous champion back; the current one is archived. One command, no retraining."""
        if not self._versions(name):
            raise RegistryError(f"no model named '{name}' in the registry")
        stages = self._stages(name)
        history = list(stages.get("history", []))
        if not history:
            raise RegistryError(f"model '{name}' has no earlier champion to roll back to")
        current = stages.get("champion")
        stages["champion"] = history.pop()
        stages["history"] = history
        if current:  # kept apart from history, so a second rollback goes further back instead of toggling
            stages["rolled_back"] = [*stages.get("rolled_back", []), current]
        if stages.get("canary") == stages["champion"]:
            stages["canary"] = None
        self._write_json(stages, name, STAGES_FILE)
        return self.get(f"{name}:{stages['champion']}", verify=False)

    def retire(self, ref: str) -> VersionInfo:
        """A candidate or canary that lost (a rollout rolled back): archived, and no longer the canary."""
        info = self.get(ref, verify=False)
        name, version = info.meta.name, info.meta.version
        stages = self._stages(name)
        if stages.get("champion") == version:
            raise RegistryError(f"{name}:{version} is the champion; roll back to the previous one instead")
        if stages.get("canary") == version:
            stages["canary"] = None
        if version not in stages.get("rolled_back", []):
            stages["rolled_back"] = [*stages.get("rolled_back", []), version]
        self._write_json(stages, name, STAGES_FILE)
        return self.get(f"{name}:{version}", verify=False)

    def _upload_started(self, name: str, version: str) -> float:
        """When an unfinished remote upload began, from its marker; an upload without one (it died before writing
        it, or predates markers) counts as starting now: its age is unknown, so it is left alone."""
        text = self._read_text(name, version, UPLOAD_MARKER)
        try:
            return datetime.fromisoformat(json.loads(text)["started"]).timestamp() if text else time.time()
        except (ValueError, KeyError, TypeError):
            return time.time()

    def clean_partial(self, older_than_s: float = PARTIAL_AGE_S) -> int:
        """Remove what writers that crashed mid-write left (a local staging folder, a remote upload without its
        meta.json) once untouched for `older_than_s`: anything younger may be another writer still at work.
        Returns how many were removed."""
        cutoff = time.time() - older_than_s
        removed = 0
        for name in self.names():
            for tmp in (self.root / name).glob(".tmp-*"):
                try:
                    young = older_than_s > 0 and tmp.stat().st_mtime >= cutoff
                except FileNotFoundError:  # another process cleaned it first
                    continue
                if not young:
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed += 1
            if self._fs is None:
                continue
            known = set(self._versions(name))
            for version in [v for v in self._list_dirs(name) if _VERSION_RE.match(v) and v not in known]:
                if older_than_s == 0 or self._upload_started(name, version) < cutoff:
                    with self._reaching():
                        self._fs.delete_dir(self._remote_path(name, version))
                    removed += 1
        return removed
