//! Counters per channel, a handler-latency histogram, whether each worker is ready, and the
//! HTTP endpoint: `/metrics` (Prometheus), `/healthz` (the process is alive) and `/readyz`
//! (serving: every worker can receive).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Latency buckets (seconds) of the handler histogram.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// One channel's counters.
#[derive(Debug, Default)]
pub struct ChannelCounters {
    /// Messages received.
    pub received: AtomicU64,
    /// Completed (by the guest or the host).
    pub completed: AtomicU64,
    /// Abandoned (by the guest or the host).
    pub abandoned: AtomicU64,
    /// Dead-lettered by the guest.
    pub dead_lettered: AtomicU64,
    /// Redirected by the guest.
    pub redirected: AtomicU64,
    /// Deferred by the guest.
    pub deferred: AtomicU64,
    /// Abandoned with a delay by the guest.
    pub delayed: AtomicU64,
    /// Messages the guest sent.
    pub sent: AtomicU64,
    /// Handler calls (a call gets up to max-batch-size messages).
    pub calls: AtomicU64,
    /// Handler calls that returned an error.
    pub handler_errors: AtomicU64,
    /// Handler calls that trapped.
    pub handler_traps: AtomicU64,
    /// Handler calls that ran past their deadline.
    pub handler_timeouts: AtomicU64,
    /// Lock renewals.
    pub lock_renewals: AtomicU64,
    /// Locks lost.
    pub locks_lost: AtomicU64,
    /// Message sessions accepted (a session channel).
    pub sessions_accepted: AtomicU64,
    /// Message sessions whose lock was lost while held.
    pub session_locks_lost: AtomicU64,
    /// Message sessions held now.
    pub sessions_held: AtomicI64,
    /// Handler calls in flight now.
    pub in_flight: AtomicI64,
    /// The most handler calls in flight at once.
    pub in_flight_peak: AtomicI64,
    latency: Mutex<([u64; BUCKETS.len()], u64, f64)>,
}

/// Every channel's counters, and whether each worker is ready.
#[derive(Debug, Default)]
pub struct Metrics {
    channels: Mutex<BTreeMap<String, Arc<ChannelCounters>>>,
    /// Each worker's channel, and whether it can receive: its receive link is attached (a
    /// session channel's worker: its entity answered, and accepting sessions works).
    workers: Mutex<BTreeMap<String, bool>>,
    stopping: std::sync::atomic::AtomicBool,
}

/// Why the host is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// It has no worker (yet).
    NoWorkers,
    /// These workers cannot receive yet, or have stopped being able to.
    Workers(Vec<String>),
    /// It is shutting down.
    Stopping,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoWorkers => f.write_str("no worker is running"),
            Self::Workers(c) => write!(f, "these channels cannot receive: {}", c.join(", ")),
            Self::Stopping => f.write_str("shutting down"),
        }
    }
}

