"""The sample handler of the December 2024 revision, in Python (componentize-py).

It does what `guests/sample-handler` (Rust) does, built from upstream's WIT alone
(`wasi:messaging/messaging-core` at commit 4ee59bb): for each message,
- on `orders`: a JSON order (`id`, `customer`, `amount_cents`) becomes a payment request sent
  to `payments` (content type `application/json`, `correlation-id` the order's id, metadata
  `order-id`), and `handle` returns (the host completes the order); an order that is not
  valid raises `Err(Error_Other)` (the host abandons it);
- on `payments`: a valid payment request returns, anything else raises `Err(Error_Other)`.

Built by `cargo xtask build-guests` into `target/components/sample-handler-py.wasm`.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import producer
from wit_world.imports.types import Client, Error_Other, Message

ORDERS = "orders"
PAYMENTS = "payments"


def fail(text: str) -> Err:
    return Err(Error_Other(text))


def parse(data: bytes, fields: dict, what: str) -> dict:
    """The JSON object in `data`, with exactly these fields of these types."""
    try:
        value = json.loads(data)
    except ValueError as e:
        raise fail(f"not {what}: {e}")
    if not isinstance(value, dict) or set(value) != set(fields):
        raise fail(f"not {what}: the fields must be {sorted(fields)}")
    for name, kind in fields.items():
        if not isinstance(value[name], kind) or isinstance(value[name], bool):
            raise fail(f"not {what}: {name} must be a {kind.__name__}")
    return value


def order(m: Message) -> None:
    o = parse(m.data(), {"id": str, "customer": str, "amount_cents": int}, "an order")
    if o["amount_cents"] <= 0 or not o["customer"]:
        raise fail(f"order {o['id']} has no customer or no amount")
    request = {"order_id": o["id"], "customer": o["customer"], "amount_cents": o["amount_cents"]}
    payment = Message(json.dumps(request, separators=(",", ":")).encode())
    payment.set_content_type("application/json")
    payment.add_metadata("correlation-id", o["id"])
    payment.add_metadata("order-id", o["id"])
    producer.send(Client.connect("default"), PAYMENTS, payment)


def payment(m: Message) -> None:
    p = parse(m.data(), {"order_id": str, "customer": str, "amount_cents": int}, "a payment request")
    if p["amount_cents"] <= 0:
        raise fail(f"payment for order {p['order_id']} has no amount")


class IncomingHandler(exports.IncomingHandler):
    def handle(self, message: Message) -> None:
        topic = message.topic()
        if topic == ORDERS:
            order(message)
        elif topic == PAYMENTS:
            payment(message)
        else:
            raise fail(f"no handler for messages from {topic!r}")
