"""Turn what clients and data files send into one `Email` value: subject, plain-text body, attachment count.

Two entry points: `parse_raw` for an RFC 822 / MIME message (the HTTP `raw` field, `.eml` files, mbox
messages) and `from_fields` for subject/body pairs (JSON and CSV input). Real mail is messy, so the parser
never trusts a declared charset or transfer encoding: bytes are decoded UTF-8 first (the common truth behind
a wrong label), then with the declared charset, and finally with replacement characters. Content-Type and
Content-Disposition are read by the modern (`email.policy.default`) header parser, falling back to compat32's
reading where it raises. Only input that is not a message at all raises `EmailParseError`.

Hostile input: nothing but `EmailParseError` (one line) escapes, no input takes more than seconds, and memory stays
bounded by the input's size, not by what it decodes to. Returned text has no NUL and no lone surrogate (U+FFFD
instead): SQLite, PostgreSQL and strict UTF-8 refuse both. A message over a limit is refused, never cut short, with
`EmailTooLarge` (an `EmailParseError`, so the data readers skip it; the HTTP API answers 413, as for a request over
its size limit):
- decoded text over `max_text_chars` (`MAX_TEXT_CHARS` unless the caller passes its own; the API passes its request
  limit): the subject plus every text part after transfer, charset and HTML decoding. Transfer encodings only
  shrink (base64 to 3/4); HTML conversion can grow text, and the sum bounds what is held at once;
- more than `MAX_PARTS` MIME parts, or nesting deeper than `MAX_DEPTH` levels: the stdlib parser recurses once per
  level and checks every line against every open boundary.
Attachments are counted, never decoded. Content-Type and Content-Disposition values are read up to 998 characters
(RFC 5322's line limit; the stdlib's parameter parser takes time growing with the square of their length). Python's
own codecs (punycode, idna, the escape codecs) count as unknown charsets. HTML that never closes a tag, comment or
declaration loses the unclosed rest, as in a browser.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.policy
import email.quoprimime
import functools
import re
from dataclasses import dataclass
from email.message import Message
from email.policy import Policy, compat32
from html.parser import HTMLParser
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_PARTS",
    "MAX_TEXT_CHARS",
    "Email",
    "EmailParseError",
    "EmailTooLarge",
    "ParsedMessage",
    "from_fields",
    "html_to_text",
    "parse_message",
    "parse_raw",
]


@dataclass(frozen=True)
class Email:
    """One customer email as the router sees it; `body` is plain text (HTML already converted)."""

    subject: str
    body: str
    attachments: int = 0


@dataclass(frozen=True)
class ParsedMessage:
    """A parsed message plus its decoded headers (lower-case names, first occurrence wins).

    The data readers need headers the router does not (Message-ID, From, Date, X-Mailroute-Queue).
    """

    email: Email
    headers: dict[str, str]


class EmailParseError(ValueError):
    """Input that is not an email message; the message is one line meant for a person."""


class EmailTooLarge(EmailParseError):
    """A message over one of the parser's limits (decoded text, MIME parts, nesting); see the module docstring."""


