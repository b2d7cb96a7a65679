# WebSocket guide, "Response to Current Client" (rebuilt from its description): the
# handler returns the data, or an error dict; both reach the client as a "response".
# Run: python examples/websockets/get_data.py

import time

from daebus import Daebus, DaebusHttp, DaebusWebSocket

app = Daebus(__name__)
app.attach(DaebusHttp(port=8080))
app.attach(DaebusWebSocket())

RECORDS = {"r1": {"name": "first record"}, "r2": {"name": "second record"}}


def fetch_data(data_id):  # stand-in for the document's fetch_data
    if data_id not in RECORDS:
        raise KeyError(f"No data with id {data_id}")
    return RECORDS[data_id]


@app.socket("get_data")
def handle_data_request(data, client_id):
    data_id = data.get("id")
    try:
        result = fetch_data(data_id)
        return {"data": result, "timestamp": time.time()}
    except Exception as e:
        return {"error": str(e), "status": "error"}


if __name__ == "__main__":
    app.run(service="data_service")
