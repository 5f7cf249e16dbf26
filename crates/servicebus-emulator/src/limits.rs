//! What one peer may cost the emulator: time, connections, sessions, links, names and
//! unread output. The defaults are far above what any SDK uses (so no SDK notices them)
//! and low enough that no peer, logged in or not, can starve the others.

use std::time::Duration;

/// Per-connection limits. Every field has a default ([`Limits::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// From accepting a socket to the peer's `open` (protocol headers and SASL included; on
    /// the TLS listener the TLS handshake has a window of this length before it). A peer that
    /// has not opened by then is disconnected. Default 10 s.
    pub handshake_timeout: Duration,
    /// From accepting a socket to the first valid `$cbs` token (or SASL PLAIN). The service
    /// drops such connections after 20 s too. Default 20 s.
    pub authentication_timeout: Duration,
    /// Advertised as `idle-time-out` in `open`: a peer that sends nothing (not even an empty
    /// frame) for this long is closed with `amqp:connection:forced`, in the service's words.
    /// Default 60 s, the service's.
    pub idle_timeout: Duration,
    /// Connections open at once; more are refused at accept. Default 1000.
    pub max_connections: usize,
    /// The highest channel a session may use (`channel-max`). Default 1023.
    pub channel_max: u16,
    /// The highest link handle in a session (`handle-max`). Default 1023.
    pub handle_max: u32,
    /// Links attached at once on one connection, over all its sessions. Default 4096.
    pub max_links_per_connection: usize,
    /// Bytes of a link name, and of a source or target address. Default 1024.
    pub max_name_length: usize,
    /// Bytes written for a peer that it has not read yet. Past half of it the emulator stops
    /// sending it messages until it reads; past all of it the connection is dropped. Default 64 MiB.
    pub max_write_backlog: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            authentication_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1000,
            channel_max: 1023,
            handle_max: 1023,
            max_links_per_connection: 4096,
            max_name_length: 1024,
            max_write_backlog: 64 << 20,
        }
    }
}
