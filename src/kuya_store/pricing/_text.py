"""Text helpers shared by the card normaliser and the title parser."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["ascii_fold", "collapse_spaces"]

_SPACES = re.compile(r"\s+")


def ascii_fold(text: str) -> str:
    """Fold ``text`` to ASCII: NFKD, then drop accents, emojis and every other non-ASCII mark.

    ``"Pokémon"`` becomes ``"Pokemon"``; ``"🔥"`` disappears; typographic apostrophes and
    quotes become their ASCII forms first so ``"O’Neal"`` keeps its apostrophe.
    """
    text = (
        text.replace("\u2019", "'")
        .replace("\u2018", "'")
        .replace("\u02bc", "'")
        .replace("\u201c", '"')
        .replace("\u201d", '"')
        .replace("\u2013", "-")
        .replace("\u2014", "-")
        .replace("\u00d7", "x")
    )
    decomposed = unicodedata.normalize("NFKD", text)
    return decomposed.encode("ascii", "ignore").decode("ascii")


def collapse_spaces(text: str) -> str:
    """Collapse runs of whitespace to one space and strip both ends."""
    return _SPACES.sub(" ", text).strip()
