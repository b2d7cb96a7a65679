# Getting-started guide, "Scheduling Background Tasks" (rebuilt from its description):
# a job logs the uptime every 30 seconds, beside a GET /status route.
# Run: python examples/getting_started/stats_reporter.py    then: curl localhost:8080/status

import time

from daebus import Daebus, DaebusHttp, direct_logger

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))

start_time = time.time()


@app.background("stats_reporter", 30)
def report_stats():
    uptime = time.time() - start_time
    direct_logger.info(f"Service uptime: {uptime:.0f} seconds")


@app.route("/status")
def status(req):
    return {
        "service": "stats-service",
        "status": "running",
        "uptime": time.time() - start_time,
    }, 200


if __name__ == "__main__":
    app.run(service="stats-service")
