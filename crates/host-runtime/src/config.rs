//! Host configuration: `host.toml`, the guest's `extensions`, and the options each
//! channel ends up with.
//!
//! Precedence, lowest first: built-in defaults, the guest's bare `extensions` keys,
//! the guest's `<channel>.<key>` keys, `host.toml` `[defaults]`, `host.toml`
//! `[channels."<channel>"]`. Unknown keys and bad values are errors that name the
//! key and where it was.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use amqp_servicebus::ReceiveMode;
use serde::Deserialize;

/// A configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A key or value is wrong; `at` says where (`host.toml:12` or `guest extensions`).
    #[error("{at}: {key}: {message}")]
    Invalid {
        /// Where.
        at: String,
        /// The key.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Options of one channel's worker. Every option is one row of [`OPTIONS`], which holds its
/// key, its default, what it means (the docs' option tables are checked against it) and how
/// its value is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Handler calls in flight at once.
    pub max_concurrent_calls: usize,
    /// Messages the receiver requests ahead.
    pub prefetch: u32,
    /// Most messages per handler call.
    pub max_batch_size: usize,
    /// How long locks are renewed for.
    pub max_auto_lock_renewal: Duration,
    /// Deadline of one handler call.
    pub handler_timeout: Duration,
    /// Peek-lock or receive-and-delete.
    pub receive_mode: ReceiveMode,
    /// Whether the channel's entity requires sessions: it is then consumed a message session
    /// at a time.
    pub requires_session: bool,
    /// Message sessions held at once (a session channel).
    pub max_concurrent_sessions: usize,
    /// Handler calls in flight per session (a session channel); above 1, a session's
    /// messages are no longer handled strictly in order.
    pub max_concurrent_calls_per_session: usize,
    /// How long a session without a new message is held before it is released.
    pub session_idle_timeout: Duration,
}

/// One channel option.
#[derive(Clone, Copy)]
pub struct OptionSpec {
    /// Its key, in `extensions` and in `host.toml`.
    pub key: &'static str,
    /// Its default, as it would be written.
    pub default: &'static str,
    /// What it means (the "Meaning" column of the docs' table).
    pub meaning: &'static str,
    /// Reads a value into the options, or says what is wrong with it.
    set: fn(&mut ChannelOptions, &str) -> Result<(), String>,
}

impl std::fmt::Debug for OptionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptionSpec").field("key", &self.key).field("default", &self.default).finish()
    }
}

/// Every channel option: the one place each is defined.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        key: "max-concurrent-calls",
        default: "16",
        meaning: "handler calls in flight per channel (a session channel's too, across its sessions)",
        set: |o, v| {
            o.max_concurrent_calls = count(v, 1, 10_000)? as usize;
            Ok(())
        },
    },
    OptionSpec {
        key: "prefetch",
        default: "0",
        meaning: "messages the receiver buffers beyond those in flight",
        set: |o, v| {
            o.prefetch = count(v, 0, u64::from(u32::MAX))? as u32;
            Ok(())
        },
    },
    OptionSpec {
        key: "max-batch-size",
        default: "1",
        meaning: "most messages per `handler` call; above 1, a receive that has one message waits up to 1 ms \
                  for more to fill the batch",
        set: |o, v| {
            o.max_batch_size = count(v, 1, 10_000)? as usize;
            Ok(())
        },
    },
    OptionSpec {
        key: "max-auto-lock-renewal",
        default: "5m",
        meaning: "how long the host keeps renewing a message's lock",
        set: |o, v| {
            o.max_auto_lock_renewal = parse_duration(v)?;
            Ok(())
        },
    },
    OptionSpec {
        key: "handler-timeout",
        default: "5m",
        meaning: "deadline of one handler call",
        set: |o, v| {
            o.handler_timeout = positive_duration(v)?;
            Ok(())
        },
    },
    OptionSpec {
        key: "receive-mode",
        default: "peek-lock",
        meaning: "or `receive-and-delete`",
        set: |o, v| {
            o.receive_mode = match v.trim() {
                "peek-lock" => ReceiveMode::PeekLock,
                "receive-and-delete" => ReceiveMode::ReceiveAndDelete,
                other => return Err(format!("{other:?} is not peek-lock or receive-and-delete")),
            };
            Ok(())
        },
    },
    OptionSpec {
        key: "requires-session",
        default: "false",
        meaning: "`true` for a queue or subscription that requires sessions: it is consumed a message session at a \
                  time (see \"Session channels\")",
        set: |o, v| {
            o.requires_session = match v.trim() {
                "true" => true,
                "false" => false,
                other => return Err(format!("{other:?} is not true or false")),
            };
            Ok(())
        },
    },
    OptionSpec {
        key: "max-concurrent-sessions",
        default: "8",
        meaning: "message sessions a session channel holds at once",
        set: |o, v| {
            o.max_concurrent_sessions = count(v, 1, 10_000)? as usize;
            Ok(())
        },
    },
    OptionSpec {
        key: "max-concurrent-calls-per-session",
        default: "1",
        meaning: "handler calls in flight per session; above 1 a session's messages are no longer handled in order",
        set: |o, v| {
            o.max_concurrent_calls_per_session = count(v, 1, 10_000)? as usize;
            Ok(())
        },
    },
    OptionSpec {
        key: "session-idle-timeout",
        default: "60s",
        meaning: "how long a held session may go without a new message before the host releases it",
        set: |o, v| {
            o.session_idle_timeout = positive_duration(v)?;
            Ok(())
        },
    },
];

