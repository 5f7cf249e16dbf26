//! The management endpoint: HTTP requests, their ATOM bodies, and the operations they ask for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| servicebus_emulator::fuzzing::admin(data));
