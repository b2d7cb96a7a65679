# Threads guide, "The Running Function" (rebuilt from its description). The thread's
# `finally:` releases its resources when the service stops. The guide shows a lone
# thread function; it is completed into a service (the import lines, the app and the
# `app.run(...)` block are added).
# Run: python examples/threads/processor.py

import time

from daebus import Daebus

# stand-ins for the document's setup_resources(), process_next_item() and
# cleanup_resources()
resources = {"open": False, "items": 0}

def setup_resources():
    resources["open"] = True
    print("Resources ready", flush=True)

def process_next_item():
    resources["items"] += 1
    time.sleep(0.05)

def cleanup_resources():
    resources["open"] = False
    print("Resources cleaned up", flush=True)

app = Daebus(__name__)

@app.thread("processor")
def data_processor(running):
    setup_resources()

    try:
        while running():
            process_next_item()
    finally:
        # Runs when the service stops
        cleanup_resources()

if __name__ == "__main__":
    app.run(service="processor_service")