MAX_TEXT_CHARS = 1 << 20  # a thousand pages of text; real emails stay far below
MAX_PARTS = 1000  # MIME parts in one message, the message itself included
MAX_DEPTH = 20  # levels of multipart and message/rfc822 nesting; forwards of forwards rarely pass 10
_MAX_CONTENT_HEADER = 998  # characters of a Content-Type or Content-Disposition value that are read
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(text: str) -> str:
    """Text without NUL characters or lone surrogates, which SQLite, PostgreSQL and strict UTF-8 refuse."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text if text.isascii() else _LONE_SURROGATE.sub("\ufffd", text)


# --- charset handling -------------------------------------------------------------------------------------

# Labels under which UTF-8 text most often arrives mislabelled; for these UTF-8 is tried first, and a failure
# falls back to windows-1252 (a superset of the printable part of latin-1, as browsers do).
_UTF8_FIRST = {"ascii", "latin-1", "iso8859-1", "cp1252", "utf-8", "iso8859-15"}
# Python's own text codecs, never a mail charset: punycode decodes crafted input in time growing with the square
# of its length, and the escape codecs turn ASCII such as "\\x00" into NUL characters and lone surrogates.
_NOT_CHARSETS = {"punycode", "idna", "unicode-escape", "raw-unicode-escape"}


def _codec(charset: str | None) -> str | None:
    """The Python codec name for a MIME charset label, or None when the label is unknown or missing."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").lower().split("*", 1)[0]  # RFC 2231 adds "*lang"
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError):
        return None
    return None if name in _NOT_CHARSETS else name


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode bytes of a declared (possibly wrong or bogus) charset without ever raising."""
    codec = _codec(charset)
    if codec is None or codec in _UTF8_FIRST:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("cp1252", errors="replace")
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        pass
    except Exception:  # some codecs (e.g. rot13, hex) are not text codecs and raise other errors
        codec = "cp1252"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode(codec, errors="replace")


def _has_surrogates(text: str) -> bool:
    # The bytes parser smuggles undecodable 8-bit bytes through as lone surrogates.
    return not text.isascii() and any("\ud800" <= ch <= "\udfff" for ch in text)


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(?<=\?=)[ \t]+(?==\?)")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def _decode_word(match: re.Match[str]) -> str:
    charset, encoding, payload = match.group(1), match.group(2).lower(), match.group(3)
    if encoding == "q":
        data = email.quoprimime.header_decode(payload).encode("latin-1", errors="replace")
    else:
        try:
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        except (binascii.Error, ValueError):
            return match.group(0)  # leave a broken word visible rather than guess
    return _decode_bytes(data, charset)


def _decode_header(value: str) -> str:
    """Decode a raw header value: unfold, raw 8-bit bytes, RFC 2047 encoded words (any charset)."""
    value = _FOLD.sub("", value)
    if _has_surrogates(value):
        value = _decode_bytes(value.encode("ascii", "surrogateescape"), None)
    if "=?" in value:
        # Whitespace between two adjacent encoded words is folding, not content (RFC 2047 section 6.2).
        value = _ENCODED_WORD.sub(_decode_word, _BETWEEN_WORDS.sub("", value))
    return " ".join(_storable(value).split())


# --- HTML -------------------------------------------------------------------------------------------------

_SKIP_TAGS = {"script", "style", "head", "title", "noscript", "template"}
_BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset", "figcaption",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav",
    "ol", "p", "pre", "section", "table", "tbody", "thead", "tfoot", "tr", "ul",
}  # fmt: skip
_CELL_TAGS = {"td", "th"}
# "> " marks per line at most: one is enough for clean_text to drop a quote, and a prefix that grew with every
# level let a few kB of nested <blockquote>s turn each short line below them into kilobytes.
_MAX_QUOTE_MARKS = 8


class _TextExtractor(HTMLParser):
    """Collects visible text as lines; <blockquote> lines get "> " so clean_text can drop quoted replies."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._chunks: list[str] = []  # the line being read
        self._line_depth = 0  # the quote depth where that line began
        self._skip: list[str] = []
        self._quote_depth = 0

    def _newline(self) -> None:
        # Each line is finished as it ends, so a run of empty blocks keeps one blank line, not one object each.
        line = " ".join("".join(self._chunks).split())  # HTML collapses whitespace runs
        if line:
            self.lines.append("> " * min(self._line_depth, _MAX_QUOTE_MARKS) + line)
        elif self.lines and self.lines[-1]:
            self.lines.append("")  # keep one blank line between blocks, never more
        self._chunks = []
        self._line_depth = self._quote_depth

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip.append(tag)
        elif tag == "body":
            self._skip.clear()  # an unclosed <head> ends where the body starts
        if tag == "blockquote":
            self._quote_depth += 1
        if tag in _BLOCK_TAGS:
            self._newline()
        elif tag in _CELL_TAGS:
            self._chunks.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # "<br/>" is one line break, not a start and an end tag (the base class calls both).
        self.handle_starttag(tag, attrs)
        if tag not in _BLOCK_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and tag in self._skip:
            while self._skip and self._skip.pop() != tag:
                pass
        if tag == "blockquote":
            self._quote_depth = max(0, self._quote_depth - 1)
        if tag in _BLOCK_TAGS:
            self._newline()

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._chunks.append(data)

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        # _markupbase raises AssertionError for "<![" without a keyword it knows ("<![ x]>"); HTML5 reads any
        # such section as a bogus comment, up to the next ">".
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            return self.parse_bogus_comment(i)

    def text(self) -> str:
        self._newline()
        return "\n".join(self.lines).strip()


def html_to_text(html: str) -> str:
    """Visible text of an HTML document: no script/style/head, block tags and <br> become line breaks.

    A tag, comment or declaration that is never closed hides the rest of the document, as in a browser.
    """
    parser = _TextExtractor()
    parser.feed(html)
    # feed() stops at the first tag, comment or declaration that is never closed and keeps the rest unread. On
    # Python 3.11.7, close() then re-scans to the end for every "<" in that rest: minutes for 400 kB of "<!--".
    # HTML5 drops such a rest (end of file in a tag or comment). What else feed() keeps is text held back for a
    # possible character reference ("R&D &amp" at the end), which has no "<", or an unclosed <script>'s content,
    # which close() skips in one search: close() reads those.
    if not parser.rawdata.startswith("<"):
        parser.close()
    return parser.text()


