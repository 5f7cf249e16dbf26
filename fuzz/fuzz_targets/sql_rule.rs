//! A subscription rule's SQL filter or action, parsed, then evaluated or applied.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    servicebus_emulator::fuzzing::sql_rule(text);
});
