//! The grammar: `OR` binds loosest, then `AND`, then `NOT`, then one predicate (a comparison,
//! `IS [NOT] NULL`, `[NOT] IN`, `[NOT] LIKE … [ESCAPE …]`, `EXISTS`, or a predicate in
//! parentheses); in expressions, `+ -` bind looser than `* / %`, then unary signs.

use super::lex::{Token, tokens};
use super::{Arith, Cmp, Expr, Predicate, Property, SqlError, Statement, SysProp, Val};

/// Service Bus's limit on the length of a filter's or an action's SQL, in characters.
pub(crate) const MAX_LENGTH: usize = 1024;
/// Service Bus's limit on the statements of one action.
const MAX_STATEMENTS: usize = 32;
/// How deeply groups, signs and NOTs may nest: far beyond what a rule needs, and far short
/// of what would exhaust a thread's stack.
const MAX_DEPTH: usize = 64;

/// Words that are never property names unless quoted (`[in]`, `"in"`).
const KEYWORDS: [&str; 12] =
    ["AND", "OR", "NOT", "IS", "NULL", "IN", "LIKE", "ESCAPE", "EXISTS", "TRUE", "FALSE", "SET"];

/// Parses a filter's SQL expression.
pub(crate) fn parse_filter(text: &str) -> Result<Predicate, SqlError> {
    let mut p = Parser::new(text, "filter")?;
    let predicate = p.or()?;
    p.expect_end()?;
    Ok(predicate)
}

