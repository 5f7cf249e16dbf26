//! What a soak round found: each call that recorded itself ([`Record`]), counts per channel
//! ([`Row`]), and the account of the round ([`Outcome`]): losses, and each call made again
//! with the fault that explains it, or none.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use amqp_servicebus::{ReceivedMessage, SimpleValue};
use anyhow::{Context as _, Result, bail};

use super::{Fault, Incarnation, Struck};

/// The soak id a message carries as its script's first step, `note:<id>`.
pub(super) fn id_in(m: &ReceivedMessage) -> Result<String> {
    let body = String::from_utf8_lossy(&m.body);
    body.strip_prefix("note:")
        .and_then(|rest| rest.split(';').next())
        .map(str::to_string)
        .with_context(|| format!("a message that is not the soak's: {body:?}"))
}

/// One call that got as far as `record:`.
pub(super) struct Record {
    pub(super) id: String,
    host: String,
    delivery_count: String,
    /// When the call began (the guest's clock, the host's).
    pub(super) from: SystemTime,
    /// When its record reached the broker (later than the call, when a fault delayed the send).
    pub(super) at: SystemTime,
}

impl Record {
    pub(super) fn of(m: &ReceivedMessage) -> Result<Self> {
        let text = |key: &str| match m.application_properties.get(key) {
            Some(SimpleValue::String(s)) => Ok(s.clone()),
            other => bail!("a record whose {key} is {other:?}"),
        };
        Ok(Self {
            id: id_in(m)?,
            host: text("handled-by")?,
            delivery_count: text("handled-delivery-count")?,
            from: SystemTime::UNIX_EPOCH
                + Duration::from_micros(text("handled-from-us")?.parse().context("a record's handled-from-us")?),
            at: m.enqueued_time.context("a record without an enqueued time")?,
        })
    }
}

/// Counts of one channel.
#[derive(Default)]
pub(super) struct Row {
    pub(super) sent: usize,
    pub(super) handled: usize,
    pub(super) dead_lettered: usize,
    pub(super) queued: usize,
    pub(super) lost: usize,
    /// Calls after a message's first.
    pub(super) again: usize,
}

/// What a round found.
pub(super) struct Outcome {
    round: usize,
    messages: usize,
    finished: bool,
    elapsed: Duration,
    /// When the hosts started.
    began: SystemTime,
    faults: Vec<String>,
    struck: Vec<(Fault, SystemTime)>,
    /// Traps, deadline overruns, locks lost: the hosts' own counts, summed over incarnations.
    host_counts: Vec<(&'static str, f64)>,
    pub(super) channels: BTreeMap<&'static str, Row>,
    pub(super) dead_reasons: BTreeMap<String, usize>,
    pub(super) lost: Vec<String>,
    /// How many repeated calls or copies each fault explains.
    explained: BTreeMap<String, usize>,
    unexplained: Vec<String>,
}

/// Slack between the soak's clock reading before a fault and the stamps it is compared with:
/// the emulator's enqueued times, and a call's start, which comes a little after its message
/// was received (and locked).
const SLACK: Duration = Duration::from_secs(1);

impl Outcome {
    pub(super) fn new(
        round: usize,
        messages: usize,
        finished: bool,
        began: SystemTime,
        elapsed: Duration,
        struck: &[Struck],
        hosts: &[Incarnation],
    ) -> Self {
        let host_counts = [
            ("handler calls", "messaging_handler_calls_total"),
            ("traps", "messaging_handler_traps_total"),
            ("deadline overruns", "messaging_handler_timeouts_total"),
            ("locks lost", "messaging_locks_lost_total"),
            ("session locks lost", "messaging_session_locks_lost_total"),
        ]
        .map(|(label, name)| (label, hosts.iter().map(|i| i.total(name)).sum::<f64>()))
        .to_vec();
        Self {
            round,
            messages,
            finished,
            elapsed,
            began,
            faults: struck.iter().map(|s| format!("{} at {:.1}s", s.fault.describe(), s.after.as_secs_f64())).collect(),
            struck: struck.iter().map(|s| (s.fault, s.at)).collect(),
            host_counts,
            channels: BTreeMap::new(),
            dead_reasons: BTreeMap::new(),
            lost: Vec::new(),
            explained: BTreeMap::new(),
            unexplained: Vec::new(),
        }
    }

