//! The host's message conversion: a received message (as `$management` returns one) into the
//! guest's metadata, and a guest's metadata keys and values into a Service Bus message.
#![no_main]

use host_runtime::convert::{from_guest, to_guest};
use libfuzzer_sys::fuzz_target;
use wit_interface::{FormatSpec, Message};

fuzz_target!(|input: (&[u8], Vec<(String, String)>, Vec<u8>)| {
    let (encoded, metadata, data) = input;
    if let Ok(received) = amqp_servicebus::ReceivedMessage::from_encoded(encoded, "q") {
        let guest = to_guest(&received, "q", "delivery-1");
        // What the host hands a guest, the guest can send on.
        let _ = from_guest(&guest);
    }
    let _ = from_guest(&Message { data, format: FormatSpec::Raw, metadata: Some(metadata) });
});
