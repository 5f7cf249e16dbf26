//! Claims-based security: SAS tokens put on `$cbs` per audience, and renewed at four fifths
//! of their lifetime for as long as the connection lives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use fe2o3_amqp_management::error::Error as ManagementError;
use fe2o3_amqp_types::primitives::Timestamp;
use tokio::sync::Mutex;

use crate::connection_string::Credential;
use crate::error::{Error, ErrorKind, Result};
use crate::options::ClientOptions;
use crate::sas;

/// The tokens put on one connection: audience → expiry (Unix seconds; `u64::MAX` never).
#[derive(Debug, Default)]
pub(super) struct Tokens(StdMutex<HashMap<String, u64>>);

impl Tokens {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a token that covers `audience` is valid for a few more seconds.
    fn covers(&self, audience: &str, now: u64) -> bool {
        self.map().iter().any(|(a, exp)| {
            *exp > now + 5 && (audience == a || audience.strip_prefix(a.as_str()).is_some_and(|r| r.starts_with('/')))
        })
    }
}

/// The `$cbs` node of one connection, with the tokens put on it.
pub(super) struct Cbs {
    client: Mutex<CbsClient>,
    tokens: Tokens,
    credential: Credential,
    options: ClientOptions,
}

impl Cbs {
    pub(super) fn new(client: CbsClient, credential: Credential, options: ClientOptions) -> Arc<Self> {
        Arc::new(Self { client: Mutex::new(client), tokens: Tokens::default(), credential, options })
    }

    /// Puts a token for `audience` unless a valid one is already there.
    pub(super) async fn authorize(&self, audience: &str, entity: &str) -> Result<()> {
        if self.tokens.covers(audience, now_secs()) {
            return Ok(());
        }
        let expires = self.put(audience).await.map_err(|e| e.in_entity(entity))?;
        self.tokens.map().insert(audience.to_string(), expires);
        Ok(())
    }

    /// Puts a token for `audience`; returns its expiry (Unix seconds). Errors name no entity:
    /// the caller knows which.
    async fn put(&self, audience: &str) -> Result<u64> {
        let (token, expires) = match &self.credential {
            Credential::SharedKey { name, key } => sas::token_for(audience, name, key, self.options.token_lifetime),
            Credential::SharedAccessSignature(t) => (t.clone(), sas::expiry_of(t).unwrap_or(u64::MAX)),
            Credential::Anonymous => return Ok(u64::MAX),
        };
        let expiry = sas::expiry_millis(expires).map(Timestamp::from_milliseconds);
        let mut client = self.client.lock().await;
        let put =
            client.put_token(audience.to_string(), CbsToken::new(token, "servicebus.windows.net:sastoken", expiry));
        match tokio::time::timeout(self.options.operation_timeout, put).await {
            Err(_) => Err(Error::new(ErrorKind::Timeout, format!("the $cbs put-token for {audience} got no answer"))),
            Ok(Ok(())) => Ok(expires),
            Ok(Err(e)) => Err(refusal(e, audience)),
        }
    }

    /// Renews tokens at four fifths of their lifetime until the task is aborted (with its connection).
    pub(super) async fn refresh(self: Arc<Self>) {
        if !matches!(self.credential, Credential::SharedKey { .. }) {
            return; // A fixed SAS token cannot be renewed.
        }
        let lifetime = self.options.token_lifetime.as_secs().max(1);
        let margin = (lifetime / 5).max(1);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = now_secs();
            let due: Vec<String> = self
                .tokens
                .map()
                .iter()
                .filter(|(_, exp)| **exp != u64::MAX && **exp <= now.saturating_add(margin))
                .map(|(a, _)| a.clone())
                .collect();
            for audience in due {
                match self.put(&audience).await {
                    Ok(expires) => {
                        tracing::debug!(%audience, expires, "token renewed");
                        self.tokens.map().insert(audience, expires);
                    }
                    Err(e) => {
                        tracing::warn!(%audience, "renewing the token failed: {e}");
                        if !e.is_transient() {
                            self.tokens.map().remove(&audience);
                        }
                    }
                }
            }
        }
    }
}

/// What a refused put-token means: the status code the `$cbs` node answered says it.
fn refusal(e: ManagementError, audience: &str) -> Error {
    let what = format!("$cbs refused the token for {audience}");
    let kind = match &e {
        ManagementError::Status(status) => match status.code.0.get() {
            401 | 403 => ErrorKind::Unauthorized,
            404 => ErrorKind::NotFound,
            408 => ErrorKind::Timeout,
            503 => ErrorKind::ServerBusy,
            _ => ErrorKind::Protocol,
        },
        _ => ErrorKind::Connection,
    };
    Error::new(kind, what).because(e)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_covers_its_audience_and_paths_below_it_until_it_nearly_expires() {
        let tokens = Tokens::default();
        tokens.map().insert("sb://ns/q".into(), 1_000);
        assert!(tokens.covers("sb://ns/q", 900));
        assert!(tokens.covers("sb://ns/q/$management", 900));
        assert!(!tokens.covers("sb://ns/q2", 900), "a sibling with the same prefix is not covered");
        assert!(!tokens.covers("sb://ns/q", 996), "a token about to expire is put again");
    }
}