/// The option keys, in [`OPTIONS`]' order.
pub fn option_keys() -> impl Iterator<Item = &'static str> {
    OPTIONS.iter().map(|o| o.key)
}

fn is_option(key: &str) -> bool {
    OPTIONS.iter().any(|o| o.key == key)
}

/// A whole number from `min` up; above `max` it is `max`.
fn count(value: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = value.trim().parse().map_err(|_| format!("{value:?} is not a whole number"))?;
    if n < min {
        return Err(format!("must be at least {min}, got {n}"));
    }
    Ok(n.min(max))
}

fn positive_duration(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

impl Default for ChannelOptions {
    /// Every option at its default in [`OPTIONS`].
    fn default() -> Self {
        let mut o = Self {
            max_concurrent_calls: 0,
            prefetch: 0,
            max_batch_size: 0,
            max_auto_lock_renewal: Duration::ZERO,
            handler_timeout: Duration::ZERO,
            receive_mode: ReceiveMode::PeekLock,
            requires_session: false,
            max_concurrent_sessions: 0,
            max_concurrent_calls_per_session: 0,
            session_idle_timeout: Duration::ZERO,
        };
        for spec in OPTIONS {
            (spec.set)(&mut o, spec.default).expect("every default in OPTIONS is a valid value");
        }
        o
    }
}

impl ChannelOptions {
    /// Applies one `key = value`; errors name the key and say what is accepted.
    pub fn set(&mut self, key: &str, value: &str, at: &str) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid { at: at.into(), key: key.into(), message };
        match OPTIONS.iter().find(|o| o.key == key) {
            Some(spec) => (spec.set)(self, value).map_err(bad),
            None => {
                Err(bad(format!("unknown option; the options are: {}", option_keys().collect::<Vec<_>>().join(", "))))
            }
        }
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h`, or a plain number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad =
        || format!("{text:?} is not a duration: use a number with ms, s, m or h (e.g. \"30s\"), or plain milliseconds");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(bad()),
    };
    Ok(Duration::from_millis(ms))
}

/// One named connection in `host.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConnectionConfig {
    /// Its connection string.
    pub connection_string: String,
}

/// The `[guest]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GuestConfig {
    /// Channels to consume: besides those `configure()` names (February 2024 draft), or all of
    /// them (December 2024 revision). `--channel NAME` adds to them.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Channels the guest may send and redirect to, besides its own.
    #[serde(default)]
    pub allowed_targets: Vec<String>,
    /// Memory cap of one instance, in MiB.
    #[serde(default)]
    pub max_memory_mib: Option<u64>,
    /// Environment variables the guest sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The guest's own settings, read through `wasi:config/store` (`[guest.config]`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The queue (one that requires sessions) requests ask their replies to come to; without
    /// it `request-reply.request` fails with `permission-denied`.
    #[serde(default)]
    pub reply_queue: Option<String>,
}

/// `host.toml`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostConfig {
    /// The `default` connection (else the command line or environment gives it).
    pub connection_string: Option<String>,
    /// Further connections, for `connect(name)`.
    pub connections: BTreeMap<String, ConnectionConfig>,
    /// The guest's settings.
    pub guest: GuestConfig,
    /// `[defaults]`: options for every channel, as `(key, value, where)`.
    pub defaults: Vec<(String, String, String)>,
    /// `[channels."<name>"]`: options per channel.
    pub channels: BTreeMap<String, Vec<(String, String, String)>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    connection_string: Option<String>,
    #[serde(default)]
    connections: BTreeMap<String, ConnectionConfig>,
    #[serde(default)]
    guest: GuestConfig,
    #[serde(default)]
    defaults: BTreeMap<String, toml::Spanned<toml::Value>>,
    #[serde(default)]
    channels: BTreeMap<String, BTreeMap<String, toml::Spanned<toml::Value>>>,
}

