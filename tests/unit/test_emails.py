"""serving.mail.emails: every MIME shape clients send, HTML conversion, and input that is not a message."""

from __future__ import annotations

import contextlib
import email.policy
import random
from pathlib import Path

import pytest

from serving.mail.emails import Email, EmailParseError, from_fields, html_to_text, parse_message, parse_raw

pytestmark = pytest.mark.unit

MIME = Path(__file__).parents[1] / "fixtures" / "emails" / "mime"


def fixture(name: str) -> Email:
    return parse_raw((MIME / name).read_bytes())


def test_multipart_alternative_prefers_plain_text() -> None:
    mail = fixture("multipart_alternative.eml")
    assert mail.subject == "Invoice 4411 is wrong"
    assert mail.body == ("Hello,\n\ninvoice 4411 charges me for 30 seats but we only have 25.\nPlease correct it.")
    assert "HTML VERSION" not in mail.body
    assert mail.attachments == 0


def test_html_only_body_is_converted() -> None:
    mail = fixture("html_only.eml")
    assert mail.body == (
        'The app crashes when I log in on Android…\n\nSteps:\n1. open app\n2. tap "Log in" & wait\n\nVersion 5.2'
    )
    for hidden in ("ignored", "color: red", "comment", "<"):
        assert hidden not in mail.body


def test_quoted_printable_with_soft_line_breaks() -> None:
    mail = fixture("quoted_printable.eml")
    assert "my parcel to Zürich has not arrived" in mail.body
    assert "“delivered”" in mail.body  # split across a soft line break in the file
    assert "this line is long enough that quoted-printable must wrap it" in mail.body
    assert "=\n" not in mail.body and "=C3" not in mail.body


def test_base64_body() -> None:
    mail = fixture("base64.eml")
    assert mail.body == (
        "I forgot my password and the reset link says “expired”. Please help me get back into my account."
    )


def test_latin1_body() -> None:
    assert fixture("latin1.eml").body == (
        "Me cobraron dos veces la factura de enero. ¿Pueden devolver el importe? Grüße aus Málaga."
    )


def test_windows_1252_quoted_printable_body() -> None:
    assert fixture("windows1252.eml").body == (
        "We’d like a quote for 40 licences – budget is about €5,000 – and a “volume discount” if possible."
    )


def test_shift_jis_body_and_iso_2022_jp_subject() -> None:
    mail = fixture("shift_jis.eml")
    assert mail.subject == "アカウント変更"
    assert mail.body == "アカウントのメールアドレスを変更したいです。"


def test_bogus_charsets_decode_without_crashing() -> None:
    mail = fixture("bogus_charset.eml")
    assert mail.subject == "Café question"  # encoded word in a charset nobody knows
    assert mail.body == "Do you still sell gift cards for the café? Naïve question, sorry."


def test_bogus_charset_with_undecodable_bytes_uses_replacement() -> None:
    raw = b"Subject: x\nContent-Type: text/plain; charset=no-such-charset\n\nbad \x81\x8d bytes"
    assert parse_raw(raw).body == "bad \ufffd\ufffd bytes"


def test_encoded_word_subject_across_charsets_and_folding() -> None:
    parsed = parse_message((MIME / "encoded_subject.eml").read_bytes())
    assert parsed.email.subject == "Résiliation de mon abonnement à la fin du mois"
    assert parsed.headers["from"] == "Renée Dupont <renee@example.fr>"


def test_attachments_are_counted_not_read() -> None:
    mail = fixture("attachments.eml")
    assert mail.body == "The attached receipt shows a charge we do not recognise."
    # a PDF attachment, an inline image and a text/plain part marked as attachment
    assert mail.attachments == 3


def test_nested_multiparts() -> None:
    mail = fixture("nested.eml")
    assert mail.subject == "Re: API returns 500"
    assert mail.body.startswith("Hi,\n\nthe API returns HTTP 500 for every POST /orders since this morning.")
    assert "wrote:\n> Is it still failing?" in mail.body  # only the plain alternative has the quoted reply
    assert mail.attachments == 2  # the inline chart inside multipart/related and the JSON attachment


def test_html_alternative_used_when_plain_part_is_empty() -> None:
    raw = (
        "Subject: s\nContent-Type: multipart/alternative; boundary=B\n\n--B\nContent-Type: text/plain\n\n \n"
        "--B\nContent-Type: text/html\n\n<p>Only the <b>HTML</b> part says it.</p>\n--B--\n"
    )
    assert parse_raw(raw).body == "Only the HTML part says it."


def test_attached_message_is_counted_and_inline_forward_is_read() -> None:
    def forward(disposition: str) -> str:
        return (
            "Subject: Fwd: order\nContent-Type: multipart/mixed; boundary=B\n\n"
            "--B\nContent-Type: text/plain\n\nSee below.\n"
            "--B\nContent-Type: message/rfc822\n" + disposition + "\n"
            "Subject: order\n\nMy order 77 never arrived.\n--B--\n"
        )

    attached = parse_raw(forward("Content-Disposition: attachment\n"))
    assert (attached.body, attached.attachments) == ("See below.", 1)
    inline = parse_raw(forward(""))
    assert (inline.body, inline.attachments) == ("See below.\n\nMy order 77 never arrived.", 0)


