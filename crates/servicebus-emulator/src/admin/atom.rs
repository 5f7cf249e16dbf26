//! Entity descriptions in the Service Bus ATOM dialect: what a `PUT` body says (read into the
//! emulator's settings through the same checks as `Config.json`), and the entries and feeds
//! the clients read back.

use std::time::Duration;

use fe2o3_amqp_types::primitives::SimpleValue;
use serde_json::{Map, Value as Json};

use super::xml::{Element, escape};
use crate::config::{self, Kind, TopicProperties};
use crate::namespace::Topic;
use crate::queue::{Queue, QueueProperties};
use crate::rules::{CorrelationFilter, RuleConfig, RuleFilter};

const ATOM: &str = "http://www.w3.org/2005/Atom";
const CONNECT: &str = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
const COUNTS: &str = "http://schemas.microsoft.com/netservices/2011/06/servicebus";
const XSD: &str = "http://www.w3.org/2001/XMLSchema";

/// .NET's `TimeSpan.MaxValue`: how the service writes "never".
const FOREVER: &str = "P10675199DT2H48M5.4775807S";

/// What a `PUT` body describes.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Description {
    Queue(QueueProperties),
    Topic(TopicProperties),
    Subscription { properties: QueueProperties, default_rule: Option<RuleConfig> },
    Rule(RuleConfig),
}

/// Reads a `PUT` body: an ATOM entry whose content is one description. `rule_name` names a
/// rule being put (a rule description need not name itself).
pub(super) fn parse_entry(body: &str, rule_name: &str) -> Result<Description, String> {
    let entry = super::xml::parse(body)?;
    let description = entry
        .child("content")
        .and_then(|c| c.children.first())
        .ok_or("the body is not an ATOM entry with a description in its content")?;
    match description.name.as_str() {
        "QueueDescription" => Ok(Description::Queue(settings(description, Kind::Queue, "the queue")?)),
        "TopicDescription" => {
            let json = settings_json(description, Kind::Topic)?;
            Ok(Description::Topic(config::topic_properties("the topic", json)?))
        }
        "SubscriptionDescription" => Ok(Description::Subscription {
            properties: settings(description, Kind::Subscription, "the subscription")?,
            default_rule: description.child("DefaultRuleDescription").map(|r| rule(r, "$Default")).transpose()?,
        }),
        "RuleDescription" => Ok(Description::Rule(rule(description, rule_name)?)),
        other => Err(format!(
            "the content is a {other}; expected a QueueDescription, TopicDescription, SubscriptionDescription or RuleDescription"
        )),
    }
}

fn settings(description: &Element, kind: Kind, what: &str) -> Result<QueueProperties, String> {
    config::entity_properties(kind, what, settings_json(description, kind)?)
}

/// The description's settings under their `Config.json` keys; what the emulator does not
/// have is refused when it asks for something (partitioning, express, idle deletion, a status
/// other than Active), and otherwise set aside (batching, metadata, read-only counts).
fn settings_json(description: &Element, kind: Kind) -> Result<Json, String> {
    let mut json = Map::new();
    for e in &description.children {
        let text = e.text.trim();
        let key = e.name.as_str();
        match key {
            "LockDuration" | "DefaultMessageTimeToLive" | "DuplicateDetectionHistoryTimeWindow"
                if !is_forever(text) =>
            {
                json.insert(key.into(), Json::String(text.into()));
            }
            "MaxSizeInMegabytes" | "MaxDeliveryCount" | "MaxMessageSizeInKilobytes" => {
                let n: i64 = text.parse().map_err(|_| format!("{key} must be a whole number; got {text:?}"))?;
                json.insert(key.into(), Json::from(n));
            }
            "RequiresDuplicateDetection" | "RequiresSession" | "DeadLetteringOnMessageExpiration" => {
                json.insert(key.into(), Json::Bool(boolean(key, text)?));
            }
            "ForwardTo" | "ForwardDeadLetteredMessagesTo" if !text.is_empty() => {
                json.insert(key.into(), Json::String(text.into()));
            }
            "EnablePartitioning" | "EnableExpress" | "EnableSubscriptionPartitioning" if boolean(key, text)? => {
                return Err(format!("{key} is not supported by the emulator; leave it false"));
            }
            "AutoDeleteOnIdle" if !is_forever(text) => {
                return Err(format!(
                    "AutoDeleteOnIdle is not supported by the emulator; leave it unset (got {text:?})"
                ));
            }
            "Status" if !text.is_empty() && text != "Active" => {
                return Err(format!("Status {text:?} is not supported by the emulator; entities are Active"));
            }
            _ => {}
        }
    }
    if kind == Kind::Subscription {
        json.remove("MaxSizeInMegabytes");
    }
    Ok(Json::Object(json))
}

