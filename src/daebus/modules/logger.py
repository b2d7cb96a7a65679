"""0.0.31's ``daebus.modules.logger`` (without its ``basicConfig`` at import)."""

from .._logging import direct_logger, get_logger, set_log_level

logger = direct_logger

__all__ = ["direct_logger", "get_logger", "logger", "set_log_level"]
