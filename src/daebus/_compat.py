"""What differs between the Python versions daebus runs on."""

from __future__ import annotations

import sys

__all__ = ["timeout"]

# ``asyncio.wait_for`` is not used anywhere in daebus: before 3.12 it returns the result
# and swallows a cancellation that arrives as the awaited thing finishes (the caller
# carries on as if never cancelled, and a connection it opened is left with no owner).
# ``timeout()`` runs the awaited thing in the caller's own task, so a cancellation is
# never lost and whatever the awaited thing made is cleaned up where it was made.
if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout
