// The official Node.js SDK (@azure/service-bus 7.9, on rhea) against the emulator.
//
// Run by `tests/all/node_sdk.rs` with `node --test`: it starts the emulator in-process on an
// ephemeral port with the entities these cases use, installs the SDK into the target
// directory (NODE_PATH points there), and passes:
// - EMULATOR_CONNECTION_STRING: the emulator's connection string (default key).
//
// Each case uses its own entities ("n-..."), so the cases do not see each other's messages.
// Entities whose name starts with "n-session" require sessions.

"use strict";

const { test } = require("node:test");
const assert = require("node:assert/strict");

const { ServiceBusClient } = require("@azure/service-bus");
const { CS, client, withClient, send, receive, sleep, failure } = require("./helpers.cjs");

const LOCK_SECONDS = 60;

test("send one, a list and a batch; receive in peek-lock and complete", () =>
  withClient(async (c) => {
    const sender = c.createSender("n-basic");
    await sender.sendMessages({ body: "one", messageId: "id-1", subject: "s", applicationProperties: { k: 7 } });
    await sender.sendMessages([{ body: "two" }, { body: "three" }]);
    const batch = await sender.createMessageBatch();
    assert.ok(batch.tryAddMessage({ body: "four" }));
    assert.ok(batch.tryAddMessage({ body: { five: 5 } }));
    await sender.sendMessages(batch);
    await sender.close();
    const receiver = c.createReceiver("n-basic");
    const got = await receive(receiver, 5);
    assert.deepEqual(
      got.map((m) => m.body),
      ["one", "two", "three", "four", { five: 5 }],
    );
    const [first] = got;
    assert.equal(first.messageId, "id-1");
    assert.equal(first.subject, "s");
    assert.equal(first.applicationProperties.k, 7);
    assert.equal(first.deliveryCount, 0);
    assert.ok(first.lockToken);
    const expected = Date.now() + LOCK_SECONDS * 1000;
    assert.ok(Math.abs(first.lockedUntilUtc.getTime() - expected) < 5000, `${first.lockedUntilUtc}`);
    const seqs = got.map((m) => Number(m.sequenceNumber));
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    for (const m of got) await receiver.completeMessage(m);
    assert.deepEqual(await receiver.receiveMessages(1, { maxWaitTimeInMs: 1000 }), []);
  }));

test("schedule, cancel, and the kept message arrives on time", () =>
  withClient(async (c) => {
    const sender = c.createSender("n-schedule");
    const at = new Date(Date.now() + 3000);
    const [kept] = await sender.scheduleMessages({ body: "kept" }, at);
    const [cancelled] = await sender.scheduleMessages({ body: "cancelled" }, at);
    assert.ok(cancelled.greaterThan(kept));
    await sender.cancelScheduledMessages(cancelled);
    await sender.close();
    const receiver = c.createReceiver("n-schedule");
    const peeked = await receiver.peekMessages(10);
    assert.deepEqual(
      peeked.map((m) => [m.body, m.state]),
      [["kept", "scheduled"]],
    );
    const got = await receive(receiver, 2, 8000);
    const arrived = Date.now();
    assert.deepEqual(
      got.map((m) => m.body),
      ["kept"],
    );
    assert.ok(arrived >= at.getTime() - 100, `arrived ${at.getTime() - arrived} ms early`);
    await receiver.completeMessage(got[0]);
  }));

test("peek does not lock, and pages from a sequence number", () =>
  withClient(async (c) => {
    await send(c, "n-peek", { body: "p1" }, { body: "p2" }, { body: "p3" });
    const receiver = c.createReceiver("n-peek");
    const peeked = await receiver.peekMessages(10);
    assert.deepEqual(
      peeked.map((m) => m.body),
      ["p1", "p2", "p3"],
    );
    const third = await receiver.peekMessages(10, { fromSequenceNumber: peeked[2].sequenceNumber });
    assert.deepEqual(
      third.map((m) => m.body),
      ["p3"],
    );
    const got = await receive(receiver, 3);
    assert.equal(got.length, 3);
    for (const m of got) await receiver.completeMessage(m);
  }));

test("receive and delete", () =>
  withClient(async (c) => {
    await send(c, "n-rad", { body: "gone" });
    const receiver = c.createReceiver("n-rad", { receiveMode: "receiveAndDelete" });
    const [m] = await receive(receiver, 1);
    assert.equal(m.body, "gone");
    const peek = c.createReceiver("n-rad");
    assert.deepEqual(await peek.peekMessages(10), []);
  }));

test("abandon raises the delivery count", () =>
  withClient(async (c) => {
    await send(c, "n-abandon", { body: "again" });
    const receiver = c.createReceiver("n-abandon");
    const [m] = await receive(receiver, 1);
    await receiver.abandonMessage(m, { reason: "try again" });
    const [m2] = await receive(receiver, 1);
    assert.equal(Number(m2.sequenceNumber), Number(m.sequenceNumber));
    assert.equal(m2.deliveryCount, 1);
    assert.equal(m2.applicationProperties.reason, "try again", "properties to modify are merged");
    await receiver.completeMessage(m2);
  }));

test("dead-letter with a reason and a description, and read it back", () =>
  withClient(async (c) => {
    await send(c, "n-deadletter", { body: "poison" });
    const receiver = c.createReceiver("n-deadletter");
    const [m] = await receive(receiver, 1);
    await receiver.deadLetterMessage(m, { deadLetterReason: "InvalidOrder", deadLetterErrorDescription: "negative" });
    assert.deepEqual(await receiver.receiveMessages(1, { maxWaitTimeInMs: 1000 }), []);
    const dlq = c.createReceiver("n-deadletter", { subQueueType: "deadLetter" });
    const [d] = await receive(dlq, 1);
    assert.equal(d.body, "poison");
    assert.equal(d.deadLetterReason, "InvalidOrder");
    assert.equal(d.deadLetterErrorDescription, "negative");
    await dlq.completeMessage(d);
  }));

test("defer, then receive the deferred message by its sequence number", () =>
  withClient(async (c) => {
    await send(c, "n-defer", { body: "later" });
    const receiver = c.createReceiver("n-defer");
    const [m] = await receive(receiver, 1);
    await receiver.deferMessage(m);
    assert.deepEqual(await receiver.receiveMessages(1, { maxWaitTimeInMs: 1000 }), []);
    const [d] = await receiver.receiveDeferredMessages(m.sequenceNumber);
    assert.equal(d.body, "later");
    await receiver.completeMessage(d);
    const gone = await failure(() => receiver.receiveDeferredMessages(m.sequenceNumber));
    assert.equal(gone.code, "MessageNotFound", `${gone}`);
  }));

test("renew a message lock (LockDuration 4 s)", () =>
  withClient(async (c) => {
    await send(c, "n-renew", { body: "slow" });
    const receiver = c.createReceiver("n-renew", { maxAutoLockRenewalDurationInMs: 0 });
    const [m] = await receive(receiver, 1);
    const first = m.lockedUntilUtc.getTime();
    await sleep(2500);
    const renewed = await receiver.renewMessageLock(m);
    assert.ok(renewed.getTime() > first);
    await sleep(2500); // Past the first lock: only the renewal holds it.
    await receiver.completeMessage(m);
  }));

test("an expired lock redelivers, and completing with it fails (LockDuration 2 s)", () =>
  withClient(async (c) => {
    await send(c, "n-lockexpiry", { body: "forgotten" });
    const receiver = c.createReceiver("n-lockexpiry", { maxAutoLockRenewalDurationInMs: 0 });
    const [m] = await receive(receiver, 1);
    await sleep(2500);
    const [m2] = await receive(receiver, 1);
    assert.equal(Number(m2.sequenceNumber), Number(m.sequenceNumber));
    assert.equal(m2.deliveryCount, 1);
    const e = await failure(() => receiver.completeMessage(m));
    assert.equal(e.code, "MessageLockLost", `${e}`);
    await receiver.completeMessage(m2);
  }));

