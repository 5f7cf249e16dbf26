//! The client against the in-process emulator: every operation, errors, recovery,
//! token refresh, TLS, WebSockets, message sessions, rules, and generic AMQP mode.

mod errors;
mod hostile;
mod recovery;
mod rules;
mod send_receive;
mod sessions;
mod settlement;
mod support;
mod transport;
