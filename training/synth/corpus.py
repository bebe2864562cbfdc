"""Synthetic support-email corpus: realistic, noisy, overlapping mail for the demo, tests and drift checks.

`generate()` draws emails to a fictional smart-home company (devices, subscriptions, shipping) from the
phrase banks in `training.synth.intents` (what people ask), `training.synth.templates` (order numbers, error
codes, products) and `training.synth.style` (how they write). The corpus is hard the way real inboxes are:
shared vocabulary across queues, mixed-topic and genuinely ambiguous emails, terse and rambling writers,
typos, quoted threads, forwarded notifications, HTML bodies, class imbalance and noisy labels. `drift` moves
it the way mail drifts after a launch and a price rise: new product names, error codes and a courier that
drift-0 mail never contains (`DRIFT_TERMS`), more cancellation and technical mail, more terse and non-native
writing, more new senders, longer quoted threads. `length="long"` writes emails as agents see them instead:
several paragraphs of backstory in other queues' words with the request somewhere among them, signatures,
quoted threads and forwards (`training.synth.long`), plus a `key_sentence` column.

Output is deterministic: the same arguments give a byte-identical frame. Separate random streams drive the
timestamps, the senders, the text and the label noise, so that changing `label_noise` changes labels only.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import numbers
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pandas as pd

from training.synth import style
from training.synth.templates import DRIFT_TERMS, Intent, ambiguous, filler, intents

logger = logging.getLogger(__name__)

QUEUES: tuple[str, ...] = ("billing", "technical", "account", "shipping", "cancellation", "sales", "general")
COLUMNS: tuple[str, ...] = (
    "email_id",
    "ts",
    "user_id",
    "subject",
    "body",
    "queue",
    "secondary_queue",
    "is_html",
)
# Long mail (`length="long"`) adds the sentence that decides the queue, as it appears in the body's text.
LONG_COLUMNS: tuple[str, ...] = (*COLUMNS, "key_sentence")
LENGTHS: tuple[str, ...] = ("short", "long")
__all__ = ["COLUMNS", "DRIFT_TERMS", "LENGTHS", "LONG_COLUMNS", "QUEUES", "SynthError", "generate", "write_corpus"]

# Inbox mix at drift 0 and at drift 1 (more cancellations and technical mail after a price rise and a launch).
_BASE_MIX = {
    "billing": 23,
    "technical": 26,
    "account": 14,
    "shipping": 13,
    "cancellation": 8,
    "sales": 6,
    "general": 10,
}
_DRIFT_MIX = {
    "billing": 19,
    "technical": 31,
    "account": 10,
    "shipping": 10,
    "cancellation": 18,
    "sales": 6,
    "general": 6,
}
# Which second topic a mixed email of each queue tends to touch.
_AFFINITY = {
    "billing": ("cancellation", "technical", "account", "shipping"),
    "technical": ("billing", "account", "cancellation"),
    "account": ("technical", "billing", "cancellation"),
    "shipping": ("billing", "cancellation", "general"),
    "cancellation": ("billing", "technical", "shipping"),
    "sales": ("billing", "technical", "account"),
    "general": ("technical", "shipping", "billing"),
}
_AMBIGUOUS_SHARE = 0.08
_MIXED_SHARE = 0.11  # on top of the intents that are mixed by nature (about 3% of mail)
_HTML_SHARE = 0.10
_START = datetime(2025, 3, 3, tzinfo=UTC)
_SPAN_DAYS = 56
_CONNECTORS = (
    "Also, ",
    "Another thing: ",
    "And while I'm at it: ",
    "Separately, ",
    "P.S. ",
    "On top of that, ",
)
_GENERIC_SUBJECTS = (
    "Help",
    "Question",
    "Urgent",
    "Support request",
    "Problem",
    "",
    "Hello",
    "Your ticket #{ticket}",
)
T = TypeVar("T")


class SynthError(ValueError):
    """A bad argument to the corpus generator; the message is one line meant for a person."""


@dataclass(frozen=True)
class _Plan:
    """Everything that depends on the arguments but not on the email: weights and lookup tables."""

    drift: float
    queues: tuple[str, ...]
    queue_cum: tuple[float, ...]
    intents: dict[str, tuple[Intent, ...]]
    intent_cum: dict[str, tuple[float, ...]]
    ambiguous: tuple[tuple[tuple[str, ...], str], ...]
    style_cum: tuple[float, ...]
    typo_rate: float


def _cum(weights: Sequence[float]) -> tuple[float, ...]:
    return tuple(itertools.accumulate(weights))


def _pick(rng: random.Random, items: Sequence[T], cum: Sequence[float]) -> T:
    return items[bisect.bisect(cum, rng.random() * cum[-1])]


def _make_plan(drift: float, queues: Sequence[str], typo_rate: float) -> _Plan:
    mix = {q: (1 - drift) * _BASE_MIX[q] + drift * _DRIFT_MIX[q] for q in queues}
    by_queue: dict[str, tuple[Intent, ...]] = {}
    for q in queues:
        by_queue[q] = tuple(i for i in intents() if i.queue == q and i.weight + drift * i.drift_weight > 0)
    chosen = set(queues)
    amb = tuple((tuple(c for c in cands if c in chosen), text) for cands, text in ambiguous())
    return _Plan(
        drift=drift,
        queues=tuple(queues),
        queue_cum=_cum([mix[q] for q in queues]),
        intents=by_queue,
        intent_cum={q: _cum([i.weight + drift * i.drift_weight for i in v]) for q, v in by_queue.items()},
        ambiguous=tuple(row for row in amb if row[0]),
        style_cum=_cum(
            [
                (1 - drift) * b + drift * d
                for b, d in zip(style.BASE_STYLE_WEIGHTS, style.DRIFT_STYLE_WEIGHTS, strict=True)
            ]
        ),
        typo_rate=typo_rate,
    )


def _after(connector: str, sentence: str) -> str:
    keep = sentence[:2] in ("I ", "I'") or (sentence[:1].isupper() and sentence[1:2].isupper())
    return connector + (sentence if keep else sentence[:1].lower() + sentence[1:])


def _join(rng: random.Random, sentences: list[str]) -> str:
    """Sentences as one paragraph; terse lines without a full stop get one of the separators people type."""
    out = ""
    for sentence in sentences:
        if out:
            out += " " if out[-1] in ".!?:" else rng.choice((". ", ", ", " - ", "\n"))
        out += sentence
    return out


@dataclass
class _Request:
    """What an email asks for, before it is dressed in a writer's voice."""

    queue: str
    secondary: str
    sentences: list[str]
    subject: str
    intent: Intent | None


