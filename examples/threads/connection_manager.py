# Threads guide, "Using Thread State" (rebuilt from its description). The thread keeps
# its own dict of connections, reconnects the ones that dropped, and backs off after an
# error. The guide shows a lone thread function; it is completed into a service (the
# import lines, the app and the `app.run(...)` block are added).
# Run: python examples/threads/connection_manager.py

import time

from daebus import Daebus, direct_logger


# stand-ins for the document's discover_hosts() and establish_connection()
class Connection:
    def __init__(self, host):
        self.host = host
        self.active = True

    def is_active(self):
        return self.active

def discover_hosts():
    return ["db-primary", "cache"]

def establish_connection(host):
    return Connection(host)

app = Daebus(__name__)

@app.thread("connection_manager")
def manage_connections(running):
    # State that lives as long as the thread
    connections = {}
    retry_count = 0

    while running():
        try:
            # Reconnect what dropped
            for host, conn in list(connections.items()):
                if not conn.is_active():
                    connections[host] = establish_connection(host)
                    direct_logger.info(f"Reconnected to {host}")

            # Connect to hosts we have not seen yet
            for host in discover_hosts():
                if host not in connections:
                    connections[host] = establish_connection(host)
                    direct_logger.info(f"Connected to new host: {host}")

            retry_count = 0
            time.sleep(5)
        except Exception as e:
            retry_count += 1
            direct_logger.error(f"Connection error (attempt {retry_count}): {e}")
            time.sleep(min(30, retry_count * 5))  # back off

if __name__ == "__main__":
    app.run(service="connection_service")