test("MaxDeliveryCount moves a message to the dead-letter queue (MaxDeliveryCount 2)", () =>
  withClient(async (c) => {
    await send(c, "n-poison", { body: "bad" });
    const receiver = c.createReceiver("n-poison");
    for (const expected of [0, 1]) {
      const [m] = await receive(receiver, 1);
      assert.equal(m.deliveryCount, expected);
      await receiver.abandonMessage(m);
    }
    assert.deepEqual(await receiver.receiveMessages(1, { maxWaitTimeInMs: 1000 }), []);
    const dlq = c.createReceiver("n-poison", { subQueueType: "deadLetter" });
    const [d] = await receive(dlq, 1);
    assert.equal(d.deadLetterReason, "MaxDeliveryCountExceeded");
    await dlq.completeMessage(d);
  }));

test("a topic copies each message to every subscription", () =>
  withClient(async (c) => {
    await send(c, "n-topic", { body: "news" });
    for (const sub of ["a", "b"]) {
      const receiver = c.createReceiver("n-topic", sub);
      const [m] = await receive(receiver, 1);
      assert.equal(m.body, "news", sub);
      await receiver.completeMessage(m);
    }
  }));

test("rules: create, list and delete; SQL and correlation filters and actions decide what a subscription gets", () =>
  withClient(async (c) => {
    const rules = c.createRuleManager("n-rules", "filtered");
    const list = async () => {
      const all = [];
      for await (const r of rules.listRules()) all.push(r);
      return all;
    };
    assert.deepEqual((await list()).map((r) => r.name), ["$Default"]);
    await rules.deleteRule("$Default");
    await rules.createRule("red", { sqlExpression: "color = 'red' AND quantity > 1" });
    await rules.createRule(
      "vip",
      { subject: "vip", applicationProperties: { tier: "gold" } },
      { sqlExpression: "SET quantity = quantity * 10" },
    );
    const listed = await list();
    assert.deepEqual(listed.map((r) => r.name), ["red", "vip"]);
    assert.equal(listed[0].filter.sqlExpression, "color = 'red' AND quantity > 1");
    assert.equal(listed[1].filter.subject, "vip");
    assert.equal(listed[1].filter.applicationProperties.tier, "gold");
    assert.equal(listed[1].action.sqlExpression, "SET quantity = quantity * 10");

    const exists = await failure(() => rules.createRule("red", { sqlExpression: "1=1" }));
    assert.equal(exists.code, "MessagingEntityAlreadyExists", exists.message);
    const bad = await failure(() => rules.createRule("bad", { sqlExpression: "color = " }));
    assert.match(bad.message, /position 9/);

    await send(
      c,
      "n-rules",
      { body: "red-3", subject: "plain", applicationProperties: { color: "red", quantity: 3 } },
      { body: "red-1", subject: "plain", applicationProperties: { color: "red", quantity: 1 } },
      { body: "vip-gold", subject: "vip", applicationProperties: { tier: "gold", quantity: 2 } },
      { body: "vip-silver", subject: "vip", applicationProperties: { tier: "silver", quantity: 2 } },
    );
    const receiver = c.createReceiver("n-rules", "filtered");
    const got = await receive(receiver, 3, 3000);
    assert.deepEqual(got.map((m) => m.body).sort(), ["red-3", "vip-gold"]);
    const vip = got.find((m) => m.body === "vip-gold");
    assert.equal(vip.applicationProperties.quantity, 20);
    assert.equal(vip.applicationProperties.RuleName, "vip");
    for (const m of got) await receiver.completeMessage(m);
    // The other subscription kept $Default and got everything.
    const all = c.createReceiver("n-rules", "all");
    const everything = await receive(all, 4);
    assert.equal(everything.length, 4);
    for (const m of everything) await all.completeMessage(m);
  }));

