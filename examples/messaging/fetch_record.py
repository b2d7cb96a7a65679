# Messaging guide, "Error Responses".
# The document shows a lone handler; it is completed into a service the way the guide's
# other examples are: the import line, `app = Daebus(__name__)` and the `app.run(...)`
# block are added. The handler is the document's, unchanged.
# Run: python examples/messaging/fetch_record.py

from daebus import Daebus, request, response


# stand-in for the document's database: one record, looked up in a dict
class database:
    records = {"rec1": {"id": "rec1", "name": "First record"}}

    @staticmethod
    def get_record(record_id):
        return database.records.get(record_id)


app = Daebus(__name__)

@app.action("fetch_record")
def fetch_record():
    record_id = request.payload.get("id")

    if not record_id:
        # Return error for missing ID
        return response.error("Missing record ID")

    try:
        # Attempt to fetch the record
        record = database.get_record(record_id)

        if not record:
            return response.error(f"Record not found: {record_id}")

        # Return success with the record data
        return response.send(record)
    except Exception as e:
        # Handle and return any exceptions
        return response.error(e)

if __name__ == "__main__":
    app.run(service="record_service")
