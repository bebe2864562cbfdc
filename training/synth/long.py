"""Long synthetic support emails, as agents see them: `training.synth.generate(..., length="long")`.

A long email has a greeting, two to five paragraphs of backstory, the request, a closing line, a sign-off and a
signature block (sometimes with a legal disclaimer), and often an earlier exchange quoted below it. What makes
it hard for a bag-of-words model:

- the sentence that decides the queue (an intent's request and its details, recorded as `key_sentence`) sits
  first, in the middle or last among the backstory paragraphs;
- the backstory (`_CONTEXT`) borrows the vocabulary of other queues: a technical email talks about the plan,
  the invoice and the delivery, a billing email about the app and the device;
- some emails ask a second thing of another queue (`secondary_queue`), and quoted replies below the text may be
  about another queue (cleaning drops those, so they only mislead models that read uncleaned text);
- forwarded messages carry content: a forwarded notification under the request, or a colleague's email
  forwarded from Outlook ("FW:" subject, "-----Original Message-----" or a From/Sent/To/Subject block) with the
  request inside the forwarded part, sometimes above a quoted reply of its own.

Label noise, typos, the HTML share and drift are the short generator's (`training.synth`). This module draws
from the same text stream as the short one, but only when `length="long"`, so short output is unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from training.synth import style
from training.synth.corpus import (
    _AFFINITY,
    _AMBIGUOUS_SHARE,
    _CONNECTORS,
    _GENERIC_SUBJECTS,
    _HTML_SHARE,
    _after,
    _cum,
    _pick,
    _Plan,
)
from training.synth.templates import filler

__all__ = ["CONTEXT", "compose_long"]

# Backstory sentences, grouped by the queue whose vocabulary they borrow. None of them asks for anything:
# they are the context around a request, and they are drawn mostly from queues other than the email's own.
_CONTEXT: dict[str, tuple[str, ...]] = {
    "billing": (
        "I've been paying for the {plan} plan every month since {month} without any trouble.",
        "Our finance team checks every invoice, so I keep copies of all of them; the last one was {invoice}.",
        "The {amount} renewal went through on {date} as usual, no complaints there.",
        "I switched the payment to my {card} a while ago and that part works fine.",
        "Last year you refunded a duplicate charge within a few days, which I appreciated.",
        "We moved to annual billing in {month} to save a bit of money.",
        "My partner handles the invoices and the bank statements, I only look after the devices.",
        "The price of the {plan} plan is fine for us, that is not the issue here.",
        "The receipt for the {amount} payment is in my inbox, so the billing side looks correct.",
    ),
    "technical": (
        "The {product} itself has worked well since I installed it, and the app is easy to use.",
        'A few weeks ago {app} showed "{error}" once, but a restart fixed it.',
        "I updated the firmware on all devices last weekend and everything came back online.",
        "We use {app} every day to check the cameras, mostly on {os}.",
        "Our Wi-Fi router was replaced in {month}, and I had to pair the {product} again, which took a while.",
        "The automations and schedules run fine, I set them up myself.",
        "The live view on my phone is a bit slow at times, but I can live with that.",
        "I'm on version {version} of the app, which I think is the latest.",
        "The device list in the dashboard shows everything online at the moment.",
    ),
    "account": (
        "The account is in my name, but my wife also has her own login on it.",
        "I changed my password last month after your security email, just to be safe.",
        "Two-factor authentication is switched on and the codes go to my phone.",
        "We have three users on the account: me, a colleague and our office manager.",
        "I logged in this morning and my profile and settings all looked normal.",
        "You take data protection seriously, which is one reason we chose you.",
        "The account number, in case you need it, is {account}.",
        "The email address on the account is this one, so you can reach me here.",
    ),
    "shipping": (
        "The {product} arrived on time with {carrier} (order {order}) and the box was fine.",
        "I ordered a second {product} in {month} and the delivery was quick.",
        "The tracking number back then was {tracking}, and it showed delivered the next day.",
        "Your warehouse shipped the replacement very fast last time.",
        "We are moving house at the end of {month}, so our address will change soon.",
        "The parcel had to go through customs once when I lived in {country}, which was a pain.",
        "{carrier} left the parcel with my neighbour, but I got it the same evening.",
        "The original order was {order}, placed on {date}.",
    ),
    "cancellation": (
        "I did think about cancelling the subscription last winter, but decided to stay.",
        "A friend of mine cancelled his plan recently and told me it was easy.",
        "My plan renews in {month}, so I'd like to have this sorted before then.",
        "I'm not planning to leave, I just want things to work.",
        "We were close to switching provider last year, but your team convinced us to stay.",
        "As far as I know my contract term ends on {date}.",
        "I closed my old account years ago and opened this one for the new house.",
    ),
    "sales": (
        "We're also looking at expanding to {seats} devices across our offices later this year.",
        "Your sales team gave us a demo in {month}, which is why we picked the {plan} plan.",
        "At some point we may upgrade to the Business plan, but not right now.",
        "We got a volume discount when we bought the first batch of devices.",
        "A colleague at another company recommended your enterprise offer to us.",
        "We're a small team of about {seats} people, growing slowly.",
        "I read about the Premium plan features on your website.",
    ),
    "general": (
        "Overall I'm really happy with the product and recommend it to friends.",
        "Your support team was very friendly the last time I wrote.",
        "I read a review of the {product} in a magazine before buying it.",
        "I visited your store in {country} once and the staff were lovely.",
        "I know you're probably busy, so thanks for taking the time to read this.",
        "The setup instructions were much clearer this time.",
    ),
}
CONTEXT = _CONTEXT
_OWN_CONTEXT_SHARE = 0.15  # the rest of the backstory borrows other queues' words
_SECOND_ASK_SHARE = 0.18
_POSITIONS = ("first", "middle", "last")
_POSITION_CUM = _cum((0.3, 0.4, 0.3))
_LEAD_INS = (
    "Anyway, the reason I'm writing:",
    "But that's not why I'm writing.",
    "Now to the actual problem.",
    "So here is my question.",
    "What I actually need:",
    "Here's the thing.",
    "Which brings me to this:",
)
_BACKGROUND = ("Some background first.", "For context:", "A bit of history:", "To explain:", "Just so you know,")
_FORWARD_ASIDES = (
    "Forwarding this from my colleague, could you please take a look?",
    "Please see the email below from our office manager.",
    "My husband got this and asked me to forward it to you.",
    "See below, this came to our shared inbox.",
    "Forwarding as discussed on the phone.",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")  # fmt: skip


@dataclass
class _Ask:
    """The deciding request of a long email and what comes with it."""

    queue: str
    secondary: str
    key: str
    details: list[str]
    aside: str  # a second ask of another queue ("" for none)
    subject: str


def _ask(rng: random.Random, plan: _Plan, fill: Callable[[str], str]) -> _Ask:
    if plan.ambiguous and rng.random() < _AMBIGUOUS_SHARE:
        candidates, text = rng.choice(plan.ambiguous)
        return _Ask(rng.choice(candidates), "", fill(text), [], "", fill(rng.choice(_GENERIC_SUBJECTS)))
    queue = _pick(rng, plan.queues, plan.queue_cum)
    intent = _pick(rng, plan.intents[queue], plan.intent_cum[queue])
    key = fill(rng.choice(intent.requests))
    k = min(rng.choice((0, 1, 1, 2, 2, 3)), len(intent.details))
    details = [fill(s) for s in rng.sample(intent.details, k)]
    secondary = intent.mix if intent.mix in plan.queues else ""
    if intent.alt in plan.queues and rng.random() < intent.alt_share:
        queue, secondary = intent.alt, (queue if secondary == intent.alt else secondary)
    aside = ""
    options = [q for q in _AFFINITY[queue] if q in plan.queues]
    if not intent.mix and options and rng.random() < _SECOND_ASK_SHARE:
        secondary = rng.choice(options)
        other = _pick(rng, plan.intents[secondary], plan.intent_cum[secondary])
        aside = fill(rng.choice(other.requests))
        if other.details and rng.random() < 0.5:
            aside += " " + fill(rng.choice(other.details))
        aside = _after(rng.choice(_CONNECTORS), aside)
    subject = fill(rng.choice(intent.subjects if rng.random() < 0.75 else _GENERIC_SUBJECTS))
    return _Ask(queue, secondary, key, details, aside, subject)


def _context(rng: random.Random, plan: _Plan, queue: str, fill: Callable[[str], str], k: int) -> list[str]:
    """`k` backstory sentences, mostly in other queues' vocabulary, no sentence twice."""
    others = [q for q in plan.queues if q != queue]
    templates: list[str] = []
    while len(templates) < k:
        source = queue if rng.random() < _OWN_CONTEXT_SHARE else rng.choice(others)
        template = rng.choice(_CONTEXT[source])
        if template not in templates:
            templates.append(template)
    return [fill(t) for t in templates]


