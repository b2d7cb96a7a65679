"""The service the fault suite runs, as its own process.

Usage: fault_service.py SERVICE CHANNEL RECORD   (DAEBUS_REDIS_URL names the server)

Actions: `echo` (a plain ``def``, answered from the worker pool at once) and `aecho`
(``async def``, answered on the event loop after 100 ms, so that calls are in flight when
a fault strikes); both return their payload. A listener on CHANNEL
appends the ``seq`` of every broadcast it gets to the file RECORD, one per line, so the
test can read what arrived even while the service is stuck. The log goes to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from daebus import Daebus, request

app = Daebus("faults")


@app.action("echo")
def echo() -> Any:
    return request.payload


@app.action("aecho")
async def aecho() -> Any:
    await asyncio.sleep(0.1)
    return request.payload


def main() -> None:
    service, channel, record = sys.argv[1:4]
    # O_APPEND: each line is one write, whole even if the process dies between two.
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @app.listen(channel)
    async def got(message: Any) -> None:
        os.write(fd, b"%d\n" % message["seq"])

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app.run(service=service)


if __name__ == "__main__":
    main()
