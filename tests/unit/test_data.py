"""training.data: every reader, skipped-record reporting, and every DataError case."""

from __future__ import annotations

import json
import logging
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from training.data import COLUMNS, DataError, LoadedData, Skipped, read_dataset

FIXTURES = Path(__file__).parents[1] / "fixtures" / "emails"
SHARED = Path(__file__).parents[3] / "shared" / "data"
BANKING77 = SHARED / "banking77" / "train.csv"
BITEXT = SHARED / "bitext_customer_service" / "train.csv"

unit = pytest.mark.unit


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def jsonl(path: Path, *rows: object) -> Path:
    return write(path, "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


# --- CSV ----------------------------------------------------------------------------------------------------


@unit
def test_csv_with_subject_body_label_and_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mail.csv",
        "email_id,user_id,ts,subject,body,label\n"
        'e1,u1,2024-01-08T10:00:00,Invoice,"Wrong amount, ""again"".\n\nThanks,\nAnn",billing\n'
        "e2,u2,2024-01-09T11:00:00,Crash,<p>The app <b>crashes</b></p>,technical\n",
    )
    data = read_dataset(path)
    assert isinstance(data, LoadedData)
    assert list(data.frame.columns) == COLUMNS
    assert data.source == str(path)
    assert data.skipped == ()
    assert data.frame.to_dict("records") == [
        {
            "email_id": "e1",
            "user_id": "u1",
            "ts": "2024-01-08T10:00:00",
            "subject": "Invoice",
            "body": 'Wrong amount, "again".\n\nThanks,\nAnn',
            "text": 'Invoice | Wrong amount, "again".',
            "label": "billing",
        },
        {
            "email_id": "e2",
            "user_id": "u2",
            "ts": "2024-01-09T11:00:00",
            "subject": "Crash",
            "body": "The app crashes",  # HTML converted by from_fields
            "text": "Crash | The app crashes",
            "label": "technical",
        },
    ]


@unit
def test_csv_text_column_queue_label_and_generated_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "tickets.csv", "text,queue\nmy card is blocked,account\nrefund me,billing\n")
    frame = read_dataset(path).frame
    assert frame["text"].tolist() == ["my card is blocked", "refund me"]
    assert frame["subject"].tolist() == ["", ""]
    assert frame["label"].tolist() == ["account", "billing"]  # "queue" accepted when "label" is absent
    assert frame["email_id"].tolist() == ["tickets-1", "tickets-2"]
    assert frame["user_id"].tolist() == ["", ""]
    assert frame["ts"].tolist() == ["", ""]


@unit
def test_csv_configurable_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", "Title,Message,Team,text\nHi,Parcel late,shipping,ignored\nYo,App down,tech,x\n")
    frame = read_dataset(path, subject_col="Title", body_col="Message", label_col="Team").frame
    assert frame["text"].tolist() == ["Hi | Parcel late", "Yo | App down"]
    assert frame["label"].tolist() == ["shipping", "tech"]
    only_text = read_dataset(path, text_col="Message", label_col="Team").frame
    assert only_text["text"].tolist() == ["Parcel late", "App down"]


@unit
def test_csv_bad_rows_are_skipped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(
        tmp_path / "mixed.csv",
        "subject,body,label\n"
        "a,refund please,billing\n"
        "b,too,many,fields,here\n"  # file line 3
        "c,,billing\n"  # empty text: subject alone still makes text, so this row is kept
        ',"  \n",technical\n'  # nothing left after cleaning (one row over file lines 5-6)
        "d,no label here,\n"
        "e,app crashes,technical\n",
    )
    with caplog.at_level(logging.WARNING, logger="training.data"):
        data = read_dataset(path)
    assert data.frame["text"].tolist() == ["a | refund please", "c", "e | app crashes"]
    assert data.skipped == (
        Skipped("line 3", "expected 3 fields, saw 5"),
        Skipped("row 3", "empty text after cleaning"),
        Skipped("row 4", "no label"),
    )
    logged = [record.getMessage() for record in caplog.records]
    assert any("line 3" in line and "expected 3 fields" in line for line in logged)
    assert any("row 3: empty text after cleaning" in line for line in logged)


@unit
def test_csv_windows_1252_is_read_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "excel.csv", "body,label\nCafé bill €5,billing\nApp down,technical\n", "cp1252")
    with caplog.at_level(logging.WARNING, logger="training.data"):
        frame = read_dataset(path).frame
    assert frame["text"].tolist() == ["Café bill €5", "App down"]
    assert "not UTF-8" in caplog.text


@unit
def test_unlabelled_file_when_labels_are_not_required(tmp_path: Path) -> None:
    path = write(tmp_path / "new.csv", "body\nwhere is my parcel\napp crashes\n")
    for label_col in ("label", None):
        frame = read_dataset(path, label_col=label_col, require_labels=False).frame
        assert frame["label"].isna().all()
        assert len(frame) == 2
    partly = write(tmp_path / "partly.csv", "body,label\nwhere is my parcel,shipping\napp crashes,\n")
    assert read_dataset(partly, require_labels=False).frame["label"].tolist() == ["shipping", None]


