# A tiny service to run under systemd (see daebus-example.service next to it, and
# docs/operations.md). Written for this project, not taken from a document.
#
# Under a unit of Type=notify it tells systemd READY=1 once it is subscribed, pings the
# watchdog while its event loop turns, and says STOPPING=1 when SIGTERM makes it drain.
# Outside systemd it runs as any service does:
#
#     python examples/systemd/sensor_service.py
#     daebus call sensor read '{"unit": "celsius"}'
import os
import time

from daebus import Daebus, request

app = Daebus("sensor")
started = time.time()


@app.action("read")
def read():
    """The sensor's reading, in the unit asked for."""
    celsius = 21.5
    if request.payload.get("unit") == "fahrenheit":
        return {"value": celsius * 9 / 5 + 32, "unit": "fahrenheit"}
    return {"value": celsius, "unit": "celsius"}


@app.action("uptime")
def uptime():
    """How long this process has served, and its pid (systemctl status shows it too)."""
    return {"seconds": round(time.time() - started, 3), "pid": os.getpid()}


if __name__ == "__main__":
    app.run(service="sensor")
