// The official Node.js administration client (@azure/service-bus 7.9,
// ServiceBusAdministrationClient) against the emulator's management endpoint.
//
// Run by `tests/all/node_sdk.rs` beside test_sdk.cjs, which also passes:
// - EMULATOR_ADMIN_CONNECTION_STRING: `Endpoint=sb://127.0.0.1:<management port>;...` (the
//   administration client speaks HTTPS to the endpoint's host and port);
// - NODE_EXTRA_CA_CERTS: the certificate the endpoint serves, so Node trusts it.
//
// Entities made here are named "nadm-...": none exists before these cases make it.

"use strict";

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { ServiceBusAdministrationClient } = require("@azure/service-bus");

const { withClient, receive, failure } = require("./helpers.cjs");

const ADMIN = new ServiceBusAdministrationClient(process.env.EMULATOR_ADMIN_CONNECTION_STRING);

/** Receives until `n` messages arrived or `waitMs` passed, and closes the receiver. */
async function drain(receiver, n, waitMs = 3000) {
  const got = await receive(receiver, n, waitMs);
  await receiver.close();
  return got;
}

test("a queue made at run time is usable over AMQP at once, and changed, listed and deleted", () =>
  withClient(async (c) => {
    const made = await ADMIN.createQueue("nadm-orders", { maxDeliveryCount: 3, lockDuration: "PT30S" });
    assert.deepEqual([made.name, made.maxDeliveryCount, made.lockDuration], ["nadm-orders", 3, "PT30S"]);
    const exists = await failure(() => ADMIN.createQueue("nadm-orders"));
    assert.equal(exists.code, "MessageEntityAlreadyExistsError", `${exists}`);
    const sender = c.createSender("nadm-orders");
    await sender.sendMessages([{ body: "one" }, { body: "two" }]);
    await sender.close();
    const runtime = await ADMIN.getQueueRuntimeProperties("nadm-orders");
    assert.deepEqual([runtime.activeMessageCount, runtime.totalMessageCount], [2, 2]);
    assert.ok(runtime.sizeInBytes > 0 && runtime.createdAt instanceof Date);
    const names = [];
    for await (const q of ADMIN.listQueues()) names.push(q.name);
    assert.ok(names.includes("nadm-orders"), `${names}`);

    const queue = await ADMIN.getQueue("nadm-orders");
    queue.maxDeliveryCount = 5;
    await ADMIN.updateQueue(queue);
    assert.equal((await ADMIN.getQueue("nadm-orders")).maxDeliveryCount, 5);
    assert.ok(await ADMIN.queueExists("nadm-orders"));

    const got = await drain(c.createReceiver("nadm-orders", { receiveMode: "receiveAndDelete" }), 2);
    assert.deepEqual(
      got.map((m) => m.body),
      ["one", "two"],
    );
    await ADMIN.deleteQueue("nadm-orders");
    assert.equal(await ADMIN.queueExists("nadm-orders"), false);
    const gone = await failure(() => ADMIN.getQueue("nadm-orders"));
    assert.equal(gone.code, "MessageEntityNotFoundError", `${gone}`);
  }));

