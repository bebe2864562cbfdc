"""Turn what clients and data files send into one `Email` value: subject, plain-text body, attachment count.

Two entry points: `parse_raw` for an RFC 822 / MIME message (the HTTP `raw` field, `.eml` files, mbox
messages) and `from_fields` for subject/body pairs (JSON and CSV input). Real mail is messy, so the parser
never trusts a declared charset or transfer encoding: bytes are decoded UTF-8 first (the common truth behind
a wrong label), then with the declared charset, and finally with replacement characters. Content-Type and
Content-Disposition are read by the modern (`email.policy.default`) header parser, falling back to compat32's
reading where it raises. Only input that is not a message at all raises `EmailParseError`.
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
from html.parser import HTMLParser
from typing import Any

__all__ = [
    "Email",
    "EmailParseError",
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


# --- charset handling -------------------------------------------------------------------------------------

# Labels under which UTF-8 text most often arrives mislabelled; for these UTF-8 is tried first, and a failure
# falls back to windows-1252 (a superset of the printable part of latin-1, as browsers do).
_UTF8_FIRST = {"ascii", "latin-1", "iso8859-1", "cp1252", "utf-8", "iso8859-15"}


def _codec(charset: str | None) -> str | None:
    """The Python codec name for a MIME charset label, or None when the label is unknown or missing."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").lower().split("*", 1)[0]  # RFC 2231 adds "*lang"
    try:
        return codecs.lookup(label).name
    except (LookupError, ValueError):
        return None


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
    return " ".join(value.split())


# --- HTML -------------------------------------------------------------------------------------------------

_SKIP_TAGS = {"script", "style", "head", "title", "noscript", "template"}
_BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset", "figcaption",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav",
    "ol", "p", "pre", "section", "table", "tbody", "thead", "tfoot", "tr", "ul",
}  # fmt: skip
_CELL_TAGS = {"td", "th"}


class _TextExtractor(HTMLParser):
    """Collects visible text as lines; <blockquote> lines get "> " so clean_text can drop quoted replies."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[tuple[int, list[str]]] = [(0, [])]
        self._skip: list[str] = []
        self._quote_depth = 0

    def _newline(self) -> None:
        self.lines.append((self._quote_depth, []))

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
            self.lines[-1][1].append(" ")

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
            self.lines[-1][1].append(data)

    def text(self) -> str:
        out: list[str] = []
        for depth, chunks in self.lines:
            line = " ".join("".join(chunks).split())  # HTML collapses whitespace runs
            if line:
                out.append("> " * depth + line)
            elif out and out[-1]:
                out.append("")  # keep one blank line between blocks, never more
        return "\n".join(out).strip()


def html_to_text(html: str) -> str:
    """Visible text of an HTML document: no script/style/head, block tags and <br> become line breaks."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()


_LOOKS_LIKE_HTML = re.compile(
    r"<(?:!doctype\s+html|/?(?:html|body|head|p|div|br|span|table|tr|td|ul|ol|li|h[1-6]|font|blockquote)\b)",
    re.IGNORECASE,
)


def from_fields(subject: str, body: str) -> Email:
    """An `Email` from subject/body fields (JSON, CSV); an HTML body is converted to text."""
    if not isinstance(subject, str) or not isinstance(body, str):
        raise EmailParseError(
            f"subject and body must be strings, got {type(subject).__name__} and {type(body).__name__}"
        )
    if _LOOKS_LIKE_HTML.search(body):
        body = html_to_text(body)
    return Email(subject=" ".join(subject.split()), body=body)


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


class _Walk:
    """Depth-first walk of a MIME tree that returns body text and counts attachments on the way."""

    def __init__(self) -> None:
        self.attachments = 0

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
        if ctype == "text/html":
            return html_to_text(text), False
        return text, True

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


def _parse(data: bytes) -> ParsedMessage:
    # compat32 splits the message into parts without interpreting any header (the default policy would parse
    # every header on every read, 5-8x slower); headers are decoded here, and content types read by the
    # default policy in _content_info.
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    headers: dict[str, str] = {}
    for name, value in msg.raw_items():
        key = name.lower()
        if key not in headers:
            headers[key] = _decode_header(str(value))
    walk = _Walk()
    body, _ = walk.text(msg)
    if not headers and not body.strip():
        raise EmailParseError("not an email message: no headers and no body")
    subject = headers.get("subject", "")
    return ParsedMessage(Email(subject=subject, body=body.strip(), attachments=walk.attachments), headers)


def parse_message(raw: str | bytes) -> ParsedMessage:
    """Parse an RFC 822 / MIME message into an `Email` plus its decoded headers."""
    if isinstance(raw, str):
        # Text input was already decoded by the client; UTF-8 is how it goes back to bytes unchanged.
        data = raw.encode("utf-8", "surrogateescape")
    elif isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
    else:
        raise EmailParseError(f"a raw message must be str or bytes, got {type(raw).__name__}")
    if not data.strip():
        raise EmailParseError("empty message: no headers and no body")
    _check_is_text(data)
    try:
        return _parse(data)
    except EmailParseError:
        raise
    except Exception as exc:  # the stdlib parser is lenient; this is a last line against its corner cases
        raise EmailParseError(f"unreadable email message: {type(exc).__name__}: {exc}") from exc


def parse_raw(raw: str | bytes) -> Email:
    """Parse an RFC 822 / MIME message; raises `EmailParseError` when the input is not a message."""
    return parse_message(raw).email