fn boolean(key: &str, text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" | "" => Ok(false),
        _ => Err(format!("{key} must be true or false; got {text:?}")),
    }
}

/// Whether a duration is `TimeSpan.MaxValue` (or past what the emulator holds): never.
fn is_forever(text: &str) -> bool {
    text.is_empty()
        || text.starts_with("P10675199D")
        || config::parse_iso_duration(text).is_err_and(|e| e.contains("longer"))
}

/// A rule description (or a subscription's `DefaultRuleDescription`).
fn rule(description: &Element, name: &str) -> Result<RuleConfig, String> {
    let name = description.text_of("Name").filter(|n| !n.is_empty()).unwrap_or(name).to_string();
    let filter = match description.child("Filter") {
        None => RuleFilter::True,
        Some(f) => {
            match f.xsi_type() {
                Some("TrueFilter") => RuleFilter::True,
                Some("FalseFilter") => RuleFilter::False,
                Some("CorrelationFilter") => RuleFilter::Correlation(correlation(f)?),
                Some("SqlFilter") | None => {
                    if f.child("Parameters").is_some_and(|p| !p.children.is_empty()) {
                        return Err("SQL filter parameters are not supported by the emulator; write the values into the expression".into());
                    }
                    RuleFilter::Sql(f.text_of("SqlExpression").unwrap_or("1=1").to_string())
                }
                Some(other) => return Err(format!("a filter of type {other} is not supported")),
            }
        }
    };
    let action = match description.child("Action") {
        Some(a) if a.xsi_type() == Some("SqlRuleAction") => Some(a.text_of("SqlExpression").unwrap_or("").to_string()),
        Some(a) if matches!(a.xsi_type(), Some("EmptyRuleAction") | None) => None,
        Some(a) => return Err(format!("an action of type {} is not supported", a.xsi_type().unwrap_or("?"))),
        None => None,
    };
    Ok(RuleConfig { name, filter, action })
}

fn correlation(f: &Element) -> Result<CorrelationFilter, String> {
    let field = |name: &str| f.text_of(name).filter(|v| !v.is_empty()).map(str::to_string);
    let mut properties = Vec::new();
    for kv in f.child("Properties").map(|p| p.children.as_slice()).unwrap_or_default() {
        let key = kv.text_of("Key").ok_or("a correlation filter property has no Key")?.to_string();
        let value = kv.child("Value").ok_or("a correlation filter property has no Value")?;
        properties.push((key, typed_value(value)?));
    }
    Ok(CorrelationFilter {
        correlation_id: field("CorrelationId"),
        message_id: field("MessageId"),
        to: field("To"),
        reply_to: field("ReplyTo"),
        label: field("Label"),
        session_id: field("SessionId"),
        reply_to_session_id: field("ReplyToSessionId"),
        content_type: field("ContentType"),
        properties,
    })
}

/// A `<Value i:type="d6p1:int">` of a correlation filter.
fn typed_value(value: &Element) -> Result<SimpleValue, String> {
    let text = value.text.trim();
    let bad = |kind: &str| format!("the value {text:?} is not a valid {kind}");
    Ok(match value.xsi_type().unwrap_or("string") {
        "string" => SimpleValue::String(value.text.clone()),
        "int" => SimpleValue::Int(text.parse().map_err(|_| bad("int"))?),
        "long" => SimpleValue::Long(text.parse().map_err(|_| bad("long"))?),
        "double" => SimpleValue::Double(text.parse::<f64>().map_err(|_| bad("double"))?.into()),
        "boolean" => SimpleValue::Bool(boolean("a correlation filter property", text)?),
        other => return Err(format!("a correlation filter property of type {other} is not supported")),
    })
}

// ---- Writing ----

/// `d` as ISO 8601 (`PT1M`, `P1DT2H`, `PT0.5S`); `None` is never.
pub(super) fn iso_duration(d: Option<Duration>) -> String {
    d.map_or_else(|| FOREVER.into(), config::iso_duration)
}

