//! The client against the in-process emulator: every operation, errors, recovery,
//! token refresh, TLS, and generic AMQP mode.

mod errors;
mod hostile;
mod layers;
mod recovery;
mod send_receive;
mod sessions;
mod settlement;
mod support;
mod transport;
