"""The one word splitter. A caption's words are its whitespace-separated tokens, lower-cased, with surrounding
punctuation stripped ("Shirt." → "shirt"): word i is the i-th whitespace token, the same index the embedder's
`word_ids` and the world's `noisy_words` use, so a token that is only punctuation stays as an empty word."""

from __future__ import annotations

import re

PUNCTUATION = ".,;:!?\"'()"
_TOKEN = re.compile(r"\S+")


def words(text: str) -> list[str]:
    """The normalised words of `text`, one per whitespace token."""
    return [token.strip(PUNCTUATION).lower() for token in text.split()]


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character span of each whitespace token of `text`, aligned with `words(text)`."""
    return [m.span() for m in _TOKEN.finditer(text)]