    /// The fault that explains a second call: it struck the first call's host after that call
    /// began (holding the lock), and before the second call's record arrived.
    pub(super) fn explain(&mut self, id: &str, first: &Record, then: &Record) {
        let cause =
            self.struck.iter().enumerate().find(|(_, (fault, at))| {
                fault.hits(&first.host) && *at + SLACK >= first.from && *at <= then.at + SLACK
            });
        match cause {
            Some((i, _)) => *self.explained.entry(self.faults[i].clone()).or_default() += 1,
            None => self.unexplained.push(format!(
                "{id}: handled by {} (delivery {}) at {}, and again by {} (delivery {}) at {}, no fault between",
                first.host,
                first.delivery_count,
                self.clock(first.from),
                then.host,
                then.delivery_count,
                self.clock(then.from)
            )),
        }
    }

    /// The fault that explains `extra` copies on `entity` beyond one per call: any that struck
    /// between the first copy and the last.
    pub(super) fn explain_copy(&mut self, id: &str, entity: &str, extra: usize, first: SystemTime, last: SystemTime) {
        match self.struck.iter().position(|(_, at)| *at + SLACK >= first && *at <= last + SLACK) {
            Some(i) => *self.explained.entry(self.faults[i].clone()).or_default() += extra,
            None => self.unexplained.push(format!(
                "{id}: {extra} more cop{} on {entity} than calls, from {} to {}, no fault between",
                if extra == 1 { "y" } else { "ies" },
                self.clock(first),
                self.clock(last)
            )),
        }
    }

    /// A time as seconds into the round.
    fn clock(&self, at: SystemTime) -> String {
        match at.duration_since(self.began) {
            Ok(d) => format!("{:.2}s", d.as_secs_f64()),
            Err(e) => format!("-{:.2}s", e.duration().as_secs_f64()),
        }
    }

    pub(super) fn passed(&self) -> bool {
        self.finished && self.lost.is_empty() && self.unexplained.is_empty()
    }

    pub(super) fn verdict(&self) -> String {
        let mut problems = Vec::new();
        if !self.finished {
            problems.push(format!("not every message was settled within {:.0?}", self.elapsed));
        }
        if !self.lost.is_empty() {
            problems.push(format!("{} lost", self.lost.len()));
        }
        if !self.unexplained.is_empty() {
            problems.push(format!("{} duplicates unexplained", self.unexplained.len()));
        }
        if problems.is_empty() { "passed".into() } else { problems.join("; ") }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "soak round {}: {} messages, 2 hosts, {:.1}s: {}",
            self.round,
            self.messages,
            self.elapsed.as_secs_f64(),
            self.verdict()
        )?;
        writeln!(f, "  faults: {}", self.faults.join(", "))?;
        let counts: Vec<String> = self.host_counts.iter().map(|(label, n)| format!("{label} {n}")).collect();
        writeln!(f, "  hosts counted: {}", counts.join(", "))?;
        writeln!(
            f,
            "  {:<36} {:>6} {:>8} {:>6} {:>7} {:>5} {:>11}",
            "channel", "sent", "handled", "dead", "queued", "lost", "calls again"
        )?;
        for (name, r) in &self.channels {
            writeln!(
                f,
                "  {name:<36} {:>6} {:>8} {:>6} {:>7} {:>5} {:>11}",
                r.sent, r.handled, r.dead_lettered, r.queued, r.lost, r.again
            )?;
        }
        let reasons: Vec<String> = self.dead_reasons.iter().map(|(reason, n)| format!("{n} {reason}")).collect();
        writeln!(f, "  dead-lettered: {}", if reasons.is_empty() { "none".into() } else { reasons.join(", ") })?;
        let explained: Vec<String> = self.explained.iter().map(|(fault, n)| format!("{n} by {fault}")).collect();
        writeln!(
            f,
            "  duplicates explained: {}",
            if explained.is_empty() { "none".into() } else { explained.join("; ") }
        )?;
        for (what, list) in [("lost", &self.lost), ("unexplained", &self.unexplained)] {
            for line in list.iter().take(10) {
                writeln!(f, "  {what}: {line}")?;
            }
            if list.len() > 10 {
                writeln!(f, "  {what}: … and {} more", list.len() - 10)?;
            }
        }
        Ok(())
    }
}
