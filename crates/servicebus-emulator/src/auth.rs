//! Authentication: shared access keys, SAS token validation, and what a
//! connection has been authorized for through `$cbs` (or SASL PLAIN).
//!
//! Tokens are checked as the service does: HMAC-SHA256 with the key's UTF-8
//! bytes over the `sr` value *exactly as sent* (still URL-encoded), a newline
//! and `se`; the key name must be configured and `se` in the future. A token
//! authorizes the paths under its resource; audiences and resources are compared
//! without their scheme and port, case-insensitively.

use std::collections::HashMap;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key Microsoft's emulator connection string uses.
pub const DEFAULT_KEY_NAME: &str = "RootManageSharedAccessKey";
/// Its value (`SharedAccessKey=SAS_KEY_VALUE`).
pub const DEFAULT_KEY_VALUE: &str = "SAS_KEY_VALUE";

/// What a key allows: Service Bus's access rights. `Manage` includes `Send` and `Listen`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rights(u8);

impl Rights {
    /// Nothing: what any valid token satisfies.
    pub const NONE: Rights = Rights(0);
    /// Send messages (senders; schedule and cancel through `$management`).
    pub const SEND: Rights = Rights(1);
    /// Receive and settle messages (receivers; renew-lock, peek, deferred receive, dispositions).
    pub const LISTEN: Rights = Rights(2);
    /// Everything, entity management included.
    pub const MANAGE: Rights = Rights(7);

    /// Whether these rights include all of `needed`.
    pub fn contains(self, needed: Rights) -> bool {
        self.0 & needed.0 == needed.0
    }

    /// Reads `Manage`, `Send`, `Listen`, or a comma-separated list of them (any case).
    pub fn parse(text: &str) -> Result<Rights, String> {
        let mut rights = Rights::NONE;
        for word in text.split(',').map(str::trim) {
            rights.0 |= match word.to_ascii_lowercase().as_str() {
                "manage" => Rights::MANAGE.0,
                "send" => Rights::SEND.0,
                "listen" => Rights::LISTEN.0,
                _ => return Err(format!("{word:?} is not a right: use Manage, Send or Listen (comma-separated)")),
            };
        }
        Ok(rights)
    }

    /// The claim names, as the service's errors spell them.
    fn claims(self) -> String {
        if self.contains(Rights::MANAGE) {
            return "Manage".into();
        }
        let mut names = Vec::new();
        if self.contains(Rights::SEND) {
            names.push("Send");
        }
        if self.contains(Rights::LISTEN) {
            names.push("Listen");
        }
        names.join(",")
    }
}

impl std::fmt::Debug for Rights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rights({})", self.claims())
    }
}

/// Reads a key as the command line gives it: `NAME=VALUE`, with every right, or
/// `NAME=VALUE:RIGHTS` with `RIGHTS` a comma-separated list of `Manage`, `Send`, `Listen`.
pub fn parse_key_spec(spec: &str) -> Result<(String, String, Rights), String> {
    let (name, rest) = spec.split_once('=').ok_or_else(|| "a key is NAME=VALUE or NAME=VALUE:RIGHTS".to_string())?;
    let (value, rights) = match rest.rsplit_once(':') {
        Some((value, rights)) => (value, Rights::parse(rights)?),
        None => (rest, Rights::MANAGE),
    };
    if name.is_empty() || value.is_empty() {
        return Err("both the key's name and its value must be non-empty".into());
    }
    Ok((name.to_string(), value.to_string(), rights))
}

/// Shared access keys (policies): name, key and rights.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    keys: Vec<(String, String, Rights)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key values.
        f.debug_list().entries(self.keys.iter().map(|(n, _, r)| (n, r))).finish()
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::empty().with(DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE)
    }
}

impl Keys {
    /// No keys at all (add some with [`Keys::with`]).
    pub fn empty() -> Self {
        Self { keys: Vec::new() }
    }

