//! The host against the in-process emulator, with the guests from `guests/`.

mod bad_input;
mod cache;
mod cli;
mod docs;
mod embed;
mod hostile;
mod isolation;
mod lifecycle;
mod matrix;
mod operations;
mod sample;
mod sessions;
mod support;
