//! Loading `Config.json`: Microsoft's samples, the service's limits, and clear errors.

use super::*;
use crate::rules::RuleFilter;
use fe2o3_amqp_types::primitives::SimpleValue;

/// The sample `Config.json` shipped with Microsoft's emulator installer, as documented.
const MICROSOFT_SAMPLE: &str = r#"{
  "UserConfig": {
"Namespaces": [
  {
    "Name": "sbemulatorns",
    "Queues": [
      {
        "Name": "queue.1",
        "Properties": {
          "DeadLetteringOnMessageExpiration": false,
          "DefaultMessageTimeToLive": "PT1H",
          "DuplicateDetectionHistoryTimeWindow": "PT20S",
          "ForwardDeadLetteredMessagesTo": "",
          "ForwardTo": "",
          "LockDuration": "PT1M",
          "MaxDeliveryCount": 3,
          "RequiresDuplicateDetection": false,
          "RequiresSession": false
        }
      }
    ],
    "Topics": [
      {
        "Name": "topic.1",
        "Properties": {
          "DefaultMessageTimeToLive": "PT1H",
          "DuplicateDetectionHistoryTimeWindow": "PT20S",
          "RequiresDuplicateDetection": false
        },
        "Subscriptions": [
          {
            "Name": "subscription.1",
            "Properties": {
              "DeadLetteringOnMessageExpiration": false,
              "DefaultMessageTimeToLive": "PT1H",
              "LockDuration": "PT1M",
              "MaxDeliveryCount": 3,
              "ForwardDeadLetteredMessagesTo": "",
              "ForwardTo": "",
              "RequiresSession": false
            },
            "Rules": [
              {
                "Name": "app-prop-filter-1",
                "Properties": {
                  "FilterType": "Correlation",
                  "CorrelationFilter": { "ContentType": "application/text" }
                }
              }
            ]
          }
        ]
      }
    ]
  }
],
"Logging": { "Type": "File" }
  }
}"#;

#[test]
fn microsofts_sample_loads_unchanged() {
    let c = Config::parse(MICROSOFT_SAMPLE, "Config.json").unwrap();
    assert_eq!(c.namespace, "sbemulatorns");
    assert_eq!(c.queues.len(), 1);
    let q = &c.queues[0].properties;
    assert_eq!(q.lock_duration, Duration::from_secs(60));
    assert_eq!(q.max_delivery_count, 3);
    assert_eq!(q.default_message_ttl, Some(Duration::from_secs(3600)));
    assert_eq!(c.topics[0].subscriptions[0].name, "subscription.1");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let rules = &c.topics[0].rules["subscription.1"];
    assert_eq!(rules[0].name, "app-prop-filter-1");
    let RuleFilter::Correlation(filter) = &rules[0].filter else { panic!("{rules:?}") };
    assert_eq!(filter.content_type.as_deref(), Some("application/text"));
}

#[test]
fn rules_load_with_sql_filters_actions_and_correlation_properties() {
    let text = MICROSOFT_SAMPLE.replace(
        r#""CorrelationFilter": { "ContentType": "application/text" }"#,
        r#""CorrelationFilter": { "Label": "order", "Properties": { "prio": 2, "vip": true, "region": "eu" } }"#,
    );
    let text = text.replace(
        r#"            "Rules": [
              {"#,
        r#"            "Rules": [
              { "Name": "sql-1", "Properties": { "FilterType": "Sql",
                "SqlFilter": { "SqlExpression": "sys.Label = 'x' AND n > 1" },
                "Action": { "SqlExpression": "SET n = n + 1" } } },
              {"#,
    );
    let c = Config::parse(&text, "Config.json").unwrap();
    let rules = &c.topics[0].rules["subscription.1"];
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].filter, RuleFilter::Sql("sys.Label = 'x' AND n > 1".into()));
    assert_eq!(rules[0].action.as_deref(), Some("SET n = n + 1"));
    let RuleFilter::Correlation(filter) = &rules[1].filter else { panic!("{rules:?}") };
    assert_eq!(filter.label.as_deref(), Some("order"));
    assert!(filter.properties.contains(&("prio".into(), SimpleValue::Long(2))));
    assert!(filter.properties.contains(&("vip".into(), SimpleValue::Bool(true))));
}

