"""Names people give things (subject names, API key labels): checked and normalised the
same way on every database.

A name is stored in Unicode NFC (so the same name typed on two keyboards is one name),
without surrounding spaces, at most ``MAX_NAME`` characters, and without the characters
that make text lie about itself or break storage: control characters (NUL among them,
which PostgreSQL cannot store in text), line and paragraph separators, lone surrogates,
and the bidirectional overrides and isolates that make a name display as something else
(the "Trojan Source" characters). Joiners and the left-to-right/right-to-left marks stay:
scripts need them.
"""

from __future__ import annotations

import unicodedata

from gateway.errors import InvalidRequestError

MAX_NAME = 256
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cs": "a lone surrogate",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def clean_name(value: str, field: str = "name", allow_empty: bool = False) -> str:
    """``value`` in NFC without surrounding spaces, or :class:`InvalidRequestError`
    (``invalid_request``) saying which character is refused and where."""
    text = unicodedata.normalize("NFC", value).strip()
    for position, char in enumerate(text):
        what = _REFUSED_CATEGORIES.get(unicodedata.category(char))
        if what is None and char in BIDI_CONTROLS:
            what = "a bidirectional override"
        if what is not None:
            raise InvalidRequestError(
                f"{field} contains {what} (U+{ord(char):04X}) at position {position}",
                field=field,
            )
    if not text and not allow_empty:
        raise InvalidRequestError(f"{field} is empty", field=field)
    if len(text) > MAX_NAME:
        raise InvalidRequestError(
            f"{field} is {len(text)} characters long (at most {MAX_NAME})", field=field
        )
    return text
