//! The management endpoint (HTTP, port 5300 by default): `GET /health`, and the Service Bus
//! administration REST API the official administration clients speak (ATOM entries,
//! SAS-authorized with the `Manage` right): queues, topics, subscriptions and rules are
//! made, read, changed, listed and deleted, with their runtime counts.
//!
//! One port serves plain HTTP and, when the emulator has a certificate, HTTPS: the first byte
//! of a connection tells them apart (a TLS handshake starts with 0x16). The SDKs' administration
//! clients speak only HTTPS; Microsoft's emulator, and .NET with `UseDevelopmentEmulator=true`,
//! plain HTTP.
//!
//! Layout: [`http`] reads requests and writes responses; [`xml`] reads request bodies; [`atom`]
//! turns descriptions into settings and entities into entries; this file routes and authorizes.

mod atom;
mod http;
mod xml;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::auth::{self, Rights};
use crate::connection::Shared;
use crate::namespace::EntityError;
use crate::rules::{Rule, RuleConfig};
use atom::Description;
use http::{Request, Response};

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;
/// How long a connection may take to send a request (or to start TLS).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries in one page of a list, unless `$top` asks for fewer.
const DEFAULT_PAGE: usize = 100;

const ATOM_ENTRY: &str = "application/atom+xml;type=entry;charset=utf-8";
const ATOM_FEED: &str = "application/atom+xml;type=feed;charset=utf-8";
const XML: &str = "application/xml; charset=utf-8";

/// Serves the management endpoint on `listener` until `stop` changes.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("management endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let (shared, tls, mut stop) = (shared.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = connection(stream, tls, shared) => {}
                _ = stop.changed() => {}
            }
            tracing::trace!(%peer, "management connection ended");
        });
    }
}

/// One connection: TLS if it starts with a handshake and a certificate is configured.
async fn connection(stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>, shared: Arc<Shared>) {
    let mut first = [0u8; 1];
    let is_tls = match tokio::time::timeout(REQUEST_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == 0x16,
        _ => return,
    };
    match (is_tls, tls) {
        (true, Some(acceptor)) => match tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => requests(s, &shared).await,
            Ok(Err(e)) => tracing::debug!("management endpoint: TLS handshake failed: {e}"),
            Err(_) => tracing::debug!("management endpoint: TLS handshake timed out"),
        },
        (true, None) => {
            tracing::debug!("management endpoint: a TLS client, and no certificate (--tls-cert) to answer it")
        }
        (false, _) => requests(stream, &shared).await,
    }
}

/// Answers requests on one connection until it ends.
async fn requests<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, shared: &Shared) {
    let mut buf = BytesMut::new();
    loop {
        let request = match tokio::time::timeout(REQUEST_TIMEOUT, http::read_request(&mut io, &mut buf)).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                if let Some(response) = e.response() {
                    let _ = http::write_response(&mut io, &response, true).await;
                }
                return;
            }
        };
        let mut response = handle(&request, shared);
        // What the request changed is on disk (with --data-dir) before it is acknowledged.
        let barrier = crate::storage::take_barrier();
        if let (Some(storage), true) = (shared.namespace.storage(), barrier > 0)
            && let Err(e) = storage.durable(barrier).await
        {
            response = failure(500, e.to_string());
        }
        tracing::debug!(method = %request.method, path = %request.path, status = response.status, "management request");
        let close = request.wants_close();
        if http::write_response(&mut io, &response, close).await.is_err() || close {
            return;
        }
    }
}

/// An error answer in the service's format.
fn failure(status: u16, detail: impl AsRef<str>) -> Response {
    Response::new(status, XML, atom::error(status, detail.as_ref()))
}

impl From<EntityError> for Response {
    fn from(e: EntityError) -> Self {
        let status = match e {
            EntityError::AlreadyExists(_) => 409,
            EntityError::NotFound(_) => 404,
            _ => 400,
        };
        failure(status, e.to_string())
    }
}

/// Answers one request.
fn handle(request: &Request, shared: &Shared) -> Response {
    if request.path.eq_ignore_ascii_case("health") || request.path.eq_ignore_ascii_case("healthz") {
        return Response::new(200, "text/plain; charset=utf-8", "Healthy");
    }
    if request.query("api-version").is_none() {
        return failure(400, "the api-version query parameter is required (e.g. api-version=2021-05)");
    }
    if let Err(detail) = authorize(request, shared) {
        return failure(401, detail);
    }
    dispatch(request, shared)
}

