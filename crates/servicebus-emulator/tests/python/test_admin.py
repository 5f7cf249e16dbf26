"""The official Python administration client (azure-servicebus 7.15,
`ServiceBusAdministrationClient`) against the emulator's management endpoint.

Run by `tests/all/python_sdk.rs` beside `test_sdk.py`, which also passes:
- EMULATOR_ADMIN_CONNECTION_STRING: `Endpoint=sb://127.0.0.1:<management port>;...` (the
  administration client speaks HTTPS to the endpoint's host and port);
- EMULATOR_CA: the PEM certificate the endpoint serves, to trust.

Entities made here are named "adm-...": none exists before these cases make it.
"""

import datetime
import os

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.exceptions import ServiceBusError
from azure.servicebus.management import (
    CorrelationRuleFilter,
    ServiceBusAdministrationClient,
    SqlRuleAction,
    SqlRuleFilter,
)

from test_sdk import client, drain, send  # noqa: F401 (client is a fixture)

ADMIN_CS = os.environ["EMULATOR_ADMIN_CONNECTION_STRING"]
CA = os.environ["EMULATOR_CA"]


@pytest.fixture
def admin():
    with ServiceBusAdministrationClient.from_connection_string(ADMIN_CS, connection_verify=CA) as a:
        yield a


def test_a_queue_made_at_run_time_is_usable_over_amqp_at_once(admin, client):
    made = admin.create_queue("adm-orders", max_delivery_count=3, lock_duration=datetime.timedelta(seconds=30))
    assert (made.name, made.max_delivery_count, made.lock_duration) == (
        "adm-orders",
        3,
        datetime.timedelta(seconds=30),
    )
    with pytest.raises(ResourceExistsError):
        admin.create_queue("adm-orders")
    send(client, "adm-orders", "one", "two")
    runtime = admin.get_queue_runtime_properties("adm-orders")
    assert (runtime.active_message_count, runtime.total_message_count) == (2, 2)
    assert runtime.size_in_bytes > 0 and runtime.created_at_utc is not None
    assert "adm-orders" in [q.name for q in admin.list_queues()]

    queue = admin.get_queue("adm-orders")
    queue.max_delivery_count = 5
    admin.update_queue(queue)
    assert admin.get_queue("adm-orders").max_delivery_count == 5

    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    got = drain(client, client.get_queue_receiver("adm-orders", receive_mode=mode), 2)
    assert [str(m) for m in got] == ["one", "two"]
    admin.delete_queue("adm-orders")
    with pytest.raises(ResourceNotFoundError):
        admin.get_queue("adm-orders")
    with pytest.raises(ResourceNotFoundError):
        admin.delete_queue("adm-orders")


def test_deleting_a_queue_detaches_its_receivers(admin, client):
    admin.create_queue("adm-doomed")
    with client.get_queue_receiver("adm-doomed", max_wait_time=10) as r:
        assert r.receive_messages(max_message_count=1, max_wait_time=1) == []
        admin.delete_queue("adm-doomed")
        with pytest.raises(ServiceBusError):
            r.receive_messages(max_message_count=1, max_wait_time=10)


