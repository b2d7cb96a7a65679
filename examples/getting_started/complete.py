# Getting-started guide, "Complete Example" (rebuilt from its description): an action
# counting requests, a listener on "system", GET /metrics, and a job that broadcasts the
# counters on "system" every 60 seconds, which the service's own listener receives.
# Run: python examples/getting_started/complete.py
#      then: daebus call metrics-service get_metrics    or    curl localhost:8080/metrics

import time

from daebus import Daebus, DaebusHttp, broadcast, logger, request, response

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))

metrics = {"requests": 0, "events": 0, "started": time.time()}


@app.action("get_metrics")
def get_metrics():
    metrics["requests"] += 1
    return response.success(dict(metrics))


@app.listen("system")
def on_system(data):
    metrics["events"] += 1
    logger.info(f"system event: {data.get('type')}")


@app.route("/metrics")
def http_metrics(req):
    return response.send(dict(metrics), 200)


@app.background("metrics_reporter", 60)
def metrics_reporter():
    broadcast.send("system", {"type": "metrics", "requests": metrics["requests"]})


if __name__ == "__main__":
    app.run(service="metrics-service")
