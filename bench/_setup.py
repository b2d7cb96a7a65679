"""The bench's settings and the shared services the scenarios call."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

from _procs import Child, Processes


@dataclass(frozen=True)
class Config:
    """How much of everything a run does; every loop is bounded by these."""

    rounds: int  # latency and stream: variants take turns, this many times
    latency_calls: int  # timed calls per variant per round
    latency_warmup: int  # untimed calls before them
    throughput_rounds: int
    throughput_seconds: float  # per variant, per caller count, per round
    throughput_warmup: float
    throughput_callers: tuple[int, ...]
    stream_count: int  # timed streams per variant per round
    stream_warmup: int
    fanout_rounds: int
    fanout_messages: int  # per publishing loop (one PUBLISH per message)
    fanout_batch_messages: int  # per batch run to one listener (half that to four)
    fanout_batch_size: int
    fanout_warmup: int  # messages of an untimed run of each variant first
    drain_deadline: float  # longest wait for listeners to catch up
    drain_stall: float  # counts not growing this long: the rest is lost
    idle_seconds: float
    durable_rounds: int
    durable_messages: int  # per run, to each group
    durable_batch: int  # messages per send_many / pipeline
    durable_warmup: int
    sharing_rounds: int
    sharing_instances: tuple[int, ...]
    sharing_callers: int  # threads sharing one DaebusCaller
    sharing_seconds: float  # of calls, per instance count, per round
    sharing_messages: int  # durable messages per instance, per round
    call_timeout: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Config(
    rounds=3,
    latency_calls=1000,
    latency_warmup=200,
    throughput_rounds=2,
    throughput_seconds=2.0,
    throughput_warmup=0.3,
    throughput_callers=(1, 8, 32),
    stream_count=50,
    stream_warmup=10,
    fanout_rounds=2,
    fanout_messages=20_000,
    fanout_batch_messages=200_000,
    fanout_batch_size=1000,
    fanout_warmup=2000,
    drain_deadline=60.0,
    drain_stall=3.0,
    idle_seconds=20.0,
    durable_rounds=2,
    durable_messages=100_000,
    durable_batch=1000,
    durable_warmup=2000,
    sharing_rounds=2,
    sharing_instances=(1, 2, 4),
    sharing_callers=16,
    sharing_seconds=4.0,
    sharing_messages=800,
)

QUICK = Config(
    rounds=2,
    latency_calls=500,
    latency_warmup=100,
    throughput_rounds=1,
    throughput_seconds=1.0,
    throughput_warmup=0.2,
    throughput_callers=(1, 8, 32),
    stream_count=20,
    stream_warmup=5,
    fanout_rounds=1,
    fanout_messages=5_000,
    fanout_batch_messages=100_000,
    fanout_batch_size=1000,
    fanout_warmup=1000,
    drain_deadline=30.0,
    drain_stall=2.0,
    idle_seconds=5.0,
    durable_rounds=1,
    durable_messages=20_000,
    durable_batch=1000,
    durable_warmup=1000,
    sharing_rounds=1,
    sharing_instances=(1, 2, 4),
    sharing_callers=16,
    sharing_seconds=2.0,
    sharing_messages=300,
)

# Every scenario and every variant, with counts too small for figures that mean
# anything: a check that the bench still runs (CI runs it), in 15 to 30 seconds.
SMOKE = Config(
    rounds=1,
    latency_calls=30,
    latency_warmup=10,
    throughput_rounds=1,
    throughput_seconds=0.2,
    throughput_warmup=0.05,
    throughput_callers=(1, 8, 32),
    stream_count=3,
    stream_warmup=1,
    fanout_rounds=1,
    fanout_messages=300,
    fanout_batch_messages=2000,
    fanout_batch_size=500,
    fanout_warmup=100,
    drain_deadline=20.0,
    drain_stall=2.0,
    idle_seconds=1.0,
    durable_rounds=1,
    durable_messages=500,
    durable_batch=200,
    durable_warmup=50,
    sharing_rounds=1,
    sharing_instances=(1, 2),
    sharing_callers=8,
    sharing_seconds=0.3,
    sharing_messages=30,
)


class Bench:
    """One run: the server, the children, the settings, and names unique to the run."""

    def __init__(self, url: str, procs: Processes, config: Config) -> None:
        self.url = url
        self.procs = procs
        self.config = config
        self.tag = uuid.uuid4().hex[:8]
        self._echo: tuple[str, Child] | None = None
        self._responder: tuple[str, Child] | None = None

    def name(self, what: str) -> str:
        """A service or channel name no other run on the same server uses."""
        return f"bench-{self.tag}-{what}"

    def echo_service(self) -> str:
        """The daebus echo service (a separate process), started on first use."""
        if self._echo is None:
            service = self.name("echo")
            child = self.procs.spawn("daebus-service", "--name", service)
            self.procs.wait_subscribed(service, watch=[child])
            self._echo = (service, child)
        return self._echo[0]

    def bare_responder(self) -> str:
        """The bare responder's channel (a separate process), started on first use."""
        if self._responder is None:
            channel = self.name("bare-rpc")
            child = self.procs.spawn("bare-responder", "--name", channel)
            self.procs.wait_subscribed(channel, watch=[child])
            self._responder = (channel, child)
        return self._responder[0]

    def service_pids(self) -> dict[str, int]:
        """The pids of the echo service ("daebus") and the bare responder ("bare")."""
        self.echo_service()
        self.bare_responder()
        assert self._echo is not None
        assert self._responder is not None
        return {"daebus": self._echo[1].pid, "bare": self._responder[1].pid}