#[test]
fn a_rule_that_does_not_parse_stops_the_load_and_says_which_and_where() {
    let text = MICROSOFT_SAMPLE.replace(
        r#""FilterType": "Correlation",
                  "CorrelationFilter": { "ContentType": "application/text" }"#,
        r#""FilterType": "Sql", "SqlFilter": { "SqlExpression": "color = " }"#,
    );
    let e = Config::parse(&text, "Config.json").unwrap_err().to_string();
    assert!(
        e.starts_with("Config.json: subscription \"subscription.1\" of topic \"topic.1\", rule \"app-prop-filter-1\""),
        "{e}"
    );
    assert!(e.contains("does not parse, at position 9: expected a value"), "{e}");
    let unknown_type = MICROSOFT_SAMPLE.replace(r#""FilterType": "Correlation""#, r#""FilterType": "Regex""#);
    let e = Config::parse(&unknown_type, "Config.json").unwrap_err().to_string();
    assert!(e.contains("FilterType \"Regex\" is not Sql, Correlation, True or False"), "{e}");
}

#[test]
fn a_bad_value_names_file_line_and_key() {
    let text = MICROSOFT_SAMPLE.replace("\"LockDuration\": \"PT1M\"", "\"LockDuration\": \"one minute\"");
    let e = Config::parse(&text, "cfg/Config.json").unwrap_err().to_string();
    assert!(e.starts_with("cfg/Config.json:15:"), "{e}");
    assert!(e.contains("UserConfig.Namespaces[0].Queues[0].Properties.LockDuration"), "{e}");
    assert!(e.contains("\"PT30S\""), "{e}");
}

#[test]
fn a_missing_required_key_is_named() {
    let e = Config::parse(r#"{"UserConfig": {"Namespaces": [{"Queues": []}]}}"#, "c.json").unwrap_err().to_string();
    assert!(e.contains("Name"), "{e}");
    assert!(e.contains("UserConfig.Namespaces[0]"), "{e}");
}

#[test]
fn bad_json_names_the_position() {
    let e = Config::parse("{\n  \"UserConfig\": [\n", "c.json").unwrap_err().to_string();
    assert!(e.starts_with("c.json:2:"), "{e}");
}

#[test]
fn duplicate_names_are_rejected() {
    let text = r#"{"UserConfig":{"Namespaces":[{"Name":"n","Queues":[{"Name":"a"},{"Name":"A"}]}]}}"#;
    let e = Config::parse(text, "c.json").unwrap_err().to_string();
    assert!(e.contains("used twice"), "{e}");
}

#[test]
fn unknown_keys_warn_but_load() {
    let text = r#"{"UserConfig":{"Namespaces":[{"Name":"n","Queues":[
        {"Name":"a","Properties":{"RequiresSession":true,"Colour":"red"}}]}]}}"#;
    let c = Config::parse(text, "c.json").unwrap();
    assert_eq!(c.warnings, ["queue \"a\": unknown key \"Colour\" is ignored"]);
    assert!(c.queues[0].properties.requires_session);
}

