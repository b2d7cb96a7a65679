"""Transitional: the runtime moved to :mod:`daebus.runtime`.

``http/_dispatch.py`` (``is_async_callable``) and ``websocket/_dispatch.py``
(``ServiceRuntime``, for typing) still import from here; delete this module once they
import from :mod:`daebus.runtime` and :mod:`daebus.runtime.invoke`.
"""

from __future__ import annotations

from .runtime import ServiceRuntime
from .runtime.invoke import is_async_callable

__all__ = ["ServiceRuntime", "is_async_callable"]
