"""Sample keys and member names: WebDataset's key rule, and the alphabet poisonlab accepts.

A key reaches file names, sidecars, logs and terminals, so it is restricted to a safe alphabet:

* printable Unicode only (``str.isprintable``): no C0 or C1 control characters, no DEL, no
  bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C, which make a key
  display as another key), no other format characters, no line separators or non-ASCII spaces, no
  private-use or unassigned code points, and no bytes that are not UTF-8 (surrogate escapes);
* ``/`` separates path segments; no segment may be empty, ``.`` or ``..``; no leading ``/`` and no
  ``:`` in the first segment (absolute or drive paths); ``\\`` counts as a separator for these checks;
* at most ``MAX_NAME_CHARS`` characters (so a member name always fits the reader's 4 KiB cap on
  long-name records, and every tar poisonlab writes can be read back);
* a leading ``./`` (what ``tar -C dir .`` writes) is dropped before anything else, so ``./K`` and ``K``
  are the same key and a tar holding both has a duplicate key.

Anything else is refused with a reason (``unsafe_name``) and shown escaped (``display_key``).
"""

from __future__ import annotations

MAX_NAME_CHARS = 1000  # x 4 bytes of UTF-8 at most, plus an extension: under tarformat.MAX_NAME_BYTES
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def canonical_name(name: str) -> str:
    """A member name without leading ``./`` segments (``./K.jpg`` and ``K.jpg`` name one member)."""
    while name.startswith("./"):
        name = name[2:]
    return name


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        return name, ""
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _why_not_printable(name: str) -> str:
    for char in name:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            return "not valid UTF-8"
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return "control character"
        if char in BIDI_CONTROLS:
            return "bidirectional control character"
        if not char.isprintable():
            return f"non-printable character U+{code:04X}"
    return "non-printable character"


def unsafe_name(name: str) -> str | None:
    """Why a member name or key must not be used, or None (cheap for the common case: runs per member)."""
    if not name.isprintable():
        return _why_not_printable(name)
    if len(name) > MAX_NAME_CHARS:
        return f"longer than {MAX_NAME_CHARS} characters"
    if "/" not in name and "\\" not in name and ":" not in name:
        if name in ("", ".", ".."):
            return "parent directory" if name == ".." else "empty name" if not name else "dot segment"
        return None
    path = name.replace("\\", "/") if "\\" in name else name
    if path.startswith("/") or ":" in path.partition("/")[0]:
        return "absolute path"
    segments = path.split("/")
    if ".." in segments:
        return "parent directory"
    if "." in segments:
        return "dot segment"
    if "" in segments:
        return "empty path segment"
    return None


def display_key(text: str) -> str:
    """A key or name with every character outside the safe alphabet escaped, fit for a sidecar or a log."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
