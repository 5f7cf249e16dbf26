//! Service Bus's SQL dialect for subscription rules: filters (a predicate over a message's
//! system and user properties) and actions (`SET` and `REMOVE` on the copy a subscription
//! gets). Microsoft's "SQL filter syntax" and "SQL action syntax" define it.
//!
//! - `lex`: tokens, with positions.
//! - `parse`: the grammar, into [`Predicate`] and [`Statement`]s; errors say where and what
//!   was expected.
//! - `eval`: three-valued evaluation: a missing user property is *unknown*, and a filter
//!   matches only when its predicate is true.
//! - `print`: the trees as SQL again (`Display`), which parses back to the same tree.

mod eval;
mod lex;
mod parse;
mod print;

pub(crate) use eval::{Props, Val, apply, matches};
pub(crate) use parse::{parse_action, parse_filter};

/// A rule that does not parse: where (1-based, in characters) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at position {position}: {message}")]
pub struct SqlError {
    /// Where, counting characters from 1.
    pub position: usize,
    /// What was wrong, and what was expected.
    pub message: String,
}

impl SqlError {
    fn at(position: usize, message: impl Into<String>) -> Self {
        Self { position, message: message.into() }
    }
}

/// A system property (`sys.<name>`), as filters and actions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SysProp {
    MessageId,
    CorrelationId,
    To,
    ReplyTo,
    Label,
    SessionId,
    ReplyToSessionId,
    ContentType,
    Size,
}

impl SysProp {
    const ALL: [(&'static str, SysProp); 9] = [
        ("MessageId", SysProp::MessageId),
        ("CorrelationId", SysProp::CorrelationId),
        ("To", SysProp::To),
        ("ReplyTo", SysProp::ReplyTo),
        ("Label", SysProp::Label),
        ("SessionId", SysProp::SessionId),
        ("ReplyToSessionId", SysProp::ReplyToSessionId),
        ("ContentType", SysProp::ContentType),
        ("Size", SysProp::Size),
    ];

    fn named(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, p)| *p)
    }

    fn names() -> String {
        Self::ALL.iter().map(|(n, _)| format!("sys.{n}")).collect::<Vec<_>>().join(", ")
    }
}

/// A property a rule reads or writes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Property {
    Sys(SysProp),
    User(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// A value-producing expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Const(Val),
    Prop(Property),
    Neg(Box<Expr>),
    Arith(Arith, Box<Expr>, Box<Expr>),
    /// `newid()`: a new GUID, as a string.
    NewId,
    /// `property(name)`: the user property the expression names.
    PropertyOf(Box<Expr>),
}

/// A true/false/unknown-producing predicate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Predicate {
    Not(Box<Predicate>),
    And(Box<Predicate>, Box<Predicate>),
    Or(Box<Predicate>, Box<Predicate>),
    Compare(Cmp, Expr, Expr),
    IsNull { property: Property, negated: bool },
    In { expr: Expr, list: Vec<Expr>, negated: bool },
    Like { expr: Expr, pattern: Expr, escape: Option<Expr>, negated: bool },
    Exists(Property),
}

/// One statement of an action.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Statement {
    Set(Property, Expr),
    Remove(Property),
}
