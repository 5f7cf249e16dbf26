//! Evaluation. A user property the message does not have is *unknown*: arithmetic and
//! comparisons with an unknown operand are unknown, `NOT` of unknown is unknown, `AND` is false
//! if either side is false and `OR` true if either side is true, and a filter matches only
//! when its predicate is true. Values compare within their kind (numbers with numbers, the
//! integer promoted to a double when the other is one; strings with strings, ordinally;
//! booleans for equality); across kinds a comparison is unknown.

use std::cmp::Ordering;

use fe2o3_amqp_types::primitives::SimpleValue;

use super::{Arith, Cmp, Expr, Predicate, Property, Statement, SysProp};

/// A value in an expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(String),
    /// A value of another AMQP type (timestamp, uuid, binary, …): it exists, compares with nothing.
    Other(SimpleValue),
}

impl Val {
    /// An application property's value.
    pub(crate) fn of(v: &SimpleValue) -> Self {
        match v {
            SimpleValue::Null => Val::Null,
            SimpleValue::Bool(b) => Val::Bool(*b),
            SimpleValue::Byte(n) => Val::Long((*n).into()),
            SimpleValue::Short(n) => Val::Long((*n).into()),
            SimpleValue::Int(n) => Val::Long((*n).into()),
            SimpleValue::Long(n) => Val::Long(*n),
            SimpleValue::Ubyte(n) => Val::Long((*n).into()),
            SimpleValue::Ushort(n) => Val::Long((*n).into()),
            SimpleValue::Uint(n) => Val::Long((*n).into()),
            SimpleValue::Ulong(n) => i64::try_from(*n).map_or(Val::Double(*n as f64), Val::Long),
            SimpleValue::Float(f) => Val::Double(f.into_inner().into()),
            SimpleValue::Double(f) => Val::Double(f.into_inner()),
            SimpleValue::String(s) => Val::Str(s.clone()),
            SimpleValue::Symbol(s) => Val::Str(s.to_string()),
            SimpleValue::Char(c) => Val::Str(c.to_string()),
            other => Val::Other(other.clone()),
        }
    }

    /// As an application property's value.
    pub(crate) fn into_simple(self) -> SimpleValue {
        match self {
            Val::Null => SimpleValue::Null,
            Val::Bool(b) => SimpleValue::Bool(b),
            Val::Long(n) => SimpleValue::Long(n),
            Val::Double(f) => SimpleValue::Double(f.into()),
            Val::Str(s) => SimpleValue::String(s),
            Val::Other(v) => v,
        }
    }

    /// As the text a string system property takes.
    fn into_text(self) -> Option<String> {
        match self {
            Val::Null => None,
            Val::Bool(b) => Some(b.to_string()),
            Val::Long(n) => Some(n.to_string()),
            Val::Double(f) => Some(f.to_string()),
            Val::Str(s) => Some(s),
            Val::Other(v) => Some(format!("{v:?}")),
        }
    }
}

/// The properties a rule sees and changes: the system properties it may name, and the
/// application properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Props {
    pub(crate) message_id: Option<String>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) reply_to: Option<String>,
    pub(crate) label: Option<String>,
    pub(crate) session_id: Option<String>,
    pub(crate) reply_to_session_id: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) size: i64,
    pub(crate) user: Vec<(String, SimpleValue)>,
}

impl Props {
    /// The field of a string system property, to set.
    fn sys_text(&mut self, p: SysProp) -> Option<&mut Option<String>> {
        Some(match p {
            SysProp::MessageId => &mut self.message_id,
            SysProp::CorrelationId => &mut self.correlation_id,
            SysProp::To => &mut self.to,
            SysProp::ReplyTo => &mut self.reply_to,
            SysProp::Label => &mut self.label,
            SysProp::SessionId => &mut self.session_id,
            SysProp::ReplyToSessionId => &mut self.reply_to_session_id,
            SysProp::ContentType => &mut self.content_type,
            SysProp::Size => return None,
        })
    }