/// Parses an action's SQL: `SET <property> = <expression>` and `REMOVE <property>` statements,
/// separated by `;` or nothing.
pub(crate) fn parse_action(text: &str) -> Result<Vec<Statement>, SqlError> {
    let mut p = Parser::new(text, "action")?;
    let mut statements = Vec::new();
    loop {
        while p.eat_symbol(";") {}
        if p.peek() == &Token::End {
            break;
        }
        if p.eat_word("SET") {
            let property = p.property()?;
            if property == Property::Sys(SysProp::Size) {
                return Err(p.error_before("sys.Size cannot be set"));
            }
            p.expect_symbol("=")?;
            statements.push(Statement::Set(property, p.expr()?));
        } else if p.eat_word("REMOVE") {
            let property = p.property()?;
            if let Property::Sys(_) = property {
                return Err(p.error_before("system properties cannot be removed; SET them instead"));
            }
            statements.push(Statement::Remove(property));
        } else {
            return Err(p.unexpected("SET or REMOVE"));
        }
        if statements.len() > MAX_STATEMENTS {
            return Err(p.error_before(&format!("an action may have at most {MAX_STATEMENTS} statements")));
        }
    }
    if statements.is_empty() {
        return Err(SqlError::at(1, "an action needs at least one SET or REMOVE statement"));
    }
    Ok(statements)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn new(text: &str, what: &str) -> Result<Self, SqlError> {
        let length = text.chars().count();
        if length > MAX_LENGTH {
            return Err(SqlError::at(
                MAX_LENGTH + 1,
                format!("the {what} is {length} characters long; Service Bus allows at most {MAX_LENGTH}"),
            ));
        }
        Ok(Self { tokens: tokens(text)?, at: 0, depth: 0 })
    }

    /// Runs `f` one level deeper, refusing nesting past [`MAX_DEPTH`].
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, SqlError>) -> Result<T, SqlError> {
        if self.depth >= MAX_DEPTH {
            return Err(SqlError::at(self.position(), format!("nested more than {MAX_DEPTH} levels deep")));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.at].0
    }

    fn peek_at(&self, ahead: usize) -> &Token {
        &self.tokens[(self.at + ahead).min(self.tokens.len() - 1)].0
    }

    fn position(&self) -> usize {
        self.tokens[self.at].1
    }

    fn advance(&mut self) -> Token {
        let token = self.tokens[self.at].0.clone();
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        token
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Token::Word(w) if w.eq_ignore_ascii_case(word))
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let found = self.is_word(word);
        if found {
            self.advance();
        }
        found
    }

    fn eat_symbol(&mut self, symbol: &str) -> bool {
        let found = matches!(self.peek(), Token::Symbol(s) if *s == symbol);
        if found {
            self.advance();
        }
        found
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), SqlError> {
        if self.eat_symbol(symbol) { Ok(()) } else { Err(self.unexpected(&format!("'{symbol}'"))) }
    }

    fn expect_end(&mut self) -> Result<(), SqlError> {
        if self.peek() == &Token::End { Ok(()) } else { Err(self.unexpected("an operator (AND, OR, …) or the end")) }
    }

    fn unexpected(&self, expected: &str) -> SqlError {
        SqlError::at(self.position(), format!("expected {expected}, found {}", self.peek().describe()))
    }

    /// An error about what was just read.
    fn error_before(&self, message: &str) -> SqlError {
        SqlError::at(self.tokens[self.at.saturating_sub(1)].1, message)
    }

    fn or(&mut self) -> Result<Predicate, SqlError> {
        let mut left = self.and()?;
        while self.eat_word("OR") {
            left = Predicate::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Predicate, SqlError> {
        let mut left = self.not()?;
        while self.eat_word("AND") {
            left = Predicate::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Predicate, SqlError> {
        if self.eat_word("NOT") {
            return Ok(Predicate::Not(Box::new(self.nested(Self::not)?)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Predicate, SqlError> {
        // `(` opens a predicate, or an expression that a comparison follows.
        if matches!(self.peek(), Token::Symbol("(")) && self.group_holds_a_predicate() {
            self.advance();
            let inner = self.nested(Self::or)?;
            self.expect_symbol(")")?;
            return Ok(inner);
        }
        if self.eat_word("EXISTS") {
            self.expect_symbol("(")?;
            let property = self.property()?;
            self.expect_symbol(")")?;
            return Ok(Predicate::Exists(property));
        }
        let start = self.position();
        let expr = self.expr()?;
        if let Some(op) = self.comparison() {
            return Ok(Predicate::Compare(op, expr, self.expr()?));
        }
        if self.eat_word("IS") {
            let negated = self.eat_word("NOT");
            if !self.eat_word("NULL") {
                return Err(self.unexpected("NULL"));
            }
            let Expr::Prop(property) = expr else {
                return Err(SqlError::at(start, "IS [NOT] NULL applies to a property"));
            };
            return Ok(Predicate::IsNull { property, negated });
        }
        let negated = self.is_word("NOT")
            && (matches!(self.peek_at(1), Token::Word(w) if w.eq_ignore_ascii_case("IN") || w.eq_ignore_ascii_case("LIKE")));
        if negated {
            self.advance();
        }
        if self.eat_word("IN") {
            self.expect_symbol("(")?;
            let mut list = vec![self.expr()?];
            while self.eat_symbol(",") {
                list.push(self.expr()?);
            }
            self.expect_symbol(")")?;
            return Ok(Predicate::In { expr, list, negated });
        }
        if self.eat_word("LIKE") {
            let pattern = self.expr()?;
            let escape = if self.eat_word("ESCAPE") { Some(self.expr()?) } else { None };
            return Ok(Predicate::Like { expr, pattern, escape, negated });
        }
        Err(self.unexpected("a comparison (=, <>, !=, >, >=, <, <=), IS, IN or LIKE"))
    }

    /// Whether the group the next `(` opens holds a predicate: expressions never contain a
    /// comparison or a predicate's keyword, at any depth.
    fn group_holds_a_predicate(&self) -> bool {
        let mut depth = 0usize;
        for (token, _) in &self.tokens[self.at..] {
            match token {
                Token::Symbol("(") => depth += 1,
                Token::Symbol(")") => {
                    depth -= 1;
                    if depth == 0 {
                        return false;
                    }
                }
                Token::Symbol("=" | "<>" | "!=" | ">" | ">=" | "<" | "<=") => return true,
                Token::Word(w)
                    if ["AND", "OR", "NOT", "IS", "IN", "LIKE", "EXISTS"].iter().any(|k| w.eq_ignore_ascii_case(k)) =>
                {
                    return true;
                }
                Token::End => return false,
                _ => {}
            }
        }
        false
    }

    fn comparison(&mut self) -> Option<Cmp> {
        let op = match self.peek() {
            Token::Symbol("=") => Cmp::Eq,
            Token::Symbol("<>" | "!=") => Cmp::Ne,
            Token::Symbol(">") => Cmp::Gt,
            Token::Symbol(">=") => Cmp::Ge,
            Token::Symbol("<") => Cmp::Lt,
            Token::Symbol("<=") => Cmp::Le,
            _ => return None,
        };
        self.advance();
        Some(op)
    }

    fn expr(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.term()?;
        loop {
            let op = match self.peek() {
                Token::Symbol("+") => Arith::Add,
                Token::Symbol("-") => Arith::Sub,
                _ => return Ok(left),
            };
            self.advance();
            left = Expr::Arith(op, Box::new(left), Box::new(self.term()?));
        }
    }

    fn term(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Token::Symbol("*") => Arith::Mul,
                Token::Symbol("/") => Arith::Div,
                Token::Symbol("%") => Arith::Rem,
                _ => return Ok(left),
            };
            self.advance();
            left = Expr::Arith(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, SqlError> {
        if self.eat_symbol("-") {
            return Ok(Expr::Neg(Box::new(self.nested(Self::unary)?)));
        }
        if self.eat_symbol("+") {
            return self.nested(Self::unary);
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, SqlError> {
        let literal = match self.peek() {
            Token::Long(n) => Some(Val::Long(*n)),
            Token::Double(n) => Some(Val::Double(*n)),
            Token::String(s) => Some(Val::Str(s.clone())),
            _ => None,
        };
        if let Some(value) = literal {
            self.advance();
            return Ok(Expr::Const(value));
        }
        match self.peek().clone() {
            Token::Symbol("(") => {
                self.advance();
                let inner = self.nested(Self::expr)?;
                self.expect_symbol(")")?;
                Ok(inner)
            }
            Token::Word(w) if w.eq_ignore_ascii_case("TRUE") || w.eq_ignore_ascii_case("FALSE") => {
                self.advance();
                Ok(Expr::Const(Val::Bool(w.eq_ignore_ascii_case("TRUE"))))
            }
            Token::Word(w) if w.eq_ignore_ascii_case("NULL") => {
                Err(SqlError::at(self.position(), "NULL is a value only in IS [NOT] NULL"))
            }
            Token::Word(w) if matches!(self.peek_at(1), Token::Symbol("(")) => {
                let at = self.position();
                self.advance();
                self.advance();
                if w.eq_ignore_ascii_case("newid") {
                    self.expect_symbol(")")?;
                    Ok(Expr::NewId)
                } else if w.eq_ignore_ascii_case("property") {
                    let name = self.nested(Self::expr)?;
                    self.expect_symbol(")")?;
                    Ok(Expr::PropertyOf(Box::new(name)))
                } else {
                    Err(SqlError::at(
                        at,
                        format!("there is no function '{w}': the functions are newid() and property(name)"),
                    ))
                }
            }
            Token::Word(_) | Token::Name(_) => Ok(Expr::Prop(self.property()?)),
            _ => Err(self.unexpected("a value (a number, 'string', TRUE, FALSE, a property, or a function)")),
        }
    }

    /// `[sys. | user.] name`, the name a word or a quoted `"name"` / `[name]`.
    fn property(&mut self) -> Result<Property, SqlError> {
        let at = self.position();
        let first = self.name("a property name")?;
        let scoped = matches!(self.peek(), Token::Symbol(".")) && matches!(&first, (_, false));
        if !scoped {
            return Ok(Property::User(first.0));
        }
        let scope = first.0;
        self.advance();
        let (name, _) = self.name("a property name after the '.'")?;
        if scope.eq_ignore_ascii_case("sys") {
            SysProp::named(&name).map(Property::Sys).ok_or_else(|| {
                SqlError::at(
                    at,
                    format!("sys.{name} is not a system property; the system properties are {}", SysProp::names()),
                )
            })
        } else if scope.eq_ignore_ascii_case("user") {
            Ok(Property::User(name))
        } else {
            Err(SqlError::at(at, format!("'{scope}' is not a scope: properties are sys.<name>, user.<name> or <name>")))
        }
    }

    /// A name: a word that is not a keyword, or a quoted name (the flag says quoted).
    fn name(&mut self, expected: &str) -> Result<(String, bool), SqlError> {
        match self.peek().clone() {
            Token::Word(w) if KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k)) => Err(SqlError::at(
                self.position(),
                format!("'{w}' is a reserved word; write [{w}] for a property of that name"),
            )),
            Token::Word(w) => {
                self.advance();
                Ok((w, false))
            }
            Token::Name(n) => {
                self.advance();
                Ok((n, true))
            }
            _ => Err(self.unexpected(expected)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Expr {
        Expr::Prop(Property::User(name.into()))
    }

    #[test]
    fn the_documented_examples_parse() {
        for text in [
            "color = 'blue' AND quantity = 10",
            "sys.Label = 'Important' OR priority > 3",
            "MessageNumber % 2 = 0",
            "StoreId IN ('Store1', 'Store2', 'Store3')",
            "StoreId NOT IN ('Store1','Store2')",
            "sys.To = 'Store5' AND sys.CorrelationId LIKE 'abc%'",
            "property LIKE 'ABC\\%' ESCAPE '\\'",
            "EXISTS(color) AND color IS NOT NULL",
            "(a + 1) * 2 > b AND (c = 1 OR d = 2)",
            "NOT (x = 1)",
            "1=1",
            "1=0",
            "[my prop] = \"quoted\" + 'x'",
            "user.[sys] = 1 AND -x < +3.5e1",
            "property('col' + 'or') = 'blue' AND newid() <> ''",
        ] {
            if let Err(e) = parse_filter(text) {
                panic!("{text}: {e}");
            }
        }
    }

    #[test]
    fn precedence_and_grouping() {
        let p = parse_filter("a = 1 OR b = 2 AND NOT c = 3").unwrap();
        let cmp = |n: &str, v: i64| Predicate::Compare(Cmp::Eq, user(n), Expr::Const(Val::Long(v)));
        assert_eq!(
            p,
            Predicate::Or(
                Box::new(cmp("a", 1)),
                Box::new(Predicate::And(Box::new(cmp("b", 2)), Box::new(Predicate::Not(Box::new(cmp("c", 3))))))
            )
        );
        let p = parse_filter("(a + 1) * 2 = 6").unwrap();
        let Predicate::Compare(Cmp::Eq, Expr::Arith(Arith::Mul, left, _), _) = p else { panic!("{p:?}") };
        assert!(matches!(*left, Expr::Arith(Arith::Add, _, _)));
        assert_eq!(
            parse_filter("sys.label = 'x'").unwrap(),
            Predicate::Compare(Cmp::Eq, Expr::Prop(Property::Sys(SysProp::Label)), Expr::Const(Val::Str("x".into())))
        );
    }

    #[test]
    fn errors_say_where_and_what_was_expected() {
        let e = |t: &str| parse_filter(t).unwrap_err().to_string();
        assert_eq!(
            e("a = "),
            "at position 5: expected a value (a number, 'string', TRUE, FALSE, a property, or a function), found the end of the expression"
        );
        assert_eq!(e("a = 1 b"), "at position 7: expected an operator (AND, OR, …) or the end, found 'b'");
        assert_eq!(
            e("a"),
            "at position 2: expected a comparison (=, <>, !=, >, >=, <, <=), IS, IN or LIKE, found the end of the expression"
        );
        assert!(e("sys.Colour = 1").starts_with("at position 1: sys.Colour is not a system property"));
        assert!(e("in = 1").contains("'in' is a reserved word"));
        assert!(e("a = NULL").contains("NULL is a value only in IS [NOT] NULL"));
        assert!(e("a IN (1, 2").contains("expected ')'"));
        assert!(e("foo(1) = 1").contains("there is no function 'foo'"));
        assert!(e("x.y = 1").contains("'x' is not a scope"));
        assert!(e("1 + 1 IS NULL").contains("IS [NOT] NULL applies to a property"));
    }

    #[test]
    fn length_and_nesting_are_bounded() {
        let long = format!("a = '{}'", "x".repeat(MAX_LENGTH));
        assert!(parse_filter(&long).unwrap_err().to_string().contains("at most 1024"));
        let deep = format!("{}a = 1{}", "(".repeat(200), ")".repeat(200));
        assert!(parse_filter(&deep).unwrap_err().to_string().contains("nested more than 64"));
        let deep = format!("a = {}1", "-".repeat(500));
        assert!(parse_filter(&deep).unwrap_err().to_string().contains("nested more than 64"));
        let deep = format!("{}a = 1", "NOT ".repeat(200));
        assert!(parse_filter(&deep).unwrap_err().to_string().contains("nested more than 64"));
        assert!(parse_filter(&format!("{}a = 1{}", "(".repeat(30), ")".repeat(30))).is_ok());
        let many = (0..33).map(|i| format!("SET a{i} = 1")).collect::<Vec<_>>().join("; ");
        assert!(parse_action(&many).unwrap_err().to_string().contains("at most 32 statements"));
    }

    #[test]
    fn actions_parse_into_statements() {
        let s = parse_action("SET quantity = quantity / 2; REMOVE color; SET sys.Label = 'half'").unwrap();
        assert_eq!(s.len(), 3);
        assert!(matches!(&s[1], Statement::Remove(Property::User(n)) if n == "color"));
        assert!(matches!(&s[2], Statement::Set(Property::Sys(SysProp::Label), _)));
        assert!(parse_action("SET a = 1 SET b = 2;").is_ok());
        assert!(parse_action("").unwrap_err().to_string().contains("at least one"));
        assert!(parse_action("DELETE a").unwrap_err().to_string().contains("expected SET or REMOVE"));
        assert!(parse_action("SET sys.Size = 1").unwrap_err().to_string().contains("cannot be set"));
        assert!(parse_action("REMOVE sys.Label").unwrap_err().to_string().contains("cannot be removed"));
    }
}
