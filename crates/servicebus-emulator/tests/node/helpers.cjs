// What the Node.js suites share: a client of the emulator, and waiting for what they expect.
// Not a test file: test_sdk.cjs and test_admin.cjs require it.

"use strict";

const assert = require("node:assert/strict");
const { ServiceBusClient } = require("@azure/service-bus");

const CS = process.env.EMULATOR_CONNECTION_STRING;

function client(options) {
  return new ServiceBusClient(CS, options);
}

async function withClient(body, options) {
  const c = client(options);
  try {
    await body(c);
  } finally {
    await c.close();
  }
}

async function send(c, entity, ...messages) {
  const sender = c.createSender(entity);
  try {
    await sender.sendMessages(messages.length === 1 ? messages[0] : messages);
  } finally {
    await sender.close();
  }
}

/** Receives until `n` messages arrived or `waitMs` passed. */
async function receive(receiver, n, waitMs = 5000) {
  const got = [];
  const deadline = Date.now() + waitMs;
  while (got.length < n && Date.now() < deadline) {
    got.push(...(await receiver.receiveMessages(n - got.length, { maxWaitTimeInMs: 1000 })));
  }
  return got;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs `body` and returns the error it throws (failing if it throws none). */
async function failure(body) {
  try {
    await body();
  } catch (e) {
    return e;
  }
  assert.fail("expected an error");
}

module.exports = { CS, client, withClient, send, receive, sleep, failure };
