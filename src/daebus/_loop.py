"""Transitional: the event loop choice moved to :mod:`daebus.runtime.loop`.

Kept while ``app.py`` may still import it from here; delete it once nothing does.
"""

from __future__ import annotations

from .runtime.loop import ENV_EVENT_LOOP, loop_name, new_event_loop, run

__all__ = ["ENV_EVENT_LOOP", "loop_name", "new_event_loop", "run"]
