// The sample handler of the December 2024 revision, in JavaScript (componentize-js).
//
// It does what `guests/sample-handler` (Rust) does, built from upstream's WIT alone
// (`wasi:messaging/messaging-core` at commit 4ee59bb): for each message,
// - on `orders`: a JSON order (`id`, `customer`, `amount_cents`) becomes a payment request sent
//   to `payments` (content type `application/json`, `correlation-id` the order's id, metadata
//   `order-id`), and `handle` returns (the host completes the order); an order that is not
//   valid throws `error::other` (the host abandons it);
// - on `payments`: a valid payment request returns, anything else throws `error::other`.
//
// Built by `cargo xtask build-guests` into `target/components/sample-handler-js.wasm`.

import { send } from 'wasi:messaging/producer@0.2.0-draft';
import { Client, Message } from 'wasi:messaging/types@0.2.0-draft';

const ORDERS = 'orders';
const PAYMENTS = 'payments';

/** Upstream's `error::other`, thrown: the host receives it as `handle`'s error. */
function fail(text) {
  return { tag: 'other', val: text };
}

/** The JSON object in `data` with exactly these fields of these types. */
function parse(data, fields, what) {
  let value;
  try {
    value = JSON.parse(new TextDecoder().decode(data));
  } catch (e) {
    throw fail(`not ${what}: ${e.message}`);
  }
  const names = Object.keys(fields).sort();
  if (value === null || typeof value !== 'object' || JSON.stringify(Object.keys(value).sort()) !== JSON.stringify(names)) {
    throw fail(`not ${what}: the fields must be ${names.join(', ')}`);
  }
  for (const [name, type] of Object.entries(fields)) {
    const ok = type === 'integer' ? Number.isInteger(value[name]) : typeof value[name] === type;
    if (!ok) {
      throw fail(`not ${what}: ${name} must be a ${type}`);
    }
  }
  return value;
}

function order(m) {
  const o = parse(m.data(), { id: 'string', customer: 'string', amount_cents: 'integer' }, 'an order');
  if (o.amount_cents <= 0 || o.customer === '') {
    throw fail(`order ${o.id} has no customer or no amount`);
  }
  const request = { order_id: o.id, customer: o.customer, amount_cents: o.amount_cents };
  const payment = new Message(new TextEncoder().encode(JSON.stringify(request)));
  payment.setContentType('application/json');
  payment.addMetadata('correlation-id', o.id);
  payment.addMetadata('order-id', o.id);
  send(Client.connect('default'), PAYMENTS, payment);
}

function payment(m) {
  const p = parse(m.data(), { order_id: 'string', customer: 'string', amount_cents: 'integer' }, 'a payment request');
  if (p.amount_cents <= 0) {
    throw fail(`payment for order ${p.order_id} has no amount`);
  }
}

export const incomingHandler = {
  handle(message) {
    const topic = message.topic();
    if (topic === ORDERS) {
      order(message);
    } else if (topic === PAYMENTS) {
      payment(message);
    } else {
      throw fail(`no handler for messages from ${topic}`);
    }
  },
};
