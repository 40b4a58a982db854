"""A producer that is not sluice's: the classic pika `basic_publish`, as the seed design's
producers do it. Used by the foreign_producer suite; runnable by hand too.

    python3 tests/pika/producer.py QUEUE
"""
import json
import os
import sys

import pika

queue = sys.argv[1] if len(sys.argv) > 1 else "jobs"
url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")

connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.queue_declare(queue=queue, durable=True)
channel.confirm_delivery()
persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)

# 1. A JSON envelope naming its id in the body.
channel.basic_publish(
    exchange="", routing_key=queue, properties=persistent,
    body=json.dumps({"id": "pika-json", "kernel": "primes", "input": {"n": 1000000}}),
)
# 2. Plain text, as the classic worker tutorial sends it, keyed by the message_id property.
channel.basic_publish(
    exchange="", routing_key=queue, body="Hello World!",
    properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, message_id="pika-text"),
)
# 3. message_id wins over the body's id.
channel.basic_publish(
    exchange="", routing_key=queue, body=json.dumps({"id": "ignored", "kernel": "echo", "input": [1, 2]}),
    properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, message_id="pika-prop"),
)
connection.close()
print("published 3 messages to", queue)
