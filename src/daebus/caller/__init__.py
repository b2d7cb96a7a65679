"""Calling services: :class:`DaebusCaller` (blocking) and :class:`AsyncDaebusCaller`.

- ``_async``: the async caller, and the core the blocking one builds on.
- ``_blocking``: the blocking caller.
- ``_reply_paths``: the two ways a blocking call gets its replies.
- ``_messages``: a call's request and replies on the wire, and the errors it ends with.
"""

from __future__ import annotations

from ._async import AsyncDaebusCaller
from ._blocking import DaebusCaller

__all__ = ["AsyncDaebusCaller", "DaebusCaller"]
