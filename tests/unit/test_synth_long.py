"""Long synthetic mail (`generate(..., length="long")`) and what cleaning must keep of it."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from serving.cli import main
from serving.mail.emails import from_fields
from serving.mail.text import model_text
from training.synth import COLUMNS, LONG_COLUMNS, QUEUES, SynthError, generate, write_corpus
from training.synth.long import CONTEXT

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return generate(1500, seed=31, length="long")


def _text(frame: pd.DataFrame) -> pd.Series:
    """Bodies as plain text (HTML converted, as the data readers do)."""
    return pd.Series([from_fields(s, b).body for s, b in zip(frame.subject, frame.body, strict=True)])


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def test_same_seed_gives_identical_frames_and_files(tmp_path: Path) -> None:
    first, second = generate(300, seed=5, drift=0.3, length="long"), generate(300, seed=5, drift=0.3, length="long")
    pd.testing.assert_frame_equal(first, second)
    write_corpus(first, tmp_path / "a.jsonl")
    write_corpus(second, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (generate(300, seed=6, length="long").body != first.body).mean() > 0.95


def test_short_mode_is_the_default_and_unchanged() -> None:
    short = generate(200, seed=5)
    pd.testing.assert_frame_equal(short, generate(200, seed=5, length="short"))
    assert tuple(short.columns) == COLUMNS
    assert short.body.str.len().median() < 400


def test_columns_and_values(corpus: pd.DataFrame) -> None:
    assert tuple(corpus.columns) == LONG_COLUMNS == (*COLUMNS, "key_sentence")
    assert corpus.email_id.is_unique and corpus.email_id.iloc[3] == "synlong-31-000003"
    assert corpus.queue.isin(QUEUES).all()
    assert (corpus.secondary_queue != corpus.queue).all()
    assert corpus.key_sentence.str.len().min() > 0
    assert 0.07 <= corpus.is_html.mean() <= 0.13


def test_length_distribution(corpus: pd.DataFrame) -> None:
    lengths = _text(corpus).str.len()
    assert 900 <= lengths.median() <= 1300
    assert lengths.quantile(0.1) >= 500 and lengths.quantile(0.9) <= 2500
    assert lengths.min() > 250


def test_key_sentence_is_in_the_body_and_not_always_first(corpus: pd.DataFrame) -> None:
    plain = corpus[~corpus.is_html]
    assert all(key in body for key, body in zip(plain.key_sentence, plain.body, strict=True))
    offsets = pd.Series(
        [_norm(body).find(_norm(key)) for key, body in zip(corpus.key_sentence, _text(corpus), strict=True)]
    )
    assert (offsets >= 0).all()
    assert (offsets > 300).mean() >= 0.3
    assert (offsets < 150).mean() >= 0.1  # and sometimes it is


def test_context_borrows_other_queues_vocabulary(corpus: pd.DataFrame) -> None:
    assert sum(len(v) for v in CONTEXT.values()) >= 40 and set(CONTEXT) == set(QUEUES)
    technical = corpus[corpus.queue == "technical"].body.str.lower()
    assert technical.str.contains("invoice|order|delivery|plan").mean() > 0.5
    billing = corpus[corpus.queue == "billing"].body.str.lower()
    assert billing.str.contains("app|device|firmware").mean() > 0.5


def test_secondary_queues_threads_and_forwards(corpus: pd.DataFrame) -> None:
    assert 0.12 <= (corpus.secondary_queue != "").mean() <= 0.3
    plain = corpus.body[~corpus.is_html]
    assert plain.str.contains(r"^On .+ wrote:$", flags=re.M).mean() > 0.25
    assert plain.str.contains("Forwarded message", regex=False).mean() > 0.03
    outlook = plain.str.contains("-----Original Message-----", regex=False) | plain.str.contains(r"^Sent: ", flags=re.M)
    assert outlook.mean() > 0.03
    assert corpus.subject.str.match(r"FW: |Fw: |Fwd: ").mean() > 0.08
    assert corpus.subject.str.match(r"R[Ee]: ").mean() > 0.2


def test_cleaning_keeps_the_key_sentence() -> None:
    # Plain and HTML, every kind of tail: quoted threads, forwarded notifications and Outlook forwards whose
    # forwarded part holds the request, signatures and disclaimers above them.
    frame = pd.concat([generate(300, seed=41, length="long"), generate(300, seed=42, drift=1.0, length="long")])
    assert frame.is_html.sum() >= 30 and frame.subject.str.startswith("FW: ").sum() >= 10
    missing = []
    for subject, body, key in zip(frame.subject, frame.body, frame.key_sentence, strict=True):
        email = from_fields(subject, body)
        if _norm(key) not in model_text(email.subject, email.body):
            missing.append(subject)
    assert not missing


def test_cleaning_drops_the_quoted_thread(corpus: pd.DataFrame) -> None:
    threaded = corpus[corpus.body.str.contains("Brightnest Support <support@brightnest.com> wrote:", regex=False)]
    assert len(threaded) > 100
    emails = [from_fields(s, b) for s, b in zip(threaded.subject, threaded.body, strict=True)]
    assert not any("wrote:" in model_text(e.subject, e.body) for e in emails)


@pytest.mark.parametrize("length", ["medium", "LONG", "", None, 3])
def test_bad_length_raises_one_line_synth_error(length: object) -> None:
    with pytest.raises(SynthError) as info:
        generate(10, length=length)  # type: ignore[arg-type]
    assert "\n" not in str(info.value) and "length" in str(info.value)


def test_cli_long_writes_key_sentences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "long.jsonl"
    assert main(["data", "synth", "--n", "40", "--seed", "3", "--long", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 40 and report["length"] == "long"
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 40 and all(row["key_sentence"] for row in rows)
    assert rows == generate(40, seed=3, length="long").to_dict(orient="records")
