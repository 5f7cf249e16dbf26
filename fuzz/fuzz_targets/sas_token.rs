//! SAS tokens: as the emulator validates them, and as the client reads their expiry.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (token, audience) = input;
    servicebus_emulator::fuzzing::sas_token(token, audience);
    if let Some(expiry) = amqp_servicebus::sas::expiry_of(token) {
        let _ = amqp_servicebus::sas::expiry_millis(expiry);
    }
});
