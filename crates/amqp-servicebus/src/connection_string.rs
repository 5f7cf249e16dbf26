//! Azure Service Bus connection strings, and the same settings built from parts.
//!
//! `Endpoint=sb://<host>[:port]/;SharedAccessKeyName=<name>;SharedAccessKey=<key>[;EntityPath=<q>][;UseDevelopmentEmulator=true]`,
//! or `SharedAccessSignature=<token>` instead of the key pair. Errors say what is
//! wrong and never print a key or a signature.

use std::fmt;

use crate::error::{Error, ErrorKind};

/// How the client proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A shared access key: tokens are made (and refreshed) from it.
    SharedKey {
        /// The policy (key) name, e.g. `RootManageSharedAccessKey`.
        name: String,
        /// The key, used as its UTF-8 bytes.
        key: String,
    },
    /// A ready-made `SharedAccessSignature sr=...&sig=...&se=...&skn=...` token (not renewable).
    SharedAccessSignature(String),
    /// No credential (plain AMQP brokers with SASL ANONYMOUS).
    Anonymous,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SharedKey { name, .. } => {
                f.debug_struct("SharedKey").field("name", name).field("key", &"<redacted>").finish()
            }
            Self::SharedAccessSignature(_) => f.write_str("SharedAccessSignature(<redacted>)"),
            Self::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// Parsed connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// The namespace host, e.g. `contoso.servicebus.windows.net`.
    pub host: String,
    /// The port, if the endpoint names one.
    pub port: Option<u16>,
    /// The credential.
    pub credential: Credential,
    /// `EntityPath`: the default entity.
    pub entity_path: Option<String>,
    /// `UseDevelopmentEmulator=true`: plain TCP (no TLS), port 5672 unless given.
    pub use_development_emulator: bool,
}

