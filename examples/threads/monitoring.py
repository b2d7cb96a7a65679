# Threads guide, "Logging Considerations" (rebuilt from its description). The thread
# logs with `direct_logger`; the context-based `logger` works in threads as well. The
# guide shows a lone thread function; it is completed into a service (the import lines,
# the app and the `app.run(...)` block are added).
# Run: python examples/threads/monitoring.py

import time

from daebus import Daebus, direct_logger

app = Daebus(__name__)

@app.thread("monitoring")
def monitor_system(running):
    while running():
        try:
            direct_logger.info("System monitoring active")
            time.sleep(60)
        except Exception as e:
            direct_logger.error(f"Monitoring error: {e}")

if __name__ == "__main__":
    app.run(service="monitoring_service")
