"""Transitional: the worker pool moved to :mod:`daebus.runtime.workers`.

``http/_component.py`` and ``http/_dispatch.py`` still import from here; delete this
module once they import from :mod:`daebus.runtime.workers`.
"""

from __future__ import annotations

from .runtime.workers import WorkerPool

__all__ = ["WorkerPool"]
