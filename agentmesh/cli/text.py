"""Text from outside made safe to print on a terminal: audit records (``audit show``/``tail``), label values
scraped from metrics endpoints (``top``, ``graph``), members' logs and answers (``status``).

Such values come partly from callers or from whoever runs an endpoint (method names, token subjects,
reasons, member names): control and bidi characters are shown escaped (``\\u001b``) so a value cannot
clear or retitle the terminal, move the cursor, or fake a line or a table row.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with each C0/C1 control character, DEL and bidi control written as ``\\uXXXX``."""
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