test("sessions: a named session, in order, with its state and lock renewal", () =>
  withClient(async (c) => {
    await send(
      c,
      "n-sessions",
      { body: "a1", sessionId: "a" },
      { body: "b1", sessionId: "b" },
      { body: "a2", sessionId: "a" },
    );
    const a = await c.acceptSession("n-sessions", "a", { maxAutoLockRenewalDurationInMs: 0 });
    assert.equal(a.sessionId, "a");
    assert.ok(Math.abs(a.sessionLockedUntilUtc.getTime() - (Date.now() + LOCK_SECONDS * 1000)) < 5000);
    await withClient(
      async (other) => {
        const e = await failure(() => other.acceptSession("n-sessions", "a"));
        assert.equal(e.code, "SessionCannotBeLocked", `${e}`);
      },
      { retryOptions: { maxRetries: 0, timeoutInMs: 5000 } },
    );
    const got = await receive(a, 2);
    assert.deepEqual(
      got.map((m) => [m.body, m.sessionId]),
      [
        ["a1", "a"],
        ["a2", "a"],
      ],
    );
    assert.equal(await a.getSessionState(), null, "no state yet: the service answers null");
    await a.setSessionState("step 2");
    assert.equal((await a.getSessionState()).toString(), "step 2");
    const before = a.sessionLockedUntilUtc.getTime();
    await sleep(1000);
    const renewed = await a.renewSessionLock();
    assert.ok(renewed.getTime() > before);
    for (const m of got) await a.completeMessage(m);
    await a.close();
    const b = await c.acceptSession("n-sessions", "b");
    const [b1] = await receive(b, 1);
    assert.equal(b1.body, "b1");
    await b.completeMessage(b1);
    await b.close();
  }));

test("sessions: the next available session, and a timeout when none is free", () =>
  withClient(async (c) => {
    await send(c, "n-sessionnext", { body: "x1", sessionId: "x" });
    const x = await c.acceptNextSession("n-sessionnext");
    assert.equal(x.sessionId, "x");
    const [m] = await receive(x, 1);
    await withClient(
      async (other) => {
        const started = Date.now();
        const e = await failure(() => other.acceptNextSession("n-sessionnext"));
        assert.equal(e.code, "ServiceTimeout", `${e}`);
        assert.ok(Date.now() - started < 15000);
      },
      { retryOptions: { maxRetries: 0, timeoutInMs: 2000 } },
    );
    await x.completeMessage(m);
    await x.close();
  }));

test("sessions: abandon and dead-letter inside a session", () =>
  withClient(async (c) => {
    await send(c, "n-sessionsettle", { body: "s1", sessionId: "s" }, { body: "s2", sessionId: "s" });
    const s = await c.acceptSession("n-sessionsettle", "s");
    const [m1, m2] = await receive(s, 2);
    await s.abandonMessage(m1);
    await s.deadLetterMessage(m2, { deadLetterReason: "Bad", deadLetterErrorDescription: "in a session" });
    const [again] = await receive(s, 1);
    assert.equal(again.body, "s1");
    assert.equal(again.deliveryCount, 1);
    await s.completeMessage(again);
    await s.close();
    const dlq = c.createReceiver("n-sessionsettle", { subQueueType: "deadLetter" });
    const [d] = await receive(dlq, 1);
    assert.deepEqual([d.body, d.sessionId, d.deadLetterReason], ["s2", "s", "Bad"]);
    await dlq.completeMessage(d);
  }));

test("a wrong key is refused", async () => {
  const bad = CS.replace("SharedAccessKey=SAS_KEY_VALUE", "SharedAccessKey=not-the-key");
  assert.notEqual(bad, CS);
  const c = new ServiceBusClient(bad, { retryOptions: { maxRetries: 0, timeoutInMs: 10000 } });
  try {
    const e = await failure(() => send(c, "n-basic", { body: "x" }));
    assert.equal(e.code, "UnauthorizedAccess", `${e}`);
  } finally {
    await c.close();
  }
});

// Entities of tests/moving.json (Microsoft's Config.json schema): duplicate detection,
// forwarding chains, a forwarding loop, dead-letter forwarding, and 1 MB quotas.

test("duplicate detection: a repeated message-id inside the window is accepted and dropped", () =>
  withClient(async (c) => {
    await send(c, "dedup", { body: "1", messageId: "order-1" }, { body: "2", messageId: "order-2" });
    await send(c, "dedup", { body: "1 again", messageId: "order-1" });
    await send(c, "dedup-topic", { body: "t", messageId: "event-1" });
    await send(c, "dedup-topic", { body: "t again", messageId: "event-1" });
    const receiver = c.createReceiver("dedup", { receiveMode: "receiveAndDelete" });
    const got = await receive(receiver, 3, 3000);
    assert.deepEqual(
      got.map((m) => m.body),
      ["1", "2"],
    );
    const sub = c.createReceiver("dedup-topic", "all", { receiveMode: "receiveAndDelete" });
    assert.deepEqual(
      (await receive(sub, 2, 3000)).map((m) => m.body),
      ["t"],
    );
  }));

