"""How synthetic customers write (`training.synth`): people, greetings, signatures, threads, typos, HTML.

The request itself comes from `training.synth.templates`; this module wraps it the way real mail arrives:
a greeting, a sign-off, a signature (with a title, phone number or legal disclaimer), a quoted earlier reply,
a forwarded notification, writing habits (terse, lowercase, shouting, non-native phrasing), typos, and HTML
for mail clients that send it. Nothing here decides a label.
"""

from __future__ import annotations

import html
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

# Writing habits; drifted mail has more terse phone-typed and non-native writers.
STYLES = ("formal", "casual", "terse", "lower", "caps", "rambling", "nonnative")
BASE_STYLE_WEIGHTS = (0.28, 0.30, 0.12, 0.09, 0.03, 0.09, 0.09)
DRIFT_STYLE_WEIGHTS = (0.14, 0.22, 0.30, 0.09, 0.03, 0.06, 0.16)
FIRST_NAMES = (
    "Anna", "Ben", "Carla", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kaito", "Lena",
    "Mateo", "Nina", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Ursula", "Victor", "Wen", "Yara",
    "Zoe", "Ahmed", "Beatriz", "Chen", "Dmitri", "Emma", "Fatima", "Giulia", "Hannah", "Ivan", "Julia",
    "Kofi", "Lucas", "Maria", "Noah", "Olga", "Pedro", "Rahul", "Sara", "Tom", "Uma", "Wojciech", "Xavier",
    "Yusuf", "Zanele", "James", "Sophie", "Mohammed", "Laura", "Daniel", "Mei", "Patrick", "Aisha", "Erik",
    "Chloe", "Arjun",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Müller", "Garcia", "Rossi", "Nguyen", "Kowalski", "Jansen", "Dubois", "Silva", "Petrov",
    "Yilmaz", "Kim", "Okafor", "Andersson", "Novak", "Schmidt", "Brown", "Sato", "Fernandez", "Haddad",
    "Olsen", "Costa", "Wagner", "Patel", "Murphy", "Lopez", "Becker", "Ivanova", "Khan", "de Vries", "Moreau",
    "Larsen", "Chen", "Williams", "Hoffmann", "Romano", "Singh", "Nowak", "Fischer", "Martin", "Ali",
    "Keller", "Svensson",
)  # fmt: skip
_COMPANY_HEADS = (
    "Nord",
    "Blue",
    "Alpen",
    "Summit",
    "Harbor",
    "Green",
    "Iron",
    "Silver",
    "Oak",
    "Delta",
    "Vista",
)
_COMPANY_TAILS = (
    "Facilities",
    "Properties",
    "Living",
    "Logistics",
    "Hotels",
    "Consulting",
    "Homes",
    "Systems",
)
_COMPANY_FORMS = ("GmbH", "Ltd", "B.V.", "Inc.", "S.A.", "AB", "LLC", "")
_TITLES = (
    "Facility Manager", "Office Manager", "Head of Operations", "IT Administrator", "Procurement",
    "Property Manager", "CFO", "Accounts Payable", "Founder & CEO", "Operations Lead", "Purchasing Assistant",
)  # fmt: skip
_MAIL_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "gmx.de", "icloud.com", "hotmail.com", "web.de")
_DISCLAIMERS = (
    "This e-mail and any attachments are confidential and intended solely for the addressee. If you have "
    "received it in error, please notify the sender and delete it.",
    "CONFIDENTIALITY NOTICE: The information in this message is privileged and may not be disclosed, "
    "copied or distributed without permission.",
    "Please consider the environment before printing this email.",
    "Registered office: 12 Harbour Street. Registered in England and Wales No. 08123456.",
)
DISCLAIMERS = _DISCLAIMERS  # long mail (training.synth.long) adds them to more signatures
_GREETINGS = {
    "formal": (
        "Dear Support Team,",
        "Dear Sir or Madam,",
        "Good morning,",
        "Hello,",
        "Dear Brightnest team,",
    ),
    "casual": ("Hi,", "Hi there,", "Hello,", "Hey,", "Hi team,", "Hello support,", "Hi {agent},"),
    "nonnative": ("Dear Sir/Madam,", "Respected team,", "Hello dear support,", "Good day,", "Dear Sir,"),
    "caps": ("HELLO,", "Hi,", "To whom it may concern,", ""),
}
_OPENERS = (
    "I hope you are well.", "I'm writing about the following.", "Hope you can help.",
    "Sorry to bother you again.", "I have a question.", "Quick one:",
    "I'm contacting you regarding my account.", "Following up on my order.",
)  # fmt: skip
_CLOSERS = (
    "Thanks in advance.", "Looking forward to your reply.", "Please let me know.", "Please advise.",
    "Thank you for your help.", "Please get back to me as soon as possible.", "Any help is appreciated.",
    "Thanks!", "I'd appreciate a quick answer.",
)  # fmt: skip
_SIGNOFFS = {
    "formal": ("Kind regards,", "Best regards,", "Sincerely,", "Regards,", "With best regards,"),
    "casual": ("Thanks,", "Cheers,", "Best,", "Thx,", "Thanks a lot,", "-"),
    "nonnative": ("Thanking you,", "Regards,", "Warm regards,", "Thanks and regards,", "Yours faithfully,"),
}
# Backstory a rambling writer adds; the shared vocabulary (account, order, charge) is on purpose.
_RAMBLE = (
    "I've been a customer for {years} years and never had a problem until now.",
    "I tried calling your hotline but after 40 minutes on hold I gave up.",
    "My husband set all of this up originally, so I'm not very technical.",
    "To be honest I'm starting to lose patience with this whole thing.",
    "I also looked through the help center but couldn't find anything that matches my situation.",
    "We have several of your devices in the house and the account is shared with my family.",
    "Last time I contacted you it took a week to get an answer.",
    "I also wrote to you on the chat but the bot didn't understand me.",
    "My order history shows everything correctly, so I don't know what is going on.",
    "I'm travelling at the moment, so email is the best way to reach me.",
    "My neighbour recommended you, which is why I signed up in the first place.",
)
_MOBILE_FOOTERS = (
    "Sent from my iPhone",
    "Sent from my Android phone",
    "Sent from Outlook for Android",
    "Sent from my iPad",
)
_AGENTS = ("Sarah", "Mark", "Jess", "Tim", "Laura", "Ahmed")
# Earlier support replies that customers quote below their answer, by queue.
SUPPORT_REPLIES = {
    "billing": (
        "Thank you for contacting us about your invoice. I've passed your request on to our billing team.",
        "I can see the payment on your account. Could you send us the last four digits of the card you used?",
        "Refunds take 5 to 10 business days to appear on your statement.",
    ),
    "technical": (
        "Could you try restarting the device and updating the app to the latest version?",
        "Our engineers are aware of the issue and are working on a fix. Thanks for your patience.",
        "Please send us a screenshot of the error and the app version you are using.",
    ),
    "account": (
        "For security reasons we need to verify your identity before we can change account details.",
        "I've sent a verification link to the email address on file.",
    ),
    "shipping": (
        "Your parcel has left our warehouse; the carrier usually delivers within 3 to 5 business days.",
        "I've opened an investigation with the carrier and will update you within 48 hours.",
    ),
    "cancellation": (
        "We're sorry to see you go. Before we process your cancellation, may we offer you two months free?",
        "Your cancellation request has been received and will take effect at the end of the billing period.",
    ),
    "sales": (
        "Thanks for your interest in our Business plan. Could you tell us how many users you need?",
        "I'd be happy to set up a call with one of our account executives.",
    ),
    "general": (
        "Thank you for your message. We've shared your feedback with the product team.",
        "Thanks for reaching out! Is there anything else we can help you with?",
    ),
}
# Automatic notifications (subject, text) that customers forward with a line of their own on top, by queue.
NOTIFICATIONS = {
    "billing": (
        ("Payment failed", "Your payment of {amount} for your {plan} subscription could not be processed. "
         "Please update your payment method to avoid interruption."),
        ("Your invoice {invoice}", "Your invoice {invoice} for {amount} is now available."),
    ),
    "technical": (
        ("Device offline", "Alert: your {product} has been offline for more than 24 hours."),
        ("Security notice", "We detected a failed sign-in to your account. Error: {error}."),
    ),
    "account": (("Your email address was changed", "If this wasn't you, contact support immediately."),),
    "shipping": (
        ("Your order has shipped", "Good news! Your order {order} has been dispatched with {carrier}. "
         "Tracking number: {tracking}."),
        ("Delivery attempt failed", "We couldn't deliver your parcel {tracking} today. We'll try again."),
    ),
    "cancellation": (("Your subscription renews soon", "Your {plan} plan renews on {date} for {amount}."),),
    "sales": (("Your trial ends in 3 days", "Your free {plan} trial ends soon. Upgrade now and save 20%."),),
    "general": (("How did we do?", "Rate your recent conversation with our support team."),),
}  # fmt: skip
FOLLOW_UPS = ("Any update on this?", "I still have the same problem.", "Hello? Nobody answered yet.")
FORWARD_NOTES = (
    "See below. What is this?",
    "Can you explain this?",
    "fyi",
    "Why did I get this?",
    "??",
    "Please check.",
)
# Non-native phrasing: (pattern, replacement); applied to some sentences of non-native writers.
_NONNATIVE = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"\bI'd like to\b", "I want to"), (r"\bCould you\b", "Kindly"), (r"\bcan you\b", "kindly"),
        (r"\bplease\b", "please do the needful and"), (r"\bI can't\b", "I am not able to"),
        (r"\bstill hasn't\b", "is not yet"), (r"\bdoesn't\b", "is not"), (r"\bthe \b", ""),
        (r"\bI was charged\b", "I am charged"), (r"\bThank you\b", "Thanking you"), (r"\bsince\b", "from"),
        (r"\bI have\b", "I am having"), (r"\bI don't\b", "I am not"), (r"\bnever\b", "not"),
    )
)  # fmt: skip
_KEYBOARD_NEIGHBOURS = {
    "a": "sq", "b": "vn", "c": "xv", "d": "sf", "e": "wr", "f": "dg", "g": "fh", "h": "gj", "i": "uo",
    "j": "hk", "k": "jl", "l": "k", "m": "n", "n": "bm", "o": "ip", "p": "o", "r": "et", "s": "ad", "t": "ry",
    "u": "yi", "v": "cb", "w": "qe", "y": "tu",
}  # fmt: skip
_WORD = re.compile(r"[A-Za-z]{4,}")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SUPPORT = "Brightnest Support <support@brightnest.com>"


