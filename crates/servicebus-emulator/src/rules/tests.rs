use fe2o3_amqp_types::messaging::message::__private::Serializable;
use fe2o3_amqp_types::messaging::{AmqpValue, Message};
use serde_amqp::Value;

use super::*;

fn message(label: &str, color: &str, quantity: i32) -> StoredMessage {
    let m = Message::builder()
        .properties(Properties { subject: Some(label.into()), ..Properties::default() })
        .application_properties(
            ApplicationProperties::builder().insert("color", color).insert("quantity", quantity).build(),
        )
        .body(AmqpValue(Value::String("body".into())))
        .build();
    StoredMessage::parse(&Bytes::from(serde_amqp::to_vec(&Serializable(m)).unwrap())).unwrap()
}

fn rule(name: &str, filter: RuleFilter, action: Option<&str>) -> Rule {
    Rule::compile(RuleConfig { name: name.into(), filter, action: action.map(str::to_string) }).unwrap()
}

fn sql(text: &str) -> RuleFilter {
    RuleFilter::Sql(text.into())
}

#[test]
fn without_rules_a_subscription_takes_everything_through_default() {
    let set = RuleSet::new(Vec::new());
    assert_eq!(set.list()[0].name, DEFAULT_RULE);
    assert_eq!(set.route(&message("a", "blue", 1), &MessageView::default()).len(), 1);
}

#[test]
fn rules_without_actions_give_one_copy_and_each_rule_with_an_action_one_more() {
    // As Microsoft's example: five rules match, two with actions: three copies.
    let set = RuleSet::new(vec![
        rule("a", sql("color = 'blue'"), None),
        rule("b", sql("quantity > 5"), None),
        rule("c", RuleFilter::True, None),
        rule("d", sql("1=1"), Some("SET quantity = quantity * 2")),
        rule(
            "e",
            RuleFilter::Correlation(CorrelationFilter { label: Some("big".into()), ..Default::default() }),
            Some("REMOVE color; SET sys.Label = 'tagged'"),
        ),
        rule("f", sql("color = 'red'"), Some("SET never = 1")),
    ]);
    let copies = set.route(&message("big", "blue", 10), &MessageView::default());
    assert_eq!(copies.len(), 3);
    let props: Vec<Props> = copies.iter().map(props_of).collect();
    assert_eq!(props[0].user("quantity"), Some(&SimpleValue::Int(10)), "the plain copy is the message as sent");
    assert_eq!(props[0].user(RULE_NAME_PROPERTY), None);
    assert_eq!(props[1].user("quantity"), Some(&SimpleValue::Long(20)));
    assert_eq!(props[1].user(RULE_NAME_PROPERTY), Some(&SimpleValue::String("d".into())));
    assert_eq!(props[2].user("color"), None);
    assert_eq!(props[2].label.as_deref(), Some("tagged"));
    assert_eq!(props[2].user(RULE_NAME_PROPERTY), Some(&SimpleValue::String("e".into())));
    assert_eq!(copies[2].message_id, copies[0].message_id, "the message-id is kept");
    // Only the true filter and rule d match: the plain copy and d's.
    let copies = set.route(&message("small", "green", 1), &MessageView::default());
    let names: Vec<_> = copies.iter().map(|c| props_of(c).user(RULE_NAME_PROPERTY).cloned()).collect();
    assert_eq!(names, [None, Some(SimpleValue::String("d".into()))]);
}

#[test]
fn no_matching_rule_means_no_copy() {
    let set = RuleSet::new(vec![rule("only-red", sql("color = 'red'"), None), rule("none", RuleFilter::False, None)]);
    assert!(set.route(&message("x", "blue", 1), &MessageView::default()).is_empty());
    assert_eq!(set.route(&message("x", "red", 1), &MessageView::default()).len(), 1);
}

#[test]
fn correlation_filters_match_every_field_given() {
    let filter = CorrelationFilter {
        label: Some("order".into()),
        properties: vec![
            ("quantity".into(), SimpleValue::Long(3)),
            ("color".into(), SimpleValue::String("blue".into())),
        ],
        ..Default::default()
    };
    let set = RuleSet::new(vec![rule("c", RuleFilter::Correlation(filter), None)]);
    assert_eq!(set.route(&message("order", "blue", 3), &MessageView::default()).len(), 1, "an int 3 equals a long 3");
    assert!(set.route(&message("order", "blue", 4), &MessageView::default()).is_empty());
    assert!(set.route(&message("Order", "blue", 3), &MessageView::default()).is_empty(), "exact match");
}

#[test]
fn rules_are_added_once_by_name_and_removed() {
    let set = RuleSet::new(Vec::new());
    set.add(rule("red", sql("color = 'red'"), None)).unwrap();
    assert_eq!(set.add(rule("RED", sql("1=1"), None)), Err(AddRuleError::Exists("RED".into())));
    assert!(set.remove(DEFAULT_RULE));
    assert!(!set.remove(DEFAULT_RULE));
    assert_eq!(set.list().iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["red"]);
    assert!(set.route(&message("x", "blue", 1), &MessageView::default()).is_empty());
}

#[test]
fn invalid_rules_are_refused_with_the_reason() {
    let err = |config: RuleConfig| Rule::compile(config).unwrap_err().to_string();
    let named = |name: &str| RuleConfig { name: name.into(), filter: RuleFilter::True, action: None };
    assert!(err(named("")).contains("invalid"));
    assert!(err(named(&"x".repeat(51))).contains("invalid"));
    assert!(err(named("a/b")).contains("invalid"));
    let bad = RuleConfig { name: "r".into(), filter: sql("color = "), action: None };
    assert!(err(bad).starts_with("the filter of rule \"r\" does not parse, at position 9: expected a value"));
    let bad = RuleConfig { name: "r".into(), filter: RuleFilter::True, action: Some("SET = 1".into()) };
    assert!(err(bad).starts_with("the action of rule \"r\" does not parse, at position 5"));
    let bad =
        RuleConfig { name: "r".into(), filter: RuleFilter::Correlation(CorrelationFilter::default()), action: None };
    assert!(err(bad).contains("sets no field"));
}
