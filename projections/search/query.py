"""The search text of a user, as terms every backend renders into its own query language.

User text is never handed to an engine's query parser (FTS5 MATCH syntax, tsquery, Lucene
query strings), so no input can be a syntax error there or reach an operator. The rules:
* words are separated by white space; every term must match (AND);
* "a quoted phrase" matches those words next to each other, in order;
* a trailing * makes a term a prefix: `conf*` matches config, confusion; `"data set"*`
  matches "data sets";
* a term without a letter or digit (`-`, `&&`) matches nothing in any tokenizer and is
  dropped; an unbalanced quote or a `*` with no word before it is a SearchError.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from projections.search.model import CLOSE_MARK, OPEN_MARK
from streams.artifacts.errors import SearchError

MAX_TERMS = 32
WORD = re.compile(r"[^\W_]+")  # a run of letters and digits: what every tokenizer keeps
_TOKEN = re.compile(r'"([^"]*)("?)(\*?)|([^\s"]+)')


@dataclass(frozen=True)
class Term:
    """Words that must occur in this order in one field; the last one as a prefix if
    `prefix`. A bare word is a phrase of one word."""

    text: str
    prefix: bool = False

    @property
    def words(self) -> list[str]:
        return WORD.findall(self.text)


def parse_terms(text: str) -> tuple[Term, ...]:
    terms: list[Term] = []
    for match in _TOKEN.finditer(text.replace("\x00", " ")):  # SQLite ends strings at NUL
        phrase, closed, star, bare = match.groups()
        if bare is None:
            if not closed:
                raise SearchError(f"unbalanced quote in search text {text!r}")
            body, prefix = phrase, bool(star)
        else:
            body = bare.rstrip("*")
            prefix = body != bare
            if prefix and not body:
                raise SearchError(f"'*' needs a word before it in search text {text!r}")
        body = " ".join(body.split())
        if WORD.search(body):
            terms.append(Term(body, prefix))
    if len(terms) > MAX_TERMS:
        raise SearchError(f"search text has {len(terms)} terms; at most {MAX_TERMS}")
    return tuple(terms)


def fts5_expression(terms: tuple[Term, ...]) -> str:
    """An FTS5 MATCH expression: every term a quoted string (FTS5 tokenizes its inside, so
    no character is an operator), prefix terms followed by *, joined by implicit AND."""
    return " ".join('"' + term.text.replace('"', '""') + '"' + ("*" if term.prefix else "")
                    for term in terms)


def words(text: str) -> str:
    """`text` as its `fold`ed words separated by single spaces: what PostgreSQL indexes,
    so its parser sees plain words where FTS5's unicode61 tokenizer sees them, and case and
    diacritics compare as there."""
    return " ".join(fold(word) for word in WORD.findall(text))


def fold(word: str) -> str:
    """A word as the engines compare it: case-folded, diacritics removed (FTS5's unicode61
    with remove_diacritics, OpenSearch's asciifolding)."""
    word = word.casefold()
    if word.isascii():
        return word
    return "".join(c for c in unicodedata.normalize("NFKD", word)
                   if not unicodedata.combining(c))


def highlight(text: str, terms: tuple[Term, ...], *, window: int | None = None
              ) -> str | None:
    """`text` with every match of `terms` between OPEN_MARK and CLOSE_MARK, or None if
    nothing matched. With `window`, only about `window` words around the first match, with
    "…" where text was cut (like FTS5's snippet()). Words compare `fold`ed."""
    phrases = [([fold(w) for w in term.words], term.prefix) for term in terms]
    folded = fold(text)  # fold maps character by character: a matching token is inside
    if not any(phrase and phrase[-1] in folded for phrase, _ in phrases):
        return None  # no word-by-word scan of a field that cannot match
    tokens: list[tuple[int, int, str]] = []
    spans: list[tuple[int, int]] = []  # token index ranges [first, last] that matched
    longest = max((len(p) for p, _ in phrases), default=1)
    cut = False  # stopped reading before the end of `text`
    for found in WORD.finditer(text):
        tokens.append((found.start(), found.end(), fold(found.group())))
        end = len(tokens)
        for phrase, prefix in phrases:  # does a phrase end at the newest token?
            start = end - len(phrase)
            if start < 0:
                continue
            *init, final = phrase
            token = tokens[-1][2]
            if (token.startswith(final) if prefix else token == final) and all(
                    tokens[start + i][2] == word for i, word in enumerate(init)):
                spans.append((start, end - 1))
        if window is not None and spans and end >= spans[0][0] + window + longest:
            cut = True
            break
    if not spans:
        return None
    first, last = 0, len(tokens) - 1
    if window is not None:
        first = max(0, spans[0][0] - window // 4)
        last = min(len(tokens) - 1, first + window - 1)
    begin = 0 if first == 0 else tokens[first][0]
    stop = len(text) if last == len(tokens) - 1 and not cut else tokens[last][1]
    # overlapping matches make one mark; adjacent ones stay apart
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    opens = {start for start, _ in merged}
    closes = {end for _, end in merged}
    inside = {index for start, end in merged for index in range(start, end + 1)}
    out, position = [], begin
    for index in range(first, last + 1):
        token_start, token_end, _ = tokens[index]
        out.append(text[position:token_start])
        if index in opens or (index == first and index in inside):
            out.append(OPEN_MARK)
        out.append(text[token_start:token_end])
        if index in closes or (index == last and index in inside):
            out.append(CLOSE_MARK)
        position = token_end
    out.append(text[position:stop])
    fragment = "".join(out)
    if window is not None:
        fragment = ("…" if first > 0 else "") + fragment.strip() + \
            ("…" if cut or last < len(tokens) - 1 else "")
    return fragment
