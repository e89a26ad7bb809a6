"""Keyword search rules, once for both backends: which words match whole, which as runs.

Word indexes (SQLite FTS5 ``unicode61``, PostgreSQL ``to_tsvector('simple')``) cut text at
spaces and punctuation, which serves languages written with spaces between words. Chinese,
Japanese, Thai, Lao, Khmer and Myanmar are written without them, so "こんにちは世界" is one
"word" there and "世界" finds nothing; emoji and many symbols are dropped as separators. So a
query word is one of two kinds:

* a **run**: it holds at least one character of ``RUN_RANGES`` (those scripts, Hangul,
  CJK symbols, arrows and dingbats, emoji). It matches wherever its characters occur in that
  order in a message: "世界" finds "こんにちは世界", "😀" finds "nice 😀!".
* a **word**: anything else with a letter or digit. It matches whole words, ignoring case and
  diacritics, as before: "cat" does not find "category".

Words with neither (punctuation) are ignored; a query with nothing left is refused by the API
layer (``is_searchable``). Every word and run must match.

The backends index runs differently and answer the same: SQLite keeps a second FTS5 index of
the messages that hold a run character, over ``spaced_runs(content)`` (every run character
made a token of its own), and matches a run as a phrase of its characters; PostgreSQL
matches a run as a case-insensitive substring, with a pg_trgm index over those messages.
"""

from __future__ import annotations

import dataclasses
import re

#: Characters that make a query word a run, as inclusive code point ranges.
RUN_RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0EFF),    # Thai, Lao
    (0x1000, 0x109F),    # Myanmar
    (0x1100, 0x11FF),    # Hangul Jamo
    (0x1780, 0x17FF),    # Khmer
    (0x2190, 0x2BFF),    # arrows, mathematical operators, technical symbols, dingbats
    (0x2E80, 0x9FFF),    # CJK radicals and symbols, kana, Bopomofo, CJK ideographs
    (0xA000, 0xA4CF),    # Yi
    (0xAC00, 0xD7AF),    # Hangul syllables
    (0xF900, 0xFAFF),    # CJK compatibility ideographs
    (0xFF00, 0xFFEF),    # half-width and full-width forms
    (0x1F000, 0x1FAFF),  # emoji, pictographs, playing cards, mahjong tiles
    (0x20000, 0x3FFFF),  # CJK ideograph extensions
)


def _char_class() -> str:
    def char(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"

    return "[" + "".join(f"{char(lo)}-{char(hi)}" for lo, hi in RUN_RANGES) + "]"


#: The run characters as a regular expression class (Python's and PostgreSQL's syntax).
RUN_CLASS = _char_class()
_RUN_CHAR = re.compile(RUN_CLASS)


@dataclasses.dataclass(frozen=True, slots=True)
class SearchTerms:
    """A query cut into what must match whole (``words``) and as runs (``runs``)."""

    words: tuple[str, ...]
    runs: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.words or self.runs)


def search_terms(query: str) -> SearchTerms:
    """The words and runs of a query, in order, duplicates kept once."""
    words: list[str] = []
    runs: list[str] = []
    # NUL would end an FTS5 string early: it separates words like white space.
    for token in query.replace("\x00", " ").split():
        target = runs if _RUN_CHAR.search(token) else words
        if target is words and not any(ch.isalnum() for ch in token):
            continue
        if token not in target:
            target.append(token)
    return SearchTerms(tuple(words), tuple(runs))


def is_searchable(query: str) -> bool:
    """Whether a query has a word or a run to look for."""
    return bool(search_terms(query))


def has_runs(text: str | None) -> bool:
    """Whether text holds a run character (SQLite indexes only such messages twice)."""
    return text is not None and _RUN_CHAR.search(text) is not None


def spaced_runs(text: str | None) -> str:
    """Text with every run character standing alone between spaces, for SQLite's run index."""
    return "" if text is None else _RUN_CHAR.sub(lambda m: f" {m.group()} ", text)


def fts5_strings(terms: tuple[str, ...]) -> str:
    """An FTS5 query requiring every term, each as a quoted string: no query syntax survives."""
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms)


def like_pattern(run: str) -> str:
    """A LIKE pattern finding ``run`` anywhere, lower-cased, with ``\\`` escaping ``%`` ``_``."""
    escaped = run.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
