//! The host's `host.toml`, and every channel's options from it.
#![no_main]

use host_runtime::config::{GuestOptions, HostConfig, channel_options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(config) = HostConfig::parse(text, "host.toml") {
        let channels: Vec<String> = config.channels.keys().cloned().collect();
        for channel in channels.iter().map(String::as_str).chain(["other"]) {
            let _ = channel_options(channel, &GuestOptions::default(), &config);
        }
    }
});
