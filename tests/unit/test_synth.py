"""The synthetic corpus: deterministic, shaped like the brief (shares, columns), drifting on demand."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from training.synth import COLUMNS, DRIFT_TERMS, QUEUES, SynthError, generate, write_corpus
from training.synth.templates import ambiguous

pytestmark = pytest.mark.unit

_DRIFT_WORDS = re.compile("|".join(map(re.escape, DRIFT_TERMS)))


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return generate(3000, seed=11)


def _drift_share(frame: pd.DataFrame) -> float:
    return float((frame.subject + "\n" + frame.body).str.lower().str.contains(_DRIFT_WORDS).mean())


def _mix(frame: pd.DataFrame) -> pd.Series:
    return frame.queue.value_counts(normalize=True).reindex(list(QUEUES), fill_value=0.0)


def _tv(a: pd.DataFrame, b: pd.DataFrame) -> float:
    return float((_mix(a) - _mix(b)).abs().sum() / 2)


def test_same_seed_gives_identical_frames_and_files(tmp_path: Path) -> None:
    first, second = generate(400, seed=5, drift=0.3), generate(400, seed=5, drift=0.3)
    pd.testing.assert_frame_equal(first, second)
    write_corpus(first, tmp_path / "a.jsonl")
    write_corpus(second, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_different_seeds_give_different_emails() -> None:
    a, b = generate(200, seed=1), generate(200, seed=2)
    assert (a.body != b.body).mean() > 0.95
    assert set(a.email_id).isdisjoint(b.email_id)


def test_columns_types_and_values(corpus: pd.DataFrame) -> None:
    assert tuple(corpus.columns) == COLUMNS
    assert corpus.is_html.dtype == bool
    for column in ("email_id", "ts", "user_id", "subject", "body", "queue", "secondary_queue"):
        assert all(isinstance(value, str) for value in corpus[column]), column
    assert corpus.email_id.is_unique and corpus.email_id.iloc[7] == "syn-11-000007"
    assert corpus.queue.isin(QUEUES).all()
    assert corpus.secondary_queue.isin([*QUEUES, ""]).all()
    assert (corpus.secondary_queue != corpus.queue).all()
    assert corpus.body.str.len().min() > 0


def test_timestamps_are_utc_increasing_and_span_weeks(corpus: pd.DataFrame) -> None:
    assert corpus.ts.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    stamps = pd.to_datetime(corpus.ts, utc=True)
    assert stamps.is_monotonic_increasing and stamps.is_unique
    assert (stamps.iloc[-1] - stamps.iloc[0]).days >= 28


def test_senders_repeat_like_a_real_inbox(corpus: pd.DataFrame) -> None:
    per_user = corpus.user_id.value_counts()
    assert per_user.iloc[0] >= 10  # a few heavy senders
    assert (per_user == 1).mean() > 0.3  # most write once
    assert corpus.user_id.str.fullmatch(r"u\d{6}").all()


def test_class_mix_is_imbalanced(corpus: pd.DataFrame) -> None:
    mix = _mix(corpus)
    assert mix["technical"] > 0.2 and mix["billing"] > 0.17
    assert mix["sales"] < 0.1 and mix["cancellation"] < 0.12


def test_label_noise_flips_about_the_requested_share() -> None:
    clean, noisy = generate(2000, seed=3, label_noise=0.0), generate(2000, seed=3, label_noise=0.1)
    pd.testing.assert_frame_equal(
        clean.drop(columns=["queue", "secondary_queue"]), noisy.drop(columns=["queue", "secondary_queue"])
    )
    assert 0.08 <= (clean.queue != noisy.queue).mean() <= 0.12
    default = generate(2000, seed=3)
    assert 0.01 <= (clean.queue != default.queue).mean() <= 0.03


def test_html_share_and_form(corpus: pd.DataFrame) -> None:
    assert 0.07 <= corpus.is_html.mean() <= 0.13
    assert corpus.body[corpus.is_html].str.startswith("<html>").all()
    assert not corpus.body[~corpus.is_html].str.contains("<html", regex=False).any()


def test_mixed_and_ambiguous_mail(corpus: pd.DataFrame) -> None:
    assert 0.10 <= (corpus.secondary_queue != "").mean() <= 0.16
    # Vague emails: the same words carry different labels, so the corpus is not trivially separable.
    text = corpus.body.str.lower()
    labels_per_phrase = [
        corpus.queue[text.str.contains(phrase.lower(), regex=False)].nunique()
        for queues, phrase in ambiguous()
        if len(queues) > 1 and "{" not in phrase
    ]
    assert sum(n >= 2 for n in labels_per_phrase) >= 5


def test_realistic_mail_features(corpus: pd.DataFrame) -> None:
    plain = corpus.body[~corpus.is_html]
    assert 0.08 <= plain.str.contains(r"^On .+ wrote:$", flags=re.M).mean() <= 0.25
    assert plain.str.contains(r"^> ", flags=re.M).mean() > 0.08
    assert corpus.subject.str.startswith(("Re:", "RE:")).mean() > 0.08
    assert plain.str.contains("Forwarded message", regex=False).mean() > 0.02
    assert plain.str.contains(r"\+\d\d \d\d \d{7}").mean() > 0.05  # phone numbers in signatures
    assert plain.str.contains("confidential", case=False).mean() > 0.01
    lengths = corpus.body.str.len()
    assert lengths.quantile(0.05) < 80 and lengths.quantile(0.95) > 500
    opening = corpus.body[~corpus.is_html].str.split("\n\n").str[0]
    assert (opening.str.contains("[a-z]") & (opening == opening.str.lower())).mean() > 0.05  # lowercase writers
    assert corpus.body.str.contains(r"\b[A-Z]{4,} [A-Z]{4,}").mean() > 0.01  # SHOUTING


def test_typo_rate_adds_unknown_words() -> None:
    def words(frame: pd.DataFrame) -> pd.Series:
        return frame.body[~frame.is_html].str.lower().str.findall(r"[a-z]{4,}").explode().dropna()

    vocabulary = set(words(generate(2000, seed=21, typo_rate=0.0)))

    def unknown(rate: float) -> float:
        return float((~words(generate(600, seed=22, typo_rate=rate)).isin(vocabulary)).mean())

    assert unknown(0.2) > unknown(0.0) + 0.02


def test_drift_moves_the_distribution(corpus: pd.DataFrame) -> None:
    reference = generate(2000, seed=12)
    half, full = generate(2000, seed=13, drift=0.5), generate(2000, seed=14, drift=1.0)
    assert _drift_share(corpus) == 0.0 and _drift_share(reference) == 0.0
    assert 0.05 < _drift_share(half) < _drift_share(full)
    noise_floor = _tv(corpus, reference)
    assert noise_floor < _tv(corpus, half) < _tv(corpus, full)
    assert _tv(corpus, full) > 0.07
    assert _mix(full)["cancellation"] > _mix(corpus)["cancellation"] + 0.04
    depth = [f.body.str.count("wrote:").mean() for f in (corpus, half, full)]
    assert depth[0] < depth[1] < depth[2]  # longer quoted threads
    assert full.email_id.iloc[0] == "syn-14-d1-000000"


def test_queue_subset() -> None:
    frame = generate(300, seed=4, queues=("billing", "shipping", "cancellation"))
    assert set(frame.queue) <= {"billing", "shipping", "cancellation"}
    assert set(frame.secondary_queue) <= {"billing", "shipping", "cancellation", ""}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": -3},
        {"n": 2.5},
        {"n": 10, "drift": -0.1},
        {"n": 10, "drift": 1.5},
        {"n": 10, "label_noise": 0.6},
        {"n": 10, "label_noise": -0.01},
        {"n": 10, "typo_rate": 0.9},
        {"n": 10, "queues": ("billing", "refunds")},
        {"n": 10, "queues": ("billing",)},
        {"n": 10, "queues": ("billing", "billing")},
        {"n": 10, "queues": "billing"},
    ],
)
def test_bad_arguments_raise_one_line_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError) as info:
        generate(**kwargs)
    assert isinstance(info.value, SynthError)
    assert "\n" not in str(info.value) and str(info.value)


def test_write_corpus_round_trips_jsonl_and_csv(tmp_path: Path) -> None:
    frame = generate(150, seed=8, drift=0.4)
    jsonl = tmp_path / "deep" / "folder" / "corpus.jsonl"
    write_corpus(frame, jsonl)
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(frame)
    pd.testing.assert_frame_equal(pd.DataFrame([json.loads(line) for line in lines]), frame)

    csv = tmp_path / "other" / "corpus.csv"
    write_corpus(frame, csv)
    back = pd.read_csv(csv, dtype=str, keep_default_na=False)
    back["is_html"] = back.is_html.map({"True": True, "False": False})
    pd.testing.assert_frame_equal(back, frame)
    assert datetime.fromisoformat(back.ts.iloc[0]).tzinfo is not None


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.json", "corpus"])
def test_write_corpus_rejects_other_extensions(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"\.jsonl or \.csv"):
        write_corpus(generate(5), tmp_path / name)
    assert not (tmp_path / name).exists()