def _request(rng: random.Random, plan: _Plan, fill: Callable[[str], str], terse: bool) -> _Request:
    """The ask: a vague email, or an intent's request with details and, sometimes, a second topic."""
    if plan.ambiguous and rng.random() < _AMBIGUOUS_SHARE:
        candidates, text = rng.choice(plan.ambiguous)
        return _Request(rng.choice(candidates), "", [fill(text)], fill(rng.choice(_GENERIC_SUBJECTS)), None)
    queue = _pick(rng, plan.queues, plan.queue_cum)
    intent = _pick(rng, plan.intents[queue], plan.intent_cum[queue])
    sentences = [fill(rng.choice(intent.terse if terse else intent.requests))]
    if not terse and intent.details:
        k = min(rng.choice((0, 0, 1, 1, 1, 2)), len(intent.details))
        sentences += [fill(s) for s in rng.sample(intent.details, k)]
    secondary = intent.mix if intent.mix in plan.queues else ""
    if intent.alt in plan.queues and rng.random() < intent.alt_share:
        queue, secondary = intent.alt, (queue if secondary == intent.alt else secondary)
    options = [q for q in _AFFINITY[queue] if q in plan.queues]
    if not intent.mix and options and rng.random() < _MIXED_SHARE:
        secondary = rng.choice(options)
        other = _pick(rng, plan.intents[secondary], plan.intent_cum[secondary])
        aside = fill(rng.choice(other.terse if terse else other.requests))
        if not terse and other.details and rng.random() < 0.5:
            aside += " " + fill(rng.choice(other.details))
        if rng.random() < 0.7:
            sentences.append(_after(rng.choice(_CONNECTORS), aside))
        else:
            sentences.insert(0, aside)
    subject = fill(rng.choice(intent.subjects if rng.random() < 0.8 else _GENERIC_SUBJECTS))
    return _Request(queue, secondary, sentences, subject, intent)


