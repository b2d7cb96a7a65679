# Getting-started guide, "Common Patterns: Service Registration" (rebuilt from its
# description). The guide shows a lone `@app.on_start()` hook; it is completed into a
# service: the import lines, the app and the `app.run(...)` block are added.
# Run: python examples/getting_started/service_registration.py

import time

from daebus import Daebus, broadcast, direct_logger

app = Daebus(__name__)

@app.on_start()
def register_service():
    try:
        # Tell whoever keeps the service registry that we are up
        broadcast.send("service_registry", {
            "type": "service_started",
            "service": "my-service",
            "capabilities": ["data_processing", "api"],
            "timestamp": time.time()
        })
        direct_logger.info("Service registered")
    except Exception as e:
        direct_logger.error(f"Service registration failed: {e}")

if __name__ == "__main__":
    app.run(service="my-service")
