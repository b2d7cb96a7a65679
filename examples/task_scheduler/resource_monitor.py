# Task-scheduler guide, "Resource Monitoring" (rebuilt from its description). Needs
# psutil (`pip install psutil`; not a daebus dependency). Every 30 seconds the job
# collects CPU, memory and disk usage, warns over thresholds and broadcasts the figures
# on "monitoring". The guide's app has no `app.run(...)`; it is added (the service name
# is ours).
# Run: python examples/task_scheduler/resource_monitor.py

import time

import psutil

from daebus import Daebus, broadcast, direct_logger

app = Daebus(__name__)

@app.background("system_monitor", 30)  # every 30 seconds
def monitor_system():
    try:
        metrics = {
            "cpu_percent": psutil.cpu_percent(),
            "memory_percent": psutil.virtual_memory().percent,
            "disk_percent": psutil.disk_usage("/").percent,
            "timestamp": time.time()
        }

        if metrics["cpu_percent"] > 90:
            direct_logger.warning(f"High CPU usage: {metrics['cpu_percent']}%")

        if metrics["memory_percent"] > 85:
            direct_logger.warning(f"High memory usage: {metrics['memory_percent']}%")

        broadcast.send("monitoring", metrics)
    except Exception as e:
        direct_logger.error(f"Monitoring failed: {e}")

if __name__ == "__main__":
    app.run(service="resource_monitor")
