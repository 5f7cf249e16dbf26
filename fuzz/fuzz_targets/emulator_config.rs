//! Microsoft's emulator `Config.json`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = servicebus_emulator::Config::parse(text, "fuzz.json");
});