test("topics, subscriptions and rules made at run time route messages", () =>
  withClient(async (c) => {
    await ADMIN.createTopic("nadm-events");
    await ADMIN.createSubscription("nadm-events", "red");
    await ADMIN.createRule("nadm-events", "red", "is-red", { sqlExpression: "color = 'red'" });
    await ADMIN.deleteRule("nadm-events", "red", "$Default");
    await ADMIN.createSubscription("nadm-events", "big", {
      defaultRuleOptions: {
        name: "big",
        filter: { applicationProperties: { size: "big" } },
        action: { sqlExpression: "SET checked = 'yes'" },
      },
    });
    const rule = await ADMIN.getRule("nadm-events", "red", "is-red");
    assert.equal(rule.filter.sqlExpression, "color = 'red'");
    const bigRules = [];
    for await (const r of ADMIN.listRules("nadm-events", "big")) bigRules.push(r);
    assert.deepEqual(
      bigRules.map((r) => [r.name, r.filter.applicationProperties, r.action.sqlExpression]),
      [["big", { size: "big" }, "SET checked = 'yes'"]],
    );

    const sender = c.createSender("nadm-events");
    await sender.sendMessages([
      { body: "r", applicationProperties: { color: "red" } },
      { body: "b", applicationProperties: { color: "blue", size: "big" } },
    ]);
    await sender.close();
    const red = await drain(c.createReceiver("nadm-events", "red", { receiveMode: "receiveAndDelete" }), 2);
    assert.deepEqual(
      red.map((m) => m.body),
      ["r"],
    );
    const big = await drain(c.createReceiver("nadm-events", "big", { receiveMode: "receiveAndDelete" }), 2);
    assert.deepEqual(
      big.map((m) => [m.body, m.applicationProperties.checked]),
      [["b", "yes"]],
    );

    const topic = await ADMIN.getTopicRuntimeProperties("nadm-events");
    assert.equal(topic.subscriptionCount, 2);
    const sub = await ADMIN.getSubscriptionRuntimeProperties("nadm-events", "red");
    assert.equal(sub.totalMessageCount, 0);
    const bad = await failure(() => ADMIN.createRule("nadm-events", "red", "broken", { sqlExpression: "color = " }));
    assert.match(`${bad.message}`, /does not parse/);
    await ADMIN.deleteSubscription("nadm-events", "big");
    await ADMIN.deleteTopic("nadm-events");
    assert.equal(await ADMIN.topicExists("nadm-events"), false);
  }));

test("deleting a queue detaches its receivers with not-found", () =>
  withClient(async (c) => {
    await ADMIN.createQueue("nadm-doomed");
    const receiver = c.createReceiver("nadm-doomed");
    assert.deepEqual(await receiver.receiveMessages(1, { maxWaitTimeInMs: 500 }), []);
    await ADMIN.deleteQueue("nadm-doomed");
    const e = await failure(() => receiver.receiveMessages(1, { maxWaitTimeInMs: 5000 }));
    assert.equal(e.code, "MessagingEntityNotFound", `${e}`);
    await receiver.close();
  }));

test("the namespace's properties", async () => {
  const ns = await ADMIN.getNamespaceProperties();
  assert.equal(ns.messagingSku, "Standard");
});

// One subscription per family of Service Bus's SQL filter syntax, its rule made over AMQP by
// the rule manager, and the messages each takes.
const FAMILIES = {
  compare: ["quantity >= 5 AND quantity <> 12", ["m1"]],
  logic: ["color = 'red' OR NOT (quantity > 1)", ["m1", "m3"]],
  in: ["color IN ('blue', 'green')", ["m2", "m3"]],
  like: ["name LIKE 'widget!_%' ESCAPE '!'", ["m1"]],
  null: ["rush IS NULL", ["m1", "m2"]],
  exists: ["EXISTS(rush)", ["m3"]],
  arith: ["quantity * 2 + 1 > 20", ["m2"]],
  sys: ["sys.Label = 'order' OR sys.ContentType = 'application/json'", ["m1", "m3"]],
};

test("each family of SQL filter selects what the service would", () =>
  withClient(async (c) => {
    await ADMIN.createTopic("nadm-sql");
    for (const [name, [sql]] of Object.entries(FAMILIES)) {
      await ADMIN.createSubscription("nadm-sql", name);
      const rules = c.createRuleManager("nadm-sql", name);
      await rules.createRule("only", { sqlExpression: sql });
      await rules.deleteRule("$Default");
    }
    const sender = c.createSender("nadm-sql");
    await sender.sendMessages([
      { body: "m1", subject: "order", applicationProperties: { color: "red", quantity: 5, name: "widget_1" } },
      { body: "m2", subject: "refund", applicationProperties: { color: "blue", quantity: 12, name: "gadget" } },
      {
        body: "m3",
        contentType: "application/json",
        applicationProperties: { color: "green", quantity: 0, name: "widget%x", rush: true },
      },
    ]);
    await sender.close();
    for (const [name, [sql, expected]] of Object.entries(FAMILIES)) {
      const got = await drain(c.createReceiver("nadm-sql", name, { receiveMode: "receiveAndDelete" }), expected.length);
      const rest = c.createReceiver("nadm-sql", name);
      got.push(...(await rest.peekMessages(5)));
      await rest.close();
      assert.deepEqual(got.map((m) => m.body).sort(), expected, `${name}: ${sql}`);
    }
    await ADMIN.deleteTopic("nadm-sql");
  }));