def _voice(rng: random.Random, req: _Request, writer: str, terse: bool) -> list[str]:
    """The writer's paragraphs (greeting, request): backstory, politeness, non-native phrasing, shouting."""
    sentences = list(req.sentences)
    if writer == "rambling":
        for sentence in style.ramble(rng, rng.randrange(2, 5)):
            sentences.insert(rng.randrange(len(sentences) + 1), sentence)
    if not terse:
        if rng.random() < 0.25:
            sentences.insert(0, style.opener(rng))
        if rng.random() < 0.5:
            sentences.append(style.closer(rng))
    if writer == "nonnative":
        sentences = [style.nonnative(s, rng) for s in sentences]
    if writer == "caps":
        if rng.random() < 0.5:
            sentences = [s.upper() for s in sentences]
        else:
            i = rng.randrange(len(sentences))
            sentences[i] = sentences[i].upper().rstrip(".") + "!!!"
        req.subject = req.subject.upper() if rng.random() < 0.5 else req.subject
    cut = rng.randrange(1, len(sentences)) if len(sentences) > 3 else len(sentences)
    return [style.greeting(rng, writer), _join(rng, sentences[:cut]), _join(rng, sentences[cut:])]


def _compose(rng: random.Random, plan: _Plan, person: style.Person, sent: datetime) -> tuple[str, str, str, str, bool]:
    """One email: (subject, body, queue, secondary_queue, is_html) before label noise."""
    drift = plan.drift
    fill = filler(rng, drift, person.company)
    own_style = rng.random() < 0.7 * (1 - 0.5 * drift)
    writer = person.style if own_style else _pick(rng, style.STYLES, plan.style_cum)
    terse = writer == "terse" or rng.random() < 0.06
    req = _request(rng, plan, fill, terse)
    own = _voice(rng, req, writer, terse)
    if writer == "lower":
        own, req.subject = [p.lower() for p in own], req.subject.lower()
    rate = plan.typo_rate * person.typo_scale * (2.0 if terse or writer == "lower" else 1.0)
    own = [style.typos(p, rate, rng) for p in own]
    tail = []
    if rng.random() < 0.05 + 0.03 * drift:
        # A forwarded notification with a short note on top; the notification carries the topic.
        note = rng.choice(style.FORWARD_NOTES)
        if rng.random() < 0.5:
            own = [own[0], note, *own[1:]]
        else:
            own, req.secondary = [own[0], note], ""
        title, text = (fill(part) for part in rng.choice(style.NOTIFICATIONS[req.queue]))
        tail.append(style.forwarded(title, text, person, sent - timedelta(minutes=rng.randrange(10, 3000))))
        req.subject = ("Fwd: " if rng.random() < 0.7 else "FW: ") + title
    elif rng.random() < 0.15 + 0.2 * drift:
        depth = 1
        while depth < 6 and rng.random() < 0.25 + 0.35 * drift:
            depth += 1
        intent = req.intent

        def earlier() -> str:
            if intent is None or rng.random() < 0.4:
                return rng.choice(style.FOLLOW_UPS)
            return fill(rng.choice(intent.requests))

        tail.append(style.thread(rng, person, req.queue, depth, sent, earlier))
        req.subject = (("RE: " if rng.random() < 0.3 else "Re: ") + req.subject).rstrip()
    signature = style.sign_off(rng, person, writer)
    is_html = rng.random() < _HTML_SHARE
    render = style.render_html if is_html else style.render_plain
    return req.subject, render(own, signature, tail), req.queue, req.secondary, is_html