def _paragraphs(
    rng: random.Random, plan: _Plan, ask: _Ask, fill: Callable[[str], str], writer: str
) -> tuple[list[list[str]], int, int]:
    """The writer's paragraphs as lists of sentences; which paragraph holds the request, and where in it."""
    n_context = rng.randrange(2, 6)
    per = [rng.randrange(2, 5) for _ in range(n_context)]
    sentences = _context(rng, plan, ask.queue, fill, sum(per))
    paragraphs, start = [], 0
    for size in per:
        paragraphs.append(sentences[start : start + size])
        start += size
    if writer == "rambling":
        for sentence in style.ramble(rng, rng.randrange(2, 4)):
            target = rng.choice(paragraphs)
            target.insert(rng.randrange(len(target) + 1), sentence)
    if rng.random() < 0.3:
        paragraphs[0].insert(0, rng.choice(_BACKGROUND))
    position = _pick(rng, _POSITIONS, _POSITION_CUM)
    where = {"first": 0, "middle": rng.randrange(1, n_context), "last": n_context}[position]
    lead = where > 0 and rng.random() < 0.4
    request = [rng.choice(_LEAD_INS), ask.key, *ask.details] if lead else [ask.key, *ask.details]
    paragraphs.insert(where, request)
    if ask.aside:
        spot = rng.randrange(len(paragraphs) + 1)
        paragraphs.insert(spot, [ask.aside])
        where += spot <= where
    if rng.random() < 0.35:
        paragraphs.insert(0, [style.opener(rng)])
        where += 1
    if rng.random() < 0.6:
        paragraphs.append([style.closer(rng)])
    return paragraphs, where, int(lead)