def test_raw_8bit_headers_and_str_input() -> None:
    assert parse_raw(b"Subject: caf\xe9 cr\xe8me\n\nx").subject == "café crème"  # latin-1 bytes, no encoding
    assert parse_raw("Subject: Grüße\n\nÜber die Rechnung".encode()).subject == "Grüße"
    mail = parse_raw("Subject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nÜber die Rechnung\r\n")
    assert (mail.subject, mail.body) == ("Grüße", "Über die Rechnung")


def test_broken_base64_encoded_word_stays_visible() -> None:
    assert parse_raw(b"Subject: Hi =?utf-8?b?!!!?=\n\nx").subject == "Hi =?utf-8?b?!!!?="


def test_headers_are_decoded_for_the_data_readers() -> None:
    parsed = parse_message((MIME / "attachments.eml").read_bytes())
    assert parsed.headers["x-mailroute-queue"] == "billing"
    assert parsed.headers["message-id"] == "<att-1@mailroute.example>"


def test_text_without_headers_is_a_body() -> None:
    assert parse_raw("my card is blocked, please help") == Email("", "my card is blocked, please help", 0)


def test_headers_without_body() -> None:
    assert parse_raw("Subject: only a subject\n") == Email("only a subject", "", 0)


def test_falls_back_to_compat32_when_the_default_policy_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def exploding(name: str, value: str) -> str:
        raise IndexError("simulated header parser bug")

    monkeypatch.setattr(email.policy, "default", email.policy.default.clone(header_factory=exploding))
    raw = (
        "Subject: fallback\nContent-Type: text/plain; charset=windows-1252; x-unique=fallback-test\n"
        "Content-Transfer-Encoding: quoted-printable\n\nWe=92d like a quote.\n"
    )
    assert parse_raw(raw) == Email("fallback", "We’d like a quote.", 0)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        ("  \r\n\n\t ", "empty message"),
        (b"%PDF-1.4\n\x00\x01\x02\x03binary", "binary data"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(32)) * 4, "binary data"),
        ("\u00a0\n", "no headers and no body"),  # no-break space: blank, but not to bytes.strip()
        (b": value\n\n", "no headers and no body"),
    ],
)
def test_not_a_message_raises_one_line(raw: str | bytes, reason: str) -> None:
    with pytest.raises(EmailParseError, match=reason) as info:
        parse_raw(raw)
    assert "\n" not in str(info.value)


def test_a_stray_control_byte_is_not_binary() -> None:
    raw = b"Subject: hi\n\nMy order\x00 77 is late and the invoice is wrong, please have a look at it soon."
    assert parse_raw(raw).body.startswith("My order")


def test_damaged_messages_never_crash() -> None:
    # Seeded damage to every fixture: truncation, flipped bytes, stray MIME syntax. Each must give an Email or
    # an EmailParseError, nothing else.
    rng = random.Random(7)
    originals = [path.read_bytes() for path in sorted(MIME.glob("*.eml"))]
    junk = [b"=?", b"?=", b"--", b"\n", b"charset=", b'"', b"*=", b"=?utf-16?b?AAA?=", b"boundary=", b"\r"]
    for _ in range(300):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                del data[at : at + rng.randrange(100)]
            elif action == 1:
                data[at] = rng.randrange(256)
            else:
                data[at:at] = rng.choice(junk)
        with contextlib.suppress(EmailParseError):
            assert isinstance(parse_raw(bytes(data)), Email)


def test_wrong_input_type_raises() -> None:
    with pytest.raises(EmailParseError, match="must be str or bytes"):
        parse_raw(12345)  # type: ignore[arg-type]


def test_html_to_text() -> None:
    html = (
        "<html><head><title>T</title><style>x{}</style></head><body>"
        "<script>alert(1)</script><h1>Order&nbsp;#12</h1><p>Line&amp;one<br>Line two</p>"
        "<ul><li>first</li><li>second</li></ul>"
        "<blockquote><p>old reply</p></blockquote><p>5 &lt; 6 &#8364;</p></body></html>"
    )
    assert html_to_text(html) == "Order #12\n\nLine&one\nLine two\n\nfirst\n\nsecond\n\n> old reply\n\n5 < 6 €"


def test_html_to_text_unclosed_head_ends_at_body() -> None:
    assert html_to_text("<head><style>p{}</style><body><p>visible</p>") == "visible"


def test_from_fields_plain_and_html() -> None:
    assert from_fields("  Refund  please ", "a < b, and 3 > 2") == Email("Refund please", "a < b, and 3 > 2")
    assert from_fields("s", "<div>Hello<br>there</div>").body == "Hello\nthere"
    assert from_fields("s", "<P>Upper case tags</P>").body == "Upper case tags"


def test_from_fields_rejects_non_strings() -> None:
    with pytest.raises(EmailParseError, match="must be strings"):
        from_fields("s", None)  # type: ignore[arg-type]