def _timestamps(n: int, seed: int) -> list[str]:
    """Strictly increasing ISO-8601 UTC times over eight weeks, busier on weekdays and in office hours."""
    rng = random.Random(f"mailroute-synth-{seed}-ts")
    day_cum = _cum([1.0 if d % 7 < 5 else 0.35 for d in range(_SPAN_DAYS)])
    hour_cum = _cum([0.2] * 7 + [0.6, 1.2, 1.5, 1.5, 1.3, 1.0, 1.3, 1.4, 1.3, 1.1, 0.8] + [0.5] * 6)
    days, hours = list(range(_SPAN_DAYS)), list(range(24))
    seconds = sorted(
        _pick(rng, days, day_cum) * 86_400 + _pick(rng, hours, hour_cum) * 3600 + rng.randrange(3600) for _ in range(n)
    )
    for i in range(1, n):
        seconds[i] = max(seconds[i], seconds[i - 1] + 1)
    return [(_START + timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ") for s in seconds]


def _senders(n: int, seed: int, drift: float) -> list[int]:
    """User indices with a Zipf-like population: a few users write often, most once or twice.

    Drifted mail brings a share of new customers (indices from 500000 up) that drift-0 mail never has.
    """
    rng = random.Random(f"mailroute-synth-{seed}-senders")
    population = max(20, n // 2)
    cum = _cum([(k + 20) ** -1.1 for k in range(population)])
    users = list(range(population))
    newcomers = [500_000 + k for k in users]
    return [_pick(rng, newcomers if rng.random() < 0.3 * drift else users, cum) for _ in range(n)]


def _check(
    n: int, seed: int, drift: float, label_noise: float, typo_rate: float, queues: Sequence[str], length: str
) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise SynthError(f"n must be a positive whole number of emails, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise SynthError(f"seed must be a whole number, got {seed!r}")
    for name, value, high in (
        ("drift", drift, 1.0),
        ("label_noise", label_noise, 0.5),
        ("typo_rate", typo_rate, 0.5),
    ):
        if not isinstance(value, int | float) or not 0.0 <= value <= high:
            raise SynthError(f"{name} must be between 0 and {high:g}, got {value!r}")
    if isinstance(queues, str):
        raise SynthError("queues must be a list of queue names, not one string")
    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        raise SynthError(f"unknown queue(s) {', '.join(map(str, unknown))}; the generator knows {', '.join(QUEUES)}")
    if len(set(queues)) != len(queues) or len(queues) < 2:
        raise SynthError(f"queues must name at least two different queues, got {list(queues)}")
    if not isinstance(length, str) or length not in LENGTHS:
        raise SynthError(f"length must be one of {', '.join(map(repr, LENGTHS))}, got {length!r}")


def generate(
    n: int,
    *,
    seed: int = 1,
    drift: float = 0.0,
    label_noise: float = 0.02,
    typo_rate: float = 0.02,
    queues: Sequence[str] = QUEUES,
    length: str = "short",
) -> pd.DataFrame:
    """Generate `n` support emails as a frame with the columns in `COLUMNS`, ordered by `ts`.

    `drift` in [0, 1] shifts the corpus the way mail drifts (see the module docstring); `label_noise` in
    [0, 0.5] is the share of labels flipped to another queue, as agents' labels are; `typo_rate` in
    [0, 0.5] is the share of words a typical writer mistypes (careless writers more, careful ones none);
    `queues` limits the corpus to some of `QUEUES`. `length="long"` writes emails as agents see them (several
    paragraphs, the request anywhere among them, see `training.synth.long`) with the columns in `LONG_COLUMNS`.
    Raises `SynthError` (a ValueError) on a bad argument.
    """
    _check(n, seed, drift, label_noise, typo_rate, queues, length)
    long = length == "long"
    if long:
        from training.synth.long import compose_long  # it builds on this module's helpers
    drift, label_noise = float(drift), float(label_noise)
    plan = _make_plan(drift, queues, float(typo_rate))
    text_rng = random.Random(f"mailroute-synth-{seed}-text")
    noise_rng = random.Random(f"mailroute-synth-{seed}-noise")
    stamps = _timestamps(n, seed)
    people: dict[int, style.Person] = {}
    rows = []
    tag = f"syn-{seed}-" if drift == 0 else f"syn-{seed}-d{drift:g}-"
    if long:
        tag = tag.replace("syn-", "synlong-", 1)
    for i, (ts, user) in enumerate(zip(stamps, _senders(n, seed, drift), strict=True)):
        person = people.get(user) or people.setdefault(user, style.make_person(user))
        sent = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        key: tuple[str, ...] = ()
        if long:
            subject, body, queue, secondary, is_html, sentence = compose_long(text_rng, plan, person, sent)
            key = (sentence,)
        else:
            subject, body, queue, secondary, is_html = _compose(text_rng, plan, person, sent)
        flip, other = noise_rng.random(), noise_rng.randrange(len(plan.queues) - 1)
        if flip < label_noise:
            # An agent filed it elsewhere; if under its second topic, the true topic becomes the second one.
            noisy = [q for q in plan.queues if q != queue][other]
            queue, secondary = noisy, (queue if noisy == secondary else secondary)
        rows.append((f"{tag}{i:06d}", ts, f"u{user:06d}", subject, body, queue, secondary, is_html, *key))
    logger.debug("generated %d synthetic %s emails (seed %s, drift %s)", n, length, seed, drift)
    frame = pd.DataFrame.from_records(rows, columns=list(LONG_COLUMNS if long else COLUMNS))
    return frame.astype({"is_html": bool})


def write_corpus(frame: pd.DataFrame, path: Path | str) -> None:
    """Write a corpus as `.jsonl` (one JSON object per line) or `.csv`, creating parent folders.

    Raises `SynthError` (a ValueError) for any other extension.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise SynthError(f"cannot write a corpus to {path.name!r}: use a .jsonl or .csv file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False, lineterminator="\n")
        return
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for record in frame.to_dict(orient="records"):
            out.write(json.dumps({k: _plain(v) for k, v in record.items()}, ensure_ascii=False) + "\n")


def _plain(value: object) -> object:
    """numpy scalars as plain Python values, so that json can write them."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value
