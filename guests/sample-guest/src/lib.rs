//! The demo guest: an order pipeline on two queues.
//!
//! `configure()` asks for `orders` and `payments`. For each order on `orders`:
//! - not JSON, or fails validation → dead-lettered with reason `InvalidOrder`;
//! - `"review": true` → redirected to the `review` queue (forward + complete, atomically);
//! - `"transient_failure": true` on its first delivery → abandoned, so it is
//!   redelivered, and succeeds on the next delivery;
//! - otherwise → a payment request is sent to `payments` (correlation-id = order id)
//!   and the order is completed.
//!
//! Each payment on `payments` is completed when valid and dead-lettered when not.

use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    world: "servicebus:messaging/servicebus-guest",
    path: "../../wit",
    generate_all,
});

use exports::wasi::messaging::messaging_guest::Guest;
use servicebus::messaging::settlement;
use wasi::messaging::consumer;
use wasi::messaging::messaging_types::{Client, Error, FormatSpec, GuestConfiguration, Message};
use wasi::messaging::producer;

/// Where orders that need a human go.
const REVIEW_QUEUE: &str = "review";
const ORDERS: &str = "orders";
const PAYMENTS: &str = "payments";

struct SampleGuest;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Order {
    id: String,
    customer: String,
    amount_cents: u64,
    #[serde(default)]
    review: bool,
    #[serde(default)]
    transient_failure: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentRequest {
    order_id: String,
    customer: String,
    amount_cents: u64,
}

impl Guest for SampleGuest {
    fn configure() -> Result<GuestConfiguration, Error> {
        Ok(GuestConfiguration { channels: vec![ORDERS.into(), PAYMENTS.into()], extensions: None })
    }

    fn handler(ms: Vec<Message>) -> Result<(), Error> {
        for m in ms {
            match meta(&m, "channel") {
                Some(ORDERS) => handle_order(m)?,
                Some(PAYMENTS) => handle_payment(m)?,
                other => {
                    let detail = format!("message from unexpected channel {other:?}");
                    eprintln!("sample-guest: {detail}");
                    return Err(settlement::new_error(&detail));
                }
            }
        }
        Ok(())
    }
}

fn handle_order(m: Message) -> Result<(), Error> {
    let order = match parse_order(&m.data) {
        Ok(order) => order,
        Err(why) => {
            eprintln!("sample-guest: dead-lettering invalid order: {why}");
            return settlement::dead_letter(&m, "InvalidOrder", Some(&why));
        }
    };
    if order.review {
        eprintln!("sample-guest: order {} needs review; redirecting to '{REVIEW_QUEUE}'", order.id);
        return settlement::redirect(&m, REVIEW_QUEUE);
    }
    let delivery_count: u32 = meta(&m, "delivery-count").and_then(|c| c.parse().ok()).unwrap_or(1);
    if order.transient_failure && delivery_count == 1 {
        eprintln!("sample-guest: order {} hit a transient failure; abandoning for a retry", order.id);
        return consumer::abandon_message(&m);
    }
    let payment =
        PaymentRequest { order_id: order.id.clone(), customer: order.customer, amount_cents: order.amount_cents };
    let follow_up = Message {
        data: serde_json::to_vec(&payment).expect("a payment request always serializes"),
        format: FormatSpec::Raw,
        metadata: Some(vec![
            ("content-type".into(), "application/json".into()),
            ("correlation-id".into(), order.id.clone()),
            ("subject".into(), "payment-request".into()),
        ]),
    };
    producer::send(Client::connect("default")?, PAYMENTS, &[follow_up])?;
    eprintln!("sample-guest: order {} accepted; payment requested", order.id);
    consumer::complete_message(&m)
}

fn handle_payment(m: Message) -> Result<(), Error> {
    match serde_json::from_slice::<PaymentRequest>(&m.data) {
        Ok(p) if p.amount_cents > 0 => {
            eprintln!("sample-guest: payment for order {} of {} cents recorded", p.order_id, p.amount_cents);
            consumer::complete_message(&m)
        }
        Ok(p) => settlement::dead_letter(&m, "InvalidPayment", Some(&format!("order {}: amount is zero", p.order_id))),
        Err(e) => settlement::dead_letter(&m, "InvalidPayment", Some(&e.to_string())),
    }
}

fn parse_order(data: &[u8]) -> Result<Order, String> {
    let order: Order = serde_json::from_slice(data).map_err(|e| format!("not an order: {e}"))?;
    if order.id.trim().is_empty() {
        return Err("order id is empty".into());
    }
    if order.customer.trim().is_empty() {
        return Err(format!("order {}: customer is empty", order.id));
    }
    if order.amount_cents == 0 {
        return Err(format!("order {}: amount_cents must be positive", order.id));
    }
    Ok(order)
}

fn meta<'m>(m: &'m Message, key: &str) -> Option<&'m str> {
    m.metadata.as_ref()?.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

export!(SampleGuest);