impl ConnectionString {
    /// Parses `Key=Value;...`. Keys are case-insensitive; values may contain `=`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = |m: String| Error::new(ErrorKind::InvalidConnectionString, m);
        let mut endpoint = None;
        let mut key_name = None;
        let mut key = None;
        let mut sas = None;
        let mut entity_path = None;
        let mut emulator = false;
        for (i, part) in text.split(';').enumerate() {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((k, v)) = part.split_once('=') else {
                // Never echo the part: it could be a key pasted without its name.
                return Err(bad(format!("part {} has no '=': expected Key=Value", i + 1)));
            };
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "endpoint" | "hostname" => endpoint = Some(v.to_string()),
                "sharedaccesskeyname" => key_name = Some(v.to_string()),
                "sharedaccesskey" => key = Some(v.to_string()),
                "sharedaccesssignature" => sas = Some(v.to_string()),
                "entitypath" => entity_path = Some(v.to_string()).filter(|s| !s.is_empty()),
                "usedevelopmentemulator" => {
                    emulator = match v.to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad(format!("UseDevelopmentEmulator must be true or false, not {v:?}"))),
                    }
                }
                other => return Err(bad(format!("unknown key {:?}", truncate(other)))),
            }
        }
        let endpoint = endpoint
            .ok_or_else(|| bad("the Endpoint is missing (Endpoint=sb://<namespace>.servicebus.windows.net/)".into()))?;
        let (host, port) = parse_endpoint(&endpoint)?;
        if emulator && !is_loopback(&host) {
            return Err(bad(format!(
                "UseDevelopmentEmulator=true sends the key without TLS, so it is only accepted for a loopback \
                 endpoint (localhost, 127.0.0.1, [::1]), not {host:?}: reach a remote emulator through a tunnel \
                 to localhost, or connect to its TLS port without UseDevelopmentEmulator"
            )));
        }
        let credential = match (key_name, key, sas) {
            (Some(name), Some(key), None) => {
                if name.is_empty() || key.is_empty() {
                    return Err(bad("SharedAccessKeyName and SharedAccessKey must not be empty".into()));
                }
                Credential::SharedKey { name, key }
            }
            (None, None, Some(token)) => {
                if !token.starts_with("SharedAccessSignature ") {
                    return Err(bad("SharedAccessSignature must start with \"SharedAccessSignature \"".into()));
                }
                Credential::SharedAccessSignature(token)
            }
            (Some(_), None, _) => return Err(bad("SharedAccessKeyName is given without SharedAccessKey".into())),
            (None, Some(_), _) => return Err(bad("SharedAccessKey is given without SharedAccessKeyName".into())),
            (Some(_), Some(_), Some(_)) => {
                return Err(bad(
                    "give either SharedAccessKeyName/SharedAccessKey or SharedAccessSignature, not both".into()
                ));
            }
            (None, None, None) => {
                return Err(bad(
                    "no credential: add SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature".into(),
                ));
            }
        };
        Ok(Self { host, port, credential, entity_path, use_development_emulator: emulator })
    }

    /// Settings from parts: a namespace (`contoso` or `contoso.servicebus.windows.net`), a key name and a key.
    ///
    /// This is how the `SERVICE_BUS_NAMESPACE`, `SERVICE_BUS_POLICY_NAME` and
    /// `SERVICE_BUS_POLICY_KEY` variables map onto a connection.
    pub fn from_parts(namespace: &str, key_name: &str, key: &str) -> Result<Self, Error> {
        let namespace = namespace.trim();
        if namespace.is_empty() {
            return Err(Error::new(ErrorKind::InvalidConnectionString, "the namespace is empty"));
        }
        if key_name.is_empty() || key.is_empty() {
            return Err(Error::new(ErrorKind::InvalidConnectionString, "the key name and the key must not be empty"));
        }
        let (host, port) = if namespace.contains("://") || namespace.contains('.') || namespace.contains(':') {
            parse_endpoint(namespace)?
        } else {
            (format!("{namespace}.servicebus.windows.net"), None)
        };
        Ok(Self {
            host,
            port,
            credential: Credential::SharedKey { name: key_name.into(), key: key.into() },
            entity_path: None,
            use_development_emulator: false,
        })
    }

    /// Settings from the `SERVICE_BUS_NAMESPACE` / `SERVICE_BUS_POLICY_NAME` / `SERVICE_BUS_POLICY_KEY`
    /// variables, read through `lookup` (libraries read no environment themselves).
    /// `Ok(None)` when none of the three is set.
    pub fn from_variables(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, Error> {
        let ns = lookup("SERVICE_BUS_NAMESPACE");
        let name = lookup("SERVICE_BUS_POLICY_NAME");
        let key = lookup("SERVICE_BUS_POLICY_KEY");
        match (ns, name, key) {
            (None, None, None) => Ok(None),
            (Some(ns), Some(name), Some(key)) => Self::from_parts(&ns, &name, &key).map(Some),
            (ns, name, key) => {
                let missing: Vec<&str> = [
                    ("SERVICE_BUS_NAMESPACE", ns.is_none()),
                    ("SERVICE_BUS_POLICY_NAME", name.is_none()),
                    ("SERVICE_BUS_POLICY_KEY", key.is_none()),
                ]
                .into_iter()
                .filter_map(|(n, m)| m.then_some(n))
                .collect();
                Err(Error::new(
                    ErrorKind::InvalidConnectionString,
                    format!("{} must be set too", missing.join(" and ")),
                ))
            }
        }
    }

    /// The port to connect to: as given, else 5672 for the emulator, else 5671 (TLS).
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(if self.use_development_emulator { 5672 } else { 5671 })
    }

    /// The port for AMQP over WebSockets: the endpoint's, else 443 (80 for the development emulator).
    pub fn websocket_port(&self) -> u16 {
        self.port.unwrap_or(if self.use_development_emulator { 80 } else { 443 })
    }

    /// Whether the connection uses TLS (everything but the development emulator).
    pub fn uses_tls(&self) -> bool {
        !self.use_development_emulator
    }

    /// The namespace as the SDKs name it in audiences: the host, with the port when one was given
    /// (an IPv6 address in brackets).
    pub fn fully_qualified_namespace(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match self.port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }
}