impl HostConfig {
    /// Reads `host.toml`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), message: e.to_string() })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses `host.toml` text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let file: File = toml::from_str(text).map_err(|e| {
            let at = match e.span() {
                Some(span) => format!("{origin}:{}", line_of(span.start)),
                None => origin.to_string(),
            };
            ConfigError::Invalid { at, key: "(file)".into(), message: e.message().to_string() }
        })?;
        let options = |table: BTreeMap<String, toml::Spanned<toml::Value>>| {
            table
                .into_iter()
                .map(|(k, v)| {
                    let at = format!("{origin}:{}", line_of(v.span().start));
                    let value = match v.into_inner() {
                        toml::Value::String(s) => s,
                        toml::Value::Integer(i) => i.to_string(),
                        other => other.to_string(),
                    };
                    (k, value, at)
                })
                .collect::<Vec<_>>()
        };
        let config = Self {
            connection_string: file.connection_string,
            connections: file.connections,
            guest: file.guest,
            defaults: options(file.defaults),
            channels: file.channels.into_iter().map(|(c, t)| (c, options(t))).collect(),
        };
        // Validate every option now, so a typo fails at start-up, not at the first message.
        let mut scratch = ChannelOptions::default();
        for (k, v, at) in config.defaults.iter().chain(config.channels.values().flatten()) {
            scratch.set(k, v, at)?;
        }
        if let Some(mib) = config.guest.max_memory_mib
            && !MAX_MEMORY_MIB.contains(&mib)
        {
            return Err(ConfigError::Invalid {
                at: format!("{origin} [guest]"),
                key: "max-memory-mib".into(),
                message: memory_range_message(mib),
            });
        }
        if config.connections.contains_key("default") {
            return Err(ConfigError::Invalid {
                at: origin.into(),
                key: "connections.default".into(),
                message: "'default' is the main connection: set connection-string at the top instead".into(),
            });
        }
        Ok(config)
    }
}

/// The memory caps a guest instance may have, in MiB: a 32-bit linear memory holds at most 4 GiB.
pub const MAX_MEMORY_MIB: std::ops::RangeInclusive<u64> = 1..=4096;

/// Says why `mib` is not a memory cap.
pub fn memory_range_message(mib: u64) -> String {
    format!(
        "{mib} MiB is not a memory cap a guest can have: choose {} to {} (a 32-bit guest memory holds at most 4 GiB)",
        MAX_MEMORY_MIB.start(),
        MAX_MEMORY_MIB.end()
    )
}

/// The guest's `extensions`, split into options for every channel and options for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestOptions {
    /// Bare keys: every channel.
    pub all: Vec<(String, String)>,
    /// `<channel>.<key>`: one channel.
    pub per_channel: BTreeMap<String, Vec<(String, String)>>,
}