# --- JSONL / JSON -------------------------------------------------------------------------------------------


@unit
def test_jsonl_with_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = jsonl(
        tmp_path / "mail.jsonl",
        {"id": "a1", "subject": "Refund", "body": "Order 5 broke", "label": "billing"},
        "{not json",
        "",  # blank lines are not records
        '["a", "list"]',
        {"subject": "x", "body": 42, "label": "billing"},
        {"subject": "x", "body": None, "label": "billing"},
        {"subject": None, "body": "App down", "label": 3},  # integer labels become strings
        {"subject": "x", "body": "y", "label": ["a"]},
    )
    with caplog.at_level(logging.WARNING, logger="training.data"):
        data = read_dataset(path)
    assert data.frame["text"].tolist() == ["Refund | Order 5 broke", "App down"]
    assert data.frame["label"].tolist() == ["billing", "3"]
    assert data.frame["email_id"].tolist() == [
        "a1",
        "mail-7",
    ]  # ids from line numbers: stable whatever is skipped
    assert data.skipped == (
        Skipped("line 2", "invalid JSON: Expecting property name enclosed in double quotes"),
        Skipped("line 4", "not a JSON object (list)"),
        Skipped("line 5", "field 'body' is not a string (int)"),
        Skipped("line 6", "field 'body' is missing"),
        Skipped("line 8", "field 'label' is not a string (list)"),
    )
    assert caplog.text.count("skipped line") == 5


@unit
def test_json_array_and_text_col(tmp_path: Path) -> None:
    path = write(
        tmp_path / "export.json",
        json.dumps([{"text": "card blocked", "label": "account"}, {"text": "refund", "label": "billing"}, 7]),
    )
    data = read_dataset(path, text_col="text")
    assert data.frame["text"].tolist() == ["card blocked", "refund"]
    assert data.skipped == (Skipped("item 3", "not a JSON object (int)"),)


@unit
def test_jsonl_lines_that_are_arrays_are_skipped_one_by_one(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "odd.jsonl", ["a"], {"body": "x", "label": "a"}, {"body": "y", "label": "b"})
    data = read_dataset(path)
    assert data.frame["text"].tolist() == ["x", "y"]
    assert data.skipped == (Skipped("line 1", "not a JSON object (list)"),)


