"""Model-free text descriptors: pure functions over one email's stored text, and the training vocabulary.

The monitoring job wraps these as Evidently custom descriptors (monitoring.drift) and compares their
distributions between the reference sample and the window. Evidently's own OOV and sentiment descriptors need NLTK
downloads, which fail offline; these need nothing.

A word is a run of letters (digits and punctuation split words; order numbers and error codes are not words), compared
lower-case. A text with no words has an OOV share of 0, and a text with no visible characters a non-letter share of
0, so that no descriptor is ever NaN.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable

_WORD = re.compile(r"[^\W\d_]+")
_SPACE = re.compile(r"\s+")
_LETTER = re.compile(r"[^\W\d_]")


def descriptor_text(subject: str | None, body: str | None) -> str:
    """The text the descriptors read: subject and body as stored (already cut to the text policy)."""
    return f"{subject or ''}\n{body or ''}"


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def text_length(text: str) -> float:
    """Characters, whitespace included."""
    return float(len(text))


def word_count(text: str) -> float:
    return float(len(_WORD.findall(text)))


def non_letter_share(text: str) -> float:
    """Share of the non-whitespace characters that are not letters (digits, punctuation, symbols, markup)."""
    visible = _SPACE.sub("", text)
    if not visible:
        return 0.0
    return len(_LETTER.sub("", visible)) / len(visible)


def oov_share(text: str, vocabulary: frozenset[str]) -> float:
    """Share of the text's words that the training data never contained."""
    found = words(text)
    if not found:
        return 0.0
    return sum(w not in vocabulary for w in found) / len(found)


def build_vocabulary(texts: Iterable[str], min_count: int = 1) -> frozenset[str]:
    """Every word seen at least `min_count` times in `texts` (the rows a model was fitted on)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(words(text))
    return frozenset(w for w, c in counts.items() if c >= min_count)


def descriptor_functions(vocabulary: frozenset[str]) -> dict[str, Callable[[str], float]]:
    """The descriptors by the name their check has in the config (`checks.descriptors.<name>`)."""

    def oov(text: str) -> float:
        return oov_share(text, vocabulary)

    return {"length": text_length, "word_count": word_count, "oov_share": oov, "non_letter_share": non_letter_share}
