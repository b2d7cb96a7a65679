# The Redis pub/sub how-to (004), "Pub/Sub Monitoring" (active channels, subscriber
# counts, pattern subscriptions) and the advice "Monitor subscriber counts" and "Use
# Streams for guarantees", the daebus way.
#
#   python examples/realtime_guide/monitor.py
#   daebus stats                  # the same for the durable channels, from a shell
#
# `subscriber_counts` is PUBSUB NUMSUB, `health_stats()["pattern_subscriptions"]` is
# PUBSUB NUMPAT, and its "channels" describe the durable channels (Redis Streams): how
# many messages each keeps and, per consumer group, what is pending, not read yet
# (lag) or given up on (dead letters). PUBSUB CHANNELS has no daebus twin: `cache` is
# a redis-py client for any Redis command.

from daebus import cache, health_stats, subscriber_counts


def monitor_pubsub(pattern="*"):
    channels = sorted(cache.pubsub_channels(pattern))
    print(f"Active channels: {channels}")
    for channel, count in subscriber_counts(channels).items():
        print(f"  {channel}: {count} subscribers")

    stats = health_stats()
    if not stats["healthy"]:
        print(f"Redis is not healthy: {stats['error']}")
        return
    print(f"Pattern subscriptions: {stats['pattern_subscriptions']}")
    for channel, stream in stats["channels"].items():
        print(f"Durable channel {channel}: {stream['length']} messages")
        for group, state in stream["groups"].items():
            print(
                f"  group {group}: {state['pending']} pending, lag {state['lag']}, "
                f"{state['dead_letters']} dead letters"
            )


if __name__ == "__main__":
    monitor_pubsub()