@unit
def test_jsonl_every_line_bad(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no readable records"):
        read_dataset(jsonl(tmp_path / "bad.jsonl", "{", "nope"))


# --- .eml folders and mbox ----------------------------------------------------------------------------------


@unit
def test_eml_folder_labels_from_subfolders() -> None:
    data = read_dataset(FIXTURES / "by_queue")
    frame = data.frame.set_index("email_id")
    assert data.skipped == ()
    assert frame["label"].to_dict() == {
        "q-2@mailroute.example": "billing",  # the folder wins over its X-Mailroute-Queue: technical
        "q-1@mailroute.example": "billing",
        "q-4@mailroute.example": "shipping",
        "q-3@mailroute.example": "technical",
    }
    assert frame.loc["q-1@mailroute.example", "text"] == "Wrong invoice | Invoice 77 lists a plan we never ordered."
    assert frame.loc["q-4@mailroute.example", "text"] == "Late parcel | Parcel 88-1 is a week late."
    assert frame.loc["q-1@mailroute.example", "user_id"] == "a@example.com"


@unit
def test_eml_folder_labels_from_header() -> None:
    data = read_dataset(FIXTURES / "mime")
    frame = data.frame.set_index("email_id")
    assert len(frame) == 11 and data.skipped == ()
    row = frame.loc["latin1-1@mailroute.example"]
    assert row["label"] == "billing"
    assert row["user_id"] == "jose@example.es"
    assert row["ts"] == "2024-01-12T17:45:00+01:00"
    assert frame.loc["subj-1@mailroute.example", "user_id"] == "renee@example.fr"
    assert frame.loc["nested-1@mailroute.example", "text"] == (
        "Re: API returns 500 | Hi, the API returns HTTP 500 for every POST /orders since this morning."
    )
    assert sorted(frame["label"].unique()) == [
        "account", "billing", "cancellation", "general", "sales", "shipping", "technical",
    ]  # fmt: skip


@unit
def test_eml_folder_skips_broken_and_unlabelled_files(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    shutil.copytree(FIXTURES / "by_queue", root)
    (root / "billing" / "empty.eml").write_bytes(b"")
    (root / "loose.eml").write_text("Subject: no queue header\n\nhello\n")
    (root / "binary.eml").write_bytes(b"\x00\x01\x02PK")
    data = read_dataset(root)
    assert len(data.frame) == 4
    assert data.skipped == (
        Skipped("billing/empty.eml", "empty message: no headers and no body"),
        Skipped("binary.eml", "not an email message: the input is binary data"),
        Skipped("loose.eml", "no label"),
    )
    unlabelled = read_dataset(root, require_labels=False).frame.set_index("email_id")
    assert pd.isna(unlabelled.loc["inbox/loose", "label"])  # no Message-ID: the id is the file's path


@unit
def test_single_eml_file_without_labels() -> None:
    frame = read_dataset(FIXTURES / "mime" / "base64.eml", require_labels=False).frame
    assert frame["label"].tolist() == ["account"]
    assert frame["subject"].tolist() == ["Locked out"]


@unit
def test_mbox(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.data"):
        data = read_dataset(FIXTURES / "inbox.mbox")
    assert data.frame["label"].tolist() == ["billing", "shipping", "technical", "account"]
    assert data.frame["email_id"].tolist() == [f"mbox-{n}@mailroute.example" for n in (1, 2, 3, 4)]
    # ">From " is mbox escaping, not a quoted line: the sentence is kept
    assert data.frame["text"].iloc[0] == (
        "Refund for order 12 | Please refund order 12, it arrived broken. From the photos you can see the damage."
    )
    assert data.frame["ts"].iloc[1] == "2024-01-22T10:02:00+00:00"
    assert data.skipped == (
        Skipped("message 3", "empty message: no headers and no body"),
        Skipped("message 6", "no label"),
    )
    assert "message 6: no label" in caplog.text


@unit
def test_mbox_without_messages(tmp_path: Path) -> None:
    for content in ("", "just text, not an mbox\n"):
        with pytest.raises(DataError, match="no messages"):
            read_dataset(write(tmp_path / "box.mbox", content))


# --- DataError ----------------------------------------------------------------------------------------------


@unit
@pytest.mark.parametrize(
    ("name", "content", "kwargs", "message"),
    [
        ("empty.csv", "", {}, "empty file"),
        ("header.csv", "body,label\n", {}, "empty file"),
        ("empty.jsonl", "\n\n", {}, "empty file"),
        (
            "cols.csv",
            "message,queue\nx,billing\n",
            {},
            "missing text column.*columns are: 'message', 'queue'",
        ),
        (
            "cols2.csv",
            "body,queue\nx,billing\n",
            {"text_col": "utterance"},
            "missing text column 'utterance'",
        ),
        (
            "nolabel.csv",
            "body,team\nx,billing\n",
            {},
            "missing label column 'label'; columns are: 'body', 'team'",
        ),
        ("unlabelled.csv", "body,label\nx,\ny,\n", {}, "no usable rows"),
        ("blank.csv", "body,label\n   ,billing\n", {}, "no usable rows: all 1 records were skipped"),
        ("data.xlsx", "whatever", {}, "unsupported file type '.xlsx'"),
    ],
)
def test_data_errors(tmp_path: Path, name: str, content: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        read_dataset(write(tmp_path / name, content), **kwargs)
    assert "\n" not in str(info.value)


@unit
def test_missing_path_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        read_dataset(tmp_path / "nope.csv")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not UTF-8"):
        read_dataset(tmp_path / "binary.jsonl")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"no \.eml files"):
        read_dataset(tmp_path / "empty_dir")
    # One class is fine for reading (evaluation data may hold one queue); training refuses it (tests/test_cli.py).
    one = read_dataset(write(tmp_path / "one.csv", "body,label\nx,billing\ny,billing\n"))
    assert one.frame["label"].tolist() == ["billing", "billing"]


# --- the shared public data sets ----------------------------------------------------------------------------


def assert_nothing_cut(frame: pd.DataFrame) -> None:
    # Single-sentence requests have no quotes or signatures: cleaning may only normalise, never cut.
    normalised = frame["body"].map(lambda body: " ".join(unicodedata.normalize("NFKC", body).split()))
    assert (frame["text"] == normalised).all()


@pytest.mark.data
@pytest.mark.skipif(not BANKING77.exists(), reason="../shared/data/banking77 is not present")
def test_banking77_train() -> None:
    data = read_dataset(BANKING77, text_col="text", label_col="queue")
    assert len(data.frame) == 10_003 and data.skipped == ()
    assert data.frame["label"].nunique() == 7
    assert data.frame["email_id"].iloc[0] == "banking77-train-00001"
    assert_nothing_cut(data.frame)
    assert read_dataset(BANKING77).frame["label"].nunique() == 77  # default: the fine-grained label column


@pytest.mark.data
@pytest.mark.skipif(not BITEXT.exists(), reason="../shared/data/bitext_customer_service is not present")
def test_bitext_train() -> None:
    data = read_dataset(BITEXT, label_col="queue")
    assert len(data.frame) == 6_480 and data.skipped == ()
    assert data.frame["label"].nunique() == 7
    assert_nothing_cut(data.frame)