/// Answers an authorized request.
fn dispatch(request: &Request, shared: &Shared) -> Response {
    let host = request.header("host").unwrap_or("localhost").to_string();
    let ctx = Ctx { shared, base: format!("https://{host}"), host };
    match route(&request.path) {
        Target::NamespaceInfo if request.method == "GET" => Response::new(
            200,
            ATOM_ENTRY,
            atom::namespace_entry(&ctx.base, shared.namespace.name(), shared.namespace.created_ms()),
        ),
        Target::List(kind) if request.method == "GET" => ctx.list(kind, request),
        Target::Entity(name) => ctx.entity(request, &name),
        Target::Subscriptions(topic) if request.method == "GET" => ctx.subscriptions(request, &topic),
        Target::Subscription(topic, name) => ctx.subscription(request, &topic, &name),
        Target::Rules(topic, sub) if request.method == "GET" => ctx.rules(request, &topic, &sub),
        Target::Rule(topic, sub, name) => ctx.rule(request, &topic, &sub, &name),
        _ => failure(405, format!("{} is not supported on /{}", request.method, request.path)),
    }
}

/// Checks the `Authorization` header: a SAS token for this endpoint, of a key with `Manage`.
fn authorize(request: &Request, shared: &Shared) -> Result<(), String> {
    let token = request.header("authorization").ok_or(
        "the request has no Authorization header: send a SharedAccessSignature token of a key with the Manage right",
    )?;
    let grant = auth::validate(token, &request.path, &shared.keys, auth::now_secs()).map_err(|e| e.to_string())?;
    if !grant.rights.contains(Rights::MANAGE) {
        return Err("Manage claim(s) are required for this operation: sign with a key that has the Manage right".into());
    }
    Ok(())
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    NamespaceInfo,
    /// `$Resources/queues` or `$Resources/topics`.
    List(Listed),
    /// A queue or topic.
    Entity(String),
    Subscriptions(String),
    Subscription(String, String),
    Rules(String, String),
    Rule(String, String, String),
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    Queues,
    Topics,
}

/// Splits a path at its `Subscriptions` and `Rules` segments (entity names may hold `/`; a
/// list may be asked for with a trailing `/`, as the Node client does).
fn route(path: &str) -> Target {
    let path = path.trim_end_matches('/');
    let lower = path.to_ascii_lowercase();
    match lower.as_str() {
        "$namespaceinfo" => return Target::NamespaceInfo,
        "$resources/queues" => return Target::List(Listed::Queues),
        "$resources/topics" => return Target::List(Listed::Topics),
        "" => return Target::Unknown,
        _ => {}
    }
    let Some(i) = lower.find("/subscriptions") else { return Target::Entity(path.to_string()) };
    let topic = path[..i].to_string();
    let rest = &path[i + "/subscriptions".len()..];
    let Some(rest) = rest.strip_prefix('/').filter(|r| !r.is_empty()) else {
        return if rest.is_empty() { Target::Subscriptions(topic) } else { Target::Unknown };
    };
    let lower_rest = rest.to_ascii_lowercase();
    match lower_rest.find("/rules") {
        None => Target::Subscription(topic, rest.to_string()),
        Some(j) => {
            let sub = rest[..j].to_string();
            match rest[j + "/rules".len()..].strip_prefix('/') {
                None if j + "/rules".len() == rest.len() => Target::Rules(topic, sub),
                Some(rule) if !rule.is_empty() => Target::Rule(topic, sub, rule.to_string()),
                _ => Target::Unknown,
            }
        }
    }
}

/// What every handler needs: the namespace and keys, and how to write ids.
struct Ctx<'a> {
    shared: &'a Shared,
    /// `https://host[:port]`: entry ids start with it.
    base: String,
    host: String,
}