/// A namespace of `queues` (JSON objects) and `topics`.
fn namespace(queues: &str, topics: &str) -> Result<Config, ConfigError> {
    let text = format!(r#"{{"UserConfig":{{"Namespaces":[{{"Name":"n","Queues":[{queues}],"Topics":[{topics}]}}]}}}}"#);
    Config::parse(&text, "c.json")
}

#[test]
fn duplicate_detection_and_forwarding_load_as_the_service_has_them() {
    let c = namespace(
        r#"{"Name":"In","Properties":{"RequiresDuplicateDetection":true,"ForwardTo":"EVENTS"}},
           {"Name":"plain","Properties":{"DuplicateDetectionHistoryTimeWindow":"PT30S","ForwardDeadLetteredMessagesTo":"sb://ns/in"}}"#,
        r#"{"Name":"events","Properties":{"RequiresDuplicateDetection":true,"DuplicateDetectionHistoryTimeWindow":"PT1M",
             "DefaultMessageTimeToLive":"PT10M"},
           "Subscriptions":[{"Name":"s","Properties":{"ForwardTo":"plain","DefaultMessageTimeToLive":"PT1H"}},
                            {"Name":"t","Properties":{"DefaultMessageTimeToLive":"PT1M"}}]}"#,
    )
    .unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let (q, plain) = (&c.queues[0].properties, &c.queues[1].properties);
    assert_eq!(q.duplicate_detection_window, Some(crate::DEFAULT_DUPLICATE_DETECTION_WINDOW));
    assert_eq!(q.forward_to.as_deref(), Some("events"), "spelled as the target is named");
    assert_eq!(plain.duplicate_detection_window, None, "a window alone does not turn detection on");
    assert_eq!(plain.forward_dead_lettered_messages_to.as_deref(), Some("In"), "a full address names its entity");
    let topic = &c.topics[0];
    assert_eq!(topic.properties.duplicate_detection_window, Some(Duration::from_secs(60)));
    let subs = &topic.subscriptions;
    assert_eq!(subs[0].properties.forward_to.as_deref(), Some("plain"));
    assert_eq!(subs[0].properties.default_message_ttl, Some(Duration::from_secs(600)), "the topic's is shorter");
    assert_eq!(subs[1].properties.default_message_ttl, Some(Duration::from_secs(60)));
    let c = namespace(r#"{"Name":"big","Properties":{"MaxMessageSizeInKilobytes":102400}}"#, "").unwrap();
    assert_eq!(c.queues[0].properties.max_message_size, Some(100 << 20));
}