def test_topics_subscriptions_and_sql_rules_route_messages(admin, client):
    admin.create_topic("adm-events", default_message_time_to_live=datetime.timedelta(minutes=10))
    admin.create_subscription("adm-events", "red")
    admin.create_subscription("adm-events", "big")
    admin.create_rule("adm-events", "red", "is-red", filter=SqlRuleFilter("color = 'red'"))
    admin.delete_rule("adm-events", "red", "$Default")
    admin.create_rule(
        "adm-events",
        "big",
        "quantity",
        filter=CorrelationRuleFilter(properties={"size": "big"}),
        action=SqlRuleAction("SET checked = 'yes'"),
    )
    admin.delete_rule("adm-events", "big", "$Default")
    rules = {r.name: r for r in admin.list_rules("adm-events", "red")}
    assert list(rules) == ["is-red"] and rules["is-red"].filter.sql_expression == "color = 'red'"
    big = admin.get_rule("adm-events", "big", "quantity")
    assert big.filter.properties == {"size": "big"} and big.action.sql_expression == "SET checked = 'yes'"

    with client.get_topic_sender("adm-events") as s:
        s.send_messages(
            [
                ServiceBusMessage("r", application_properties={"color": "red"}),
                ServiceBusMessage("b", application_properties={"color": "blue", "size": "big"}),
            ]
        )
    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    red = drain(client, client.get_subscription_receiver("adm-events", "red", receive_mode=mode), 2, wait=3)
    assert [str(m) for m in red] == ["r"]
    big_msgs = drain(client, client.get_subscription_receiver("adm-events", "big", receive_mode=mode), 2, wait=3)
    assert [(str(m), m.application_properties[b"checked"]) for m in big_msgs] == [("b", b"yes")]

    runtime = admin.get_subscription_runtime_properties("adm-events", "red")
    assert runtime.total_message_count == 0
    topic = admin.get_topic_runtime_properties("adm-events")
    assert topic.subscription_count == 2
    assert sorted(s.name for s in admin.list_subscriptions("adm-events")) == ["big", "red"]
    assert "adm-events" in [t.name for t in admin.list_topics()]

    with pytest.raises(ResourceExistsError):
        admin.create_subscription("adm-events", "red")
    with pytest.raises(HttpResponseError, match="does not parse"):
        admin.create_rule("adm-events", "red", "broken", filter=SqlRuleFilter("color = "))
    admin.delete_subscription("adm-events", "big")
    admin.delete_topic("adm-events")
    with pytest.raises(ResourceNotFoundError):
        admin.get_topic("adm-events")


def test_forwarding_set_through_the_api(admin, client):
    admin.create_queue("adm-target")
    admin.create_queue("adm-source", forward_to="adm-target")
    assert admin.get_queue("adm-source").forward_to.endswith("/adm-target")
    send(client, "adm-source", "moved")
    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    (m,) = drain(client, client.get_queue_receiver("adm-target", receive_mode=mode), 1)
    assert str(m) == "moved"
    with pytest.raises(HttpResponseError, match="not a queue or topic"):
        admin.create_queue("adm-nowhere", forward_to="adm-missing")
    admin.delete_queue("adm-source")
    admin.delete_queue("adm-target")


def test_namespace_properties(admin):
    ns = admin.get_namespace_properties()
    assert ns.messaging_sku == "Standard" and ns.name


# One subscription per family of Service Bus's SQL filter syntax, and the messages each takes.
FAMILIES = {
    "compare": ("quantity >= 5 AND quantity <> 12", ["m1"]),
    "logic": ("color = 'red' OR NOT (quantity > 1)", ["m1", "m3"]),
    "in": ("color IN ('blue', 'green')", ["m2", "m3"]),
    "like": ("name LIKE 'widget!_%' ESCAPE '!'", ["m1"]),
    "null": ("rush IS NULL", ["m1", "m2"]),
    "exists": ("EXISTS(rush)", ["m3"]),
    "arith": ("quantity * 2 + 1 > 20", ["m2"]),
    "sys": ("sys.Label = 'order' OR sys.ContentType = 'application/json'", ["m1", "m3"]),
}


def test_each_sql_filter_family_selects_what_the_service_would(admin, client):
    admin.create_topic("adm-sql")
    for name, (sql, _) in FAMILIES.items():
        admin.create_subscription("adm-sql", name)
        admin.create_rule("adm-sql", name, "only", filter=SqlRuleFilter(sql))
        admin.delete_rule("adm-sql", name, "$Default")
    messages = [
        ServiceBusMessage("m1", subject="order", application_properties={"color": "red", "quantity": 5, "name": "widget_1"}),
        ServiceBusMessage("m2", subject="refund", application_properties={"color": "blue", "quantity": 12, "name": "gadget"}),
        ServiceBusMessage(
            "m3",
            content_type="application/json",
            application_properties={"color": "green", "quantity": 0, "name": "widget%x", "rush": True},
        ),
    ]
    with client.get_topic_sender("adm-sql") as s:
        s.send_messages(messages)
    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    for name, (sql, expected) in FAMILIES.items():
        got = drain(client, client.get_subscription_receiver("adm-sql", name, receive_mode=mode), len(expected))
        with client.get_subscription_receiver("adm-sql", name) as r:
            got += r.peek_messages(max_message_count=5)
        assert sorted(str(m) for m in got) == expected, f"{name}: {sql}"
    admin.delete_topic("adm-sql")
