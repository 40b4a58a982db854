"""The seed design's worker, re-implemented faithfully as the benchmark baseline.

A long-lived pika BlockingConnection, one message at a time (prefetch 1), manual ack, and the
classic CPU-bound kernel in pure Python. The "pool manager" runs one such process per core.
Prints one line per finished message so the benchmark harness can count them.

    python3 bench/baseline/worker.py QUEUE
"""
import os
import sys

import pika

queue = sys.argv[1] if len(sys.argv) > 1 else "jobs"
url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")


def kernel():
    result = 0
    for i in range(1, 10_000_000):
        result += (i * i) % 997
    return result


# BASELINE_TASK=cpu_task: the pool manager running the user's function of examples/python on
# each body instead, so sluice's exec kernel and this pool run the very same code.
if os.environ.get("BASELINE_TASK") == "cpu_task":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
    from cpu_task import cpu_intensive_task

    def work(body):
        return cpu_intensive_task(body.decode("utf-8"))

else:

    def work(body):
        return kernel()


def on_message(channel, method, properties, body):
    result = work(body)
    channel.basic_ack(delivery_tag=method.delivery_tag)
    print(result, flush=True)


connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.queue_declare(queue=queue, durable=True)
channel.basic_qos(prefetch_count=1)
channel.basic_consume(queue=queue, on_message_callback=on_message)
try:
    channel.start_consuming()
except KeyboardInterrupt:
    pass
