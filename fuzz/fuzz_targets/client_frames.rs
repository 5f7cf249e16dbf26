//! What a broker sends the client: the guard, then fe2o3's decoding of what it lets through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    amqp_servicebus::fuzzing::broker_bytes(data);
    amqp_servicebus::fuzzing::encoded_message(data);
});
