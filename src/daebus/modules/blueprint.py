"""0.0.31's ``daebus.modules.blueprint``."""

from ..blueprint import Blueprint

__all__ = ["Blueprint"]
