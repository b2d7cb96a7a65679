"""Redis's glob patterns (``PSUBSCRIBE``, ``KEYS``), matched exactly as the server does.

:mod:`fnmatch` is not the same dialect: it negates with ``[!a]`` where Redis uses
``[^a]``, has no backslash escapes, and lets ``*`` match an empty channel. This is a port
of ``stringmatchlen`` in Redis's ``util.c`` (the same in Valkey), quirks included:

- it works on bytes (the UTF-8 of the channel), so ``?`` matches one byte;
- ``*`` never matches an empty channel (only the empty pattern does);
- ``[]`` and ``[]a]`` match nothing, and an unclosed ``[abc`` is a class to the end;
- ``[a-]`` is the range from ``]`` to ``a``, and ranges compare C's signed ``char``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["compile_glob", "glob_match"]

# A compiled pattern: None is a star, else a table of the bytes one position accepts
# (``table[byte]`` is 1 for those). 256 bytes each, and one table per literal byte for
# every pattern: a kilobyte of classes compiled to sets of ints took megabytes.
_Token = bytes | None

_ANY_BYTE = b"\x01" * 256
_NOTHING = bytes(256)
_LITERALS = tuple(bytes(byte) + b"\x01" + bytes(255 - byte) for byte in range(256))
_BACKSLASH, _CARET, _CLOSE, _DASH, _OPEN, _QUESTION, _STAR = b"\\^]-[?*"


def _signed(byte: int) -> int:
    # Redis compares range bounds as (signed on x86) C chars.
    return byte - 256 if byte >= 128 else byte


def _class(pattern: bytes, i: int) -> tuple[bytes, int]:
    """Parse the class opening at ``pattern[i - 1]``; return it and the index after it."""
    n = len(pattern)
    negate = i < n and pattern[i] == _CARET
    if negate:
        i += 1
    members = bytearray(256)
    while True:
        if i < n and pattern[i] == _BACKSLASH and n - i >= 2:
            i += 1
            members[pattern[i]] = 1
        elif i < n and pattern[i] == _CLOSE:
            break
        elif i >= n:
            i -= 1  # an unclosed class ends with the pattern
            break
        elif n - i >= 3 and pattern[i + 1] == _DASH:
            start, end = sorted((_signed(pattern[i]), _signed(pattern[i + 2])))
            for b in range(256):
                if start <= _signed(b) <= end:
                    members[b] = 1
            i += 2
        else:
            members[pattern[i]] = 1
        i += 1
    if negate:
        members = members.translate(_FLIP)
    return bytes(members), i + 1


# Turns a table of accepted bytes into the table of the others.
_FLIP = bytes.maketrans(b"\x00\x01", b"\x01\x00")


def _tokens(pattern: bytes) -> tuple[_Token, ...]:
    tokens: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        byte = pattern[i]
        if byte == _STAR:
            if not tokens or tokens[-1] is not None:  # a run of stars is one star
                tokens.append(None)
            i += 1
        elif byte == _QUESTION:
            tokens.append(_ANY_BYTE)
            i += 1
        elif byte == _OPEN:
            accepted, i = _class(pattern, i + 1)
            tokens.append(accepted)
        else:
            if byte == _BACKSLASH and n - i >= 2:  # a lone trailing backslash is literal
                i += 1
            tokens.append(_LITERALS[pattern[i]])
            i += 1
    return tuple(tokens)


def _match(tokens: tuple[_Token, ...], subject: bytes) -> bool:
    if not subject:
        return not tokens
    # Every token but a star takes exactly one byte, so remembering the last star and
    # retrying from one byte further is enough (no exponential backtracking).
    t = s = 0
    star = star_s = -1
    count = len(tokens)
    while s < len(subject):
        token = tokens[t] if t < count else _NOTHING
        if token is None:
            star, star_s = t, s
            t += 1
        elif token[subject[s]]:
            t += 1
            s += 1
        elif star >= 0:
            star_s += 1
            s = star_s
            t = star + 1
        else:
            return False
    while t < count and tokens[t] is None:
        t += 1
    return t == count


@functools.lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> Callable[[bytes], bool]:
    """A matcher for ``pattern``: call it with the UTF-8 bytes of a channel."""
    return functools.partial(_match, _tokens(pattern.encode("utf-8")))


def glob_match(pattern: str, channel: str) -> bool:
    """Whether Redis would deliver a message on ``channel`` to ``PSUBSCRIBE pattern``."""
    return compile_glob(pattern)(channel.encode("utf-8"))