def _voice(rng: random.Random, writer: str, rate: float) -> Callable[[str], str]:
    """How the writer changes every sentence: non-native phrasing, shouting, lower case, typos."""
    shout_all = writer == "caps" and rng.random() < 0.3

    def apply(sentence: str) -> str:
        if writer == "nonnative":
            sentence = style.nonnative(sentence, rng)
        if shout_all or (writer == "caps" and rng.random() < 0.15):
            sentence = sentence.upper()
        if writer == "lower":
            sentence = sentence.lower()
        return style.typos(sentence, rate, rng)

    return apply


def _outlook_date(moment: datetime) -> str:
    return f"{_DAYS[moment.weekday()]}, {moment.day} {_MONTHS[moment.month - 1]} {moment.year} {moment:%H:%M}"


def _outlook_forward(
    rng: random.Random, sender: style.Person, person: style.Person, when: datetime, subject: str, text: str
) -> str:
    """A message forwarded from Outlook: a header block in one of Outlook's forms, then the message."""
    header = (
        f"From: {sender.first} {sender.last} <{sender.address}>\nSent: {_outlook_date(when)}\n"
        f"To: {person.first} {person.last} <{person.address}>\nSubject: {subject}"
    )
    form = rng.randrange(3)
    if form == 0:
        header = "-----Original Message-----\n" + header
    elif form == 1:
        header = "________________________________\n" + header
    return f"{header}\n\n{text}"


