"""0.0.31's ``daebus.modules.caller``."""

from ..caller import DaebusCaller

__all__ = ["DaebusCaller"]
