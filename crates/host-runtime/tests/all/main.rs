//! The host against the in-process emulator, with the guests from `guests/`.

mod bad_input;
mod cache;
mod cli;
mod docs;
mod embed;
mod guest_config;
mod hostile;
mod incoming_handler;
mod isolation;
mod lifecycle;
mod matrix;
mod operations;
mod request_reply;
mod sample;
mod sessions;
mod support;