def compose_long(
    rng: random.Random, plan: _Plan, person: style.Person, sent: datetime
) -> tuple[str, str, str, str, bool, str]:
    """One long email: (subject, body, queue, secondary_queue, is_html, key_sentence) before label noise."""
    drift = plan.drift
    fill = filler(rng, drift, person.company)
    own_style = rng.random() < 0.7 * (1 - 0.5 * drift)
    writer = person.style if own_style else _pick(rng, style.STYLES, plan.style_cum)
    if writer == "terse":
        writer = "casual"  # nobody types a page on a phone in telegram style
    ask = _ask(rng, plan, fill)
    paragraphs, where, index = _paragraphs(rng, plan, ask, fill, writer)
    rate = plan.typo_rate * person.typo_scale * (2.0 if writer == "lower" else 1.0)
    voice = _voice(rng, writer, rate)
    paragraphs = [[voice(s) for s in p] for p in paragraphs]
    key = paragraphs[where][index]
    subject = ask.subject.lower() if writer == "lower" else ask.subject
    if writer == "caps" and rng.random() < 0.5:
        subject = subject.upper()
    greeting = style.greeting(rng, writer)
    signature = style.sign_off(rng, person, writer)
    if not person.disclaimer and person.company and rng.random() < 0.25:
        signature += ["", rng.choice(style.DISCLAIMERS)]
    tail: list[str] = []
    forward = False
    roll = rng.random()
    if roll < 0.07 + 0.03 * drift:
        # A colleague's email forwarded from Outlook: the request is in the forwarded part.
        colleague = style.make_person(rng.randrange(1_000_000, 2_000_000))
        when = sent - timedelta(minutes=rng.randrange(10, 3000))
        inner = "\n\n".join(" ".join(p) for p in paragraphs)
        inner = f"Hi {person.first},\n\n{inner}\n\nThanks,\n{colleague.first}"
        if rng.random() < 0.3:
            inner += "\n\n" + style.thread(rng, colleague, ask.queue, 1, when, lambda: "")
        tail.append(_outlook_forward(rng, colleague, person, when, ask.subject, inner))
        note = voice(rng.choice(_FORWARD_ASIDES))
        extra = [voice(s) for s in _context(rng, plan, ask.queue, fill, rng.randrange(0, 3))]
        own = [greeting, " ".join([note, *extra])]
        subject = ("FW: " if rng.random() < 0.6 else rng.choice(("Fw: ", "Fwd: "))) + ask.subject
        forward = True
    else:
        own = [greeting, *(" ".join(p) for p in paragraphs)]
        if roll < 0.15 + 0.05 * drift:
            # A forwarded notification about the same thing, under the writer's text.
            title, text = (fill(part) for part in rng.choice(style.NOTIFICATIONS[ask.queue]))
            when = sent - timedelta(minutes=rng.randrange(10, 3000))
            own.insert(1, rng.choice(style.FORWARD_NOTES))
            tail.append(style.forwarded(title, text, person, when))
            subject = ("Fwd: " if rng.random() < 0.7 else "FW: ") + title
            forward = True
        elif roll < 0.55 + 0.15 * drift:
            depth = 1
            while depth < 6 and rng.random() < 0.3 + 0.35 * drift:
                depth += 1
            topic = ask.queue if rng.random() < 0.6 else rng.choice(plan.queues)
            intents = plan.intents[topic]

            def earlier() -> str:
                if rng.random() < 0.4:
                    return rng.choice(style.FOLLOW_UPS)
                return fill(rng.choice(rng.choice(intents).requests))

            tail.append(style.thread(rng, person, topic, depth, sent, earlier))
            subject = (("RE: " if rng.random() < 0.3 else "Re: ") + subject).rstrip()
    is_html = rng.random() < _HTML_SHARE
    if is_html:
        body = style.render_html(own, signature, tail, forward=forward)
    else:
        body = style.render_plain(own, signature, tail)
    return subject, body, ask.queue, ask.secondary, is_html, key
