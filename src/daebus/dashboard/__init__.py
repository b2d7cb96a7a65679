"""``daebus dashboard``: a live page of the services, the bus and the server.

- ``_observer``: the subscription to every channel, and what it counts;
- ``_traffic``: messages per channel per second, in a bounded table;
- ``_latency``: requests matched to their replies, percentiles per action.

Imported by the command only.
"""
