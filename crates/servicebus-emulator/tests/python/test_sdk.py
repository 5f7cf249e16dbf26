"""The official Python SDK (azure-servicebus 7.15) against the emulator.

Run by `tests/all/python_sdk.rs`, which starts the emulator in-process on an
ephemeral port with the queues these cases use, and passes:
- EMULATOR_CONNECTION_STRING: the emulator's connection string (default key);
- EMULATOR_ENDPOINT: `sb://127.0.0.1:<port>`;
- EMULATOR_WS_ENDPOINT: `sb://127.0.0.1:<port>` of the AMQP-over-WebSockets listener.

The cases run in four pytest-xdist workers at once (most of a case's time is waiting). A case
uses a queue of its own, so that none sees another's messages; the few that share a queue are
marked with one `xdist_group`, and run in one worker, one after the other. Queues whose name
starts with `session` require sessions.
"""

import base64
import datetime
import hashlib
import hmac
import os
import time
import urllib.parse
import uuid

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
    TransportType,
)
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

CS = os.environ["EMULATOR_CONNECTION_STRING"]
ENDPOINT = os.environ["EMULATOR_ENDPOINT"]
WS_ENDPOINT = os.environ["EMULATOR_WS_ENDPOINT"]
DEFAULT_LOCK_SECONDS = 60


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture
def client():
    with ServiceBusClient.from_connection_string(CS) as c:
        yield c


def send(client, queue, *bodies, **kwargs):
    with client.get_queue_sender(queue) as s:
        msgs = [ServiceBusMessage(b, **kwargs) for b in bodies]
        s.send_messages(msgs if len(msgs) > 1 else msgs[0])


def receive(client, queue, n, wait=5, **kwargs):
    got = []
    with client.get_queue_receiver(queue, max_wait_time=wait, **kwargs) as r:
        deadline = time.time() + wait
        while len(got) < n and time.time() < deadline:
            got.extend(r.receive_messages(max_message_count=n - len(got), max_wait_time=1))
    return got


