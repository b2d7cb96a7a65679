"""0.0.31's ``daebus.modules.pubsub``."""

from ..pubsub import PubSubBroadcast, PubSubRequest, PubSubResponse

__all__ = ["PubSubBroadcast", "PubSubRequest", "PubSubResponse"]
