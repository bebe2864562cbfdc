"""Golden cases for text redaction: what is masked, and what must survive (dates, order numbers, times)."""

from __future__ import annotations

import pytest

from serving.store.redact import TextPolicyError, apply_policy, redact

GOLDEN = [
    # email addresses
    ("Mail me at john.doe+test@example.co.uk please", "Mail me at [EMAIL] please"),
    ("From: Jörg Müller <jörg.mueller@firma-gmbh.de>", "From: Jörg Müller <[EMAIL]>"),
    ("ops@mail123.example.com wrote", "[EMAIL] wrote"),
    # phone numbers
    ("Call +49 (0)30 1234567 today", "Call [PHONE] today"),
    ("Call (555) 123-4567 or 555.123.4567", "Call [PHONE] or [PHONE]"),
    ("my number (030 1234567) thanks", "my number ([PHONE]) thanks"),
    ("reach me: +1-202-555-0143.", "reach me: [PHONE]."),
    ("mobile 01712345678", "mobile [PHONE]"),
    ("Tel.: 0044 20 7946 0958", "Tel.: [PHONE]"),
    # card numbers (Luhn-valid only)
    ("Card 4111 1111 1111 1111 exp 12/26", "Card [CARD] exp 12/26"),
    ("Card 4111-1111-1111-1111", "Card [CARD]"),
    ("Amex 3782 822463 10005 charged twice", "Amex [CARD] charged twice"),
    ("card no 5500005555555559.", "card no [CARD]."),
    # IBANs, spaced and in one run
    ("IBAN DE89 3704 0044 0532 0130 00 thanks", "IBAN [IBAN] thanks"),
    ("IBAN GB82WEST12345698765432.", "IBAN [IBAN]."),
    ("NO93 8601 1117 947", "[IBAN]"),
    # several kinds in one text, across lines
    (
        "Hi,\nplease refund to DE89370400440532013000.\nJane (jane@example.org, +44 20 7946 0958)",
        "Hi,\nplease refund to [IBAN].\nJane ([EMAIL], [PHONE])",
    ),
    # must survive untouched: these carry routing signal and no personal data
    ("order 12345678 and 100200300", "order 12345678 and 100200300"),
    ("On 2024-01-15 10:30, John wrote:", "On 2024-01-15 10:30, John wrote:"),
    ("Date 15.01.2024 and 15/01/2024", "Date 15.01.2024 and 15/01/2024"),
    ("Invoice INV-2024-001234 ref", "Invoice INV-2024-001234 ref"),
    ("Tracking 1234 5678 9012 3456", "Tracking 1234 5678 9012 3456"),
    ("Version 2.3.15, ticket #4521, 10:30am", "Version 2.3.15, ticket #4521, 10:30am"),
    ("I was charged 49.99 EUR twice", "I was charged 49.99 EUR twice"),
    ("", ""),
    # a known limit, pinned so a change is noticed: two numbers glued by one space read as one long run
    ("Numbers 030 1234567 030 7654321", "Numbers 030 1234567 030 7654321"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("text", "expected"), GOLDEN)
def test_redact_golden(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.unit
def test_redact_is_idempotent() -> None:
    for text, expected in GOLDEN:
        assert redact(expected) == expected, text


@pytest.mark.unit
def test_apply_policy() -> None:
    text = "Write to a@b.com"
    assert apply_policy(text, "full") == text
    assert apply_policy(text, "redacted") == "Write to [EMAIL]"
    assert apply_policy(text, "none") is None
    assert apply_policy(None, "full") is None


@pytest.mark.unit
def test_apply_policy_rejects_unknown_policy() -> None:
    with pytest.raises(TextPolicyError, match="text policy must be one of full, redacted, none; got 'mask'"):
        apply_policy("x", "mask")  # type: ignore[arg-type]
    assert issubclass(TextPolicyError, ValueError)
