"""Mask personal data in email text before it is stored in the event log.

The event log keeps the subject and body of every routed email so that retraining and drift monitoring can
read them. `configs/serving.yaml` chooses how much of that text is kept (`TextPolicy`): all of it, a
redacted copy in which email addresses, phone numbers, card numbers and IBANs are replaced by placeholders,
or nothing.

The patterns are heuristics tuned to err towards masking: a false mask costs one token of context, a missed
one stores personal data. Known limits (pinned by the golden tests): a card number is only recognised when
it passes the Luhn check (other long digit runs are usually order or tracking numbers); two phone numbers
separated by a single space read as one run of over 15 digits and are left alone; dates, times and digit
runs glued to letters or dashes (`INV-2024-001234`) are never taken for phone numbers.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

TextPolicy = Literal["full", "redacted", "none"]
TEXT_POLICIES: tuple[str, ...] = get_args(TextPolicy)

EMAIL_MASK = "[EMAIL]"
PHONE_MASK = "[PHONE]"
CARD_MASK = "[CARD]"
IBAN_MASK = "[IBAN]"

_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Country code, check digits, then the account part printed in groups of four or in one run.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b")
# 13-19 digits, single spaces or dashes allowed between them.
_CARD = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])")
# A run of digits, spaces, dots, dashes, slashes and parentheses that starts and ends with a digit; `_phone`
# decides. The look-arounds keep times (10:30), invoice ids (INV-2024-1) and words with digits out.
_PHONE = re.compile(r"(?<![\w+:./-])(?:\+|\()?\d[\d .()/-]{4,}\d(?![\w:/-])")
_DATE = re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}")


class TextPolicyError(ValueError):
    """An unknown text policy name; the message is one line meant for a person."""


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban(match: re.Match[str]) -> str:
    size = sum(ch.isalnum() for ch in match.group())
    return IBAN_MASK if 15 <= size <= 34 else match.group()


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return CARD_MASK if _luhn_ok(digits) else match.group()


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    if text.startswith("(") and ")" not in text:  # the parenthesis opens a remark, not an area code
        return "(" + _phone_or_keep(text[1:])
    return _phone_or_keep(text)


def _phone_or_keep(text: str) -> str:
    digits = re.sub(r"\D", "", text)
    if not 7 <= len(digits) <= 15 or _DATE.fullmatch(text):
        return text
    if text.startswith(("+", "(", "00")) or len(digits) != len(text):
        return PHONE_MASK
    # A bare run of digits is an order or customer number unless it reads like a national number (0171...).
    return PHONE_MASK if text.startswith("0") and len(digits) >= 9 else text


def redact(text: str) -> str:
    """Replace email addresses, IBANs, Luhn-valid card numbers and phone numbers by placeholders."""
    # Order matters: an address may hold digits; an IBAN holds runs that look like card or phone numbers.
    text = _EMAIL.sub(EMAIL_MASK, text)
    text = _IBAN.sub(_iban, text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub(_phone, text)


def apply_policy(text: str | None, policy: TextPolicy) -> str | None:
    """The form of `text` the event log may keep under `policy`: all of it, a redacted copy, or nothing."""
    if policy not in TEXT_POLICIES:
        raise TextPolicyError(f"text policy must be one of {', '.join(TEXT_POLICIES)}; got '{policy}'")
    if text is None or policy == "none":
        return None
    return text if policy == "full" else redact(text)