impl Metrics {
    /// The counters of `channel`.
    pub fn channel(&self, channel: &str) -> Arc<ChannelCounters> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up per message: allocate the key only the first time.
        if let Some(c) = channels.get(channel) {
            return c.clone();
        }
        channels.entry(channel.to_string()).or_default().clone()
    }

    /// Records a worker for `channel`, not ready yet.
    pub(crate) fn worker_started(&self, channel: &str) {
        self.workers.lock().unwrap_or_else(|p| p.into_inner()).insert(channel.to_string(), false);
    }

    /// Records whether the worker of `channel` can receive (if it was not removed meanwhile).
    pub(crate) fn worker_ready(&self, channel: &str, ready: bool) {
        if let Some(r) = self.workers.lock().unwrap_or_else(|p| p.into_inner()).get_mut(channel) {
            *r = ready;
        }
    }

    /// Forgets the worker of `channel` (a configuration update removed it).
    pub(crate) fn worker_gone(&self, channel: &str) {
        self.workers.lock().unwrap_or_else(|p| p.into_inner()).remove(channel);
    }

    /// Records that the host is shutting down: it is no longer ready.
    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether the host is serving: it has workers, every one can receive, and it is not
    /// shutting down.
    pub fn ready(&self) -> Result<(), NotReady> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(NotReady::Stopping);
        }
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if workers.is_empty() {
            return Err(NotReady::NoWorkers);
        }
        let not: Vec<String> = workers.iter().filter(|(_, ready)| !**ready).map(|(c, _)| c.clone()).collect();
        if not.is_empty() { Ok(()) } else { Err(NotReady::Workers(not)) }
    }

    /// The channels with counters.
    pub fn channels(&self) -> Vec<String> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    pub(crate) fn received(&self, channel: &str, n: u64) {
        self.channel(channel).received.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, channel: &str, n: u64) {
        self.channel(channel).sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn renewed(&self, channel: &str) {
        self.channel(channel).lock_renewals.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn lock_lost(&self, channel: &str) {
        self.channel(channel).locks_lost.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn call_started(&self, channel: &str) {
        let c = self.channel(channel);
        c.calls.fetch_add(1, Ordering::Relaxed);
        let now = c.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        c.in_flight_peak.fetch_max(now, Ordering::AcqRel);
    }

    pub(crate) fn call_ended(&self, channel: &str, elapsed: Duration) {
        let c = self.channel(channel);
        c.in_flight.fetch_sub(1, Ordering::AcqRel);
        let secs = elapsed.as_secs_f64();
        let mut h = c.latency.lock().unwrap_or_else(|p| p.into_inner());
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.0[i] += 1;
            }
        }
        h.1 += 1;
        h.2 += secs;
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let channels: Vec<(String, Arc<ChannelCounters>)> = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = String::new();
        type Read = fn(&ChannelCounters) -> i64;
        let counters: [(&str, &str, Read); 19] = [
            ("messaging_handler_calls_total", "Handler calls.", |c| c.calls.load(Ordering::Relaxed) as i64),
            ("messaging_received_total", "Messages received.", |c| c.received.load(Ordering::Relaxed) as i64),
            ("messaging_completed_total", "Messages completed.", |c| c.completed.load(Ordering::Relaxed) as i64),
            ("messaging_abandoned_total", "Messages abandoned.", |c| c.abandoned.load(Ordering::Relaxed) as i64),
            ("messaging_dead_lettered_total", "Messages dead-lettered.", |c| {
                c.dead_lettered.load(Ordering::Relaxed) as i64
            }),
            ("messaging_redirected_total", "Messages redirected.", |c| c.redirected.load(Ordering::Relaxed) as i64),
            ("messaging_deferred_total", "Messages deferred.", |c| c.deferred.load(Ordering::Relaxed) as i64),
            ("messaging_delayed_retries_total", "Messages abandoned with a delay.", |c| {
                c.delayed.load(Ordering::Relaxed) as i64
            }),
            ("messaging_sent_total", "Messages sent by the guest.", |c| c.sent.load(Ordering::Relaxed) as i64),
            ("messaging_handler_errors_total", "Handler calls that returned an error.", |c| {
                c.handler_errors.load(Ordering::Relaxed) as i64
            }),
            ("messaging_handler_traps_total", "Handler calls that trapped.", |c| {
                c.handler_traps.load(Ordering::Relaxed) as i64
            }),
            ("messaging_handler_timeouts_total", "Handler calls past their deadline.", |c| {
                c.handler_timeouts.load(Ordering::Relaxed) as i64
            }),
            ("messaging_lock_renewals_total", "Lock renewals.", |c| c.lock_renewals.load(Ordering::Relaxed) as i64),
            ("messaging_locks_lost_total", "Locks lost.", |c| c.locks_lost.load(Ordering::Relaxed) as i64),
            ("messaging_sessions_accepted_total", "Message sessions accepted.", |c| {
                c.sessions_accepted.load(Ordering::Relaxed) as i64
            }),
            ("messaging_session_locks_lost_total", "Message sessions whose lock was lost while held.", |c| {
                c.session_locks_lost.load(Ordering::Relaxed) as i64
            }),
            ("messaging_sessions_held", "Message sessions held.", |c| c.sessions_held.load(Ordering::Relaxed)),
            ("messaging_in_flight", "Handler calls in flight.", |c| c.in_flight.load(Ordering::Relaxed)),
            ("messaging_in_flight_peak", "Most handler calls in flight at once.", |c| {
                c.in_flight_peak.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, get) in counters {
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (ch, c) in &channels {
                let _ = writeln!(out, "{name}{{channel=\"{}\"}} {}", escape(ch), get(c));
            }
        }
        let _ = writeln!(
            out,
            "# HELP messaging_worker_ready Whether the channel's worker can receive.\n# TYPE messaging_worker_ready gauge"
        );
        for (ch, ready) in self.workers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "messaging_worker_ready{{channel=\"{}\"}} {}", escape(ch), u8::from(*ready));
        }
        let _ = writeln!(
            out,
            "# HELP messaging_handler_seconds Handler call latency.\n# TYPE messaging_handler_seconds histogram"
        );
        for (ch, c) in &channels {
            let h = c.latency.lock().unwrap_or_else(|p| p.into_inner());
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "messaging_handler_seconds_bucket{{channel=\"{}\",le=\"{le}\"}} {}",
                    escape(ch),
                    h.0[i]
                );
            }
            let _ = writeln!(out, "messaging_handler_seconds_bucket{{channel=\"{}\",le=\"+Inf\"}} {}", escape(ch), h.1);
            let _ = writeln!(out, "messaging_handler_seconds_sum{{channel=\"{}\"}} {}", escape(ch), h.2);
            let _ = writeln!(out, "messaging_handler_seconds_count{{channel=\"{}\"}} {}", escape(ch), h.1);
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.strip_prefix("GET ").and_then(|r| r.split(' ').next()).unwrap_or_default();
            let (status, body) = match path {
                "/metrics" | "/" => ("200 OK", metrics.render()),
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" => match metrics.ready() {
                    Ok(()) => ("200 OK", "ready\n".to_string()),
                    Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
                },
                _ => ("404 Not Found", "try GET /metrics, /healthz or /readyz\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// Binds the endpoint; returns the bound address and the serving task.
pub async fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, tokio::spawn(serve(listener, metrics))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_counter_per_channel() {
        let m = Metrics::default();
        m.received("orders", 3);
        m.channel("orders").completed.fetch_add(1, Ordering::Relaxed);
        m.call_started("orders");
        m.call_ended("orders", Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("messaging_received_total{channel=\"orders\"} 3"), "{text}");
        assert!(text.contains("messaging_completed_total{channel=\"orders\"} 1"));
        assert!(text.contains("messaging_in_flight_peak{channel=\"orders\"} 1"));
        assert!(text.contains("messaging_handler_seconds_bucket{channel=\"orders\",le=\"0.005\"} 1"));
        assert!(text.contains("messaging_handler_seconds_count{channel=\"orders\"} 1"));
    }
}
