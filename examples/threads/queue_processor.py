# Threads guide, "Work Queue Processor" (rebuilt from its description). The thread
# drains a `queue.Queue`, waiting at most a second at a time so that it notices when the
# service stops; "submit_job" queues a job and "check_job" reports on it. The guide's
# app has no `app.run(...)`; it is added (the service name is ours).
# Run: python examples/threads/queue_processor.py

import queue
import threading
import time
import uuid

from daebus import Daebus, direct_logger, request, response


# stand-ins for the document's process_item(), generate_unique_id() and
# check_queue_position()
def process_item(item):
    return {"value": item.get("value"), "doubled": item.get("value", 0) * 2}

def generate_unique_id():
    return uuid.uuid4().hex

def check_queue_position(job_id):
    with work_queue.mutex:
        pending = [job.get("id") for job in work_queue.queue]
    return pending.index(job_id) if job_id in pending else -1

app = Daebus(__name__)

work_queue = queue.Queue()
results = {}
results_lock = threading.Lock()

@app.thread("queue_processor")
def process_queue(running):
    direct_logger.info("Queue processor started")

    while running():
        try:
            # Wait a little at a time, so running() is checked regularly
            try:
                item = work_queue.get(timeout=1.0)
            except queue.Empty:
                continue

            item_id = item.get("id")
            result = process_item(item)

            with results_lock:
                results[item_id] = result

            work_queue.task_done()
            direct_logger.info(f"Processed job {item_id}")
        except Exception as e:
            direct_logger.error(f"Failed to process a job: {e}")

@app.action("submit_job")
def submit_job():
    job_data = request.payload
    job_id = generate_unique_id()

    job_data["id"] = job_id
    job_data["submitted_at"] = time.time()
    work_queue.put(job_data)

    return response.send({"job_id": job_id, "status": "queued"})

@app.action("check_job")
def check_job():
    job_id = request.payload.get("job_id")

    if not job_id:
        return response.error("Missing job_id parameter")

    with results_lock:
        result = results.get(job_id)

    if result:
        return response.send({"job_id": job_id, "status": "completed", "result": result})

    position = check_queue_position(job_id)
    if position >= 0:
        return response.send({"job_id": job_id, "status": "queued", "position": position})
    return response.send({"job_id": job_id, "status": "not_found"})

if __name__ == "__main__":
    app.run(service="queue_service")