@dataclass(frozen=True)
class Person:
    """A sender with habits that stay the same across their emails."""

    first: str
    last: str
    address: str
    company: str
    title: str
    phone: str
    style: str
    typo_scale: float
    disclaimer: str


def make_person(index: int) -> Person:
    """The person behind user `index`; seeded by the index alone, so a user is the same in every corpus."""
    rng = random.Random(f"mailroute-person-{index}")
    style = rng.choices(STYLES, weights=BASE_STYLE_WEIGHTS)[0]
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    business = rng.random() < 0.35
    company = ""
    if business:
        company = f"{rng.choice(_COMPANY_HEADS)} {rng.choice(_COMPANY_TAILS)} {rng.choice(_COMPANY_FORMS)}".strip()
    local = f"{first}.{last}".lower().replace(" ", "").replace("ü", "ue")
    phone = f"+{rng.choice((31, 33, 44, 46, 49))} {rng.randrange(10, 99)} {rng.randrange(1_000_000, 9_999_999)}"
    domain = company.split()[0].lower() + ".example" if company else rng.choice(_MAIL_DOMAINS)
    return Person(
        first=first,
        last=last,
        address=f"{local}{rng.randrange(100) if rng.random() < 0.4 else ''}@{domain}",
        company=company,
        title=rng.choice(_TITLES) if business and rng.random() < 0.7 else "",
        phone=phone if rng.random() < 0.3 else "",
        style=style,
        typo_scale=rng.choice((0.0, 0.5, 1.0, 1.0, 2.0, 3.0)),
        disclaimer=rng.choice(_DISCLAIMERS) if business and rng.random() < 0.4 else "",
    )