/// Milliseconds since the epoch as ISO 8601 UTC (`2026-11-29T23:01:43.123Z`).
pub(super) fn iso_time(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// An ATOM entry for the entity at `path`, whose content is `description`.
fn entry(base: &str, path: &str, title: &str, times: (i64, i64), description: &str) -> String {
    let href = format!("{base}/{}", escape(path));
    format!(
        r#"<entry xmlns="{ATOM}"><id>{href}</id><title type="text">{}</title><published>{}</published><updated>{}</updated><author><name>emulator</name></author><link rel="self" href="{href}"/><content type="application/xml">{description}</content></entry>"#,
        escape(title),
        iso_time(times.0),
        iso_time(times.1),
    )
}

/// A feed of `entries` (empty: what the service answers for an entity that does not exist).
pub(super) fn feed(base: &str, path: &str, title: &str, entries: &[String]) -> String {
    let now = iso_time(crate::message::now_ms());
    let href = format!("{base}/{}", escape(path));
    format!(
        r#"<feed xmlns="{ATOM}"><title type="text">{}</title><id>{href}</id><updated>{now}</updated><link rel="self" href="{href}"/>{}</feed>"#,
        escape(title),
        entries.concat()
    )
}

/// The error body the service sends: `<Error><Code>…</Code><Detail>…</Detail></Error>`.
pub(super) fn error(status: u16, detail: &str) -> String {
    format!("<Error><Code>{status}</Code><Detail>{}</Detail></Error>", escape(detail))
}

fn element(name: &str, value: impl std::fmt::Display) -> String {
    format!("<{name}>{}</{name}>", escape(&value.to_string()))
}

/// `sb://host/name` for a forwarding target, as the service reports it.
fn target(host: &str, name: &Option<String>) -> Option<String> {
    name.as_ref().map(|n| format!("sb://{host}/{n}"))
}

fn counts_xml(active: usize, dead: usize, scheduled: usize) -> String {
    format!(
        r#"<CountDetails xmlns:d2p1="{COUNTS}"><d2p1:ActiveMessageCount>{active}</d2p1:ActiveMessageCount><d2p1:DeadLetterMessageCount>{dead}</d2p1:DeadLetterMessageCount><d2p1:ScheduledMessageCount>{scheduled}</d2p1:ScheduledMessageCount><d2p1:TransferMessageCount>0</d2p1:TransferMessageCount><d2p1:TransferDeadLetterMessageCount>0</d2p1:TransferDeadLetterMessageCount></CountDetails>"#
    )
}

/// A queue's or subscription's message counts: (all, active, dead-lettered, scheduled).
/// Locked and deferred messages are active, as the service counts them.
fn message_counts(queue: &Queue) -> (usize, usize, usize, usize) {
    let c = queue.counts();
    let active = c.active + c.locked + c.deferred;
    (active + c.dead_lettered + c.scheduled, active, c.dead_lettered, c.scheduled)
}

/// A queue's entry.
pub(super) fn queue_entry(base: &str, host: &str, queue: &Queue) -> String {
    let p = queue.props().clone();
    let (all, active, dead, scheduled) = message_counts(queue);
    let (created, updated) = queue.times_ms();
    let mut d = format!(r#"<QueueDescription xmlns="{CONNECT}" xmlns:i="{XSI}">"#);
    d += &element("LockDuration", iso_duration(Some(p.lock_duration)));
    d += &element("MaxSizeInMegabytes", p.max_size_megabytes);
    d += &element("RequiresDuplicateDetection", p.duplicate_detection_window.is_some());
    d += &element("RequiresSession", p.requires_session);
    d += &element("DefaultMessageTimeToLive", iso_duration(p.default_message_ttl));
    d += &element("DeadLetteringOnMessageExpiration", p.dead_lettering_on_message_expiration);
    d += &element("DuplicateDetectionHistoryTimeWindow", iso_duration(Some(window(p.duplicate_detection_window))));
    d += &element("MaxDeliveryCount", p.max_delivery_count);
    d += &element("EnableBatchedOperations", true);
    d += &element("SizeInBytes", queue.size_bytes());
    d += &element("MessageCount", all);
    d += "<IsAnonymousAccessible>false</IsAnonymousAccessible><AuthorizationRules/><Status>Active</Status>";
    if let Some(t) = target(host, &p.forward_to) {
        d += &element("ForwardTo", t);
    }
    d += &element("CreatedAt", iso_time(created));
    d += &element("UpdatedAt", iso_time(updated));
    d += &element("AccessedAt", iso_time(updated));
    d += "<SupportOrdering>true</SupportOrdering>";
    d += &counts_xml(active, dead, scheduled);
    d += &element("AutoDeleteOnIdle", FOREVER);
    d += "<EnablePartitioning>false</EnablePartitioning><EntityAvailabilityStatus>Available</EntityAvailabilityStatus>";
    if let Some(t) = target(host, &p.forward_dead_lettered_messages_to) {
        d += &element("ForwardDeadLetteredMessagesTo", t);
    }
    d += "<EnableExpress>false</EnableExpress>";
    d += &element("MaxMessageSizeInKilobytes", max_message_kb(p.max_message_size));
    d += "</QueueDescription>";
    entry(base, queue.name(), queue.name(), (created, updated), &d)
}

/// A topic's entry.
pub(super) fn topic_entry(base: &str, topic: &Topic) -> String {
    let p = topic.props();
    let subscriptions = topic.subscriptions();
    let size: u64 = subscriptions.iter().map(|s| s.size_bytes()).max().unwrap_or(0);
    let scheduled: usize = subscriptions.iter().map(|s| s.counts().scheduled).max().unwrap_or(0);
    let (created, updated) = topic.times_ms();
    let mut d = format!(r#"<TopicDescription xmlns="{CONNECT}" xmlns:i="{XSI}">"#);
    d += &element("DefaultMessageTimeToLive", iso_duration(p.default_message_ttl));
    d += &element("MaxSizeInMegabytes", p.max_size_megabytes);
    d += &element("RequiresDuplicateDetection", p.duplicate_detection_window.is_some());
    d += &element("DuplicateDetectionHistoryTimeWindow", iso_duration(Some(window(p.duplicate_detection_window))));
    d += "<EnableBatchedOperations>true</EnableBatchedOperations>";
    d += &element("SizeInBytes", size);
    d += "<FilteringMessagesBeforePublishing>false</FilteringMessagesBeforePublishing><IsAnonymousAccessible>false</IsAnonymousAccessible><AuthorizationRules/><Status>Active</Status>";
    d += &element("CreatedAt", iso_time(created));
    d += &element("UpdatedAt", iso_time(updated));
    d += &element("AccessedAt", iso_time(updated));
    d += "<SupportOrdering>true</SupportOrdering>";
    d += &counts_xml(0, 0, scheduled);
    d += &element("SubscriptionCount", subscriptions.len());
    d += &element("AutoDeleteOnIdle", FOREVER);
    d += "<EnablePartitioning>false</EnablePartitioning><EntityAvailabilityStatus>Available</EntityAvailabilityStatus><EnableSubscriptionPartitioning>false</EnableSubscriptionPartitioning><EnableExpress>false</EnableExpress>";
    d += &element("MaxMessageSizeInKilobytes", max_message_kb(p.max_message_size));
    d += "</TopicDescription>";
    entry(base, topic.name(), topic.name(), (created, updated), &d)
}

/// A subscription's entry; `name` is its own name (without its topic's).
pub(super) fn subscription_entry(base: &str, host: &str, topic: &str, name: &str, sub: &Queue) -> String {
    let p = sub.props().clone();
    let (all, active, dead, scheduled) = message_counts(sub);
    let (created, updated) = sub.times_ms();
    let mut d = format!(r#"<SubscriptionDescription xmlns="{CONNECT}" xmlns:i="{XSI}">"#);
    d += &element("LockDuration", iso_duration(Some(p.lock_duration)));
    d += &element("RequiresSession", p.requires_session);
    d += &element("DefaultMessageTimeToLive", iso_duration(p.default_message_ttl));
    d += &element("DeadLetteringOnMessageExpiration", p.dead_lettering_on_message_expiration);
    d += "<DeadLetteringOnFilterEvaluationExceptions>false</DeadLetteringOnFilterEvaluationExceptions>";
    d += &element("MessageCount", all);
    d += &element("MaxDeliveryCount", p.max_delivery_count);
    d += "<EnableBatchedOperations>true</EnableBatchedOperations><Status>Active</Status>";
    if let Some(t) = target(host, &p.forward_to) {
        d += &element("ForwardTo", t);
    }
    d += &element("CreatedAt", iso_time(created));
    d += &element("UpdatedAt", iso_time(updated));
    d += &element("AccessedAt", iso_time(updated));
    d += &counts_xml(active, dead, scheduled);
    d += &element("AutoDeleteOnIdle", FOREVER);
    if let Some(t) = target(host, &p.forward_dead_lettered_messages_to) {
        d += &element("ForwardDeadLetteredMessagesTo", t);
    }
    d += "<EntityAvailabilityStatus>Available</EntityAvailabilityStatus></SubscriptionDescription>";
    entry(base, &format!("{topic}/Subscriptions/{name}"), name, (created, updated), &d)
}

/// A rule's entry.
pub(super) fn rule_entry(base: &str, topic: &str, subscription: &str, rule: &RuleConfig, created: i64) -> String {
    let filter = match &rule.filter {
        RuleFilter::Sql(sql) => sql_xml("Filter", "SqlFilter", sql),
        RuleFilter::True => sql_xml("Filter", "TrueFilter", "1=1"),
        RuleFilter::False => sql_xml("Filter", "FalseFilter", "1=0"),
        RuleFilter::Correlation(c) => correlation_xml(c),
    };
    let action = match &rule.action {
        Some(sql) => sql_xml("Action", "SqlRuleAction", sql),
        None => r#"<Action i:type="EmptyRuleAction"/>"#.to_string(),
    };
    let d = format!(
        r#"<RuleDescription xmlns="{CONNECT}" xmlns:i="{XSI}">{filter}{action}{}{}</RuleDescription>"#,
        element("CreatedAt", iso_time(created)),
        element("Name", &rule.name)
    );
    let path = format!("{topic}/Subscriptions/{subscription}/Rules/{}", rule.name);
    entry(base, &path, &rule.name, (created, created), &d)
}

/// A SQL filter or action: `<{name} i:type="{kind}">` with its expression.
fn sql_xml(name: &str, kind: &str, sql: &str) -> String {
    format!(
        r#"<{name} i:type="{kind}">{}<CompatibilityLevel>20</CompatibilityLevel></{name}>"#,
        element("SqlExpression", sql)
    )
}

fn correlation_xml(c: &CorrelationFilter) -> String {
    let mut x = String::from(r#"<Filter i:type="CorrelationFilter">"#);
    for (name, value) in c.named_fields() {
        if let Some(v) = value {
            x += &element(name, v);
        }
    }
    x += "<Properties>";
    for (key, value) in &c.properties {
        let (kind, text) = match value {
            SimpleValue::String(s) => ("string", s.clone()),
            SimpleValue::Int(n) => ("int", n.to_string()),
            SimpleValue::Long(n) => ("long", n.to_string()),
            SimpleValue::Double(d) => ("double", d.into_inner().to_string()),
            SimpleValue::Bool(b) => ("boolean", b.to_string()),
            other => ("string", format!("{other:?}")),
        };
        x += &format!(
            r#"<KeyValueOfstringanyType>{}<Value i:type="d6p1:{kind}" xmlns:d6p1="{XSD}">{}</Value></KeyValueOfstringanyType>"#,
            element("Key", key),
            escape(&text)
        );
    }
    x + "</Properties></Filter>"
}

/// The namespace's entry (`$namespaceinfo`).
pub(super) fn namespace_entry(base: &str, name: &str, created: i64) -> String {
    let d = format!(
        r#"<NamespaceInfo xmlns="{CONNECT}" xmlns:i="{XSI}">{}<MessagingSKU>Standard</MessagingSKU>{}{}<NamespaceType>Messaging</NamespaceType></NamespaceInfo>"#,
        element("CreatedTime", iso_time(created)),
        element("ModifiedTime", iso_time(created)),
        element("Name", name),
    );
    entry(base, "$namespaceinfo", name, (created, created), &d)
}

fn window(w: Option<Duration>) -> Duration {
    w.unwrap_or(crate::queue::DEFAULT_DUPLICATE_DETECTION_WINDOW)
}

fn max_message_kb(bytes: Option<usize>) -> usize {
    bytes.unwrap_or(crate::DEFAULT_MAX_MESSAGE_SIZE) / 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(description: &str) -> Result<Description, String> {
        parse_entry(
            &format!(r#"<entry xmlns="{ATOM}"><content type="application/xml">{description}</content></entry>"#),
            "r",
        )
    }

    #[test]
    fn durations_and_times_are_written_as_the_service_writes_them() {
        let cases = [(60, "PT1M"), (0, "PT0S"), (90_061, "P1DT1H1M1S"), (86_400, "P1D"), (30, "PT30S")];
        for (secs, text) in cases {
            assert_eq!(iso_duration(Some(Duration::from_secs(secs))), text);
        }
        assert_eq!(iso_duration(Some(Duration::from_millis(1500))), "PT1.5S");
        assert_eq!(iso_duration(None), FOREVER);
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_time(1_795_993_303_123), "2026-11-29T23:01:43.123Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_queue_description_is_read_and_checked_as_config_json_is() {
        let d = put(&format!(
            r#"<QueueDescription xmlns="{CONNECT}"><LockDuration>PT30S</LockDuration><MaxDeliveryCount>3</MaxDeliveryCount>
               <DefaultMessageTimeToLive>{FOREVER}</DefaultMessageTimeToLive><RequiresSession>true</RequiresSession>
               <EnableBatchedOperations>true</EnableBatchedOperations><AutoDeleteOnIdle>{FOREVER}</AutoDeleteOnIdle>
               <ForwardTo>sb://h/other</ForwardTo><Status>Active</Status></QueueDescription>"#
        ))
        .unwrap();
        let Description::Queue(p) = d else { panic!("{d:?}") };
        assert_eq!((p.lock_duration, p.max_delivery_count, p.default_message_ttl), (Duration::from_secs(30), 3, None));
        assert!(p.requires_session);
        assert_eq!(p.forward_to.as_deref(), Some("sb://h/other"));
        let e = put("<QueueDescription><LockDuration>PT6M</LockDuration></QueueDescription>").unwrap_err();
        assert!(e.contains("LockDuration") && e.contains("PT5M"), "{e}");
        let e = put("<QueueDescription><EnablePartitioning>true</EnablePartitioning></QueueDescription>").unwrap_err();
        assert!(e.contains("EnablePartitioning is not supported"), "{e}");
        let e = put("<TopicDescription><LockDuration>PT1M</LockDuration></TopicDescription>").unwrap_err();
        assert!(e.contains("a topic has no LockDuration"), "{e}");
    }

    #[test]
    fn rule_descriptions_of_each_kind_are_read() {
        let sql = put(&format!(
            r#"<RuleDescription xmlns:i="{XSI}"><Filter i:type="SqlFilter"><SqlExpression>color = 'red'</SqlExpression></Filter>
               <Action i:type="SqlRuleAction"><SqlExpression>SET quantity = 1</SqlExpression></Action><Name>red</Name></RuleDescription>"#
        ))
        .unwrap();
        let expected = RuleConfig {
            name: "red".into(),
            filter: RuleFilter::Sql("color = 'red'".into()),
            action: Some("SET quantity = 1".into()),
        };
        assert_eq!(sql, Description::Rule(expected));
        let correlation = put(&format!(
            r#"<RuleDescription xmlns:p4="{XSI}"><Filter p4:type="CorrelationFilter"><Label>l</Label><Properties>
               <KeyValueOfstringanyType><Key>n</Key><Value p4:type="l28:int" xmlns:l28="{XSD}">7</Value></KeyValueOfstringanyType>
               </Properties></Filter><Action p4:type="EmptyRuleAction"/></RuleDescription>"#
        ))
        .unwrap();
        let Description::Rule(rule) = correlation else { panic!() };
        assert_eq!(rule.name, "r", "named by its path");
        let RuleFilter::Correlation(c) = rule.filter else { panic!() };
        assert_eq!((c.label.as_deref(), c.properties), (Some("l"), vec![("n".into(), SimpleValue::Int(7))]));
        assert_eq!(rule.action, None);
    }

    #[test]
    fn what_is_written_reads_back() {
        let rule = RuleConfig {
            name: "c".into(),
            filter: RuleFilter::Correlation(CorrelationFilter {
                to: Some("a<b".into()),
                properties: vec![("k".into(), SimpleValue::Bool(true))],
                ..Default::default()
            }),
            action: Some("SET x = 'y'".into()),
        };
        let written = rule_entry("https://h", "t", "s", &rule, 0);
        assert_eq!(parse_entry(&written, "other").unwrap(), Description::Rule(rule));
    }
}
