"""Read the labelled (or unlabelled) emails users bring into one frame the trainers and evaluators share.

Sources: CSV, JSONL (or a JSON array), a folder of `.eml` files (labels from per-queue subfolders or the
`X-Mailroute-Queue` header) and mbox files. Every source ends in the same columns, with `text` built by
`serving.mail.text.model_text` so training sees exactly what serving will.

A file that cannot be used at all raises `DataError` with one line. A single bad record (a broken JSON line,
an unparseable message, a row whose text is empty after cleaning) is skipped, reported in
`LoadedData.skipped` with its position, and logged at WARNING: never a crash, never silent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mailbox
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pandas as pd

from serving.mail.emails import EmailParseError, from_fields, parse_message
from serving.mail.text import model_text

__all__ = ["COLUMNS", "LABEL_HEADER", "DataError", "LoadedData", "Skipped", "read_dataset"]

logger = logging.getLogger(__name__)

COLUMNS = ["email_id", "user_id", "ts", "subject", "body", "text", "label"]
LABEL_HEADER = "x-mailroute-queue"
# Tried in this order when the requested label column is absent ("queue" is what the shared data sets and
# helpdesk exports call it).
_LABEL_FALLBACKS = ("label", "queue")
_ID_COLUMNS = ("email_id", "id")
_WARN_EACH = 10  # skipped records logged one by one; the rest are summed up in one line


class DataError(ValueError):
    """A data file that cannot be used; the message is one line meant for a person."""


@dataclass(frozen=True)
class Skipped:
    """One record left out, and why: position is "line 17", "row 5", "message 3" or a file name."""

    position: str
    reason: str


@dataclass(frozen=True)
class LoadedData:
    """What a reader returns: the frame (columns `COLUMNS`), what it left out, and the path it read."""

    frame: pd.DataFrame
    skipped: tuple[Skipped, ...]
    source: str


@dataclass(frozen=True)
class _Record:
    """One record as read, before cleaning; body/subject are raw strings (maybe HTML)."""

    position: str
    email_id: str
    user_id: str
    ts: str
    subject: str
    body: str
    label: str | None


class _Builder:
    """Collects records into the frame's columns and the skipped list."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        self.skipped: list[Skipped] = []

    def skip(self, position: str, reason: str) -> None:
        self.skipped.append(Skipped(position, reason))
        if len(self.skipped) <= _WARN_EACH:
            logger.warning("%s: skipped %s: %s", self.source, position, reason)

    def add(self, record: _Record, require_label: bool) -> None:
        if require_label and record.label is None:
            self.skip(record.position, "no label")
            return
        try:
            email = from_fields(record.subject, record.body)
        except EmailParseError as exc:
            self.skip(record.position, str(exc))
            return
        text = model_text(email.subject, email.body)
        if not text:
            self.skip(record.position, "empty text after cleaning")
            return
        for name, value in zip(
            COLUMNS,
            (record.email_id, record.user_id, record.ts, email.subject, email.body, text, record.label),
            strict=True,
        ):
            self.columns[name].append(value)


