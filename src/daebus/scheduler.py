"""Transitional: jobs moved to :mod:`daebus.runtime.jobs`, argument checks to invoke.

The argument checks now live in :mod:`daebus.runtime.invoke`.

``websocket/_dispatch.py`` still imports ``accepts_arguments`` from here; delete this
module once it imports from :mod:`daebus.runtime.invoke`.
"""

from __future__ import annotations

from .runtime.invoke import accepts_arguments
from .runtime.jobs import BackgroundTask, BackgroundTasks, ThreadTask

__all__ = ["BackgroundTask", "BackgroundTasks", "ThreadTask", "accepts_arguments"]
