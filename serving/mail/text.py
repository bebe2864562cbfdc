"""Text cleaning shared by training and serving, so the two cannot drift apart.

`model_text` is the one string both models see. `clean_text` keeps what the customer wrote this time and
drops what repeats across emails without saying anything about the request: quoted replies, signatures,
sign-offs and legal disclaimers. It errs on the side of keeping text: every cut is anchored to a line of its
own, and a cut that would leave nothing (an email that is only a quote, or only "Thanks!") is not made.

A forwarded message is content, not history: the customer forwards it because it is the request (a payment
notice, a colleague's question). Gmail's, Apple Mail's and Thunderbird's forward blocks are always kept, less
their From/Date/To header lines (the forwarded Subject's text stays); an Outlook header block ("-----Original
Message-----", "From: ... Sent: ...") means a forward when the email's subject says so (`forwarded=True`, which
`model_text` sets from a "Fwd:"/"FW:" subject) and a quoted reply otherwise. Signatures and sign-offs are cut in
the writer's text and in each forwarded message separately, so a signature above a forward does not take the
forward with it; a quoted reply inside a forward ("On ... wrote:", "> " lines) is still cut.

Change anything here and bump `PREPROCESSING_VERSION`: model artifacts record it, so that a model is never
served with cleaning other than the one it was trained on.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["PREPROCESSING_VERSION", "clean_text", "is_forward_subject", "model_text"]

PREPROCESSING_VERSION = "2"

# Zero-width and direction marks survive NFKC and split words invisibly; soft hyphens too.
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\x00-\x08\x0e-\x1b\x7f]")

# Where the quoted history of a reply begins: everything from here on was written by someone else, earlier.
_REPLY_HEADER = re.compile(
    r"^[ \t]*(?:"
    r"(?-i:On)\b[^\n]{0,250}(?:\n[^\n]{0,250})?\bwrote:[ \t]*$"  # Gmail / Apple Mail, often wrapped
    r"|(?-i:Le)\b[^\n]{0,250}(?:\n[^\n]{0,250})?\ba écrit ?:[ \t]*$"
    r"|(?-i:Am)\b[^\n]{0,250}(?:\n[^\n]{0,250})?\bschrieb[^\n]{0,120}:[ \t]*$"
    r")",
    re.IGNORECASE | re.MULTILINE,
)
# Outlook's header block: quoted history under a reply, the forwarded message under a forward.
_OUTLOOK_HEADER = re.compile(
    r"^[ \t]*(?:"
    r"-{2,}[ \t]*Original Message[ \t]*-{2,}"
    r"|_{10,}[ \t]*\n[ \t]*From:"  # Outlook's rule line above its header block
    r"|From:[^\n]*\n(?:[^\n]*\n){0,2}[ \t]*Sent:"  # Outlook header block: From / Sent / To / Subject
    r")",
    re.IGNORECASE | re.MULTILINE,
)
# Where a forwarded message begins, in the clients whose marker says so (Gmail, Apple Mail, Thunderbird).
_FORWARD_HEADER = re.compile(
    r"^[ \t]*(?:-{2,}[ \t]*Forwarded message[ \t]*-{2,}|Begin forwarded message:)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
# The same markers inside a line, for bodies whose newlines were flattened (web forms, some HTML). They need
# more evidence than at a line start: a weekday or date right after "On" (so "On time delivery, the driver
# wrote:" survives), and From, Sent and To together for Outlook.
_INLINE_REPLY_HEADER = re.compile(r"\bOn (?:Mon|Tue|Wed|Thu|Fri|Sat|Sun|\d)[^\n]{0,200}?\bwrote:(?=\s|$)")
_INLINE_OUTLOOK_HEADER = re.compile(r"\bFrom: [^\n]{0,200}?\bSent: [^\n]{0,100}?\bTo: ")
_INLINE_SUBJECT = re.compile(r"\bSubject: ?")
# A field line of a forward's header block ("From: ...", "**Subject:** ..."); the Subject's text is kept.
_HEADER_FIELD = re.compile(r"[ \t]*[*_]*(From|Sent|Date|To|Cc|Bcc|Reply-To|Subject)[*_]*[ \t]*:[*_]*[ \t]*(.*)", re.I)
_HEADER_LINES = 12  # a forward header longer than this is not a header
# Forwarded messages split out of one email; past this the rest is one section. Each split searches the rest of the
# text, so without a cap a body of thousands of forward markers took time growing with the square of its length.
_MAX_FORWARDS = 16
# A subject that says the email forwards something: "Fwd:", "FW:", "Fw:" (after an optional "[EXTERNAL]" tag).
_FORWARD_SUBJECT = re.compile(r"^[ \t]*(?:\[[^\]\n]{1,30}\][ \t]*)?(?:fwd?|fw)[ \t]*:", re.IGNORECASE)
_QUOTE_LINE = re.compile(r"^[ \t]*>[^\n]*(?:\n|$)", re.MULTILINE)

# Legal boilerplate: removed from its first line to the end of its paragraph.
_DISCLAIMER = re.compile(
    r"^[ \t*_-]*(?:"
    r"CONFIDENTIALITY NOTICE|CONFIDENTIAL(?:ITY)? (?:NOTE|STATEMENT|WARNING)|(?:LEGAL )?DISCLAIMER\s*:"
    r"|This (?:e-?mail|message|communication|transmission)(?: \(including any attachments\)"
    r"| and any (?:files|attachments|documents)(?: (?:transmitted|sent) with it)?)?"
    r" (?:is|are|may be|may contain|contains?)\b[^\n.]{0,80}?\b(?:confidential|privileged)"
    r"|The (?:information|contents?) (?:contained )?(?:in|of) this (?:e-?mail|message|communication)"
    r"[^\n.]{0,80}?\b(?:confidential|privileged)"
    r"|If you (?:are not the intended recipient"
    r"|have received this (?:e-?mail|message|communication) in error)"
    r")",
    re.IGNORECASE | re.MULTILINE,
)
_PARAGRAPH_END = re.compile(r"\n[ \t]*\n")

# Signatures: the RFC 3676 "-- " delimiter, and mobile footers. Footers are matched case-sensitively and by
# device name, so "sent from my card yesterday" in a sentence is not one.
_SIGNATURE = re.compile(
    r"^(?:--[ \t]*"
    r"|[ \t]*Sent from my (?:iPhone|iPad|Android|Samsung|Galaxy|Huawei|Pixel|Xiaomi|BlackBerry|mobile"
    r"|phone|smartphone|tablet)\b[^\n]{0,40}"
    r"|[ \t]*Sent from (?:Mail|Outlook|Yahoo Mail|Gmail|my Verizon)\b[^\n]{0,40}"
    r"|[ \t]*Get Outlook for (?:iOS|Android)[^\n]{0,20})$",
    re.MULTILINE,
)

# A line that is only a sign-off, optionally followed by ", Name" on the same line.
_SIGN_OFF = re.compile(
    r"(?:(?:best|kind|kindest|warm|warmest|many|with (?:best|kind))? ?regards|best(?: wishes)?|all the best"
    r"|cheers|sincerely|yours(?: sincerely| truly| faithfully)?|respectfully|take care|talk soon"
    r"|(?:many )?thanks(?: (?:a lot|so much|again|in advance))?|thank you(?: (?:very much|so much|again"
    r"|in advance))?|thx|br|rgds|have a (?:nice|great|good) (?:day|weekend))"
    r"[ \t]*[.!]*[ \t]*(?:[,-][ \t]*(?P<name>[^\n,]{1,40})?)?[ \t]*",
    re.IGNORECASE,
)
_NAME_PARTICLES = {"de", "van", "von", "der", "da", "di", "du", "del", "la", "le", "bin", "al"}
_PS = re.compile(r"P\.? ?S\b", re.IGNORECASE)
_SIGN_OFF_WINDOW = 8  # a sign-off this many lines or more above the end is part of the text


def _is_name(line: str) -> bool:
    """Does a line look like the name under a sign-off ("Jane", "Jean-Luc O'Brien", "j. smith")?"""
    words = line.split()
    if not 1 <= len(words) <= 4 or len(line) > 40 or any(ch in line for ch in "?!:;@") or line.endswith("."):
        return False
    if len(words) == 1:
        # A lone word under "Thanks," is a name, even in lower case ("thanks,\njo").
        return any(ch.isalpha() for ch in words[0])
    return all(word.lower() in _NAME_PARTICLES or not word.lstrip("(\"'")[:1].islower() for word in words) and any(
        ch.isalpha() for ch in line
    )


def _looks_like_signature_block(lines: list[str]) -> bool:
    """Lines under a sign-off: a name, then at most a few short lines (title, company, phone, address)."""
    if not lines:
        return True
    return (
        _is_name(lines[0])
        and len(lines) <= 5
        and all(len(line) <= 80 and not line.endswith("?") and not _PS.match(line) for line in lines)
    )


def _cut_sign_off(text: str) -> str:
    lines = text.rstrip().split("\n")
    if len(lines) < 2:
        return text  # a one-line text that is only a sign-off is kept whole anyway
    for i in range(len(lines) - 1, max(-1, len(lines) - 1 - _SIGN_OFF_WINDOW), -1):
        match = _SIGN_OFF.fullmatch(lines[i].strip())
        if match is None:
            continue
        if match.group("name") and not _is_name(match.group("name").strip()):
            continue
        if _looks_like_signature_block([line.strip() for line in lines[i + 1 :] if line.strip()]):
            return "\n".join(lines[:i])
    return text


def _skip_forward_header(text: str, start: int) -> tuple[str, int]:
    """(the forwarded Subject's text, where the forwarded content begins) for a header block from `start`.

    `start` is the beginning of the block's first line (a marker line such as "-----Original Message-----", or
    the "From:" line itself); marker, header fields and blank lines are skipped, the first other line is content.
    """
    subject = ""
    pos = start
    for count, line in enumerate(text[start:].split("\n")):
        field = _HEADER_FIELD.fullmatch(line)
        if count >= _HEADER_LINES or not (count == 0 or field or not line.strip()):
            break
        if field and field.group(1).lower() == "subject":
            subject = field.group(2).strip()
        pos += len(line) + 1
    return subject, min(pos, len(text))


def _sections(text: str, forwarded: bool) -> list[str]:
    """The writer's text, then each forwarded message's subject and content; quoted reply history cut off."""
    sections: list[str] = []
    pos = 0
    while True:
        replies = [_REPLY_HEADER.search(text, pos), _INLINE_REPLY_HEADER.search(text, pos)]
        outlook = [_OUTLOOK_HEADER.search(text, pos), _INLINE_OUTLOOK_HEADER.search(text, pos)]
        forwards = [_FORWARD_HEADER.search(text, pos)]
        (forwards if forwarded else replies).extend(outlook)
        reply = min((m.start() for m in replies if m), default=len(text))
        forward = min((m for m in forwards if m), key=lambda m: m.start(), default=None)
        if forward is None or reply <= forward.start() or len(sections) >= 2 * _MAX_FORWARDS:
            sections.append(text[pos:reply])
            return sections
        sections.append(text[pos : forward.start()])
        if forward.re is _INLINE_OUTLOOK_HEADER:
            # Flattened: no line ends to go by; the content starts after "Subject:" if it follows soon.
            subject = _INLINE_SUBJECT.match(text, forward.end()) or _INLINE_SUBJECT.search(
                text, forward.end(), forward.end() + 250
            )
            pos = subject.end() if subject else forward.end()
            continue
        # Header blocks start on a line of their own; the rule-line form matches from the rule line.
        line_start = text.rfind("\n", 0, forward.start()) + 1
        subject_text, pos = _skip_forward_header(text, line_start)
        sections.append(subject_text)


def _cut_quote_lines(text: str) -> str:
    return _QUOTE_LINE.sub("", text) if ">" in text else text


def _cut_disclaimers(text: str) -> str:
    while match := _DISCLAIMER.search(text):
        end = _PARAGRAPH_END.search(text, match.end())
        text = text[: match.start()] + (text[end.start() :] if end else "")
    return text


def _cut_signature(text: str) -> str:
    match = _SIGNATURE.search(text)
    if match:
        text = text[: match.start()]
    # Two rounds: "Thanks in advance!\nBest,\nJane" ends in two sign-offs.
    for _ in range(2):
        shorter = _cut_sign_off(text)
        if shorter == text or not shorter.strip():
            break
        text = shorter
    return text


def clean_text(text: str, *, forwarded: bool = False) -> str:
    """Drop quoted replies, signatures, sign-offs and disclaimers; NFKC-normalise; collapse whitespace.

    `forwarded` says the email forwards a message (its subject starts "Fwd:" or "FW:"), so that an Outlook
    header block is read as the forwarded message's header, not as quoted history; see the module docstring.
    """
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    sections = [_cut_quote_lines(section) for section in _sections(text, forwarded)]
    if not any(section.strip() for section in sections):
        sections = [text]  # an email that is nothing but a quote still says something; keep it whole
    sections = [_cut_disclaimers(section) for section in sections]
    signed = [_cut_signature(section) for section in sections]
    if any(section.strip() for section in signed):
        sections = signed
    return " ".join(" ".join(sections).split())


def is_forward_subject(subject: str) -> bool:
    """Does a subject line say that the email forwards a message ("Fwd: ...", "FW: ...", "Fw: ...")?"""
    return _FORWARD_SUBJECT.match(subject) is not None


def model_text(subject: str, body: str) -> str:
    """The one string both models see: "<subject> | <body>", cleaned; either alone when the other is empty."""
    forwarded = is_forward_subject(subject)
    subject, body = clean_text(subject), clean_text(body, forwarded=forwarded)
    if subject and body:
        return f"{subject} | {body}"
    return subject or body
