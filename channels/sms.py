"""SMS segment counting: what a body costs to send, since carriers bill and split per segment."""

from __future__ import annotations

GSM7 = "GSM-7"
UCS2 = "UCS-2"

# GSM 03.38 basic character set (one septet each), without the escape code 0x1B itself.
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# GSM 03.38 extension table: escape + code, two septets each.
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")
_GSM_CHARSET = _GSM_BASIC | _GSM_EXTENSION

_GSM7_SINGLE, _GSM7_PART = 160, 153  # septets; a concatenated part loses 7 to its header
_UCS2_SINGLE, _UCS2_PART = 70, 67  # UTF-16 code units


def segments(body: str) -> tuple[int, str]:
    """How many segments `body` is sent as, and in which encoding; an empty body still costs one."""
    chars = set(body)
    if chars <= _GSM_CHARSET:
        escaped = sum(body.count(char) for char in chars & _GSM_EXTENSION)
        if len(body) + escaped <= _GSM7_SINGLE or not escaped:
            return _parts(len(body) + escaped, _GSM7_SINGLE, _GSM7_PART), GSM7
        return _pack([2 if char in _GSM_EXTENSION else 1 for char in body], _GSM7_PART), GSM7
    units = len(body.encode("utf-16-le", "surrogatepass")) // 2
    if units <= _UCS2_SINGLE or units == len(body):
        return _parts(units, _UCS2_SINGLE, _UCS2_PART), UCS2
    return _pack([2 if ord(char) > 0xFFFF else 1 for char in body], _UCS2_PART), UCS2


def _parts(size: int, single: int, part: int) -> int:
    """Parts for a body whose characters all take one unit, so any split point will do."""
    return 1 if size <= single else -(-size // part)


def _pack(sizes: list[int], part: int) -> int:
    """Parts when no two-unit character (escape pair, surrogate pair) may straddle two parts."""
    count, used = 1, 0
    for size in sizes:
        if used + size > part:
            count, used = count + 1, 0
        used += size
    return count
