# The Redis pub/sub guide (001), "Task Queue System", the daebus way: tasks go on
# durable channels, and the workers are instances of one service, which share them.
#
#   python examples/pubsub_guide/tasks.py          # a worker; start two or more
#   python examples/pubsub_guide/tasks.py submit   # the guide's usage example
#   daebus dlq list tasks:image_processing:high    # the tasks that failed every try
#
# On pub/sub, as in the guide, every worker would run every task, and a task submitted
# while no worker runs would be lost. Sent with `durable=True`, a task waits in the
# channel's stream until a worker takes it, and each is done by one worker of the
# service (the consumer group "image-worker"). A task is acknowledged when the handler
# returns; one that raises is tried again (`retries`, after a growing `backoff`), then
# kept as a dead letter with its error, where `daebus dlq` lists and replays it. A
# worker killed mid-task loses nothing: another takes the task over. `start="earliest"`
# makes the first worker ever started also do what was submitted before it.
#
# (`@app.listen(channel, shared=True)` also shares a channel's messages between the
# instances, on plain pub/sub: for live messages that may be lost when no worker runs.)

import sys
import time
import uuid

from daebus import Daebus, broadcast, request

QUEUE = "image_processing"
PRIORITIES = ("high", "normal", "low")

app = Daebus(__name__)


def submit_task(task_type, payload, priority="normal"):
    """Queue a task; returns its id. No worker needs to be running."""
    task = {
        "id": str(uuid.uuid4()),
        "type": task_type,
        "payload": payload,
        "priority": priority,
        "submitted_at": time.time(),
    }
    broadcast.send(f"tasks:{QUEUE}:{priority}", task, durable=True)
    return task["id"]


def process_image(task):
    print(f"Processing image: {task['payload']['image_path']}")
    time.sleep(0.2)  # simulate processing
    return {"status": "processed", "size": "1024x768"}


def handle_task(task):
    worker_id = app.instance_id
    print(f"Worker {worker_id} processing task: {task['id']} (try {request.delivery_count})")
    result = process_image(task)  # raises: tried again, then a dead letter
    broadcast.send(
        "tasks:completed",
        {**task, "status": "completed", "worker_id": worker_id, "result": result},
    )


# One durable listener per priority, as the guide's worker subscribes to three channels.
for priority in PRIORITIES:
    app.add_listener(
        f"tasks:{QUEUE}:{priority}",
        handle_task,
        durable=True,
        start="earliest",
        retries=2,
        backoff=0.5,
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["submit"]:
        task_id = submit_task(
            "resize", {"image_path": "/images/photo.jpg", "width": 800, "height": 600}, "high"
        )
        print(f"Task submitted: {task_id}")
    else:
        app.run(service="image-worker")