@pytest.mark.xdist_group("basic")
def test_send_single_and_batch(client):
    before = utcnow()
    with client.get_queue_sender("basic") as s:
        s.send_messages(ServiceBusMessage("one", message_id="id-1", subject="s", application_properties={"k": 7}))
        batch = s.create_message_batch()
        for b in ("two", "three", "four"):
            batch.add_message(ServiceBusMessage(b))
        s.send_messages(batch)
        s.send_messages([ServiceBusMessage("five"), ServiceBusMessage("six")])
    with client.get_queue_receiver("basic", max_wait_time=5) as r:
        got = []
        while len(got) < 6:
            more = r.receive_messages(max_message_count=6, max_wait_time=3)
            assert more, f"only {len(got)} of 6 messages arrived"
            got.extend(more)
        assert [str(m) for m in got] == ["one", "two", "three", "four", "five", "six"]
        seqs = [m.sequence_number for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == 6
        first = got[0]
        assert first.message_id == "id-1"
        assert first.subject == "s"
        assert first.application_properties[b"k"] == 7
        # The broker assigns a message-id when the sender gives none.
        assert got[1].message_id
        for m in got:
            assert before - datetime.timedelta(seconds=2) <= m.enqueued_time_utc <= utcnow() + datetime.timedelta(seconds=2)
            r.complete_message(m)


def test_peek_lock_and_complete(client):
    send(client, "settle", "hello")
    with client.get_queue_receiver("settle", max_wait_time=5) as r:
        (m,) = r.receive_messages(max_message_count=1, max_wait_time=5)
        assert isinstance(m.lock_token, (str, uuid.UUID)) and uuid.UUID(str(m.lock_token))
        assert m.delivery_count == 0
        expected = utcnow() + datetime.timedelta(seconds=DEFAULT_LOCK_SECONDS)
        assert abs((m.locked_until_utc - expected).total_seconds()) < 5
        start = time.time()
        r.complete_message(m)
        assert time.time() - start < 2, "the settled echo should come at once"
        assert r.receive_messages(max_message_count=1, max_wait_time=1) == []


def test_abandon_raises_the_delivery_count(client):
    send(client, "abandon", "again")
    with client.get_queue_receiver("abandon", max_wait_time=5) as r:
        (m,) = r.receive_messages(max_message_count=1, max_wait_time=5)
        assert m.delivery_count == 0
        r.abandon_message(m)
        (m2,) = r.receive_messages(max_message_count=1, max_wait_time=5)
        assert m2.sequence_number == m.sequence_number
        assert m2.delivery_count == 1
        assert m2.lock_token != m.lock_token
        r.complete_message(m2)


def test_dead_letter_with_reason_and_read_it_back(client):
    send(client, "deadletter", "poison")
    with client.get_queue_receiver("deadletter", max_wait_time=5) as r:
        (m,) = r.receive_messages(max_message_count=1, max_wait_time=5)
        r.dead_letter_message(m, reason="InvalidOrder", error_description="amount is negative")
        assert r.receive_messages(max_message_count=1, max_wait_time=1) == []
    with client.get_queue_receiver("deadletter", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=5) as d:
        (dl,) = d.receive_messages(max_message_count=1, max_wait_time=5)
        assert str(dl) == "poison"
        assert dl.dead_letter_reason == "InvalidOrder"
        assert dl.dead_letter_error_description == "amount is negative"
        assert dl.sequence_number == m.sequence_number
        d.complete_message(dl)
        assert d.receive_messages(max_message_count=1, max_wait_time=1) == []


def test_defer_then_receive_deferred(client):
    send(client, "defer", "later")
    with client.get_queue_receiver("defer", max_wait_time=5) as r:
        (m,) = r.receive_messages(max_message_count=1, max_wait_time=5)
        seq = m.sequence_number
        r.defer_message(m)
        assert r.receive_messages(max_message_count=1, max_wait_time=1) == []
        (d,) = r.receive_deferred_messages([seq])
        assert str(d) == "later"
        assert d.sequence_number == seq
        assert uuid.UUID(str(d.lock_token))
        r.complete_message(d)
        with pytest.raises(ServiceBusError):
            r.receive_deferred_messages([seq])


def test_schedule_and_cancel(client):
    with client.get_queue_sender("schedule") as s:
        at = utcnow() + datetime.timedelta(seconds=4)
        (kept,) = s.schedule_messages(ServiceBusMessage("kept"), at)
        (cancelled,) = s.schedule_messages(ServiceBusMessage("cancelled"), at)
        assert kept < cancelled
        s.cancel_scheduled_messages(cancelled)
    with client.get_queue_receiver("schedule", max_wait_time=10) as r:
        peeked = r.peek_messages(max_message_count=10)
        assert [p.sequence_number for p in peeked] == [kept]
        assert peeked[0].scheduled_enqueue_time_utc is not None
        got = []
        while not got and utcnow() < at + datetime.timedelta(seconds=5):
            got = r.receive_messages(max_message_count=2, max_wait_time=1)
        arrived = utcnow()
        assert [str(m) for m in got] == ["kept"], "the cancelled message must never arrive"
        assert got[0].sequence_number == kept
        assert arrived >= at - datetime.timedelta(milliseconds=100), f"delivered {at - arrived} before its time"
        assert arrived <= at + datetime.timedelta(seconds=2), f"delivered {arrived - at} after its time"
        r.complete_message(got[0])
        assert r.receive_messages(max_message_count=1, max_wait_time=1) == []


def test_peek_does_not_lock(client):
    send(client, "peek", "p1", "p2", "p3")
    with client.get_queue_receiver("peek", max_wait_time=5) as r:
        peeked = r.peek_messages(max_message_count=10)
        assert [str(p) for p in peeked] == ["p1", "p2", "p3"]
        assert [p.sequence_number for p in peeked] == [1, 2, 3]
        more = r.peek_messages(max_message_count=10, sequence_number=3)
        assert [p.sequence_number for p in more] == [3]
        got = r.receive_messages(max_message_count=3, max_wait_time=5)
        assert len(got) == 3
        for m in got:
            r.complete_message(m)


def test_renew_lock(client):
    # The queue's LockDuration is 4 s.
    send(client, "renew", "slow")
    with client.get_queue_receiver("renew", max_wait_time=5) as r:
        (m,) = r.receive_messages(max_message_count=1, max_wait_time=5)
        first_until = m.locked_until_utc
        time.sleep(2.5)
        new_until = r.renew_message_lock(m)
        assert new_until > first_until
        assert abs((new_until - (utcnow() + datetime.timedelta(seconds=4))).total_seconds()) < 2
        time.sleep(2.5)  # Past the first lock's expiry: only the renewal keeps it.
        r.complete_message(m)
        assert r.receive_messages(max_message_count=1, max_wait_time=1) == []


def test_receive_and_delete(client):
    send(client, "rad", "gone")
    with client.get_queue_receiver(
        "rad", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, max_wait_time=5
    ) as r:
        (m,) = r.receive_messages(max_message_count=1, max_wait_time=5)
        assert str(m) == "gone"
    with client.get_queue_receiver("rad", max_wait_time=2) as r:
        assert r.peek_messages(max_message_count=10) == []


def test_lock_expiry_redelivers(client):
    # The queue's LockDuration is 2 s.
    send(client, "lockexpiry", "forgotten")
    with client.get_queue_receiver("lockexpiry", max_wait_time=5) as r:
        (m,) = r.receive_messages(max_message_count=1, max_wait_time=5)
        time.sleep(2.5)
        (m2,) = r.receive_messages(max_message_count=1, max_wait_time=5)
        assert m2.sequence_number == m.sequence_number
        assert m2.delivery_count == 1
        with pytest.raises(MessageLockLostError):
            r.complete_message(m)
        r.complete_message(m2)


def test_max_delivery_count_moves_to_the_dead_letter_queue(client):
    # The queue's MaxDeliveryCount is 2.
    send(client, "poison", "bad")
    with client.get_queue_receiver("poison", max_wait_time=5) as r:
        for expected_count in (0, 1):
            (m,) = r.receive_messages(max_message_count=1, max_wait_time=5)
            assert m.delivery_count == expected_count
            r.abandon_message(m)
        assert r.receive_messages(max_message_count=1, max_wait_time=1) == []
    with client.get_queue_receiver("poison", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=5) as d:
        (dl,) = d.receive_messages(max_message_count=1, max_wait_time=5)
        assert dl.dead_letter_reason == "MaxDeliveryCountExceeded"
        assert dl.delivery_count == 2
        d.complete_message(dl)


@pytest.mark.xdist_group("auth")
def test_a_wrong_key_is_rejected():
    bad = CS.replace("SharedAccessKey=SAS_KEY_VALUE", "SharedAccessKey=not-the-key")
    assert bad != CS
    start = time.time()
    with ServiceBusClient.from_connection_string(bad, retry_total=0) as c:
        with pytest.raises((ServiceBusAuthenticationError, ServiceBusAuthorizationError)):
            with c.get_queue_sender("auth") as s:
                s.send_messages(ServiceBusMessage("x"))
    assert time.time() - start < 30


def sas(resource, key_name, key, expiry):
    encoded = urllib.parse.quote_plus(resource)
    signed = f"{encoded}\n{expiry}".encode()
    sig = base64.b64encode(hmac.new(key.encode(), signed, hashlib.sha256).digest()).decode()
    return "SharedAccessSignature " + urllib.parse.urlencode(
        {"sr": resource, "sig": sig, "se": str(expiry), "skn": key_name}
    )


@pytest.mark.xdist_group("auth")
def test_an_expired_token_is_rejected():
    token = sas(f"{ENDPOINT}/auth", "RootManageSharedAccessKey", "SAS_KEY_VALUE", int(time.time()) - 60)
    cs = f"Endpoint={ENDPOINT};SharedAccessSignature={token};UseDevelopmentEmulator=true"
    with ServiceBusClient.from_connection_string(cs, retry_total=0) as c:
        with pytest.raises((ServiceBusAuthenticationError, ServiceBusAuthorizationError)):
            with c.get_queue_sender("auth") as s:
                s.send_messages(ServiceBusMessage("x"))


@pytest.mark.xdist_group("auth")
def test_a_valid_shared_access_signature_is_accepted():
    token = sas(f"{ENDPOINT}/auth", "RootManageSharedAccessKey", "SAS_KEY_VALUE", int(time.time()) + 600)
    cs = f"Endpoint={ENDPOINT};SharedAccessSignature={token};UseDevelopmentEmulator=true"
    with ServiceBusClient.from_connection_string(cs) as c:
        with c.get_queue_sender("auth") as s:
            s.send_messages(ServiceBusMessage("x"))
        with c.get_queue_receiver("auth", max_wait_time=5) as r:
            (m,) = r.receive_messages(max_message_count=1, max_wait_time=5)
            r.complete_message(m)


def with_key(name, key):
    return f"Endpoint={ENDPOINT};SharedAccessKeyName={name};SharedAccessKey={key};UseDevelopmentEmulator=true"


@pytest.mark.xdist_group("rights")
def test_rights_a_send_only_key_sends_and_cannot_receive():
    with ServiceBusClient.from_connection_string(with_key("SendOnlyKey", "send-only-secret"), retry_total=0) as c:
        send(c, "rights", "from the sender")
        with pytest.raises(ServiceBusAuthorizationError) as refused:
            with c.get_queue_receiver("rights", max_wait_time=2) as r:
                r.receive_messages(max_message_count=1, max_wait_time=2)
        assert "Listen" in str(refused.value)


@pytest.mark.xdist_group("rights")
def test_rights_a_listen_only_key_receives_and_cannot_send():
    with ServiceBusClient.from_connection_string(with_key("ListenOnlyKey", "listen-only-secret"), retry_total=0) as c:
        with pytest.raises(ServiceBusAuthorizationError) as refused:
            send(c, "rights", "not allowed")
        assert "Send" in str(refused.value)
        with c.get_queue_receiver("rights", max_wait_time=5) as r:
            (m,) = r.receive_messages(max_message_count=1, max_wait_time=5)
            assert str(m) == "from the sender"
            r.renew_message_lock(m)
            r.complete_message(m)


def test_an_unknown_queue_is_not_found(client):
    with pytest.raises(MessagingEntityNotFoundError):
        with client.get_queue_sender("no-such-queue") as s:
            s.send_messages(ServiceBusMessage("x"))


@pytest.mark.xdist_group("basic")
def test_a_message_too_large_is_refused_and_the_sender_goes_on(client):
    with client.get_queue_sender("basic") as s:
        with pytest.raises(MessageSizeExceededError):
            s.send_messages(ServiceBusMessage(b"x" * (2 * 1024 * 1024)))
        s.send_messages(ServiceBusMessage("small, after the refused one"))
    (m,) = receive(client, "basic", 1)
    assert str(m) == "small, after the refused one"


# Sessions. Queues: "sessions", "sessionnext", "sessionpoison" (MaxDeliveryCount 2),
# "sessionlock" (LockDuration 2 s), "sessiondefer".


def send_to_sessions(client, queue, pairs):
    with client.get_queue_sender(queue) as s:
        s.send_messages([ServiceBusMessage(body, session_id=sid) for sid, body in pairs])


@pytest.mark.xdist_group("sessions")
def test_sessions_a_session_is_received_in_order_by_one_receiver_with_its_state(client):
    send_to_sessions(client, "sessions", [("a", "a1"), ("b", "b1"), ("a", "a2"), ("a", "a3"), ("b", "b2")])
    with client.get_queue_receiver("sessions", session_id="a", max_wait_time=3) as r:
        assert r.session.session_id == "a"
        expected = utcnow() + datetime.timedelta(seconds=DEFAULT_LOCK_SECONDS)
        assert abs((r.session.locked_until_utc - expected).total_seconds()) < 5
        with ServiceBusClient.from_connection_string(CS, retry_total=0) as other:
            with pytest.raises(SessionCannotBeLockedError):
                with other.get_queue_receiver("sessions", session_id="a", max_wait_time=3) as r2:
                    r2.receive_messages(max_message_count=1, max_wait_time=2)
        got = []
        while len(got) < 3:
            more = r.receive_messages(max_message_count=3, max_wait_time=3)
            assert more, f"only {got} of a's three messages arrived"
            got.extend(more)
        assert [str(m) for m in got] == ["a1", "a2", "a3"]
        assert all(m.session_id == "a" for m in got)
        assert r.session.get_state() is None
        r.session.set_state(b"step 3 of 3")
        assert r.session.get_state() == b"step 3 of 3"
        before = r.session.locked_until_utc
        time.sleep(1)
        assert r.session.renew_lock() > before
        for m in got:
            r.complete_message(m)
    # The lock went with the receiver; the state stays with the session.
    with client.get_queue_receiver("sessions", session_id="a", max_wait_time=2) as r:
        assert r.session.get_state() == b"step 3 of 3"
        assert r.receive_messages(max_message_count=1, max_wait_time=1) == []
        r.session.set_state(None)
        assert r.session.get_state() is None
    with client.get_queue_receiver("sessions", session_id="b", max_wait_time=3) as r:
        got = receive_all(r, 2)
        assert [str(m) for m in got] == ["b1", "b2"]
        for m in got:
            r.complete_message(m)


def receive_all(r, n, wait=5):
    got = []
    deadline = time.time() + wait
    while len(got) < n and time.time() < deadline:
        got.extend(r.receive_messages(max_message_count=n - len(got), max_wait_time=1))
    return got


def test_sessions_next_available_takes_a_free_session_and_times_out_when_none_is(client):
    send_to_sessions(client, "sessionnext", [("x", "x1")])
    with client.get_queue_receiver("sessionnext", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5) as r:
        assert r.session.session_id == "x"
        (m,) = receive_all(r, 1)
        assert str(m) == "x1"
        # x is held: there is no other session with messages.
        with ServiceBusClient.from_connection_string(CS, retry_total=0) as other:
            start = time.time()
            with pytest.raises(OperationTimeoutError):
                with other.get_queue_receiver(
                    "sessionnext", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=2
                ) as r2:
                    r2.receive_messages(max_message_count=1, max_wait_time=1)
            assert time.time() - start < 10
        r.complete_message(m)


def test_sessions_abandon_dead_letter_and_max_delivery_count(client):
    send_to_sessions(client, "sessionpoison", [("p", "bad"), ("p", "worse")])
    with client.get_queue_receiver("sessionpoison", session_id="p", max_wait_time=3) as r:
        (bad, worse) = receive_all(r, 2)
        r.dead_letter_message(worse, reason="Invalid", error_description="worse than bad")
        r.abandon_message(bad)
        (again,) = receive_all(r, 1)
        assert again.sequence_number == bad.sequence_number and again.delivery_count == 1
        r.abandon_message(again)  # MaxDeliveryCount 2: to the dead-letter queue.
        assert r.receive_messages(max_message_count=1, max_wait_time=1) == []
    # A session entity's dead-letter queue is read without a session.
    with client.get_queue_receiver("sessionpoison", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=3) as d:
        got = sorted(receive_all(d, 2), key=lambda m: m.sequence_number)
        assert [(str(m), m.dead_letter_reason) for m in got] == [
            ("bad", "MaxDeliveryCountExceeded"),
            ("worse", "Invalid"),
        ]
        assert got[1].dead_letter_error_description == "worse than bad"
        assert all(m.session_id == "p" for m in got)
        for m in got:
            d.complete_message(m)


def test_sessions_a_lapsed_session_lock_loses_the_messages_it_held(client):
    # The queue's LockDuration is 2 s.
    send_to_sessions(client, "sessionlock", [("s", "held")])
    with client.get_queue_receiver("sessionlock", session_id="s", max_wait_time=3) as r:
        (m,) = receive_all(r, 1)
        time.sleep(3)
        with pytest.raises(SessionLockLostError):
            r.complete_message(m)
    with client.get_queue_receiver("sessionlock", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5) as r:
        assert r.session.session_id == "s"
        (m2,) = receive_all(r, 1)
        assert m2.sequence_number == m.sequence_number
        assert m2.delivery_count == 1
        r.complete_message(m2)


def test_sessions_defer_peek_and_receive_deferred(client):
    send_to_sessions(client, "sessiondefer", [("d", "later"), ("e", "other")])
    with client.get_queue_receiver("sessiondefer", session_id="d", max_wait_time=3) as r:
        (m,) = receive_all(r, 1)
        r.defer_message(m)
        # The SDK peeks from after the last message it received unless told where to start.
        assert r.peek_messages(max_message_count=10) == []
        peeked = r.peek_messages(max_message_count=10, sequence_number=1)
        assert [(str(p), p.session_id) for p in peeked] == [("later", "d")], "only d's messages"
        (deferred,) = r.receive_deferred_messages([m.sequence_number])
        assert str(deferred) == "later"
        r.complete_message(deferred)
    with client.get_queue_receiver("sessiondefer", session_id="e", max_wait_time=3) as r:
        (m,) = receive_all(r, 1)
        r.complete_message(m)


@pytest.mark.xdist_group("sessions")
def test_sessions_refuse_what_the_service_refuses(client):
    with ServiceBusClient.from_connection_string(CS, retry_total=0) as c:
        with pytest.raises(ServiceBusError) as no_id:
            with c.get_queue_sender("sessions") as s:
                s.send_messages(ServiceBusMessage("no session id"))
        assert "SessionId" in str(no_id.value)
        with pytest.raises(ServiceBusError) as not_sessionful:
            with c.get_queue_receiver("sessions", max_wait_time=2) as r:
                r.receive_messages(max_message_count=1, max_wait_time=1)
        assert "requires sessions" in str(not_sessionful.value)


def test_websockets_carry_sends_receives_settlements_and_management():
    # As on Azure's 443, with the emulator's plain WebSocket listener as the custom endpoint.
    with ServiceBusClient.from_connection_string(
        CS, transport_type=TransportType.AmqpOverWebsocket, custom_endpoint_address=WS_ENDPOINT
    ) as c:
        send(c, "websocket", "over websockets", "and again")
        with c.get_queue_receiver("websocket", max_wait_time=5) as r:
            got = []
            while len(got) < 2:
                batch = r.receive_messages(max_message_count=2, max_wait_time=5)
                assert batch, "the messages came"
                got.extend(batch)
            assert sorted(str(m) for m in got) == ["and again", "over websockets"]
            renewed = r.renew_message_lock(got[0])
            assert renewed > utcnow()
            for m in got:
                r.complete_message(m)
            assert r.peek_messages(max_message_count=5) == []


# Entities of tests/moving.json (Microsoft's Config.json schema): duplicate detection,
# forwarding chains, a forwarding loop, dead-letter forwarding, and 1 MB quotas.


def drain(client, receiver, n, wait=5):
    """Receives (and deletes) until `n` messages arrived or `wait` seconds passed."""
    got = []
    deadline = time.time() + wait
    with receiver:
        while len(got) < n and time.time() < deadline:
            got.extend(receiver.receive_messages(max_message_count=n - len(got), max_wait_time=1))
    return got


def test_duplicate_detection_drops_a_repeated_message_id(client):
    send(client, "dedup", "1", message_id="order-1")
    send(client, "dedup", "1 again", message_id="order-1")
    send(client, "dedup", "2", message_id="order-2")
    with client.get_topic_sender("dedup-topic") as s:
        s.send_messages([ServiceBusMessage("t", message_id="event-1"), ServiceBusMessage("t", message_id="event-1")])
    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    got = drain(client, client.get_queue_receiver("dedup", receive_mode=mode), 3, wait=3)
    assert [str(m) for m in got] == ["1", "2"]
    got = drain(client, client.get_subscription_receiver("dedup-topic", "all", receive_mode=mode), 2, wait=3)
    assert [m.message_id for m in got] == ["event-1"]


def test_forwarding_chain_and_a_source_without_receivers(client):
    send(client, "fwd-in", "travels", message_id="hop")
    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    (m,) = drain(client, client.get_queue_receiver("fwd-out", receive_mode=mode), 1)
    assert (str(m), m.message_id) == ("travels", "hop")
    assert isinstance(m.enqueued_sequence_number, int)
    assert len(drain(client, client.get_subscription_receiver("fwd-topic", "kept", receive_mode=mode), 1)) == 1
    with pytest.raises(ServiceBusError, match="auto-forwarding"):
        with client.get_queue_receiver("fwd-in", max_wait_time=2) as r:
            r.receive_messages(max_message_count=1, max_wait_time=2)


def test_forwarding_loop_dead_letters_after_four_hops(client):
    send(client, "loop-a", "round and round")
    dlq = client.get_queue_receiver("loop-a", sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    (d,) = drain(client, dlq, 1)
    assert d.dead_letter_reason == "MaxTransferHopCountExceeded"


def test_dead_lettered_messages_forward_with_reason_and_source(client):
    send(client, "dlf-work", "rejected", "poison")
    with client.get_queue_receiver("dlf-work", max_wait_time=5) as r:
        got = []
        while len(got) < 2:
            got.extend(r.receive_messages(max_message_count=2, max_wait_time=3))
        r.dead_letter_message(got[0], reason="Invalid", error_description="no price")
        r.abandon_message(got[1])  # MaxDeliveryCount 1
    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    parked = drain(client, client.get_queue_receiver("dlf-parked", receive_mode=mode), 2)
    assert [(str(m), m.dead_letter_reason, m.dead_letter_source) for m in parked] == [
        ("rejected", "Invalid", "dlf-work"),
        ("poison", "MaxDeliveryCountExceeded", "dlf-work"),
    ]


def test_quota_refuses_a_send_and_forwarding_to_a_full_queue_dead_letters():
    big = "x" * (200 * 1024)
    with ServiceBusClient.from_connection_string(CS, retry_total=0) as client:
        for _ in range(5):
            send(client, "quota", big)
            send(client, "full", big)
        with pytest.raises(ServiceBusQuotaExceededError):
            send(client, "quota", big)
        with client.get_queue_receiver("quota") as r:
            assert len(r.peek_messages(max_message_count=10)) == 5
        send(client, "full-src", big, message_id="no-room")
        dlq = client.get_queue_receiver("full-src", sub_queue=ServiceBusSubQueue.DEAD_LETTER)
        (d,) = drain(client, dlq, 1)
        assert (d.message_id, d.dead_letter_reason) == ("no-room", "QuotaExceededException")


def test_an_entitys_message_size_is_advertised_and_enforced(client):
    body = "y" * (600 * 1024)  # past the emulator's 256 KiB, inside large's 1 MiB
    send(client, "large", body)
    mode = ServiceBusReceiveMode.RECEIVE_AND_DELETE
    (m,) = drain(client, client.get_queue_receiver("large", receive_mode=mode), 1)
    assert len(str(m)) == len(body)
    with pytest.raises(MessageSizeExceededError):
        send(client, "small", "z" * 2048)