#[test]
fn forwarding_to_nothing_or_to_itself_and_misplaced_properties_are_refused() {
    let refused = |queues: &str, topics: &str| namespace(queues, topics).unwrap_err().to_string();
    let e = refused(r#"{"Name":"a","Properties":{"ForwardTo":"b"}}"#, "");
    assert!(e.contains(r#"queue "a": ForwardTo "b" names no queue or topic"#), "{e}");
    let e = refused(
        r#"{"Name":"q"}"#,
        r#"{"Name":"t","Subscriptions":[{"Name":"s","Properties":{"ForwardDeadLetteredMessagesTo":"t/Subscriptions/s"}}]}"#,
    );
    assert!(e.contains(r#"subscription "s" of topic "t": ForwardDeadLetteredMessagesTo"#), "{e}");
    let e = refused(r#"{"Name":"a","Properties":{"ForwardTo":"A"}}"#, "");
    assert!(e.contains("cannot forward to itself"), "{e}");
    let e = refused("", r#"{"Name":"t","Properties":{"LockDuration":"PT1M"},"Subscriptions":[]}"#);
    assert!(e.contains(r#"topic "t": a topic has no LockDuration; set it on the topic's subscriptions"#), "{e}");
    let e =
        refused("", r#"{"Name":"t","Subscriptions":[{"Name":"s","Properties":{"RequiresDuplicateDetection":true}}]}"#);
    assert!(e.contains("a subscription has no RequiresDuplicateDetection; set it on the subscription's topic"), "{e}");
    let e = refused(r#"{"Name":"a","Properties":{"MaxMessageSizeInKilobytes":102401}}"#, "");
    assert!(e.contains("MaxMessageSizeInKilobytes must be from 1 to 102400"), "{e}");
    let e = refused(r#"{"Name":"a","Properties":{"DuplicateDetectionHistoryTimeWindow":"PT1S"}}"#, "");
    assert!(e.contains("DuplicateDetectionHistoryTimeWindow is from PT5S to P7D"), "{e}");
    // A queue forwarding to a queue that forwards back loads: the hop limit ends the loop.
    let c = namespace(r#"{"Name":"a","Properties":{"ForwardTo":"b"}},{"Name":"b","Properties":{"ForwardTo":"a"}}"#, "");
    assert!(c.is_ok());
}

#[test]
fn limits_the_service_enforces_are_enforced_with_the_key_named() {
    let with = |props: &str| {
        Config::parse(
            &format!(
                r#"{{"UserConfig":{{"Namespaces":[{{"Name":"n","Queues":[{{"Name":"a","Properties":{{{props}}}}}]}}]}}}}"#
            ),
            "c.json",
        )
    };
    // Finding 9: a lock this long overflowed the lock arithmetic and stuck the message.
    let e = with(r#""LockDuration":"P106751991167301D""#).unwrap_err().to_string();
    assert!(e.contains("Properties.LockDuration") && e.contains("longest the service allows"), "{e}");
    let e = with(r#""LockDuration":"PT6M""#).unwrap_err().to_string();
    assert!(e.contains("at most PT5M"), "{e}");
    assert_eq!(with(r#""LockDuration":"PT5M""#).unwrap().queues[0].properties.lock_duration, MAX_LOCK_DURATION);
    let e = with(r#""DefaultMessageTimeToLive":"P99999999999999999999999D""#).unwrap_err().to_string();
    assert!(e.contains("Properties.DefaultMessageTimeToLive"), "{e}");
    // Finding 7: MaxSizeInMegabytes was an unknown key.
    let c = with(r#""MaxSizeInMegabytes":100"#).unwrap();
    assert_eq!((c.queues[0].properties.max_size_megabytes, c.warnings.len()), (100, 0));
    for bad in ["0", "-1", "81921"] {
        let e = with(&format!(r#""MaxSizeInMegabytes":{bad}"#)).unwrap_err().to_string();
        assert!(e.contains("MaxSizeInMegabytes must be from 1 to 81920"), "{e}");
    }
    assert_eq!(with("").unwrap().queues[0].properties.max_size_megabytes, crate::DEFAULT_MAX_SIZE_MEGABYTES);
}

#[test]
fn shared_access_policies_give_keys_with_rights() {
    let text = r#"{"UserConfig":{"Namespaces":[{"Name":"n","Queues":[{"Name":"q"}],"SharedAccessPolicies":[
        {"Name":"sender","Key":"s-key","Rights":["Send"]},
        {"Name":"admin","Key":"a-key","Rights":["Manage"]}]}]}}"#;
    let keys = Config::parse(text, "c.json").unwrap().keys.unwrap();
    assert_eq!(format!("{keys:?}"), "[(\"sender\", Rights(Send)), (\"admin\", Rights(Manage))]");
    assert!(!format!("{keys:?}").contains("s-key"));
    let bad = text.replace("[\"Send\"]", "[\"Read\"]");
    let e = Config::parse(&bad, "c.json").unwrap_err().to_string();
    assert!(e.contains("SharedAccessPolicies[0].Rights") && e.contains("Manage, Send or Listen"), "{e}");
    assert_eq!(Config::parse(&text.replace("SharedAccessPolicies", "X"), "c.json").unwrap().keys, None);
}

#[test]
fn a_topics_size_limit_applies_to_each_subscription() {
    let text = r#"{"UserConfig":{"Namespaces":[{"Name":"n","Topics":[{"Name":"t",
        "Properties":{"MaxSizeInMegabytes":5},"Subscriptions":[{"Name":"s"}]}]}]}}"#;
    let c = Config::parse(text, "c.json").unwrap();
    assert_eq!(c.topics[0].subscriptions[0].properties.max_size_megabytes, 5);
}

#[test]
fn iso_durations() {
    assert_eq!(parse_iso_duration("PT5S").unwrap(), Duration::from_secs(5));
    assert_eq!(parse_iso_duration("PT1H30M").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_iso_duration("P1DT1S").unwrap(), Duration::from_secs(86401));
    assert_eq!(parse_iso_duration("PT0.5S").unwrap(), Duration::from_millis(500));
    for bad in ["", "P", "PT", "5S", "PT5X", "PTS", "PT1S2"] {
        assert!(parse_iso_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_default_config_has_the_demo_queues() {
    let names: Vec<_> = Config::default().queues.into_iter().map(|q| q.name).collect();
    assert_eq!(names, ["orders", "payments", "review"]);
}

#[test]
fn settings_written_back_read_back_equal() {
    use std::time::Duration;
    let queue = QueueProperties {
        lock_duration: Duration::from_millis(45_500),
        max_delivery_count: 3,
        default_message_ttl: Some(Duration::from_secs(2 * 86_400 + 3_661)),
        dead_lettering_on_message_expiration: true,
        max_size_megabytes: 2048,
        requires_session: true,
        duplicate_detection_window: Some(Duration::from_secs(90)),
        max_message_size: Some(512 * 1024),
        forward_to: Some("elsewhere".into()),
        forward_dead_lettered_messages_to: Some("parked".into()),
    };
    for p in [queue.clone(), QueueProperties::default()] {
        assert_eq!(entity_properties(Kind::Queue, "q", properties_json(&p, Kind::Queue)).unwrap(), p);
    }
    // A subscription has no size, message size or duplicate detection of its own.
    let subscription =
        QueueProperties { duplicate_detection_window: None, max_message_size: None, max_size_megabytes: 1024, ..queue };
    let json = properties_json(&subscription, Kind::Subscription);
    assert_eq!(entity_properties(Kind::Subscription, "s", json).unwrap(), subscription);
    let topic = TopicProperties {
        duplicate_detection_window: Some(Duration::from_secs(30)),
        default_message_ttl: Some(Duration::from_secs(600)),
        max_size_megabytes: 5120,
        max_message_size: Some(2048 * 1024),
    };
    for t in [topic, TopicProperties::default()] {
        assert_eq!(topic_properties("t", topic_properties_json(&t)).unwrap(), t);
    }
}

#[test]
fn rules_written_back_read_back_equal_with_their_value_types() {
    use crate::rules::CorrelationFilter;
    use fe2o3_amqp_types::primitives::{Timestamp, Uuid};
    let typed = vec![
        ("text".to_string(), SimpleValue::String("a".into())),
        ("flag".into(), SimpleValue::Bool(true)),
        ("long".into(), SimpleValue::Long(-7)),
        ("double".into(), SimpleValue::Double(2.5.into())),
        ("whole-double".into(), SimpleValue::Double(3.0.into())),
        ("int".into(), SimpleValue::Int(5)),
        ("ubyte".into(), SimpleValue::Ubyte(200)),
        ("when".into(), SimpleValue::Timestamp(Timestamp::from_milliseconds(1_700_000_000_123))),
        ("id".into(), SimpleValue::Uuid(Uuid::from([7; 16]))),
        ("nothing".into(), SimpleValue::Null),
    ];
    let rules = [
        RuleConfig { name: "$Default".into(), filter: RuleFilter::True, action: None },
        RuleConfig { name: "none".into(), filter: RuleFilter::False, action: None },
        RuleConfig {
            name: "sql".into(),
            filter: RuleFilter::Sql("priority = 'high' AND n > 3".into()),
            action: Some("SET routed = 1".into()),
        },
        RuleConfig {
            name: "correlation".into(),
            filter: RuleFilter::Correlation(CorrelationFilter {
                correlation_id: Some("c".into()),
                label: Some("l".into()),
                session_id: Some("s".into()),
                properties: typed,
                ..Default::default()
            }),
            action: None,
        },
    ];
    // Correlation properties come back in name order, as Config.json's always are.
    let sorted = |mut r: RuleConfig| {
        if let RuleFilter::Correlation(c) = &mut r.filter {
            c.properties.sort_by(|a, b| a.0.cmp(&b.0));
        }
        r
    };
    for r in rules {
        let json = rule_json(&r);
        assert_eq!(rule("subscription s", json.clone()).unwrap(), sorted(r), "{json}");
    }
    let bad = serde_json::json!({"Name": "x", "Properties": {"FilterType": "Correlation",
        "CorrelationFilter": {"Properties": {"k": {"Amqp": "not base64!"}}}}});
    let err = rule("subscription s", bad).unwrap_err();
    assert!(err.contains("CorrelationFilter.Properties.k"), "{err}");
}
