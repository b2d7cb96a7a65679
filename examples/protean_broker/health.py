# Protean's Redis PubSub broker guide (003), "Health Checks" and "Monitoring and
# Debugging", the daebus way: `daebus.ping()` and `daebus.health_stats()`, which also
# say where each durable channel's consumer groups stand.
#
#   python examples/protean_broker/health.py     # prints the health check as JSON
#
# From a shell, the guide's redis-cli commands have daebus twins:
#   daebus stats orders             # length of the stream; per group: pending, lag, dead letters
#   daebus listen 'user:*'          # SUBSCRIBE / MONITOR: every message as it goes by
#   daebus publish user:notifications '{"type": "notification"}'   # prints the receiver count
# and `logging.getLogger("daebus").setLevel(logging.DEBUG)` (or `app.run(..., debug=True)`)
# logs every message a service handles.
#
# Both calls wait at most `timeout` seconds (2 by default) and never raise: a server that
# is down or hung makes ping() False and health_stats() {"healthy": False, "error": ...}.

import json

from daebus import health_stats, ping


def health_check(channels=("orders",)):
    if not ping():
        return {"status": "unhealthy", "error": "Connection failed"}

    stats = health_stats(channels=channels)
    if not stats["healthy"]:
        return {"status": "degraded", "error": stats["error"]}
    return {
        "status": "healthy",
        "connected_clients": stats["connected_clients"],
        "used_memory": stats["used_memory_human"],
        # Per durable channel: "length" (messages kept) and, per group, "consumers",
        # "pending" (handed out, not yet acknowledged), "lag" (not read yet) and
        # "dead_letters".
        "channels": stats["channels"],
    }


if __name__ == "__main__":
    print(json.dumps(health_check(), indent=2))
