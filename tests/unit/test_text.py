"""serving.mail.text: golden cleaning examples (input -> exact output) and the model_text contract."""

from __future__ import annotations

import pytest

from serving.mail.text import clean_text, model_text

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


# ---- forwarded messages: the forwarded content is the request; only the forward's header lines go ----------
_GMAIL_FORWARD = (
    "fyi, see below.\n\n---------- Forwarded message ---------\nFrom: Brightnest <no-reply@brightnest.com>\n"
    "Date: Mon, 3 Mar 2025 at 10:00\nSubject: Payment failed\nTo: <anna@example.com>\n\n"
    "Your payment of €9.99 could not be processed."
)
_OUTLOOK_FORWARD = (
    "Hi,\nsee below, can you help?\n\nThanks,\nAnna\n\n-----Original Message-----\n"
    "From: Tom Keller <tom@acme.example>\n"
    "Sent: Monday, 3 March 2025 10:14\nTo: Anna Smith <anna@acme.example>\nCc: Finance <fin@acme.example>\n"
    "Subject: invoice INV-2025-12345\n\nThe invoice INV-2025-12345 is missing our VAT number.\n\nBest,\nTom"
)

FORWARDS = [
    pytest.param(_GMAIL_FORWARD, False, "fyi, see below. Payment failed Your payment of €9.99 could not be processed.",
                 id="gmail-forward"),
    pytest.param(
        "Please check.\n\nBegin forwarded message:\n\nFrom: Shop <s@x.com>\nSubject: Your order has shipped\n"
        "Date: 3 March 2025 at 10:00:00 CET\nTo: me@x.com\n\nOrder 55 was dispatched.",
        False,
        "Please check. Your order has shipped Order 55 was dispatched.",
        id="apple-forward",
    ),
    pytest.param(
        _OUTLOOK_FORWARD,
        True,
        "Hi, see below, can you help? invoice INV-2025-12345 The invoice INV-2025-12345 is missing our VAT number.",
        id="outlook-original-message-forward",
    ),
    pytest.param(
        "See below.\n\n________________________________\nFrom: Tom <t@x.com>\nSent: Monday, 8 January 2024\n"
        "To: me\nSubject: order 55\n\nOrder 55 never arrived.",
        True,
        "See below. order 55 Order 55 never arrived.",
        id="outlook-rule-forward",
    ),
    pytest.param(
        "See below.\n\nFrom: Tom <t@x.com>\nSent: Monday, 8 January 2024\nTo: me\nSubject: order 55\n\n"
        "Order 55 never arrived.",
        True,
        "See below. order 55 Order 55 never arrived.",
        id="outlook-header-block-forward",
    ),
    pytest.param(
        "See below. From: Tom <t@x.com> Sent: Monday, 8 January 2024 To: me Subject: order 55 Order 55 never arrived.",
        True,
        "See below. order 55 Order 55 never arrived.",
        id="outlook-flattened-forward",
    ),
    pytest.param(
        "fyi\n\n---------- Forwarded message ---------\nFrom: Tom <t@x.com>\nDate: Mon, 3 Mar 2025 at 10:00\n"
        "Subject: Refund\nTo: me\n\nPlease refund order 55.\n\nOn Mon, 3 Mar 2025 at 09:00, Support <s@x.com> wrote:\n"
        "> Which order?\n> Regards",
        False,
        "fyi Refund Please refund order 55.",
        id="forward-containing-a-quoted-reply",
    ),
    pytest.param(
        "Please check.\n\nBest regards,\nJane Doe\n--\nJane Doe\nCFO | Acme GmbH\n\n"
        "---------- Forwarded message ---------\nFrom: Brightnest <no-reply@brightnest.com>\n"
        "Date: Mon, 3 Mar 2025 at 10:00\nSubject: Device offline\nTo: <jane@acme.example>\n\n"
        "Alert: your Cam Mini has been offline for more than 24 hours.",
        False,
        "Please check. Device offline Alert: your Cam Mini has been offline for more than 24 hours.",
        id="signature-above-a-forward",
    ),
    pytest.param(
        "Why did I get this?\n\nSent from my iPhone\n\n---------- Forwarded message ---------\n"
        "From: Brightnest <no-reply@brightnest.com>\nDate: Mon, 3 Mar 2025 at 10:00\nSubject: Your trial ends\n"
        "To: <a@b.com>\n\nYour free Plus trial ends soon.",
        False,
        "Why did I get this? Your trial ends Your free Plus trial ends soon.",
        id="mobile-footer-above-a-forward",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "forwarded", "expected"), FORWARDS)
def test_forwarded_content_is_kept_without_its_header(raw: str, forwarded: bool, expected: str) -> None:
    assert clean_text(raw, forwarded=forwarded) == expected
    assert clean_text(expected, forwarded=forwarded) == expected


@pytest.mark.parametrize("prefix", ["Fwd:", "FW:", "Fw:", "fwd:", "FWD:"])
def test_model_text_treats_an_outlook_block_under_a_forward_subject_as_a_forward(prefix: str) -> None:
    text = model_text(f"{prefix} invoice INV-2025-12345", _OUTLOOK_FORWARD)
    assert "missing our VAT number" in text
    assert "Sent:" not in text and "tom@acme.example" not in text


@pytest.mark.parametrize("subject", ["Re: invoice INV-2025-12345", "RE: invoice", "invoice", "", "Forward planning"])
def test_model_text_still_cuts_an_outlook_reply(subject: str) -> None:
    text = model_text(subject, _OUTLOOK_FORWARD)
    assert text.endswith("see below, can you help?")


def test_quoted_replies_are_still_cut_under_a_forward_subject() -> None:
    body = "I still have no refund.\n\nOn Mon, 3 Mar 2025 at 09:00, Support <s@x.com> wrote:\n> Refunds take 5 days."
    assert model_text("Fwd: refund", body) == "Fwd: refund | I still have no refund."
    assert clean_text("Yes.\n> old line\nNo.", forwarded=True) == "Yes. No."


def test_many_forward_markers_clean_in_linear_time() -> None:
    """A hostile body of thousands of forward markers: cleaning stays fast (it once grew with the square)."""
    import time

    block = "---------- Forwarded message ---------\nFrom: a <a@b.example>\nSubject: hi\n\nsome text here\n"
    body = "Please look at these.\n\n" + block * 3000  # about 250 KB
    start = time.process_time()
    text = clean_text(body)
    assert time.process_time() - start < 3.0
    assert text.startswith("Please look at these.") and "some text here" in text