/// Splits guest `extensions` into bare options and `<channel>.<key>` options; unknown keys are errors.
pub fn guest_options(extensions: &[(String, String)]) -> Result<GuestOptions, ConfigError> {
    let mut bare = Vec::new();
    let mut per_channel: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (k, v) in extensions {
        let (channel, key) = match k.rsplit_once('.') {
            Some((c, key)) if is_option(key) => (Some(c), key),
            _ => (None, k.as_str()),
        };
        if !is_option(key) {
            return Err(ConfigError::Invalid {
                at: "guest extensions".into(),
                key: k.clone(),
                message: format!(
                    "unknown option; the options are {} (or <channel>.<option>)",
                    option_keys().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        match channel {
            Some(c) => per_channel.entry(c.to_string()).or_default().push((key.to_string(), v.clone())),
            None => bare.push((key.to_string(), v.clone())),
        }
    }
    Ok(GuestOptions { all: bare, per_channel })
}

/// The options of `channel`, by the precedence in the module docs.
pub fn channel_options(channel: &str, guest: &GuestOptions, host: &HostConfig) -> Result<ChannelOptions, ConfigError> {
    let mut o = ChannelOptions::default();
    for (k, v) in &guest.all {
        o.set(k, v, "guest extensions")?;
    }
    for (k, v) in guest.per_channel.get(channel).into_iter().flatten() {
        o.set(k, v, "guest extensions")?;
    }
    for (k, v, at) in &host.defaults {
        o.set(k, v, at)?;
    }
    for (k, v, at) in host.channels.get(channel).into_iter().flatten() {
        o.set(k, v, at)?;
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_reads_its_own_default() {
        let defaults = ChannelOptions::default();
        for spec in OPTIONS {
            let mut o = defaults.clone();
            o.set(spec.key, spec.default, "test").unwrap();
            assert_eq!(o, defaults, "{}", spec.key);
        }
        assert_eq!(defaults.max_concurrent_calls, 16);
        assert_eq!(defaults.handler_timeout, Duration::from_secs(300));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1500").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn precedence_is_defaults_guest_then_host() {
        let guest = guest_options(&[
            ("max-concurrent-calls".into(), "4".into()),
            ("orders.max-concurrent-calls".into(), "2".into()),
            ("queue.1.prefetch".into(), "7".into()),
        ])
        .unwrap();
        let host = HostConfig::parse(
            "[defaults]\nhandler-timeout = \"30s\"\n[channels.\"orders\"]\nprefetch = 5\n",
            "host.toml",
        )
        .unwrap();
        let orders = channel_options("orders", &guest, &host).unwrap();
        assert_eq!(
            (orders.max_concurrent_calls, orders.prefetch, orders.handler_timeout),
            (2, 5, Duration::from_secs(30))
        );
        let other = channel_options("payments", &guest, &host).unwrap();
        assert_eq!((other.max_concurrent_calls, other.prefetch), (4, 0));
        // Channel names may contain dots: the option is the last part.
        assert_eq!(channel_options("queue.1", &guest, &host).unwrap().prefetch, 7);
    }

    #[test]
    fn unknown_keys_and_bad_values_say_where() {
        let e = guest_options(&[("max-concurency".into(), "4".into())]).unwrap_err().to_string();
        assert!(e.starts_with("guest extensions: max-concurency: unknown option"), "{e}");
        let e = HostConfig::parse("[defaults]\n\nprefetch = \"lots\"\n", "host.toml").unwrap_err().to_string();
        assert_eq!(e, "host.toml:3: prefetch: \"lots\" is not a whole number");
        let e = HostConfig::parse("[channels.orders]\nmax-batch = 3\n", "host.toml").unwrap_err().to_string();
        assert!(e.starts_with("host.toml:2: max-batch: unknown option"), "{e}");
        let e = HostConfig::parse("conection-string = \"x\"\n", "host.toml").unwrap_err().to_string();
        assert!(e.starts_with("host.toml:1: (file): unknown field `conection-string`"), "{e}");
        let e = HostConfig::parse("[defaults]\nreceive-mode = \"fast\"\n", "h.toml").unwrap_err().to_string();
        assert!(e.contains("not peek-lock or receive-and-delete"), "{e}");
    }
}
