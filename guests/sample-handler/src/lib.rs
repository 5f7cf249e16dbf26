//! The sample handler of the December 2024 revision, built from upstream's WIT alone
//! (`wasi:messaging/messaging-core` at commit 4ee59bb, unchanged): it runs on any host of
//! that revision. Its Python and JavaScript twins (`guests/python`, `guests/js`) do the same.
//!
//! The host names its channels (`--channel orders --channel payments`). For each message:
//! - on `orders`: a JSON order (`id`, `customer`, `amount_cents`) becomes a payment request
//!   sent to `payments` (content type `application/json`, `correlation-id` the order's id,
//!   metadata `order-id`), and `handle` returns `ok` (the host completes the order). An order
//!   that is not valid returns `error::other` (the host abandons it, and Service Bus
//!   dead-letters it after its MaxDeliveryCount);
//! - on `payments`: a valid payment request returns `ok`, anything else `error::other`.

use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    world: "wasi:messaging/messaging-core",
    path: "../../wit/dec2024",
    generate_all,
});

use exports::wasi::messaging::incoming_handler::Guest;
use wasi::messaging::producer;
use wasi::messaging::types::{Client, Error, Message};

const ORDERS: &str = "orders";
const PAYMENTS: &str = "payments";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Order {
    id: String,
    customer: String,
    amount_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentRequest {
    order_id: String,
    customer: String,
    amount_cents: u64,
}

struct SampleHandler;

impl Guest for SampleHandler {
    fn handle(m: Message) -> Result<(), Error> {
        match m.topic().as_deref() {
            Some(ORDERS) => order(&m),
            Some(PAYMENTS) => payment(&m),
            other => Err(Error::Other(format!("no handler for messages from {other:?}"))),
        }
    }
}

fn order(m: &Message) -> Result<(), Error> {
    let order: Order = serde_json::from_slice(&m.data()).map_err(|e| Error::Other(format!("not an order: {e}")))?;
    if order.amount_cents == 0 || order.customer.is_empty() {
        return Err(Error::Other(format!("order {} has no customer or no amount", order.id)));
    }
    let request =
        PaymentRequest { order_id: order.id.clone(), customer: order.customer, amount_cents: order.amount_cents };
    let body = serde_json::to_vec(&request).map_err(|e| Error::Other(e.to_string()))?;
    let payment = Message::new(&body);
    payment.set_content_type("application/json");
    payment.add_metadata("correlation-id", &order.id);
    payment.add_metadata("order-id", &order.id);
    let client = Client::connect("default")?;
    producer::send(&client, PAYMENTS, payment)
}

fn payment(m: &Message) -> Result<(), Error> {
    let request: PaymentRequest =
        serde_json::from_slice(&m.data()).map_err(|e| Error::Other(format!("not a payment request: {e}")))?;
    if request.amount_cents == 0 {
        return Err(Error::Other(format!("payment for order {} has no amount", request.order_id)));
    }
    Ok(())
}

export!(SampleHandler);
