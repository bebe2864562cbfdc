"""Templates for the synthetic support-email corpus (`training.synth`): requests, vague emails, slot values.

`intents()` parses the request bank in `training.synth.intents` once, lazily; `ambiguous()` gives the vague
emails that fit several queues; `filler()` fills `{slot}` placeholders with order numbers, amounts, dates,
products, error codes and carriers. Drifted mail draws some products, error messages and the courier
from `_DRIFT_VALUES`, which drift-0 mail never uses; every drift-only word is listed in `DRIFT_TERMS`, so
that tests and monitoring can look for new vocabulary.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from training.synth.intents import INTENTS

# Lower-case substrings that only drifted mail contains (new products, a new courier, new error codes).
DRIFT_TERMS: tuple[str, ...] = (
    "nimbus",
    "quasar",
    "passkey",
    "zoomex",
    "autopilot",
    "token_rotation_failed",
    "quota_exceeded_v2",
    "e-7731",
)


# Vague emails that fit two or more queues equally well; the label is drawn among the listed queues.
_AMBIGUOUS = """billing,cancellation | I want my money back.
billing,cancellation | refund pls
billing,cancellation | I don't want to pay for this anymore. Please sort it out.
billing,cancellation | Please stop charging my card.
billing,cancellation,sales | I have a question about my subscription.
billing,cancellation,sales | What happens to my plan at the end of the month?
billing,shipping | What happened with my order {order}?
billing,shipping | I paid for order {order} but haven't heard anything since.
billing,shipping,cancellation | There is a problem with my order {order}, please contact me.
billing,shipping,cancellation | Order {order} - please help, this is not what I expected.
account,technical | I can't get into my account.
account,technical | Something is wrong with my account, please help.
account,technical | My account doesn't work since yesterday.
account,technical | I can't see my devices in my account anymore.
account,billing | Please check my account, something doesn't look right.
account,billing | The details on my account are wrong, please correct them.
account,cancellation | I don't need this account anymore.
general,sales | Please call me back on my mobile.
general,sales | I'd like more information about your products.
general,sales | Who can I talk to about using your devices in our office?
technical,general | It doesn't work. What now?
technical,general | The {product} is not doing what it should. Is this normal?
technical,shipping | The {product} I got doesn't work.
technical,shipping | I received the {product} but it won't start.
technical,account | The app logged me out and now nothing works.
cancellation,account | I don't want this anymore.
cancellation,account | Please remove me.
cancellation,sales | Can I change my plan?
cancellation,sales,billing | Is there a cheaper option? Otherwise I'll have to stop.
billing,account | Please update my details.
billing,account,sales | We changed our company name to {company}. What do we need to do?
general,technical,billing | I have a problem, please help asap.
general,shipping | Still waiting for an answer about my order.
general,cancellation | I'm really not happy with any of this.
"""


@dataclass(frozen=True)
class Intent:
    """One kind of request: its queue, weights and phrasings."""

    queue: str
    name: str
    weight: float
    drift_weight: float
    mix: str
    alt: str
    alt_share: float
    subjects: tuple[str, ...]
    requests: tuple[str, ...]
    terse: tuple[str, ...]
    details: tuple[str, ...]


_HEADER = re.compile(r"\[(\w+)\.(\w+)((?:\s+\w+=[\w.:]+)*)\]")


@functools.cache
def intents() -> tuple[Intent, ...]:
    """Parse the intent bank (once); raises ValueError on a malformed bank, which is a bug here."""
    parsed: list[Intent] = []
    for block in re.split(r"\n(?=\[)", INTENTS.strip()):
        head, *lines = block.splitlines()
        match = _HEADER.fullmatch(head)
        if match is None:
            raise ValueError(f"malformed intent header: {head!r}")
        opts = dict(kv.split("=") for kv in match.group(3).split())
        subjects: list[str] = []
        parts: dict[str, list[str]] = {"~": [], "+": [], "": []}
        for line in lines:
            if line.startswith("S:"):
                subjects.extend(s.strip() for s in line[2:].split("|"))
            elif line[0] in "~+":
                parts[line[0]].extend(s.strip() for s in line[1:].split("|"))
            else:
                parts[""].append(line.strip())
        parsed.append(
            Intent(
                queue=match.group(1),
                name=match.group(2),
                weight=float(opts.get("w", "1")),
                drift_weight=float(opts.get("dw", "0")),
                mix=opts.get("mix", ""),
                alt=opts.get("alt", ":").split(":")[0],
                alt_share=float(opts.get("alt", ":0").split(":")[1]),
                subjects=tuple(subjects),
                requests=tuple(parts[""]),
                terse=tuple(parts["~"]) or tuple(parts[""]),
                details=tuple(parts["+"]),
            )
        )
    return tuple(parsed)


@functools.cache
def ambiguous() -> tuple[tuple[tuple[str, ...], str], ...]:
    """The vague emails: (candidate queues, text)."""
    rows = []
    for line in _AMBIGUOUS.strip().splitlines():
        queues, text = line.split("|", 1)
        rows.append((tuple(q.strip() for q in queues.split(",")), text.strip()))
    return tuple(rows)


_PLANS = ("Basic", "Plus", "Premium", "Business", "Family")
_SLOT_VALUES = {
    "product": ("Home Hub", "Cam Mini", "Cam Outdoor", "Door Sensor", "Smart Plug", "Thermo S2",
                "Motion Sensor", "Video Doorbell", "Smoke Alarm"),
    "app": ("the iOS app", "the Android app", "the web dashboard", "the app", "the desktop app"),
    "error": ("Error 500", "E1042", "ERR_CONNECTION_RESET", "502 Bad Gateway", "SYNC_TIMEOUT",
              "Something went wrong (code 17)", "401 Unauthorized", "Device not responding (E-204)",
              "0x80070005", "NETWORK_ERROR", "Request failed with status code 429", "invalid_grant"),
    "carrier": ("DHL", "UPS", "DPD", "PostNL", "GLS", "Royal Mail", "FedEx", "Colissimo"),
    "card": ("Visa card", "Mastercard", "credit card", "debit card", "Amex", "PayPal account"),
    "os": ("iOS 17", "iOS 18", "Android 13", "Android 14", "a Pixel 8", "a Samsung S23"),
    "country": ("Switzerland", "Norway", "the UK", "Canada", "the US", "Australia", "Turkey", "Serbia"),
    "month": ("January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December"),
}  # fmt: skip
# Values only drifted mail uses; each contains one of DRIFT_TERMS.
_DRIFT_VALUES = {
    "product": ("Nimbus Hub", "Quasar Cam", "Nimbus Thermostat"),
    "error": ("TOKEN_ROTATION_FAILED", "E-7731 passkey not accepted", "quota_exceeded_v2"),
    "carrier": ("Zoomex",),
}
_SLOT = re.compile(r"\{(\w+)\}")


def filler(rng: random.Random, drift: float, company: str) -> Callable[[str], str]:
    """A function that fills the {slot}s of a template; drift-only values come at a drift-scaled rate."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in _DRIFT_VALUES and rng.random() < 0.5 * drift:
            return rng.choice(_DRIFT_VALUES[name])
        if name in _SLOT_VALUES:
            return rng.choice(_SLOT_VALUES[name])
        r = rng.randrange
        if name == "order":
            return rng.choice((f"#{r(1_000_000, 9_999_999)}", f"ORD-{r(100_000, 999_999)}", f"{r(10**9, 10**10)}"))
        if name == "amount":
            x = rng.choice((9.99, 14.99, 49, 59.9, 99, 129.99, 249, 19.9, 39.95)) * rng.choice((1, 1, 2, 12))
            return rng.choice(
                (f"€{x:.2f}", f"{x:.2f} EUR", f"${x:.2f}", f"£{x:.2f}", f"{x:.2f}".replace(".", ",") + " €")
            )
        if name == "date":
            day, month = r(1, 29), rng.choice(_SLOT_VALUES["month"])
            return rng.choice(
                (f"{day} {month}", f"{month} {day}", f"{day:02d}/{r(1, 13):02d}", "last Monday", "yesterday")
            )
        if name == "plan":
            return rng.choice(_PLANS)
        if name == "invoice":
            return f"INV-2025-{r(10_000, 99_999)}"
        if name == "tracking":
            return rng.choice((f"1Z{r(10**15, 10**16)}", f"JJD{r(10**17, 10**18)}", f"3S{r(10**11, 10**12)}"))
        if name == "seats":
            return str(rng.choice((10, 15, 25, 40, 50, 80, 120, 200, 500)))
        if name == "vat":
            return rng.choice(("DE", "NL", "FR", "SE")) + str(r(10**8, 10**9))
        if name == "account":
            return f"#{r(100_000, 999_999)}"
        if name == "ticket":
            return str(r(100_000, 999_999))
        if name == "version":
            return f"4.{r(0, 20)}.{r(0, 9)}"
        if name == "company":
            return company or "our company"
        raise AssertionError(f"unknown slot {name!r} in the phrase banks")

    return lambda template: _SLOT.sub(value, template)