_LOOKS_LIKE_HTML = re.compile(
    r"<(?:!doctype\s+html|/?(?:html|body|head|p|div|br|span|table|tr|td|ul|ol|li|h[1-6]|font|blockquote)\b)",
    re.IGNORECASE,
)


def from_fields(subject: str, body: str, *, max_text_chars: int = MAX_TEXT_CHARS) -> Email:
    """An `Email` from subject/body fields (JSON, CSV); an HTML body is converted to text.

    Raises `EmailTooLarge` when the text passes `max_text_chars` (HTML conversion can add "> " quote marks).
    """
    if not isinstance(subject, str) or not isinstance(body, str):
        raise EmailParseError(
            f"subject and body must be strings, got {type(subject).__name__} and {type(body).__name__}"
        )
    if _LOOKS_LIKE_HTML.search(body):
        body = html_to_text(body)
    subject, body = " ".join(_storable(subject).split()), _storable(body)
    if len(subject) + len(body) > max_text_chars:
        raise EmailTooLarge(f"email text is over the limit of {max_text_chars} characters once decoded")
    return Email(subject=subject, body=body)


# --- MIME -------------------------------------------------------------------------------------------------

_BODY_TYPES = {"text/plain", "text/html"}


@functools.lru_cache(maxsize=4096)
def _modern_reading(name: str, value: str) -> tuple[str, str | None]:
    """(type or disposition, charset) of a Content-Type or Content-Disposition value, read the modern way.

    The default policy reads malformed values better than compat32 (encoded words, RFC 2231, stray quotes) but
    takes ~0.1 ms a header; values repeat from one email to the next, so the reading is cached.
    """
    header: Any = email.policy.default.header_factory(name, value)
    if name == "content-type":
        return header.content_type, header.params.get("charset")
    return header.content_disposition or "", None


def _content_info(part: Message) -> tuple[str, str | None, bool]:
    """(content type, charset, is an attachment) of one MIME part."""
    raw_type, raw_disposition = part.get("content-type"), part.get("content-disposition")
    try:
        ctype, charset = (
            _modern_reading("content-type", "".join(str(raw_type).splitlines()))
            if raw_type is not None
            else (part.get_default_type(), None)
        )
        disposition = (
            _modern_reading("content-disposition", "".join(str(raw_disposition).splitlines()))[0]
            if raw_disposition is not None
            else ""
        )
    except Exception:
        # The modern header parser still has corner cases that raise; compat32's plain reading never does.
        ctype, charset, disposition = (
            part.get_content_type(),
            part.get_content_charset(),
            part.get_content_disposition() or "",
        )
    return ctype, charset, disposition == "attachment"


class _PartCount:
    """How many parts one parse has made so far, the message itself included."""

    def __init__(self) -> None:
        self.parts = 1


class _Part(Message):
    """A compat32 message that stops the stdlib parser at `MAX_PARTS` parts or `MAX_DEPTH` levels of nesting.

    The feedparser attaches each new part to its parent before reading it, and sets each header through `set_raw`:
    both are public `Message` methods, so the limits hold without reaching into the parser.
    """

    def __init__(self, policy: Policy, count: _PartCount) -> None:
        super().__init__(policy)
        self.depth = 0
        self._count = count

    def attach(self, payload: Message | str) -> None:
        if isinstance(payload, _Part):
            payload.depth = self.depth + 1
            self._count.parts += 1
            if payload.depth > MAX_DEPTH:
                raise EmailTooLarge(f"MIME parts nest deeper than {MAX_DEPTH} levels")
            if self._count.parts > MAX_PARTS:
                raise EmailTooLarge(f"the message has more than {MAX_PARTS} MIME parts")
        super().attach(payload)

    def set_raw(self, name: str, value: str) -> None:
        if len(value) > _MAX_CONTENT_HEADER and name.lower() in ("content-type", "content-disposition"):
            value = value[:_MAX_CONTENT_HEADER]
        super().set_raw(name, value)