def greeting(rng: random.Random, style: str) -> str:
    """A greeting line in the writer's register ('' for writers who skip it)."""
    if style == "terse" or (style in ("lower", "rambling") and rng.random() < 0.2):
        return ""
    bank = _GREETINGS.get(style, _GREETINGS["formal" if style == "rambling" else "casual"])
    return rng.choice(bank).replace("{agent}", rng.choice(_AGENTS))


def opener(rng: random.Random) -> str:
    return rng.choice(_OPENERS)


def closer(rng: random.Random) -> str:
    return rng.choice(_CLOSERS)


def ramble(rng: random.Random, k: int) -> list[str]:
    """`k` different sentences of backstory, as a rambling writer adds them."""
    return [s.replace("{years}", str(rng.randrange(2, 12))) for s in rng.sample(_RAMBLE, k)]


def sign_off(rng: random.Random, person: Person, style: str) -> list[str]:
    """Sign-off and name, then a signature block (title, company, phone, disclaimer) if the person has one."""
    if style == "terse":
        lines = [person.first] if rng.random() < 0.4 else []
        return [*lines, rng.choice(_MOBILE_FOOTERS)] if rng.random() < 0.6 else lines
    bank = _SIGNOFFS.get(style, _SIGNOFFS["casual" if style in ("lower", "caps") else "formal"])
    name = person.first if style in ("casual", "lower") else f"{person.first} {person.last}"
    lines = [rng.choice(bank), name]
    if person.title or person.company:
        lines += ["--", f"{person.first} {person.last}"]
        lines += [" | ".join(x for x in (person.title, person.company) if x)]
    if person.phone:
        lines.append(f"Tel: {person.phone}" if rng.random() < 0.5 else f"M {person.phone}")
    if person.disclaimer:
        lines += ["", person.disclaimer]
    return lines


