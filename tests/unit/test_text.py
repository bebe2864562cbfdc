"""serving.text: golden cleaning examples (input -> exact output) and the model_text contract."""

from __future__ import annotations

import pytest

from serving.text import clean_text, model_text

pytestmark = pytest.mark.unit

GOLDEN = [
    pytest.param(
        "Hi,\nMy invoice is wrong.\n\nThanks,\nJohn",
        "Hi, My invoice is wrong.",
        id="thanks-name",
    ),
    pytest.param(
        "Hello,\nthe March invoice charges 30 seats.\n\nBest regards,\nAnna Schmidt\nHead of IT, Acme GmbH\n"
        "+49 30 1234567",
        "Hello, the March invoice charges 30 seats.",
        id="best-regards-block",
    ),
    pytest.param(
        "Thanks for the quick reply, but the refund has not arrived. Thanks again for checking!",
        "Thanks for the quick reply, but the refund has not arrived. Thanks again for checking!",
        id="thanks-inside-sentences-kept",
    ),
    pytest.param(
        "Hi team,\nthanks\nI still haven't received my refund.",
        "Hi team, thanks I still haven't received my refund.",
        id="thanks-line-above-the-request-kept",
    ),
    pytest.param(
        "My card was charged twice.\n\nOn Mon, Jan 8, 2024 at 10:03 AM Support <help@x.com> wrote:\n"
        "> We refunded you.\n> Regards",
        "My card was charged twice.",
        id="gmail-quote",
    ),
    pytest.param(
        "Still broken.\n\nOn Mon, Jan 8, 2024 at 10:03 AM Very Long Support Team Name <\nhelp@x.com> wrote:\n"
        "> Try again.",
        "Still broken.",
        id="gmail-quote-wrapped-attribution",
    ),
    pytest.param(
        "Please cancel.\n\n-----Original Message-----\nFrom: Shop\nSent: Monday\nTo: me\nSubject: order",
        "Please cancel.",
        id="original-message",
    ),
    pytest.param(
        "Please cancel.\n\n________________________________\nFrom: Shop <s@x>\nSent: Monday, 8 January 2024\n"
        "To: me\nSubject: order\n\nold text",
        "Please cancel.",
        id="outlook-header-block",
    ),
    pytest.param(
        "Still waiting. From: Shop <s@x.com> Sent: Monday, 8 January 2024 To: me Subject: order",
        "Still waiting.",
        id="outlook-header-flattened",
    ),
    pytest.param(
        "Yes, order 55 please.\n> Which order do you mean?\n> Order 55 or 56?\nAnd ship it fast.",
        "Yes, order 55 please. And ship it fast.",
        id="inline-quote-lines",
    ),
    pytest.param(
        "Where is my parcel?\n\nSent from my iPhone",
        "Where is my parcel?",
        id="sent-from-iphone",
    ),
    pytest.param(
        "Where is my parcel?\n-- \nJane Doe\nCEO, Example Ltd",
        "Where is my parcel?",
        id="dash-dash-signature",
    ),
    pytest.param(
        "The app crashes on login.\n\n"
        "CONFIDENTIALITY NOTICE: This email and any attachments are confidential.\nDo not forward.\n\n"
        "Version 5.2 on Android.",
        "The app crashes on login. Version 5.2 on Android.",
        id="confidentiality-notice-paragraph",
    ),
    pytest.param(
        "The app crashes.\n\nThis email and any attachments are confidential and intended solely for the "
        "addressee. If you are not the intended recipient, delete it.",
        "The app crashes.",
        id="this-email-is-confidential",
    ),
    pytest.param(
        "Refund please.\nThanks in advance!\nBest,\nJane",
        "Refund please.",
        id="two-sign-offs",
    ),
    pytest.param(
        "Refund please.\nThanks,\nJane\n\nP.S. I also need the March invoice.",
        "Refund please. Thanks, Jane P.S. I also need the March invoice.",
        id="postscript-keeps-everything",
    ),
    pytest.param(
        "Please help. On Mon, Jan 8, 2024 at 10:03 AM Jane <j@x.com> wrote: > earlier text",
        "Please help.",
        id="flattened-gmail-quote",
    ),
    pytest.param(
        "ｆｕｌｌ ｗｉｄｔｈ\u00a0text\u200b!\t\n\n  here\r\nﬁne",
        "full width text! here fine",
        id="nfkc-invisible-and-whitespace",
    ),
    pytest.param("> only a quote", "> only a quote", id="only-a-quote-is-kept"),
    pytest.param("Thank you", "Thank you", id="only-a-sign-off-is-kept"),
    pytest.param("Thanks,\nJohn", "Thanks, John", id="only-a-sign-off-and-name-is-kept"),
    pytest.param("", "", id="empty"),
]


@pytest.mark.parametrize(("raw", "expected"), GOLDEN)
def test_clean_text_golden(raw: str, expected: str) -> None:
    assert clean_text(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), GOLDEN)
def test_clean_text_is_idempotent(raw: str, expected: str) -> None:
    # Serving may see text that training already cleaned (feedback replays): cleaning twice changes nothing.
    assert clean_text(expected) == expected


@pytest.mark.parametrize(
    "sentence",
    [
        "On time delivery matters, the driver wrote: sorry.",
        "Best way to reach me is by phone.",
        "Regards to your team, but I need an answer on the refund.",
        "The sign -- as shown -- is wrong.",
        "The payment was\nsent from my card yesterday.",
        "Thank you\nfor the replacement, but it is broken too.",
    ],
)
def test_lookalikes_are_not_cut(sentence: str) -> None:
    assert clean_text(f"Hello,\n{sentence}\nOrder 12.") == " ".join(f"Hello, {sentence} Order 12.".split())


def test_model_text_joins_cleaned_subject_and_body() -> None:
    assert model_text("Re:  Refund", "Where is it?\n\nThanks,\nAnn") == "Re: Refund | Where is it?"


def test_model_text_with_one_part_empty() -> None:
    assert model_text("", "Where is it?") == "Where is it?"
    assert model_text("  ", "Where is it?") == "Where is it?"
    assert model_text("Refund", "") == "Refund"
    assert model_text("", "") == ""