class _Walk:
    """Depth-first walk of a MIME tree that returns body text and counts attachments on the way.

    It adds up the text it decodes and stops once that passes `max_chars`.
    """

    def __init__(self, max_chars: int) -> None:
        self.attachments = 0
        self.max_chars = max_chars
        self.chars = 0

    def spend(self, text: str) -> None:
        self.chars += len(text)
        if self.chars > self.max_chars:
            raise EmailTooLarge(f"email text is over the limit of {self.max_chars} characters once decoded")

    def text(self, part: Message) -> tuple[str, bool]:
        """(text, is_plain) of a part; is_plain says the text came from text/plain rather than HTML."""
        ctype, charset, is_attachment = _content_info(part)
        if is_attachment:
            self.attachments += 1
            return "", False
        if part.is_multipart():
            children = [child for child in part.get_payload() if isinstance(child, Message)]
            if ctype == "multipart/alternative":
                return self._alternative(children)
            texts = [self.text(child) for child in children]
            body = "\n\n".join(text for text, _ in texts if text.strip())
            return body, any(plain for text, plain in texts if text.strip())
        # Anything but a text body is an attachment; a multipart without its boundary is read as text.
        if ctype not in _BODY_TYPES and not ctype.startswith("multipart/"):
            self.attachments += 1
            return "", False
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            return "", False
        text = _decode_bytes(data, charset)
        is_plain = ctype != "text/html"
        if not is_plain:
            text = html_to_text(text)
        self.spend(text)
        return text, is_plain

    def _alternative(self, children: list[Message]) -> tuple[str, bool]:
        # Walk every alternative so attachments hidden in any of them are counted, then prefer plain text.
        texts = [self.text(child) for child in children]
        for text, plain in texts:
            if plain and text.strip():
                return text, True
        for text, _ in texts:
            if text.strip():
                return text, False
        return "", False


_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")  # ESC (0x1b) is how ISO-2022-JP switches


def _check_is_text(data: bytes) -> None:
    # Files (PDF, images, archives, UTF-16) are dense in control bytes; a mail with a stray one is still mail.
    head = data[:8192]
    if len(_BINARY_BYTES.findall(head)) > max(1, len(head) // 100):
        raise EmailParseError("not an email message: the input is binary data")


def _parse(data: bytes, max_text_chars: int) -> ParsedMessage:
    # compat32 splits the message into parts without interpreting any header (the default policy would parse
    # every header on every read, 5-8x slower); headers are decoded here, and content types read by the
    # default policy in _content_info.
    msg = email.message_from_bytes(data, functools.partial(_Part, count=_PartCount()), policy=compat32)
    headers: dict[str, str] = {}
    for name, value in msg.raw_items():
        key = name.lower()
        if key not in headers:
            headers[key] = _decode_header(str(value))
    subject = headers.get("subject", "")
    walk = _Walk(max_text_chars)
    walk.spend(subject)
    body, _ = walk.text(msg)
    body = _storable(body).strip()
    if not headers and not body:
        raise EmailParseError("not an email message: no headers and no body")
    return ParsedMessage(Email(subject=subject, body=body, attachments=walk.attachments), headers)


def parse_message(raw: str | bytes, *, max_text_chars: int = MAX_TEXT_CHARS) -> ParsedMessage:
    """Parse an RFC 822 / MIME message into an `Email` plus its decoded headers.

    Raises `EmailTooLarge` for a message over a limit (`max_text_chars` of decoded text, see the module
    docstring) and `EmailParseError` for input that is not a message.
    """
    if isinstance(raw, str):
        # Text input was already decoded by the client; UTF-8 is how it goes back to bytes unchanged, and
        # surrogateescape restores bytes that a reader decoded with it. Other lone surrogates (a JSON string may
        # hold "\ud800") have no bytes at all: they become U+FFFD.
        try:
            data = raw.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = _LONE_SURROGATE.sub("\ufffd", raw).encode("utf-8")
    elif isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
    else:
        raise EmailParseError(f"a raw message must be str or bytes, got {type(raw).__name__}")
    if not data.strip():
        raise EmailParseError("empty message: no headers and no body")
    _check_is_text(data)
    try:
        return _parse(data, max_text_chars)
    except EmailParseError:
        raise
    except Exception as exc:  # the stdlib parser is lenient; this is a last line against its corner cases
        detail = " ".join(str(exc).split())[:200]  # one line, whatever the exception says
        raise EmailParseError(f"unreadable email message: {type(exc).__name__}: {detail}") from exc


def parse_raw(raw: str | bytes, *, max_text_chars: int = MAX_TEXT_CHARS) -> Email:
    """Parse an RFC 822 / MIME message; raises `EmailParseError` when the input is not a message."""
    return parse_message(raw, max_text_chars=max_text_chars).email
