"""Small real models for `pit demo` and the tests, loadable as `python:streams.pool.examples:<name>`
(the npz loader's MLP is the other kind: weights from a file)."""

from __future__ import annotations

import re
from typing import Any

_WORD = re.compile(r"[\w']+")
_POSITIVE = frozenset(["good", "great", "love", "excellent", "happy", "fast", "fine", "nice"])
_NEGATIVE = frozenset(["bad", "awful", "hate", "terrible", "sad", "slow", "broken", "poor"])


class Sentiment:
    """A lexicon scorer: counts positive and negative words, answers a label and a score."""

    test_input: Any = "a good test"

    def infer(self, text: Any) -> dict[str, Any]:
        words = _WORD.findall(str(text).lower())
        score = sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return {"label": label, "score": score, "words": len(words)}


class Tokenizer:
    """Splits text into lower-case word tokens."""

    test_input: Any = "Hello, world"

    def infer(self, text: Any) -> list[str]:
        return _WORD.findall(str(text).lower())


def sentiment() -> Sentiment:
    return Sentiment()


def tokenizer() -> Tokenizer:
    return Tokenizer()
