"""Numbers a client sends as text (headers, query and form fields), read by one ASCII-only rule.

``str.isdigit`` and ``int`` accept digits of every script (``int("٣") == 3``, and ``"²".isdigit()`` is true
while ``int("²")`` fails), so a check with one and a conversion with the other disagree. Here a whole number
is an optional sign and 1 to 18 ASCII digits, nothing else: bounded work, no surprise, no exception.
"""

from __future__ import annotations

import re

WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,18}", re.ASCII)


def parse_whole_number(value: object) -> int | None:
    """``value`` as an int when it is a JSON integer (not a bool) or text of a whole number by the rule above;
    None for anything else."""
    if type(value) is int:
        return value
    if isinstance(value, str) and WHOLE_NUMBER.fullmatch(value):
        return int(value)
    return None
