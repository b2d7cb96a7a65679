"""Calls a service with the daebus 0.0.31 `DaebusCaller`; run it with 0.0.31's python.

Usage: legacy_caller.py SERVICE [--fail-message TEXT] [--crash-contains TEXT]
(DAEBUS_REDIS_URL names the test server)

It calls `echo` with {"a": 1}, `stream` with an on_progress callback, `fail` (which must
raise with exactly --fail-message) and, if --crash-contains is given, `crash` (which must
raise with a message containing it). The last stdout line is a JSON summary; the exit
status is 1 if anything did not match.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from _legacy_common import load_daebus, redis_address

EXPECTED_ECHO = {"a": 1}
EXPECTED_PARTS = [{"i": 0}, {"i": 1}, {"i": 2}]
EXPECTED_FINAL = {"done": True}


def _attempt(call: Callable[[], Any]) -> tuple[Any, str | None]:
    """Run `call`; return (result, None), or (None, message) if it raised."""
    try:
        return call(), None
    except TimeoutError as exc:
        return None, f"TimeoutError: {exc}"
    except Exception as exc:
        return None, str(exc)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("service")
    parser.add_argument("--fail-message", default="ours says no")
    parser.add_argument("--crash-contains", default=None)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    daebus = load_daebus()
    host, port = redis_address()
    caller = daebus.DaebusCaller(
        args.service, redis_host=host, redis_port=port, timeout=args.timeout
    )
    summary: dict[str, Any] = {}
    mismatches: list[str] = []

    echo, error = _attempt(lambda: caller.send_request("echo", {"a": 1}))
    summary["echo"] = echo
    if error is not None or echo != EXPECTED_ECHO:
        mismatches.append(f"echo returned {echo!r} (error {error!r})")

    parts: list[Any] = []
    final, error = _attempt(lambda: caller.send_request("stream", {}, on_progress=parts.append))
    summary["stream_parts"] = parts
    summary["stream_final"] = final
    if error is not None or parts != EXPECTED_PARTS or final != EXPECTED_FINAL:
        mismatches.append(f"stream gave parts {parts!r}, final {final!r} (error {error!r})")

    result, error = _attempt(lambda: caller.send_request("fail", {}))
    summary["fail_error"] = error
    if error != args.fail_message:
        mismatches.append(
            f"fail gave {result!r} / error {error!r}, expected error {args.fail_message!r}"
        )

    if args.crash_contains is not None:
        result, error = _attempt(lambda: caller.send_request("crash", {}))
        summary["crash_error"] = error
        if error is None or args.crash_contains not in error:
            mismatches.append(
                f"crash gave {result!r} / error {error!r}, "
                f"expected an error containing {args.crash_contains!r}"
            )

    summary["mismatches"] = mismatches
    # The harness reads the last stdout line; 0.0.31 logs to stderr only.
    print(json.dumps(summary), flush=True)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