fn parse_endpoint(endpoint: &str) -> Result<(String, Option<u16>), Error> {
    let bad = |m: String| Error::new(ErrorKind::InvalidConnectionString, m);
    let rest = match endpoint.split_once("://") {
        Some((scheme, rest)) => {
            if !matches!(scheme.to_ascii_lowercase().as_str(), "sb" | "amqp" | "amqps" | "https" | "http") {
                return Err(bad(format!("the Endpoint scheme {scheme:?} is not one of sb, amqp, amqps")));
            }
            rest
        }
        None => endpoint,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad(format!("the Endpoint {endpoint:?} has no host")));
    }
    // An IPv6 literal is bracketed: `[::1]` or `[::1]:5672`.
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or_else(|| {
            bad(format!("the Endpoint {endpoint:?} opens an IPv6 address with '[' but never closes it"))
        })?;
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad(format!("the Endpoint host [{address}] is not an IPv6 address")));
        }
        match after {
            "" => (address, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (address, Some(port)),
                None => return Err(bad(format!("the Endpoint {endpoint:?} has {after:?} after its IPv6 address"))),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return Err(bad(format!(
                    "the Endpoint host {authority:?} looks like an IPv6 address: write it in brackets, e.g. sb://[::1]:5672"
                )));
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad(format!("the Endpoint {endpoint:?} has no host")));
    }
    let port = match port {
        None => None,
        Some(port) => {
            let port: u16 =
                port.parse().map_err(|_| bad(format!("the Endpoint port {port:?} is not a number from 1 to 65535")))?;
            if port == 0 {
                return Err(bad("the Endpoint port must not be 0".into()));
            }
            Some(port)
        }
    };
    Ok((host.to_string(), port))
}