impl Ctx<'_> {
    fn entry(&self, status: u16, body: String) -> Response {
        Response::new(status, ATOM_ENTRY, body)
    }

    /// An empty feed: what the service answers a `GET` of something that does not exist.
    fn nothing(&self, path: &str) -> Response {
        Response::new(200, ATOM_FEED, atom::feed(&self.base, path, "Publicly Listed Services", &[]))
    }

    /// The page of `items` that `$skip` and `$top` ask for, each rendered (only those).
    fn page<T>(
        &self,
        request: &Request,
        path: &str,
        title: &str,
        items: &[T],
        render: impl Fn(&T) -> String,
    ) -> Response {
        let number = |name: &str, default: usize| request.query(name).and_then(|v| v.parse().ok()).unwrap_or(default);
        let (skip, top) = (number("$skip", 0), number("$top", DEFAULT_PAGE));
        let page: Vec<String> = items.iter().skip(skip).take(top).map(render).collect();
        Response::new(200, ATOM_FEED, atom::feed(&self.base, path, title, &page))
    }

    fn list(&self, kind: Listed, request: &Request) -> Response {
        let (queues, topics) = self.shared.namespace.all();
        match kind {
            Listed::Queues => self.page(request, "$Resources/queues", "queues", &queues, |q| {
                atom::queue_entry(&self.base, &self.host, q)
            }),
            Listed::Topics => {
                self.page(request, "$Resources/topics", "topics", &topics, |t| atom::topic_entry(&self.base, t))
            }
        }
    }

    /// A queue or topic: get, create or update (`If-Match`), delete.
    fn entity(&self, request: &Request, name: &str) -> Response {
        let ns = &self.shared.namespace;
        match request.method.as_str() {
            "GET" => match (ns.queue(name), ns.topic(name)) {
                (Ok(q), _) => self.entry(200, atom::queue_entry(&self.base, &self.host, &q)),
                (_, Ok(t)) => self.entry(200, atom::topic_entry(&self.base, &t)),
                _ => self.nothing(name),
            },
            "DELETE" => match ns.delete(name) {
                Ok(()) => Response::new(200, XML, ""),
                Err(e) => e.into(),
            },
            "PUT" => {
                if let Err(e) = crate::config::check_entity_name(name) {
                    return failure(400, e);
                }
                let description = match body(request).and_then(|b| atom::parse_entry(b, "")) {
                    Ok(d) => d,
                    Err(e) => return failure(400, e),
                };
                let update = request.header("if-match").is_some();
                match description {
                    Description::Queue(p) => self.put_queue(name, p, update),
                    Description::Topic(p) => match (update, ns.topic(name)) {
                        (true, Ok(t)) => match ns.update_topic(&t, p) {
                            Ok(()) => self.entry(200, atom::topic_entry(&self.base, &t)),
                            Err(e) => e.into(),
                        },
                        (true, Err(e)) => e.into(),
                        (false, _) => match ns.create_topic(name, p) {
                            Ok(t) => self.entry(201, atom::topic_entry(&self.base, &t)),
                            Err(e) => e.into(),
                        },
                    },
                    _ => failure(400, format!("/{name} takes a QueueDescription or a TopicDescription")),
                }
            }
            other => failure(405, format!("{other} is not supported on /{name}")),
        }
    }

    fn put_queue(&self, name: &str, properties: crate::queue::QueueProperties, update: bool) -> Response {
        let ns = &self.shared.namespace;
        let done = match update {
            true => ns.queue(name).and_then(|q| ns.update_queue(&q, properties).map(|()| (200, q))),
            false => ns.create_queue(name, properties).map(|q| (201, q)),
        };
        match done {
            Ok((status, queue)) => self.entry(status, atom::queue_entry(&self.base, &self.host, &queue)),
            Err(e) => e.into(),
        }
    }

    fn subscriptions(&self, request: &Request, topic: &str) -> Response {
        let Ok(t) = self.shared.namespace.topic(topic) else { return self.nothing(topic) };
        let mut subs = t.subscriptions();
        subs.sort_by(|a, b| a.name().cmp(b.name()));
        self.page(request, &format!("{topic}/Subscriptions"), "Subscriptions", &subs, |s| {
            atom::subscription_entry(&self.base, &self.host, t.name(), own_name(s.name()), s)
        })
    }

    /// A subscription: get, create or update, delete.
    fn subscription(&self, request: &Request, topic: &str, name: &str) -> Response {
        let ns = &self.shared.namespace;
        let path = format!("{topic}/Subscriptions/{name}");
        let found = ns
            .topic(topic)
            .and_then(|t| t.subscription(name).map(|s| (t, s)).ok_or(EntityError::NotFound(path.clone())));
        let write = |t: &crate::namespace::Topic, s: &crate::queue::Queue, status| {
            self.entry(status, atom::subscription_entry(&self.base, &self.host, t.name(), own_name(s.name()), s))
        };
        match request.method.as_str() {
            "GET" => match found {
                Ok((t, s)) => write(&t, &s, 200),
                Err(_) => self.nothing(&path),
            },
            "DELETE" => match ns.delete(&path) {
                Ok(()) => Response::new(200, XML, ""),
                Err(e) => e.into(),
            },
            "PUT" => {
                if let Err(e) = crate::config::check_entity_name(name).and_then(|()| match name.contains('/') {
                    true => Err(format!("invalid subscription name {name:?}: a subscription's name has no '/'")),
                    false => Ok(()),
                }) {
                    return failure(400, e);
                }
                let (properties, default_rule) = match body(request).and_then(|b| atom::parse_entry(b, "")) {
                    Ok(Description::Subscription { properties, default_rule }) => (properties, default_rule),
                    Ok(_) => return failure(400, format!("/{path} takes a SubscriptionDescription")),
                    Err(e) => return failure(400, e),
                };
                if request.header("if-match").is_some() {
                    let (t, s) = match found {
                        Ok(x) => x,
                        Err(e) => return e.into(),
                    };
                    return match ns.update_queue(&s, t.props().bound(properties)) {
                        Ok(()) => write(&t, &s, 200),
                        Err(e) => e.into(),
                    };
                }
                let made = ns.create_subscription(topic, name, properties, default_rule.into_iter().collect());
                match (made, ns.topic(topic)) {
                    (Ok(s), Ok(t)) => write(&t, &s, 201),
                    (Err(e), _) | (_, Err(e)) => e.into(),
                }
            }
            other => failure(405, format!("{other} is not supported on /{path}")),
        }
    }

    fn rules(&self, request: &Request, topic: &str, sub: &str) -> Response {
        let path = format!("{topic}/Subscriptions/{sub}/Rules");
        let Some(s) = self.shared.namespace.topic(topic).ok().and_then(|t| t.subscription(sub)) else {
            return self.nothing(&path);
        };
        let (created, _) = s.times_ms();
        let rules = s.rules().map(|r| r.list()).unwrap_or_default();
        self.page(request, &path, "Rules", &rules, |r| atom::rule_entry(&self.base, topic, sub, r, created))
    }

    /// A rule: get, create or replace (`If-Match`), delete.
    fn rule(&self, request: &Request, topic: &str, sub: &str, name: &str) -> Response {
        let path = format!("{topic}/Subscriptions/{sub}/Rules/{name}");
        let ns = &self.shared.namespace;
        let Some(s) = ns.topic(topic).ok().and_then(|t| t.subscription(sub)) else {
            return match request.method.as_str() {
                "GET" => self.nothing(&path),
                _ => EntityError::NotFound(format!("{topic}/Subscriptions/{sub}")).into(),
            };
        };
        let rules = s.rules().expect("a subscription has rules");
        let now = crate::message::now_ms();
        let find = |name: &str| rules.list().into_iter().find(|r| r.name.eq_ignore_ascii_case(name));
        match request.method.as_str() {
            "GET" => match find(name) {
                Some(r) => self.entry(200, atom::rule_entry(&self.base, topic, sub, &r, now)),
                None => self.nothing(&path),
            },
            "DELETE" => match ns.change_rules(&s, |rules| rules.remove(name)) {
                true => Response::new(200, XML, ""),
                false => EntityError::NotFound(path).into(),
            },
            "PUT" => {
                let config: RuleConfig = match body(request).and_then(|b| atom::parse_entry(b, name)) {
                    Ok(Description::Rule(r)) => RuleConfig { name: name.to_string(), ..r },
                    Ok(_) => return failure(400, format!("/{path} takes a RuleDescription")),
                    Err(e) => return failure(400, e),
                };
                let rule = match Rule::compile(config.clone()) {
                    Ok(r) => r,
                    Err(e) => return EntityError::from(e).into(),
                };
                let update = request.header("if-match").is_some();
                let done = ns.change_rules(&s, |rules| match update && !rules.remove(name) {
                    true => Err(EntityError::NotFound(path).into()),
                    false => rules.add(rule).map_err(|e| failure(409, e.to_string())),
                });
                match done {
                    Ok(()) => self
                        .entry(if update { 200 } else { 201 }, atom::rule_entry(&self.base, topic, sub, &config, now)),
                    Err(response) => response,
                }
            }
            other => failure(405, format!("{other} is not supported on /{path}")),
        }
    }
}

/// A subscription's own name, from its path (`topic/Subscriptions/name`).
fn own_name(path: &str) -> &str {
    path.rsplit_once("/Subscriptions/").map_or(path, |(_, n)| n)
}

fn body(request: &Request) -> Result<&str, String> {
    std::str::from_utf8(&request.body).map_err(|_| "the body is not UTF-8".to_string())
}

/// Reads requests from `bytes` and answers each as if it were authorized (the fuzz target
/// `emulator_admin`: the HTTP reader, the XML and ATOM readers, and the operations).
#[cfg(feature = "fuzzing")]
pub(crate) async fn fuzz(mut bytes: &[u8], shared: &Shared) {
    let mut buf = BytesMut::new();
    while let Ok(Some(request)) = http::read_request(&mut bytes, &mut buf).await {
        let _ = dispatch(&request, shared);
    }
}

#[cfg(test)]
mod tests;
