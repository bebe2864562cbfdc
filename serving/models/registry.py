"""The model registry: versioned, immutable artifact folders plus a small stage file per model name.

Layout under the mailroute home::

    registry/<name>/v<N>/            one version: model files + meta.json (written last, with file checksums)
    registry/<name>/stages.json      which version is champion / canary, and the champion history for rollback
    registry/<name>/.tmp-*           a version being written; invisible until renamed into place

A version appears only through an atomic `rename` of a complete folder, so a crash mid-write never leaves a half
version visible. Stage changes rewrite `stages.json` through a temp file and `os.replace`. On shared storage (many
machines) the same layout works as long as the filesystem gives atomic rename, which NFS and local disks do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving import clock

log = logging.getLogger(__name__)

META_FILE = "meta.json"
STAGES_FILE = "stages.json"
STAGES = ("candidate", "canary", "champion", "archived")
_VERSION_RE = re.compile(r"^v(\d+)$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class RegistryError(ValueError):
    """A registry request that cannot be served: unknown model or version, corrupt artifact, bad stage change."""


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
    path: Path


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


class ModelRegistry:
    """File registry rooted at `<home>/registry`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ---- reading -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))

    def _versions(self, name: str) -> list[str]:
        model_dir = self.root / _checked_name(name)
        if not model_dir.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in model_dir.iterdir() if (m := _VERSION_RE.match(p.name))]
        return [v for _, v in sorted(found)]

    def _stages(self, name: str) -> dict[str, Any]:
        path = self.root / name / STAGES_FILE
        if not path.exists():
            return {"champion": None, "canary": None, "history": [], "rolled_back": []}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise RegistryError(f"registry file {path} is unreadable ({err})") from None
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
        path = self.root / _checked_name(name) / version
        if not path.is_dir():
            known = ", ".join(self._versions(name)) or "none"
            raise RegistryError(f"model '{name}' has no version '{version}' (known: {known})")
        try:
            meta = ModelMeta.from_json(json.loads((path / META_FILE).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise RegistryError(f"model {name}:{version} is corrupt: {META_FILE} is missing") from None
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise RegistryError(f"model {name}:{version} is corrupt: {META_FILE} is invalid ({err})") from None
        if verify:
            for rel, expected in meta.files.items():
                target = path / rel
                if not target.is_file():
                    raise RegistryError(f"model {name}:{version} is corrupt: {rel} is missing")
                if _sha256(target) != expected:
                    raise RegistryError(f"model {name}:{version} is corrupt: checksum mismatch in {rel}")
            # A file nobody registered (a dropped-in pickle, say) would be loaded unverified: refuse it.
            extra = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != META_FILE)
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
        return VersionInfo(meta, self._stage_of(version, self._stages(name)), self.root / name / version)

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
        if not _NAME_RE.match(name):
            raise RegistryError(f"invalid model name '{name}': use lowercase letters, digits, '-', '_', '.'")
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            write_files(tmp)
            files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            while True:  # another writer may take the same number: the rename then fails and we try the next
                existing = self._versions(name)
                version = f"v{int(existing[-1][1:]) + 1 if existing else 1}"
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
        _write_json_atomic(self.root / name / STAGES_FILE, stages)
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
        _write_json_atomic(self.root / name / STAGES_FILE, stages)
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
        _write_json_atomic(self.root / name / STAGES_FILE, stages)
        return self.get(f"{name}:{version}", verify=False)

    def clean_partial(self) -> int:
        """Remove folders left by writers that crashed mid-write; returns how many."""
        removed = 0
        for name in self.names():
            for tmp in (self.root / name).glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
                removed += 1
        return removed