test("forwarding: a chain through queues, a topic and a subscription; the source refuses receivers", () =>
  withClient(async (c) => {
    await send(c, "fwd-in", { body: "travels", messageId: "hop" });
    const out = c.createReceiver("fwd-out");
    const [m] = await receive(out, 1);
    assert.equal(m.body, "travels");
    assert.equal(m.messageId, "hop");
    assert.equal(typeof m.enqueuedSequenceNumber, "number", "where it first arrived");
    await out.completeMessage(m);
    const kept = c.createReceiver("fwd-topic", "kept", { receiveMode: "receiveAndDelete" });
    assert.equal((await receive(kept, 1)).length, 1);
    const source = c.createReceiver("fwd-in");
    const e = await failure(() => source.receiveMessages(1, { maxWaitTimeInMs: 2000 }));
    assert.match(`${e.message}`, /auto-forwarding/);
  }));

test("forwarding: a loop dead-letters the message after four hops", () =>
  withClient(async (c) => {
    await send(c, "loop-a", { body: "round and round" });
    const dlq = c.createReceiver("loop-a", { subQueueType: "deadLetter" });
    const [d] = await receive(dlq, 1);
    assert.equal(d.body, "round and round");
    assert.equal(d.deadLetterReason, "MaxTransferHopCountExceeded");
    await dlq.completeMessage(d);
  }));

test("forwarding: dead-lettered messages move to ForwardDeadLetteredMessagesTo with their reason", () =>
  withClient(async (c) => {
    await send(c, "dlf-work", { body: "rejected" }, { body: "poison" });
    const work = c.createReceiver("dlf-work");
    const [first, second] = await receive(work, 2);
    await work.deadLetterMessage(first, { deadLetterReason: "Invalid", deadLetterErrorDescription: "no price" });
    await work.abandonMessage(second); // MaxDeliveryCount 1
    const parked = c.createReceiver("dlf-parked", { receiveMode: "receiveAndDelete" });
    const got = await receive(parked, 2);
    assert.deepEqual(
      got.map((m) => [m.body, m.deadLetterReason, m.deadLetterSource]),
      [
        ["rejected", "Invalid", "dlf-work"],
        ["poison", "MaxDeliveryCountExceeded", "dlf-work"],
      ],
    );
  }));

test("quotas: a send past MaxSizeInMegabytes is refused; forwarding to a full queue dead-letters", async () => {
  const c = client({ retryOptions: { maxRetries: 0, timeoutInMs: 10000 } });
  try {
    const big = "x".repeat(200 * 1024);
    for (let i = 0; i < 5; i++) {
      await send(c, "quota", { body: big });
      await send(c, "full", { body: big });
    }
    const e = await failure(() => send(c, "quota", { body: big }));
    assert.equal(e.code, "QuotaExceeded", `${e}`);
    const peeked = await c.createReceiver("quota").peekMessages(10);
    assert.equal(peeked.length, 5, "what was stored is untouched");
    await send(c, "full-src", { body: big, messageId: "no-room" });
    const dlq = c.createReceiver("full-src", { subQueueType: "deadLetter" });
    const [d] = await receive(dlq, 1);
    assert.equal(d.messageId, "no-room");
    assert.equal(d.deadLetterReason, "QuotaExceededException");
    await dlq.completeMessage(d);
  } finally {
    await c.close();
  }
});

test("message size: an entity's MaxMessageSizeInKilobytes is advertised and enforced", () =>
  withClient(async (c) => {
    const body = "y".repeat(600 * 1024); // past the emulator's 256 KiB, inside large's 1 MiB
    await send(c, "large", { body });
    const receiver = c.createReceiver("large", { receiveMode: "receiveAndDelete" });
    const [m] = await receive(receiver, 1);
    assert.equal(m.body.length, body.length);
    const e = await failure(() => send(c, "small", { body: "z".repeat(2048) }));
    assert.equal(e.code, "MessageSizeExceeded", `${e}`);
  }));
