"""0.0.31's ``daebus.modules.daemon``."""

from ..app import Daebus

__all__ = ["Daebus"]