    /// Adds (or replaces) a key with every right, like `RootManageSharedAccessKey`.
    pub fn with(self, name: impl Into<String>, key: impl Into<String>) -> Self {
        self.with_rights(name, key, Rights::MANAGE)
    }

    /// Adds (or replaces) a key with these rights.
    pub fn with_rights(mut self, name: impl Into<String>, key: impl Into<String>, rights: Rights) -> Self {
        let name = name.into();
        self.keys.retain(|(n, _, _)| *n != name);
        self.keys.push((name, key.into(), rights));
        self
    }

    /// The first key (name, value), for connection strings.
    pub(crate) fn first(&self) -> Option<(&str, &str)> {
        self.keys.first().map(|(n, k, _)| (n.as_str(), k.as_str()))
    }

    fn get(&self, name: &str) -> Option<(&str, Rights)> {
        self.keys.iter().find(|(n, _, _)| n == name).map(|(_, k, r)| (k.as_str(), *r))
    }

    /// The rights of `name` if `key` is its key (SASL PLAIN).
    pub(crate) fn check_plain(&self, name: &str, key: &str) -> Option<Rights> {
        self.get(name).filter(|(k, _)| constant_time_eq(k.as_bytes(), key.as_bytes())).map(|(_, r)| r)
    }
}

/// Why a token was refused; each maps to a CBS status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("the key name {0:?} is not configured")]
    UnknownKey(String),
    #[error("the token's signature does not match the key")]
    BadSignature,
    #[error("the token expired at {0} (Unix seconds)")]
    Expired(u64),
    #[error("the token's resource {resource:?} does not cover the audience {audience:?}")]
    WrongAudience { resource: String, audience: String },
}

impl TokenError {
    /// The CBS `status-code` for this failure.
    pub(crate) fn status_code(&self) -> i32 {
        match self {
            Self::Malformed(_) => 400,
            Self::WrongAudience { .. } => 403,
            _ => 401,
        }
    }
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The normalized path it covers (`""` = the whole namespace).
    pub(crate) path: String,
    /// Unix seconds.
    pub(crate) expires_at: u64,
    /// The rights of the key that signed it.
    pub(crate) rights: Rights,
}

