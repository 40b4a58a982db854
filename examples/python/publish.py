"""Publish COUNT plain-text messages the way the pool-manager design's producers do: classic
pika, persistent, with publisher confirms. Nothing here knows about sluice.

    python3 examples/python/publish.py QUEUE COUNT

Message i has the body "data-<i>" and the message_id property "seed-<i>" (i = 1..COUNT); sluice
keys its result by the message_id, so the answer for message 1 is in sluice:result:seed-1.
AMQP_URL defaults to amqp://guest:guest@127.0.0.1:5672/%2f.
"""

import os
import sys

import pika

queue = sys.argv[1] if len(sys.argv) > 1 else "jobs"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 10
url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")

connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.queue_declare(queue=queue, durable=True)
channel.confirm_delivery()  # basic_publish now raises if the broker does not take a message

for i in range(1, count + 1):
    channel.basic_publish(
        exchange="",
        routing_key=queue,
        body=f"data-{i}",
        properties=pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, message_id=f"seed-{i}"
        ),
    )
connection.close()
print(f"published {count} messages to {queue}")
