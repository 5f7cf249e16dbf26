"""The official Python SDK (azure-servicebus 7.15) across a restart of the durable emulator
(`--data-dir`): what the administration client made, and the messages and session state
sent to it, are there after the restart as they were left.

Run by `tests/all/python_sdk.rs` in two phases, `before` and `after` (argv[1]), with the
emulator restarted on the same data directory in between, and:
- EMULATOR_ADMIN_CONNECTION_STRING: the management endpoint (HTTPS) for the administration client;
- EMULATOR_CA: the PEM certificate that endpoint serves;
- EMULATOR_CONNECTION_STRING: the emulator's AMQP connection string.
"""

import datetime
import os
import sys

from azure.core.exceptions import ResourceNotFoundError
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.management import (
    CorrelationRuleFilter,
    ServiceBusAdministrationClient,
    SqlRuleAction,
    SqlRuleFilter,
)

ADMIN_CS = os.environ["EMULATOR_ADMIN_CONNECTION_STRING"]
CA = os.environ["EMULATOR_CA"]
CS = os.environ["EMULATOR_CONNECTION_STRING"]

QUEUE, SESSIONS, TOPIC, SUBSCRIPTION = "kept-orders", "kept-sessions", "kept-events", "urgent"


def before(admin, client):
    admin.create_queue(QUEUE, max_delivery_count=3, lock_duration=datetime.timedelta(seconds=45))
    queue = admin.get_queue(QUEUE)
    queue.max_delivery_count = 4
    admin.update_queue(queue)
    admin.create_queue(SESSIONS, requires_session=True)
    admin.create_topic(TOPIC, default_message_time_to_live=datetime.timedelta(hours=1))
    admin.create_subscription(TOPIC, SUBSCRIPTION)
    admin.delete_rule(TOPIC, SUBSCRIPTION, "$Default")
    admin.create_rule(
        TOPIC,
        SUBSCRIPTION,
        "high",
        filter=SqlRuleFilter("priority = 'high'"),
        action=SqlRuleAction("SET routed = 'yes'"),
    )
    admin.create_rule(TOPIC, SUBSCRIPTION, "vip", filter=CorrelationRuleFilter(label="vip", properties={"tier": 3}))
    admin.create_queue("kept-gone")
    admin.delete_queue("kept-gone")

    with client.get_queue_sender(QUEUE) as s:
        s.send_messages(ServiceBusMessage("order-1", message_id="order-1"))
    with client.get_topic_sender(TOPIC) as s:
        s.send_messages(
            [
                ServiceBusMessage("alert", application_properties={"priority": "high"}),
                ServiceBusMessage("note", application_properties={"priority": "low"}),
            ]
        )
    with client.get_queue_sender(SESSIONS) as s:
        s.send_messages([ServiceBusMessage("first", session_id="s1"), ServiceBusMessage("second", session_id="s1")])
    with client.get_queue_receiver(SESSIONS, session_id="s1", max_wait_time=5) as r:
        r.session.set_state("step-2")
        (first,) = r.receive_messages(max_message_count=1, max_wait_time=5)
        assert str(first) == "first", str(first)
        r.complete_message(first)


def after(admin, client):
    queue = admin.get_queue(QUEUE)
    assert (queue.max_delivery_count, queue.lock_duration) == (4, datetime.timedelta(seconds=45)), queue
    assert admin.get_queue(SESSIONS).requires_session
    topic = admin.get_topic(TOPIC)
    assert topic.default_message_time_to_live == datetime.timedelta(hours=1), topic
    rules = {r.name: r for r in admin.list_rules(TOPIC, SUBSCRIPTION)}
    assert sorted(rules) == ["high", "vip"], sorted(rules)
    assert rules["high"].filter.sql_expression == "priority = 'high'"
    assert rules["high"].action.sql_expression == "SET routed = 'yes'"
    assert (rules["vip"].filter.label, rules["vip"].filter.properties) == ("vip", {"tier": 3})
    try:
        admin.get_queue("kept-gone")
        raise AssertionError("a deleted queue came back")
    except ResourceNotFoundError:
        pass
    assert admin.get_queue_runtime_properties(QUEUE).active_message_count == 1

    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    with client.get_queue_receiver(QUEUE, receive_mode=mode, max_wait_time=5) as r:
        got = r.receive_messages(max_message_count=10, max_wait_time=5)
        assert [str(m) for m in got] == ["order-1"], [str(m) for m in got]
    with client.get_topic_sender(TOPIC) as s:
        s.send_messages(ServiceBusMessage("badge", subject="vip", application_properties={"tier": 3}))
    with client.get_subscription_receiver(TOPIC, SUBSCRIPTION, receive_mode=mode, max_wait_time=5) as r:
        got = []
        while len(got) < 2:
            batch = r.receive_messages(max_message_count=10, max_wait_time=5)
            assert batch, [str(m) for m in got]
            got.extend(batch)
        assert [str(m) for m in got] == ["alert", "badge"], [str(m) for m in got]
        assert got[0].application_properties[b"routed"] == b"yes", got[0].application_properties
    with client.get_queue_receiver(SESSIONS, session_id="s1", max_wait_time=5) as r:
        assert r.session.get_state() == b"step-2"
        (second,) = r.receive_messages(max_message_count=1, max_wait_time=5)
        assert str(second) == "second", str(second)
        r.complete_message(second)


def main():
    phase = {"before": before, "after": after}[sys.argv[1]]
    with ServiceBusAdministrationClient.from_connection_string(ADMIN_CS, connection_verify=CA) as admin:
        with ServiceBusClient.from_connection_string(CS) as client:
            phase(admin, client)
    print(f"{sys.argv[1]}: ok")


if __name__ == "__main__":
    main()
