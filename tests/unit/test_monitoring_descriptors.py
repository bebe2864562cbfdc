"""Model-free descriptors on hand-made texts, and the vocabulary they compare with."""

from __future__ import annotations

import math

import pytest

from monitoring.descriptors import (
    build_vocabulary,
    descriptor_functions,
    descriptor_text,
    non_letter_share,
    oov_share,
    text_length,
    word_count,
)

pytestmark = pytest.mark.unit


def test_length_and_word_count() -> None:
    assert text_length("Refund please") == 13
    assert word_count("Refund please") == 2
    assert word_count("order #12345, invoice INV-2024-001") == 3  # digits are not words: order, invoice, INV
    assert word_count("") == 0 and text_length("") == 0


def test_non_letter_share_ignores_whitespace() -> None:
    assert non_letter_share("abc") == 0
    assert non_letter_share("a1 b2") == pytest.approx(0.5)
    assert non_letter_share("!!!") == 1
    assert non_letter_share("   \n ") == 0  # nothing visible: 0, never NaN
    assert non_letter_share("Grüße") == 0  # non-ASCII letters are letters


def test_oov_share_against_vocabulary() -> None:
    vocab = build_vocabulary(["My invoice is wrong", "refund my ORDER"])
    assert vocab == frozenset({"my", "invoice", "is", "wrong", "refund", "order"})
    assert oov_share("invoice wrong", vocab) == 0
    assert oov_share("Invoice for the ZX-900 thermostat", vocab) == pytest.approx(4 / 5)  # for, the, zx, thermostat
    assert oov_share("12345 !!!", vocab) == 0  # no words: 0, never NaN


def test_vocabulary_min_count() -> None:
    assert build_vocabulary(["a b b", "b c"], min_count=2) == frozenset({"b"})


def test_descriptor_functions_are_finite_on_odd_input() -> None:
    funcs = descriptor_functions(frozenset({"hello"}))
    assert set(funcs) == {"length", "word_count", "oov_share", "non_letter_share"}
    for text in ["", descriptor_text(None, None), "\x00\u200b", "<b>[EMAIL]</b>", "hello " * 1000]:
        for func in funcs.values():
            assert math.isfinite(func(text))
    assert descriptor_text("Subj", None) == "Subj\n"