    /// A property's value: `None` when the message does not have it (unknown).
    fn get(&self, p: &Property) -> Option<Val> {
        match p {
            Property::Sys(SysProp::Size) => Some(Val::Long(self.size)),
            Property::Sys(s) => {
                let text = match s {
                    SysProp::MessageId => &self.message_id,
                    SysProp::CorrelationId => &self.correlation_id,
                    SysProp::To => &self.to,
                    SysProp::ReplyTo => &self.reply_to,
                    SysProp::Label => &self.label,
                    SysProp::SessionId => &self.session_id,
                    SysProp::ReplyToSessionId => &self.reply_to_session_id,
                    SysProp::ContentType => &self.content_type,
                    SysProp::Size => unreachable!("matched above"),
                };
                Some(text.clone().map_or(Val::Null, Val::Str))
            }
            Property::User(name) => self.user.iter().find(|(k, _)| k == name).map(|(_, v)| Val::of(v)),
        }
    }

    pub(crate) fn user(&self, name: &str) -> Option<&SimpleValue> {
        self.user.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub(crate) fn set_user(&mut self, name: &str, value: SimpleValue) {
        match self.user.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value,
            None => self.user.push((name.to_string(), value)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    True,
    False,
    Unknown,
}

impl From<bool> for Truth {
    fn from(b: bool) -> Self {
        if b { Truth::True } else { Truth::False }
    }
}

/// Whether `predicate` is true of `props`.
pub(crate) fn matches(predicate: &Predicate, props: &Props) -> bool {
    truth(predicate, props) == Truth::True
}

/// Applies an action's statements to `props`, in order.
pub(crate) fn apply(statements: &[Statement], props: &mut Props) {
    for statement in statements {
        match statement {
            Statement::Set(Property::User(name), expr) => match value(expr, props) {
                Some(v) => props.set_user(name, v.into_simple()),
                // Set to an unknown value: the property is gone.
                None => props.user.retain(|(k, _)| k != name),
            },
            Statement::Set(Property::Sys(p), expr) => {
                let v = value(expr, props).and_then(Val::into_text);
                if let Some(slot) = props.sys_text(*p) {
                    *slot = v;
                }
            }
            Statement::Remove(Property::User(name)) => props.user.retain(|(k, _)| k != name),
            Statement::Remove(Property::Sys(_)) => {} // Refused when the action was parsed.
        }
    }
}

fn truth(p: &Predicate, props: &Props) -> Truth {
    match p {
        Predicate::Not(inner) => match truth(inner, props) {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        },
        Predicate::And(a, b) => match (truth(a, props), truth(b, props)) {
            (Truth::False, _) | (_, Truth::False) => Truth::False,
            (Truth::True, Truth::True) => Truth::True,
            _ => Truth::Unknown,
        },
        Predicate::Or(a, b) => match (truth(a, props), truth(b, props)) {
            (Truth::True, _) | (_, Truth::True) => Truth::True,
            (Truth::False, Truth::False) => Truth::False,
            _ => Truth::Unknown,
        },
        Predicate::Compare(op, a, b) => match (value(a, props), value(b, props)) {
            (Some(a), Some(b)) => compare(*op, &a, &b),
            _ => Truth::Unknown,
        },
        Predicate::IsNull { property, negated } => {
            let null = matches!(props.get(property), None | Some(Val::Null));
            (null != *negated).into()
        }
        Predicate::Exists(property) => match property {
            Property::User(name) => props.user(name).is_some().into(),
            Property::Sys(_) => (!matches!(props.get(property), Some(Val::Null))).into(),
        },
        Predicate::In { expr, list, negated } => {
            let Some(v) = value(expr, props) else { return Truth::Unknown };
            let mut found = Truth::False;
            for item in list {
                match value(item, props).map(|item| compare(Cmp::Eq, &v, &item)) {
                    Some(Truth::True) => {
                        found = Truth::True;
                        break;
                    }
                    Some(Truth::False) => {}
                    _ => found = Truth::Unknown,
                }
            }
            negate_if(found, *negated)
        }
        Predicate::Like { expr, pattern, escape, negated } => {
            let (Some(Val::Str(text)), Some(Val::Str(pattern))) = (value(expr, props), value(pattern, props)) else {
                return Truth::Unknown;
            };
            let escape = match escape.as_ref().map(|e| value(e, props)) {
                None => None,
                Some(Some(Val::Str(e))) if e.chars().count() == 1 => e.chars().next(),
                Some(_) => return Truth::Unknown, // Not one character.
            };
            negate_if(like(&text, &pattern, escape).into(), *negated)
        }
    }
}

fn negate_if(t: Truth, negated: bool) -> Truth {
    match (t, negated) {
        (Truth::Unknown, _) => Truth::Unknown,
        (t, false) => t,
        (Truth::True, true) => Truth::False,
        (Truth::False, true) => Truth::True,
    }
}

fn compare(op: Cmp, a: &Val, b: &Val) -> Truth {
    let ordering = match (a, b) {
        (Val::Long(x), Val::Long(y)) => Some(x.cmp(y)),
        (Val::Long(x), Val::Double(y)) => (*x as f64).partial_cmp(y),
        (Val::Double(x), Val::Long(y)) => x.partial_cmp(&(*y as f64)),
        (Val::Double(x), Val::Double(y)) => x.partial_cmp(y),
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) if matches!(op, Cmp::Eq | Cmp::Ne) => Some(x.cmp(y)),
        _ => None,
    };
    let Some(ordering) = ordering else { return Truth::Unknown };
    match op {
        Cmp::Eq => ordering == Ordering::Equal,
        Cmp::Ne => ordering != Ordering::Equal,
        Cmp::Gt => ordering == Ordering::Greater,
        Cmp::Ge => ordering != Ordering::Less,
        Cmp::Lt => ordering == Ordering::Less,
        Cmp::Le => ordering != Ordering::Greater,
    }
    .into()
}

/// An expression's value; `None` is unknown.
fn value(e: &Expr, props: &Props) -> Option<Val> {
    match e {
        Expr::Const(v) => Some(v.clone()),
        Expr::Prop(p) => props.get(p),
        Expr::NewId => Some(Val::Str(uuid::Uuid::new_v4().hyphenated().to_string())),
        Expr::PropertyOf(name) => match value(name, props)? {
            Val::Str(name) => props.get(&Property::User(name)),
            _ => None,
        },
        Expr::Neg(inner) => match value(inner, props)? {
            Val::Long(n) => n.checked_neg().map(Val::Long),
            Val::Double(f) => Some(Val::Double(-f)),
            _ => None,
        },
        Expr::Arith(op, a, b) => arith(*op, value(a, props)?, value(b, props)?),
    }
}

fn arith(op: Arith, a: Val, b: Val) -> Option<Val> {
    match (a, b) {
        (Val::Long(x), Val::Long(y)) => match op {
            Arith::Add => x.checked_add(y),
            Arith::Sub => x.checked_sub(y),
            Arith::Mul => x.checked_mul(y),
            Arith::Div => x.checked_div(y),
            Arith::Rem => x.checked_rem(y),
        }
        .map(Val::Long),
        (Val::Str(x), Val::Str(y)) if op == Arith::Add => Some(Val::Str(x + &y)),
        (a, b) => {
            let (x, y) = (number(&a)?, number(&b)?);
            let r = match op {
                Arith::Add => x + y,
                Arith::Sub => x - y,
                Arith::Mul => x * y,
                Arith::Div => x / y,
                Arith::Rem => x % y,
            };
            r.is_finite().then_some(Val::Double(r))
        }
    }
}

fn number(v: &Val) -> Option<f64> {
    match v {
        Val::Long(n) => Some(*n as f64),
        Val::Double(f) => Some(*f),
        _ => None,
    }
}

/// SQL `LIKE`: `%` any run of characters, `_` one character, `escape` makes the next
/// character literal. Iterative, with backtracking to the last `%` only: linear in practice,
/// never worse than text × pattern.
fn like(text: &str, pattern: &str, escape: Option<char>) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum P {
        Any,
        One,
        Lit(char),
    }
    let mut parts = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        parts.push(match c {
            c if Some(c) == escape => match chars.next() {
                Some(next) => P::Lit(next),
                None => P::Lit(c),
            },
            '%' => P::Any,
            '_' => P::One,
            c => P::Lit(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match parts.get(p) {
            Some(P::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(P::One) => {
                t += 1;
                p += 1;
            }
            Some(P::Lit(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    parts[p..].iter().all(|x| *x == P::Any)
}

#[cfg(test)]
mod tests {
    use super::super::parse_filter;
    use super::*;

    fn props() -> Props {
        Props {
            label: Some("Important".into()),
            to: Some("Store5".into()),
            correlation_id: Some("abc123".into()),
            size: 100,
            user: vec![
                ("color".into(), SimpleValue::String("blue".into())),
                ("quantity".into(), SimpleValue::Int(10)),
                ("price".into(), SimpleValue::Double(2.5.into())),
                ("flag".into(), SimpleValue::Bool(true)),
                ("nothing".into(), SimpleValue::Null),
                ("MessageNumber".into(), SimpleValue::Long(4)),
            ],
            ..Props::default()
        }
    }

    fn eval(text: &str) -> bool {
        matches(&parse_filter(text).unwrap_or_else(|e| panic!("{text}: {e}")), &props())
    }

    #[test]
    fn comparisons_and_arithmetic() {
        for yes in [
            "color = 'blue' AND quantity = 10",
            "sys.Label = 'Important' OR priority > 3",
            "MessageNumber % 2 = 0",
            "quantity * price = 25",
            "quantity / 3 = 3",
            "quantity / 4.0 = 2.5",
            "-quantity < 0",
            "price > 2 AND price <= 2.5",
            "flag = TRUE",
            "color <> 'red'",
            "color != 'red'",
            "sys.Size = 100",
            "'a' + 'b' = 'ab'",
            "property('col' + 'or') = 'blue'",
            "1=1",
        ] {
            assert!(eval(yes), "{yes}");
        }
        for no in ["1=0", "color = 'Blue'", "quantity > 10", "flag > FALSE", "quantity = '10'", "quantity / 0 = 1"] {
            assert!(!eval(no), "{no}");
        }
    }

    #[test]
    fn a_missing_property_is_unknown() {
        // Unknown is not true, and NOT unknown is not true either.
        assert!(!eval("missing = 1"));
        assert!(!eval("NOT missing = 1"));
        assert!(!eval("missing + 1 > 0"));
        assert!(eval("missing = 1 OR color = 'blue'"), "true OR unknown is true");
        assert!(!eval("missing = 1 AND color = 'blue'"), "unknown AND true is unknown");
        assert!(eval("NOT (missing = 1 AND color = 'red')"), "unknown AND false is false");
        assert!(!eval("missing IN (1, 2)"));
        assert!(!eval("missing NOT IN (1, 2)"));
        assert!(!eval("quantity IN (1, missing)"), "no match and an unknown item is unknown");
        assert!(eval("quantity IN (missing, 10)"));
        assert!(!eval("missing LIKE 'a%'"));
        assert!(!eval("missing NOT LIKE 'a%'"));
    }

    #[test]
    fn null_and_existence() {
        assert!(eval("missing IS NULL"));
        assert!(eval("nothing IS NULL"));
        assert!(eval("color IS NOT NULL"));
        assert!(eval("sys.ReplyTo IS NULL"));
        assert!(eval("sys.To IS NOT NULL"));
        assert!(eval("EXISTS(nothing)"), "a property set to null exists");
        assert!(!eval("EXISTS(missing)"));
        assert!(eval("EXISTS(user.color) AND NOT EXISTS(sys.ReplyTo)"));
    }

    #[test]
    fn in_and_like() {
        assert!(eval("sys.To IN ('Store1', 'Store5')"));
        assert!(eval("sys.To NOT IN ('Store1', 'Store2')"));
        assert!(eval("sys.CorrelationId LIKE 'abc%'"));
        assert!(eval("sys.CorrelationId LIKE '_bc1_3'"));
        assert!(!eval("sys.CorrelationId LIKE 'abc'"));
        assert!(eval("sys.CorrelationId NOT LIKE 'x%'"));
        assert!(like("ABC%", "ABC\\%", Some('\\')));
        assert!(!like("ABCD", "ABC\\%", Some('\\')));
        assert!(like("a%b", "a!%b", Some('!')));
        assert!(like("", "%", None));
        assert!(like("aXbXc", "a%b%c", None));
        assert!(!like("aXbXd", "a%b%c", None));
        assert!(like("mississippi", "%iss%ppi", None));
        assert!(!eval("color LIKE 'b%' ESCAPE 'xy'"), "an escape of two characters is unknown");
    }

    #[test]
    fn actions_set_and_remove() {
        let mut p = props();
        let statements = super::super::parse_action(
            "SET quantity = quantity * 2; REMOVE color; SET sys.Label = 'half'; SET gone = missing",
        )
        .unwrap();
        apply(&statements, &mut p);
        assert_eq!(p.user("quantity"), Some(&SimpleValue::Long(20)));
        assert_eq!(p.user("color"), None);
        assert_eq!(p.user("gone"), None);
        assert_eq!(p.label.as_deref(), Some("half"));
    }
}