/// `localhost`, or an IPv4 or IPv6 loopback address: where a key may travel without TLS.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS12YWx1ZT0=";

    #[test]
    fn an_azure_connection_string_parses() {
        let cs = ConnectionString::parse(&format!(
            "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={KEY};EntityPath=orders"
        ))
        .unwrap();
        assert_eq!(cs.host, "contoso.servicebus.windows.net");
        assert_eq!(cs.port, None);
        assert_eq!(cs.effective_port(), 5671);
        assert!(cs.uses_tls());
        assert_eq!(cs.entity_path.as_deref(), Some("orders"));
        assert_eq!(cs.credential, Credential::SharedKey { name: "RootManageSharedAccessKey".into(), key: KEY.into() });
    }

    #[test]
    fn the_emulator_string_parses_with_and_without_a_port() {
        let cs = ConnectionString::parse(
            "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;",
        )
        .unwrap();
        assert!(cs.use_development_emulator && !cs.uses_tls());
        assert_eq!(cs.effective_port(), 5672);
        let cs = ConnectionString::parse(
            "Endpoint=sb://127.0.0.1:6000;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true",
        )
        .unwrap();
        assert_eq!((cs.host.as_str(), cs.effective_port()), ("127.0.0.1", 6000));
        assert_eq!(cs.fully_qualified_namespace(), "127.0.0.1:6000");
    }

    #[test]
    fn the_emulator_flag_is_refused_for_hosts_that_are_not_loopback() {
        let with = |host: &str| {
            ConnectionString::parse(&format!(
                "Endpoint=sb://{host};SharedAccessKeyName=a;SharedAccessKey=SECRET;UseDevelopmentEmulator=true"
            ))
        };
        for host in ["localhost", "LOCALHOST:5672", "127.0.0.1", "127.8.9.10:1", "[::1]", "[::1]:5672"] {
            with(host).unwrap();
        }
        for host in ["contoso.servicebus.windows.net", "10.0.0.5:5672", "localhost.evil.example", "[2001:db8::1]:5672"]
        {
            let e = with(host).unwrap_err().to_string();
            assert!(e.contains("only accepted for a loopback endpoint"), "{host}: {e}");
            assert!(!e.contains("SECRET"));
        }
        // Without the flag, the same hosts are fine (TLS).
        ConnectionString::parse("Endpoint=sb://10.0.0.5;SharedAccessKeyName=a;SharedAccessKey=b").unwrap();
    }

    #[test]
    fn ipv6_literal_endpoints_parse_with_and_without_a_port() {
        let cs = ConnectionString::parse(
            "Endpoint=sb://[::1]:5672/;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true",
        )
        .unwrap();
        assert_eq!((cs.host.as_str(), cs.port), ("::1", Some(5672)));
        assert_eq!(cs.fully_qualified_namespace(), "[::1]:5672");
        let cs = ConnectionString::parse("Endpoint=sb://[::1];SharedAccessKeyName=a;SharedAccessKey=b").unwrap();
        assert_eq!((cs.host.as_str(), cs.port, cs.fully_qualified_namespace().as_str()), ("::1", None, "[::1]"));
        for (endpoint, expected) in [
            ("sb://[::1", "never closes it"),
            ("sb://[nope]:1", "not an IPv6 address"),
            ("sb://[::1]x", "after its IPv6 address"),
            ("sb://::1:5672", "write it in brackets"),
            ("sb://[::1]:0", "must not be 0"),
        ] {
            let e = ConnectionString::parse(&format!("Endpoint={endpoint};SharedAccessKeyName=a;SharedAccessKey=b"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{endpoint}: {e}");
        }
    }

    #[test]
    fn a_shared_access_signature_is_accepted_and_never_printed() {
        let cs = ConnectionString::parse(
            "Endpoint=sb://h/;SharedAccessSignature=SharedAccessSignature sr=sb%3a%2f%2fh%2f&sig=SECRETSIG%3d&se=1&skn=k",
        )
        .unwrap();
        assert!(matches!(&cs.credential, Credential::SharedAccessSignature(t) if t.contains("sig=SECRETSIG")));
        assert!(!format!("{cs:?}").contains("SECRETSIG"));
    }

    #[test]
    fn errors_are_specific_and_never_show_the_key() {
        let cases = [
            ("SharedAccessKeyName=a;SharedAccessKey=SECRET", "the Endpoint is missing"),
            ("Endpoint=sb://h/;SharedAccessKeyName=a", "without SharedAccessKey"),
            ("Endpoint=sb://h/;SharedAccessKey=SECRET", "without SharedAccessKeyName"),
            ("Endpoint=sb://h/", "no credential"),
            ("Endpoint=sb://h/;SECRET", "part 2 has no '='"),
            ("Endpoint=sb://h:port/;SharedAccessKeyName=a;SharedAccessKey=SECRET", "port \"port\""),
            ("Endpoint=ftp://h/;SharedAccessKeyName=a;SharedAccessKey=SECRET", "scheme \"ftp\""),
            (
                "Endpoint=sb://h/;SharedAccessKeyName=a;SharedAccessKey=SECRET;UseDevelopmentEmulator=yes",
                "true or false",
            ),
            ("Endpoint=sb://h/;SharedAccessKeyName=a;SharedAccessKey=SECRET;Colour=red", "unknown key \"colour\""),
        ];
        for (text, expected) in cases {
            let e = ConnectionString::parse(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?} gave {e:?}");
            assert!(!e.contains("SECRET"), "{e:?} shows the key");
        }
    }

    #[test]
    fn values_may_contain_equals_signs() {
        let cs = ConnectionString::parse("Endpoint=sb://h/;SharedAccessKeyName=a;SharedAccessKey=abc==").unwrap();
        assert!(matches!(cs.credential, Credential::SharedKey { key, .. } if key == "abc=="));
    }

    #[test]
    fn parts_and_variables_map_onto_the_same_settings() {
        let a = ConnectionString::from_parts("contoso", "Send", "k").unwrap();
        assert_eq!(a.host, "contoso.servicebus.windows.net");
        let b = ConnectionString::from_parts("contoso.servicebus.windows.net", "Send", "k").unwrap();
        assert_eq!(a, b);
        let vars = |k: &str| match k {
            "SERVICE_BUS_NAMESPACE" => Some("contoso".to_string()),
            "SERVICE_BUS_POLICY_NAME" => Some("Send".to_string()),
            "SERVICE_BUS_POLICY_KEY" => Some("k".to_string()),
            _ => None,
        };
        assert_eq!(ConnectionString::from_variables(vars).unwrap(), Some(a));
        assert_eq!(ConnectionString::from_variables(|_| None).unwrap(), None);
        let partial = ConnectionString::from_variables(|k| (k == "SERVICE_BUS_NAMESPACE").then(|| "x".to_string()));
        let e = partial.unwrap_err().to_string();
        assert!(e.contains("SERVICE_BUS_POLICY_NAME and SERVICE_BUS_POLICY_KEY must be set too"), "{e}");
    }
}
