//! Tokens of Service Bus's SQL dialect, each with the position (1-based, in characters) it
//! starts at, for errors that say where.

use super::SqlError;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Token {
    /// A regular identifier, or a keyword (compared case-insensitively by the parser).
    Word(String),
    /// `"quoted"` or `[delimited]`: always a name, never a keyword.
    Name(String),
    String(String),
    Long(i64),
    Double(f64),
    Symbol(&'static str),
    End,
}

impl Token {
    /// How the token reads in an error.
    pub(super) fn describe(&self) -> String {
        match self {
            Token::Word(w) => format!("'{w}'"),
            Token::Name(n) => format!("the name '{n}'"),
            Token::String(s) => format!("the string '{s}'"),
            Token::Long(n) => format!("the number {n}"),
            Token::Double(n) => format!("the number {n}"),
            Token::Symbol(s) => format!("'{s}'"),
            Token::End => "the end of the expression".into(),
        }
    }
}

/// Operators and punctuation, longest first.
const SYMBOLS: [&str; 17] = ["<>", "!=", ">=", "<=", "=", ">", "<", "+", "-", "*", "/", "%", "(", ")", ",", ".", ";"];

/// The tokens of `text`, ending with [`Token::End`].
pub(super) fn tokens(text: &str) -> Result<Vec<(Token, usize)>, SqlError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Token::Word(chars[start..i].iter().collect()), at));
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let (token, next) = number(&chars, i)?;
            out.push((token, at));
            i = next;
        } else if c == '\'' || c == '"' || c == '[' {
            let close = if c == '[' { ']' } else { c };
            let (content, next) = quoted(&chars, i, close)?;
            out.push((if c == '\'' { Token::String(content) } else { Token::Name(content) }, at));
            i = next;
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| chars[i..].starts_with(&s.chars().collect::<Vec<_>>())) {
            out.push((Token::Symbol(symbol), at));
            i += symbol.chars().count();
        } else {
            return Err(SqlError::at(at, format!("unexpected character '{c}'")));
        }
    }
    out.push((Token::End, chars.len() + 1));
    Ok(out)
}

/// A number from `start`: an integer (a 64-bit long), or with a decimal point or an exponent,
/// a double.
fn number(chars: &[char], start: usize) -> Result<(Token, usize), SqlError> {
    let mut i = start;
    let digits = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_ascii_digit() {
            *i += 1;
        }
    };
    digits(&mut i);
    let mut double = false;
    if i < chars.len() && chars[i] == '.' {
        double = true;
        i += 1;
        digits(&mut i);
    }
    if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
        let mut j = i + 1;
        if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
            j += 1;
        }
        if j < chars.len() && chars[j].is_ascii_digit() {
            double = true;
            i = j;
            digits(&mut i);
        }
    }
    let text: String = chars[start..i].iter().collect();
    let at = start + 1;
    let token = if double {
        let value: f64 = text.parse().map_err(|_| SqlError::at(at, format!("'{text}' is not a number")))?;
        if !value.is_finite() {
            return Err(SqlError::at(at, format!("{text} is beyond the largest double")));
        }
        Token::Double(value)
    } else {
        Token::Long(text.parse().map_err(|_| SqlError::at(at, format!("{text} does not fit in a 64-bit integer")))?)
    };
    Ok((token, i))
}

/// The content of a quoted string or name from `start` (its opening quote) up to `close`; a
/// doubled `close` stands for one.
fn quoted(chars: &[char], start: usize, close: char) -> Result<(String, usize), SqlError> {
    let mut content = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => {
                return Err(SqlError::at(start + 1, format!("this {} is never closed with {close}", chars[start])));
            }
            Some(&c) if c == close => {
                if chars.get(i + 1) == Some(&close) {
                    content.push(close);
                    i += 2;
                } else {
                    return Ok((content, i + 1));
                }
            }
            Some(&c) => {
                content.push(c);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Token> {
        tokens(text).unwrap().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn words_numbers_strings_and_names() {
        assert_eq!(
            kinds("sys.Label <> 'it''s' AND [my prop]>=1.5e2 OR \"q\"\"x\" != 42"),
            vec![
                Token::Word("sys".into()),
                Token::Symbol("."),
                Token::Word("Label".into()),
                Token::Symbol("<>"),
                Token::String("it's".into()),
                Token::Word("AND".into()),
                Token::Name("my prop".into()),
                Token::Symbol(">="),
                Token::Double(150.0),
                Token::Word("OR".into()),
                Token::Name("q\"x".into()),
                Token::Symbol("!="),
                Token::Long(42),
                Token::End,
            ]
        );
        assert_eq!(kinds(".5"), vec![Token::Double(0.5), Token::End]);
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(tokens("a = 'open").unwrap_err().to_string(), "at position 5: this ' is never closed with '");
        assert_eq!(tokens("a ? b").unwrap_err().to_string(), "at position 3: unexpected character '?'");
        assert!(tokens("99999999999999999999").unwrap_err().to_string().contains("64-bit"));
        assert!(tokens("1e400").unwrap_err().to_string().contains("beyond the largest double"));
    }
}
