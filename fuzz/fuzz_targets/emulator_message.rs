//! A sent message's sections (one message, or a batch when the first byte is odd).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    servicebus_emulator::fuzzing::message(rest, first % 2 == 1);
});