def _label(value: Any) -> str | None:
    """A label as a string; None when missing. Numbers are fine (some data sets number their classes)."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return None
    if not isinstance(value, str | int | float):
        raise TypeError(f"not a string ({type(value).__name__})")
    text = str(value).strip()
    return text or None


def _cell(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


# --- tables: CSV and JSON lines ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Columns:
    subject: str | None
    body: str
    label: str | None
    email_id: str | None
    user_id: str | None
    ts: str | None


def _pick_columns(
    present: Iterable[str],
    *,
    text_col: str | None,
    label_col: str | None,
    subject_col: str,
    body_col: str,
    require_labels: bool,
    source: Path,
) -> _Columns:
    names = list(present)
    have = set(names)
    shown = ", ".join(repr(name) for name in names) or "none"
    if text_col is not None:
        if text_col not in have:
            raise DataError(f"{source}: missing text column '{text_col}'; columns are: {shown}")
        subject, body = None, text_col
    elif body_col in have:
        subject, body = (subject_col if subject_col in have else None), body_col
    elif "text" in have:
        subject, body = None, "text"
    else:
        raise DataError(
            f"{source}: missing text column: need '{body_col}' (with optional '{subject_col}') or 'text', "
            f"or pass text_col; columns are: {shown}"
        )
    label = None
    if label_col is not None:
        label = next((name for name in (label_col, *_LABEL_FALLBACKS) if name in have), None)
        if label is None and require_labels:
            raise DataError(f"{source}: missing label column '{label_col}'; columns are: {shown}")
    return _Columns(
        subject=subject,
        body=body,
        label=label,
        email_id=next((name for name in _ID_COLUMNS if name in have), None),
        user_id="user_id" if "user_id" in have else None,
        ts="ts" if "ts" in have else None,
    )


def _table_records(
    rows: Iterable[tuple[str, int, Mapping[str, Any]]], columns: _Columns, stem: str, builder: _Builder
) -> Iterator[_Record]:
    """Records from (kind, number, row) triples; "<stem>-<number>" is the id when the table has none."""
    for kind, number, row in rows:
        position = f"{kind} {number}"
        body = row.get(columns.body)
        subject = row.get(columns.subject, "") if columns.subject else ""
        if subject is None:
            subject = ""
        if not isinstance(body, str) or not isinstance(subject, str):
            field, value = (columns.body, body) if not isinstance(body, str) else (columns.subject, subject)
            what = "missing" if value is None else f"not a string ({type(value).__name__})"
            builder.skip(position, f"field '{field}' is {what}")
            continue
        try:
            label = _label(row.get(columns.label)) if columns.label else None
        except TypeError as exc:
            builder.skip(position, f"field '{columns.label}' is {exc}")
            continue
        email_id = _cell(row.get(columns.email_id)) if columns.email_id else ""
        yield _Record(
            position=position,
            email_id=email_id or f"{stem}-{number}",
            user_id=_cell(row.get(columns.user_id)) if columns.user_id else "",
            ts=_cell(row.get(columns.ts)) if columns.ts else "",
            subject=subject,
            body=body,
            label=label,
        )


_BAD_LINE = re.compile(r"Skipping line (\d+): (.+)")


def _read_csv_frame(path: Path, builder: _Builder) -> pd.DataFrame:
    def read(encoding: str, errors: str) -> pd.DataFrame:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # dtype=str and no NA guessing: "NA" or "null" may be a real subject or label.
            frame = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                encoding=encoding,
                encoding_errors=errors,
                on_bad_lines="warn",
            )
        for warning in caught:
            for number, reason in _BAD_LINE.findall(str(warning.message)):
                builder.skip(f"line {number}", reason.strip())
        return frame

    try:
        try:
            return read("utf-8-sig", "strict")
        except UnicodeDecodeError:
            # Spreadsheet exports are often windows-1252; say so rather than refuse the file.
            logger.warning("%s is not UTF-8; reading it as windows-1252", path)
            return read("cp1252", "replace")
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty file (no rows)") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a readable CSV file: {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _read_csv(path: Path, builder: _Builder, pick: dict[str, Any], require_label: bool) -> None:
    frame = _read_csv_frame(path, builder)
    if frame.empty:
        raise DataError(f"{path}: empty file (no rows)")
    columns = _pick_columns(frame.columns, source=path, **pick)
    wanted = [name for name in dict.fromkeys(vars(columns).values()) if name]
    rows = (
        ("row", number, dict(zip(wanted, values, strict=True)))
        for number, values in enumerate(zip(*(frame[name].tolist() for name in wanted), strict=True), start=1)
    )
    for record in _table_records(rows, columns, path.stem, builder):
        builder.add(record, require_label)


def _json_objects(path: Path, builder: _Builder) -> list[tuple[str, int, dict[str, Any]]]:
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    entries: list[tuple[str, int, Any]] = []
    items = _whole_file_array(content)
    if items is not None:
        entries = [("item", number, item) for number, item in enumerate(items, start=1)]
    else:
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append(("line", number, json.loads(line)))
            except json.JSONDecodeError as exc:
                builder.skip(f"line {number}", f"invalid JSON: {exc.msg}")
    objects = []
    for kind, number, item in entries:
        if isinstance(item, dict):
            objects.append((kind, number, item))
        else:
            builder.skip(f"{kind} {number}", f"not a JSON object ({type(item).__name__})")
    return objects


def _whole_file_array(content: str) -> list[Any] | None:
    """The items of a file that is one JSON array (what many tools write as ".json"), else None."""
    if not content.lstrip().startswith("["):
        return None
    try:
        items = json.loads(content)
    except json.JSONDecodeError:
        return None  # JSON lines that happen to start with an array: each line gets its own verdict
    return items if isinstance(items, list) else None


def _read_jsonl(path: Path, builder: _Builder, pick: dict[str, Any], require_label: bool) -> None:
    objects = _json_objects(path, builder)
    if not objects:
        if builder.skipped:
            raise DataError(f"{path}: no readable records ({len(builder.skipped)} bad lines)")
        raise DataError(f"{path}: empty file (no rows)")
    # Columns are the union of keys in first-seen order: a key that early lines lack still counts.
    present = dict.fromkeys(key for _, _, item in objects for key in item)
    columns = _pick_columns(present, source=path, **pick)
    for record in _table_records(objects, columns, path.stem, builder):
        builder.add(record, require_label)


# --- messages: .eml folders and mbox ----------------------------------------------------------------------


def _message_record(position: str, raw: bytes, fallback_id: str, label: str | None) -> _Record:
    """Raises EmailParseError for a message that cannot be used."""
    parsed = parse_message(raw)
    headers = parsed.headers
    ts = headers.get("date", "")
    # An unparseable Date stays as written: still useful to a person.
    with contextlib.suppress(TypeError, ValueError):
        ts = parsedate_to_datetime(ts).isoformat() if ts else ""
    return _Record(
        position=position,
        email_id=headers.get("message-id", "").strip().strip("<>") or fallback_id,
        user_id=parseaddr(headers.get("from", ""))[1].lower(),
        ts=ts,
        subject=parsed.email.subject,
        body=parsed.email.body,
        label=label if label is not None else _label(headers.get(LABEL_HEADER)),
    )


def _read_eml(path: Path, builder: _Builder, require_label: bool) -> None:
    root = path if path.is_dir() else path.parent
    files = sorted(p for p in root.rglob("*.eml") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .eml files in this folder")
    for file in files:
        relative = file.relative_to(root)
        # Files in per-queue subfolders take the top folder's name as their label; loose files use the header.
        label = relative.parts[0] if len(relative.parts) > 1 else None
        position = relative.as_posix()
        try:
            raw = file.read_bytes()
            record = _message_record(position, raw, f"{root.name}/{relative.with_suffix('').as_posix()}", label)
        except OSError as exc:
            builder.skip(position, f"cannot read: {exc.strerror or exc}")
            continue
        except EmailParseError as exc:
            builder.skip(position, str(exc))
            continue
        builder.add(record, require_label)


# mbox writers escape body lines that start with "From " as ">From " (mboxrd adds one ">" per level);
# mailbox does not undo it, and clean_text would drop the line as a quote.
_MBOX_FROM_ESCAPE = re.compile(rb"^>(>*From )", re.MULTILINE)


def _read_mbox(path: Path, builder: _Builder, require_label: bool) -> None:
    try:
        box = mailbox.mbox(path, create=False)
        keys = box.keys()
    except (OSError, mailbox.Error) as exc:
        raise DataError(f"{path}: cannot read mbox: {exc}") from exc
    try:
        if not keys:
            raise DataError(f"{path}: no messages (an mbox starts each message with a 'From ' line)")
        for number, key in enumerate(keys, start=1):
            position = f"message {number}"
            try:
                raw = _MBOX_FROM_ESCAPE.sub(rb"\1", box.get_bytes(key))
                record = _message_record(position, raw, f"{path.stem}-{number}", None)
            except (OSError, EmailParseError) as exc:
                builder.skip(position, str(exc))
                continue
            builder.add(record, require_label)
    finally:
        box.close()


_TABLE_READERS = {".csv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_jsonl, ".ndjson": _read_jsonl}


# --- entry point ------------------------------------------------------------------------------------------


def read_dataset(
    path: str | Path,
    *,
    text_col: str | None = None,
    label_col: str | None = "label",
    subject_col: str = "subject",
    body_col: str = "body",
    require_labels: bool = True,
) -> LoadedData:
    """Read a CSV, JSONL/JSON, mbox file or a folder of .eml files into a `LoadedData`.

    `text_col` names a single text column (used as the body, with no subject); otherwise `subject_col` and
    `body_col` are used, with a lone `text` column as the fallback. `label_col=None` reads no labels. With
    `require_labels`, rows without a label are skipped (and none labelled is a `DataError`); training checks
    separately that there are at least two classes, since evaluation data may hold just one.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    builder = _Builder(path)
    pick = {
        "text_col": text_col,
        "label_col": label_col,
        "subject_col": subject_col,
        "body_col": body_col,
        "require_labels": require_labels,
    }
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".eml", ".mbox"):
        # Messages carry their label in a folder name or a header; `label_col` is for tables only.
        read_message = _read_eml if path.is_dir() or suffix == ".eml" else _read_mbox
        read_message(path, builder, require_labels)
        return _finish(builder, require_labels=require_labels)
    reader = _TABLE_READERS.get(suffix)
    if reader is None:
        raise DataError(
            f"{path}: unsupported file type '{suffix}': use .csv, .jsonl, .json, .mbox or .eml (or a folder)"
        )
    require_label = require_labels and label_col is not None
    reader(path, builder, pick, require_label)
    return _finish(builder, require_labels=require_label)


def _finish(builder: _Builder, *, require_labels: bool) -> LoadedData:
    source = builder.source
    skipped = tuple(builder.skipped)
    if len(skipped) > _WARN_EACH:
        logger.warning("%s: skipped %d records in all (first %d listed above)", source, len(skipped), _WARN_EACH)
    frame = pd.DataFrame(builder.columns, columns=COLUMNS)
    if frame.empty:
        first = f" (first: {skipped[0].position}: {skipped[0].reason})" if skipped else ""
        raise DataError(f"{source}: no usable rows: all {len(skipped)} records were skipped{first}")
    if require_labels and frame["label"].dropna().empty:
        raise DataError(f"{source}: no row has a label")
    logger.info("%s: read %d records, skipped %d", source, len(frame), len(skipped))
    return LoadedData(frame=frame, skipped=skipped, source=str(source))
