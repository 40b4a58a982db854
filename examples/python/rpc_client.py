"""An RPC client in the style of RabbitMQ's tutorial six ("Remote procedure call"), with nothing
sluice-specific but the queue's name: it publishes COUNT plain-text messages with `reply_to` and
a fresh `correlation_id` each, then waits for every reply.

    python3 examples/python/rpc_client.py QUEUE COUNT [--named]

Replies come over RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`), or with `--named` over
an exclusive queue of its own, as in the tutorial. Each reply is the message's result record as
JSON (`id`, `status`, `output` or `error`, `kernel`, `batch`, `duration_us`, `finished_at`).
Prints one JSON line per reply, `{"correlation_id": ..., "reply": {...}}`, in publish order; exits
1 if a reply is missing after TIMEOUT seconds (default 120). AMQP_URL defaults to
amqp://guest:guest@127.0.0.1:5672/%2f.
"""

import json
import os
import sys
import time
import uuid

import pika

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class SluiceRpcClient:
    """Publishes requests and collects their replies, keyed by correlation id."""

    def __init__(self, url, named):
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        if named:
            declared = self.channel.queue_declare(queue="", exclusive=True)
            self.callback_queue = declared.method.queue
        else:
            # Direct reply-to: consumed without acks, and published on from this channel.
            self.callback_queue = DIRECT_REPLY_TO
        self.channel.basic_consume(
            queue=self.callback_queue,
            on_message_callback=self.on_response,
            auto_ack=True,
        )
        self.responses = {}

    def on_response(self, _channel, _method, properties, body):
        self.responses[properties.correlation_id] = json.loads(body)

    def call(self, queue, bodies, timeout):
        """Publishes `bodies`; returns their correlation ids once every reply is in (or the
        timeout passed)."""
        ids = []
        for body in bodies:
            correlation_id = str(uuid.uuid4())
            ids.append(correlation_id)
            self.channel.basic_publish(
                exchange="",
                routing_key=queue,
                properties=pika.BasicProperties(
                    reply_to=self.callback_queue,
                    correlation_id=correlation_id,
                    delivery_mode=pika.DeliveryMode.Persistent,
                ),
                body=body,
            )
        deadline = time.monotonic() + timeout
        while len(self.responses) < len(ids) and time.monotonic() < deadline:
            self.connection.process_data_events(time_limit=1)
        return ids


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    queue = args[0] if args else "jobs"
    count = int(args[1]) if len(args) > 1 else 10
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    timeout = float(os.environ.get("TIMEOUT", "120"))
    client = SluiceRpcClient(url, named="--named" in sys.argv)
    ids = client.call(queue, [f"data-{i}" for i in range(1, count + 1)], timeout)
    missing = 0
    for correlation_id in ids:
        reply = client.responses.get(correlation_id)
        if reply is None:
            missing += 1
            continue
        print(json.dumps({"correlation_id": correlation_id, "reply": reply}))
    client.connection.close()
    if missing:
        print(f"{missing} of {count} replies missing after {timeout:.0f}s", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
