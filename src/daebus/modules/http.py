"""0.0.31's ``daebus.modules.http``."""

from ..encoding import DaebusJSONEncoder, make_json_serializable
from ..http import DaebusHttp, HttpRequest, HttpResponse

__all__ = [
    "DaebusHttp",
    "DaebusJSONEncoder",
    "HttpRequest",
    "HttpResponse",
    "make_json_serializable",
]