/// Validates a `SharedAccessSignature ...` token for `audience`.
pub(crate) fn validate(token: &str, audience: &str, keys: &Keys, now_secs: u64) -> Result<Grant, TokenError> {
    let body = token
        .strip_prefix("SharedAccessSignature ")
        .ok_or_else(|| TokenError::Malformed("it does not start with \"SharedAccessSignature \"".into()))?;
    let mut sr = None;
    let mut sig = None;
    let mut se = None;
    let mut skn = None;
    for pair in body.split('&') {
        let (k, v) = pair.split_once('=').ok_or_else(|| TokenError::Malformed(format!("field {pair:?} has no '='")))?;
        match k {
            "sr" => sr = Some(v),
            "sig" => sig = Some(v),
            "se" => se = Some(v),
            "skn" => skn = Some(v),
            _ => {}
        }
    }
    let missing = |f: &str| TokenError::Malformed(format!("the {f} field is missing"));
    let (sr, sig, se, skn) = (
        sr.ok_or_else(|| missing("sr"))?,
        sig.ok_or_else(|| missing("sig"))?,
        se.ok_or_else(|| missing("se"))?,
        skn.ok_or_else(|| missing("skn"))?,
    );
    let key_name = url_decode(skn);
    let (key, rights) = keys.get(&key_name).ok_or_else(|| TokenError::UnknownKey(key_name.clone()))?;
    let expires_at: u64 = se.parse().map_err(|_| TokenError::Malformed(format!("se={se:?} is not a number")))?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(url_decode(sig))
        .map_err(|_| TokenError::Malformed("sig is not base64".into()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(sr.as_bytes());
    mac.update(b"\n");
    mac.update(se.as_bytes());
    mac.verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
    if expires_at <= now_secs {
        return Err(TokenError::Expired(expires_at));
    }
    let resource = normalize(&url_decode(sr));
    let audience = normalize(audience);
    if !covers(&resource, &audience) {
        return Err(TokenError::WrongAudience { resource, audience });
    }
    Ok(Grant { path: audience, expires_at, rights })
}

/// An address or audience without scheme, authority, query and surrounding slashes,
/// URL-decoded, lower-case. (The Node administration client signs its request URL, query
/// and all; no entity name holds a `?`.)
pub(crate) fn normalize(address: &str) -> String {
    let without_scheme = match address.find("://") {
        Some(i) => {
            let rest = &address[i + 3..];
            rest.find('/').map_or("", |j| &rest[j..])
        }
        None => address,
    };
    let decoded = url_decode(without_scheme.trim_matches('/'));
    let path = decoded.split_once('?').map_or(decoded.as_str(), |(path, _query)| path);
    path.trim_matches('/').to_ascii_lowercase()
}

/// Whether a grant for `granted` covers `path` (same path, or a parent by whole segments).
pub(crate) fn covers(granted: &str, path: &str) -> bool {
    granted.is_empty() || path == granted || path.strip_prefix(granted).is_some_and(|rest| rest.starts_with('/'))
}

fn url_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Tokens one connection may hold at once (distinct paths and rights): each is kept until
/// it expires, and a peer with a key must not be able to grow the set without end.
pub(crate) const MAX_GRANTS: usize = 256;

/// A put-token refused because the connection holds too many tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this connection holds {MAX_GRANTS} unexpired tokens for different paths, the most it may")]
pub(crate) struct TooManyGrants;

/// What one connection is authorized for.
#[derive(Debug, Default)]
pub(crate) struct Authorizations {
    /// SASL PLAIN with a valid key: that key's rights everywhere, for the connection's life.
    plain: Option<Rights>,
    /// (path, rights) → expiry.
    grants: HashMap<(String, Rights), u64>,
    /// A token was ever accepted.
    authenticated: bool,
}

impl Authorizations {
    pub(crate) fn grant_plain(&mut self, rights: Rights) {
        self.plain = Some(rights);
        self.authenticated = true;
    }

    pub(crate) fn add(&mut self, grant: Grant, now_secs: u64) -> Result<(), TooManyGrants> {
        let key = (grant.path, grant.rights);
        if !self.grants.contains_key(&key) && self.grants.len() >= MAX_GRANTS {
            self.grants.retain(|_, exp| *exp > now_secs);
            if self.grants.len() >= MAX_GRANTS {
                return Err(TooManyGrants);
            }
        }
        let e = self.grants.entry(key).or_insert(0);
        *e = (*e).max(grant.expires_at);
        self.authenticated = true;
        Ok(())
    }

    /// Whether the peer ever proved it holds a key (a valid token, or SASL PLAIN).
    pub(crate) fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Until when (Unix seconds) `path` is authorized with at least `needed`; `Some(u64::MAX)`
    /// for SASL PLAIN.
    pub(crate) fn authorized_until(&self, path: &str, needed: Rights, now_secs: u64) -> Option<u64> {
        if let Some(rights) = self.plain {
            return rights.contains(needed).then_some(u64::MAX);
        }
        self.grants
            .iter()
            .filter(|((g, rights), exp)| **exp > now_secs && rights.contains(needed) && covers(g, path))
            .map(|(_, exp)| *exp)
            .max()
    }

    /// Until when `path` is authorized with `needed`; else why not, as the service says it.
    pub(crate) fn check(&self, path: &str, needed: Rights, now_secs: u64) -> Result<u64, String> {
        self.authorized_until(path, needed, now_secs).ok_or_else(|| self.refusal(path, needed, now_secs))
    }

    /// Why `path` is not authorized with `needed`, as the service says it.
    fn refusal(&self, path: &str, needed: Rights, now_secs: u64) -> String {
        if self.authorized_until(path, Rights::NONE, now_secs).is_some() {
            format!(
                "Unauthorized access. '{}' claim(s) are required to perform this operation. Resource: '{path}'.",
                needed.claims()
            )
        } else {
            format!("Unauthorized access. No valid token was put on $cbs for '{path}'; put-token first.")
        }
    }
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Makes a SAS token, as the SDKs do (tests and tools).
pub fn sas_token(resource: &str, key_name: &str, key: &str, expires_at: u64) -> String {
    let encoded: String =
        percent_encoding::utf8_percent_encode(resource, percent_encoding::NON_ALPHANUMERIC).to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{encoded}\n{expires_at}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let sig: String = percent_encoding::utf8_percent_encode(&sig, percent_encoding::NON_ALPHANUMERIC).to_string();
    format!("SharedAccessSignature sr={encoded}&sig={sig}&se={expires_at}&skn={key_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_token_from_the_default_key_is_valid_for_its_audience() {
        let t = sas_token("sb://localhost:5672/orders", DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, NOW + 3600);
        let g = validate(&t, "amqps://LOCALHOST/orders", &Keys::default(), NOW).unwrap();
        assert_eq!(g, Grant { path: "orders".into(), expires_at: NOW + 3600, rights: Rights::MANAGE });
    }

    #[test]
    fn python_style_tokens_with_upper_case_escapes_validate() {
        // quote_plus writes %3A%2F%2F; the signature covers sr exactly as sent.
        let sr = "sb%3A%2F%2F127.0.0.1%3A5672%2Fq1";
        let se = NOW + 60;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"SAS_KEY_VALUE").unwrap();
        mac.update(format!("{sr}\n{se}").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let sig = sig.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
        let t = format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn=RootManageSharedAccessKey");
        assert!(validate(&t, "sb://127.0.0.1:5672/q1", &Keys::default(), NOW).is_ok());
    }

    #[test]
    fn wrong_key_expired_and_malformed_tokens_are_refused() {
        let keys = Keys::default();
        let wrong = sas_token("sb://h/q", DEFAULT_KEY_NAME, "not-the-key", NOW + 60);
        assert_eq!(validate(&wrong, "sb://h/q", &keys, NOW), Err(TokenError::BadSignature));
        let expired = sas_token("sb://h/q", DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, NOW - 1);
        assert_eq!(validate(&expired, "sb://h/q", &keys, NOW), Err(TokenError::Expired(NOW - 1)));
        let unknown = sas_token("sb://h/q", "Other", DEFAULT_KEY_VALUE, NOW + 60);
        assert_eq!(validate(&unknown, "sb://h/q", &keys, NOW), Err(TokenError::UnknownKey("Other".into())));
        assert!(matches!(validate("Bearer x", "sb://h/q", &keys, NOW), Err(TokenError::Malformed(_))));
        assert_eq!(validate(&wrong, "sb://h/q", &keys, NOW).unwrap_err().status_code(), 401);
    }

    #[test]
    fn a_token_for_one_queue_does_not_cover_another() {
        let t = sas_token("sb://h/orders", DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, NOW + 60);
        assert!(matches!(
            validate(&t, "sb://h/payments", &Keys::default(), NOW),
            Err(TokenError::WrongAudience { .. })
        ));
        assert!(matches!(validate(&t, "sb://h/orders2", &Keys::default(), NOW), Err(TokenError::WrongAudience { .. })));
        // A namespace-level token covers everything.
        let ns = sas_token("sb://h/", DEFAULT_KEY_NAME, DEFAULT_KEY_VALUE, NOW + 60);
        assert!(validate(&ns, "sb://h/payments", &Keys::default(), NOW).is_ok());
    }

    #[test]
    fn grants_cover_sub_paths_until_they_expire() {
        let mut a = Authorizations::default();
        a.add(Grant { path: "orders".into(), expires_at: NOW + 10, rights: Rights::MANAGE }, NOW).unwrap();
        assert_eq!(a.authorized_until("orders/$management", Rights::LISTEN, NOW), Some(NOW + 10));
        assert_eq!(a.authorized_until("orders", Rights::SEND, NOW + 10), None);
        assert_eq!(a.authorized_until("ordersx", Rights::NONE, NOW), None);
    }

    #[test]
    fn rights_come_from_the_key_that_signed_the_token() {
        let keys = Keys::default().with_rights("sender", "s-key", Rights::SEND);
        let t = sas_token("sb://h/q", "sender", "s-key", NOW + 60);
        let g = validate(&t, "sb://h/q", &keys, NOW).unwrap();
        let mut a = Authorizations::default();
        a.add(g, NOW).unwrap();
        assert_eq!(a.authorized_until("q", Rights::SEND, NOW), Some(NOW + 60));
        assert_eq!(a.authorized_until("q", Rights::LISTEN, NOW), None);
        assert_eq!(a.authorized_until("q", Rights::MANAGE, NOW), None);
        assert!(a.check("q", Rights::LISTEN, NOW).unwrap_err().contains("'Listen' claim(s) are required"));
        assert!(a.check("other", Rights::LISTEN, NOW).unwrap_err().contains("No valid token"));
        assert_eq!(a.check("q", Rights::SEND, NOW), Ok(NOW + 60));
        assert_eq!(Rights::parse("send, Listen"), Ok(Rights(3)));
        assert!(Rights::MANAGE.contains(Rights::SEND) && !Rights(3).contains(Rights::MANAGE));
        assert!(Rights::parse("Read").unwrap_err().contains("Manage, Send or Listen"));
        let mut plain = Authorizations::default();
        plain.grant_plain(Rights::LISTEN);
        assert_eq!(plain.authorized_until("q", Rights::LISTEN, NOW), Some(u64::MAX));
        assert_eq!(plain.authorized_until("q", Rights::SEND, NOW), None);
    }

    #[test]
    fn key_specs_from_the_command_line() {
        assert_eq!(parse_key_spec("a=k=="), Ok(("a".into(), "k==".into(), Rights::MANAGE)));
        assert_eq!(parse_key_spec("s=k:Send"), Ok(("s".into(), "k".into(), Rights::SEND)));
        assert_eq!(parse_key_spec("l=k:listen,send"), Ok(("l".into(), "k".into(), Rights(3))));
        assert!(parse_key_spec("x").unwrap_err().contains("NAME=VALUE"));
        assert!(parse_key_spec("=k").is_err() && parse_key_spec("a=").is_err());
        assert!(parse_key_spec("a=k:Write").unwrap_err().contains("not a right"));
    }

    #[test]
    fn a_connection_holds_a_bounded_number_of_tokens() {
        let mut a = Authorizations::default();
        for i in 0..MAX_GRANTS {
            a.add(Grant { path: format!("q{i}"), expires_at: NOW + 60, rights: Rights::SEND }, NOW).unwrap();
        }
        let next = Grant { path: "more".into(), expires_at: NOW + 60, rights: Rights::SEND };
        assert_eq!(a.add(next.clone(), NOW), Err(TooManyGrants));
        // Renewing one already held is fine, and expired ones make room.
        a.add(Grant { path: "q0".into(), expires_at: NOW + 90, rights: Rights::SEND }, NOW).unwrap();
        assert!(a.add(next, NOW + 61).is_ok());
    }

    #[test]
    fn normalize_strips_scheme_host_port_and_slashes() {
        assert_eq!(normalize("amqps://ns.servicebus.windows.net:5671/Site1/Q/"), "site1/q");
        assert_eq!(normalize("/orders"), "orders");
        assert_eq!(normalize("orders%2F%24DeadLetterQueue"), "orders/$deadletterqueue");
        assert_eq!(normalize("sb://host/"), "");
        assert_eq!(normalize("https://h:5300/Orders?api-version=2021-05"), "orders");
    }

    #[test]
    fn keys_never_print_their_values() {
        assert!(!format!("{:?}", Keys::default()).contains(DEFAULT_KEY_VALUE));
    }
}
