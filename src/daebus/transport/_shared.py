"""Transports shared by the callers on one event loop: one connection per server."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass

from . import transport_from_url
from .base import Transport

__all__ = ["acquire", "release"]


@dataclass
class _Entry:
    transport: Transport
    users: int = 0


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Entry]] = (
    weakref.WeakKeyDictionary()
)


def acquire(url: str) -> Transport:
    """The running loop's transport for ``url`` (created, not yet connected, if new)."""
    table = _by_loop.setdefault(asyncio.get_running_loop(), {})
    entry = table.get(url)
    if entry is None:
        entry = table[url] = _Entry(transport_from_url(url))
    entry.users += 1
    return entry.transport


async def release(transport: Transport) -> None:
    """Give back a transport from :func:`acquire`; the last user out closes it."""
    table = _by_loop.get(asyncio.get_running_loop(), {})
    entry = table.get(transport.url)
    if entry is None or entry.transport is not transport:
        await transport.close()
        return
    entry.users -= 1
    if entry.users <= 0:
        del table[transport.url]
        await transport.close()