def nonnative(text: str, rng: random.Random, share: float = 0.5) -> str:
    """Rewrite some phrases the way many non-native writers put them."""
    for pattern, replacement in _NONNATIVE:
        if rng.random() < share:
            text = pattern.sub(replacement, text, count=1)
    return text


def typos(text: str, rate: float, rng: random.Random) -> str:
    """Swap, drop, double or mistype a letter in about `rate` of the words of four letters or more."""
    if rate <= 0:
        return text

    def mangle(match: re.Match[str]) -> str:
        word = match.group(0)
        if rng.random() >= rate:
            return word
        i = rng.randrange(1, len(word) - 1)
        kind = rng.randrange(4)
        if kind == 0:
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        if kind == 1:
            return word[:i] + word[i + 1 :]
        if kind == 2:
            return word[:i] + word[i] + word[i:]
        near = _KEYBOARD_NEIGHBOURS.get(word[i].lower(), word[i])
        return word[:i] + rng.choice(near) + word[i + 1 :]

    return _WORD.sub(mangle, text)


def render_plain(own: list[str], signature: list[str], tail: list[str]) -> str:
    """Plain-text body: the writer's paragraphs, the signature lines, then quoted or forwarded text."""
    parts = ["\n\n".join(p for p in own if p)]
    if signature:
        parts.append("\n".join(signature))
    parts.extend(tail)
    return "\n\n".join(parts)


def quoted(text: str) -> str:
    """`text` quoted one level deeper, as mail clients quote the message being answered."""
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())


def mail_date(moment: datetime) -> str:
    """A date as mail clients write it in quote headers, independent of the process locale."""
    return f"{_DAYS[moment.weekday()]}, {moment.day} {_MONTHS[moment.month - 1]} {moment.year} at {moment:%H:%M}"


def thread(
    rng: random.Random, person: Person, queue: str, depth: int, sent: datetime, earlier: Callable[[], str]
) -> str:
    """An earlier exchange quoted below new text: support's reply, the customer's mail before it, ..."""
    messages = []
    when = sent
    for level in range(depth):
        when -= timedelta(minutes=rng.randrange(30, 4000))
        if level % 2 == 0:
            topic = queue if rng.random() < 0.8 else rng.choice(tuple(SUPPORT_REPLIES))
            text = f"Hi {person.first},\n\n{rng.choice(SUPPORT_REPLIES[topic])}\n\nBest regards,\n"
            messages.append((f"On {mail_date(when)}, {_SUPPORT} wrote:", f"{text}{rng.choice(_AGENTS)}, Brightnest"))
        else:
            messages.append(
                (f"On {mail_date(when)}, {person.first} {person.last} <{person.address}> wrote:", earlier())
            )
    block = ""
    for header, text in reversed(messages):
        block = header + "\n" + quoted(text + ("\n\n" + block if block else ""))
    return block


def forwarded(title: str, text: str, person: Person, when: datetime) -> str:
    """An automatic notification as a forwarded-message block."""
    return (
        "---------- Forwarded message ---------\nFrom: Brightnest <no-reply@brightnest.com>\n"
        f"Date: {mail_date(when)}\nSubject: {title}\nTo: <{person.address}>\n\n{text}"
    )


def render_html(own: list[str], signature: list[str], tail: list[str], *, forward: bool = False) -> str:
    """The same content as an HTML document, as webmail and Outlook send it.

    Tail blocks are quoted replies (a <blockquote>, which HTML-to-text conversion marks as quoted) unless
    `forward` is set: then they are forwarded messages, which mail clients put in a plain <div>, lines as-is.
    """
    body = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in own if p)
    if signature:
        body += '<div class="signature">' + "<br>".join(html.escape(s) for s in signature) + "</div>"
    for block in tail:
        if forward:
            body += '<div class="gmail_quote">' + "<br>".join(html.escape(line) for line in block.splitlines())
            body += "</div>"
            continue
        inner = "<br>".join(html.escape(line.lstrip("> ")) for line in block.splitlines())
        body += f'<blockquote style="margin:0 0 0 .8ex;border-left:1px solid #ccc">{inner}</blockquote>'
    return (
        '<html><head><meta charset="utf-8"><style>p{margin:0 0 1em}</style></head>'
        f'<body><div dir="ltr" style="font-family:Arial,sans-serif">{body}</div></body></html>'
    )
