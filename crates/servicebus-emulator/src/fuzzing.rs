//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a stable API): each
//! parser that reads a peer's bytes, reachable without a socket. Each returns normally for
//! any input; a panic, an abort or a hang is a bug.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::auth::{self, Keys, Rights};
use crate::config::{Config, QueueConfig};
use crate::connection::{self, Shared};
use crate::management::{self, ManagementContext, Request};
use crate::message::{Stamp, StoredMessage};
use crate::namespace::Namespace;
use crate::queue::{Queue, QueueProperties};
use crate::{Limits, TopicConfig};

/// One runtime and namespace for every call: the fuzzer calls these millions of times.
struct World {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        // Small entities: what the inputs send stays bounded over a long run.
        let small = |name: &str| QueueConfig {
            name: name.into(),
            properties: QueueProperties { max_size_megabytes: 1, ..QueueProperties::default() },
        };
        let config = Config {
            queues: vec![small("q")],
            topics: vec![TopicConfig {
                properties: Default::default(),
                name: "t".into(),
                subscriptions: vec![small("s")],
                rules: Default::default(),
            }],
            ..Config::default()
        };
        let namespace = runtime
            .block_on(async { Arc::new(Namespace::new(&config, u64::MAX).expect("the fuzzing namespace is valid")) });
        let keys = Keys::default().with_rights("sender", "sender-key", Rights::SEND);
        let shared = Arc::new(Shared { namespace, keys, max_message_size: 256 * 1024, limits: Limits::default() });
        World { runtime, shared }
    })
}

/// Runs the management endpoint on `bytes` as a stream of HTTP requests, each answered as if
/// authorized, against a namespace of its own (what the requests make does not outlive them).
pub fn admin(bytes: &[u8]) {
    let world = world();
    world.runtime.block_on(async {
        let config = Config { queues: vec![], ..Config::default() };
        let shared = Shared {
            namespace: Arc::new(Namespace::new(&config, 16 << 20).expect("an empty namespace is valid")),
            keys: Keys::default(),
            max_message_size: 256 * 1024,
            limits: Limits::default(),
        };
        crate::admin::fuzz(bytes, &shared).await;
    });
}

/// Runs one connection's engine on `bytes` as everything the peer sends, then the peer's end
/// of the stream. The first byte picks what comes first: 0, the AMQP protocol header; 1, the
/// SASL header; anything else, nothing (the bytes themselves must be a header).
pub fn connection(bytes: &[u8]) {
    const AMQP: &[u8; 8] = b"AMQP\x00\x01\x00\x00";
    const SASL: &[u8; 8] = b"AMQP\x03\x01\x00\x00";
    let Some((&first, rest)) = bytes.split_first() else { return };
    let mut input = match first {
        0 => AMQP.to_vec(),
        1 => SASL.to_vec(),
        _ => Vec::new(),
    };
    input.extend_from_slice(rest);
    let world = world();
    world.runtime.block_on(async {
        let (mut peer, server) = tokio::io::duplex(1 << 20);
        let (_control, control_rx) = mpsc::unbounded_channel();
        let engine = tokio::spawn(connection::serve(server, world.shared.clone(), control_rx, "fuzz".into()));
        let (mut read, mut write) = tokio::io::split(&mut peer);
        let talk = async {
            let _ = write.write_all(&input).await;
            let _ = write.shutdown().await;
        };
        let listen = async {
            let mut sink = Vec::new();
            let _ = read.read_to_end(&mut sink).await;
        };
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(talk, listen);
            let _ = engine.await;
        })
        .await;
        assert!(ended.is_ok(), "the connection did not end within 5 s of its peer's end of stream");
    });
}

/// A `$cbs` or `$management` request message, as the body of one delivery.
pub fn request(bytes: &[u8]) {
    let Ok(request) = Request::parse(bytes) else { return };
    let mut authorizations = auth::Authorizations::default();
    let _ = management::put_token(&request, &Keys::default(), &mut authorizations);
    let world = world();
    let _guard = world.runtime.enter();
    // A plain queue, and a session queue whose session "s" this connection holds.
    let plain = Queue::new("q", QueueProperties { max_size_megabytes: 1, ..QueueProperties::default() });
    let sessions = Queue::new(
        "sq",
        QueueProperties { max_size_megabytes: 1, requires_session: true, ..QueueProperties::default() },
    );
    let held = [sessions.lock_session("s").expect("a new queue's session is free")];
    let namespace = crate::namespace::Namespace::empty();
    for (queue, held) in [(&plain, &[][..]), (&sessions, &held[..])] {
        let _ = management::management(
            &request,
            ManagementContext {
                queue,
                namespace: &namespace,
                authorize: &|_| Ok(()),
                on_settled: &mut |_| {},
                sessions: held,
                max_state_size: 1024,
            },
        );
    }
}

/// A sent message's sections, as one message (format 0) or a batch (`batch`).
pub fn message(bytes: &[u8], batch: bool) {
    let format = if batch { crate::message::BATCH_FORMAT } else { 0 };
    if let Ok(messages) = StoredMessage::parse_transfer(&Bytes::copy_from_slice(bytes), format) {
        for m in messages {
            let _ = m.encode(Stamp::default());
        }
    }
}

/// A SAS token presented for `audience`.
pub fn sas_token(token: &str, audience: &str) {
    let keys = Keys::default().with_rights("sender", "sender-key", Rights::SEND);
    let _ = auth::validate(token, audience, &keys, auth::now_secs());
}

/// A subscription rule's SQL, as a filter (then printed and parsed back, which must give the
/// same tree, and evaluated against a message with a few properties) and as an action (the
/// same, then applied to it).
pub fn sql_rule(text: &str) {
    use crate::rules::sql::{self, Props};
    use fe2o3_amqp_types::primitives::SimpleValue;
    let mut props = Props {
        label: Some("order".into()),
        size: 1024,
        user: vec![
            ("color".into(), SimpleValue::String("blue".into())),
            ("quantity".into(), SimpleValue::Long(7)),
            ("price".into(), SimpleValue::Double(2.5.into())),
            ("nothing".into(), SimpleValue::Null),
        ],
        ..Props::default()
    };
    // What parses prints as SQL that parses back to the same tree.
    if let Ok(predicate) = sql::parse_filter(text) {
        round_trip(&predicate.to_string(), &predicate, sql::parse_filter);
        let _ = sql::matches(&predicate, &props);
    }
    if let Ok(statements) = sql::parse_action(text) {
        let printed = statements.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        round_trip(&printed, &statements, sql::parse_action);
        sql::apply(&statements, &mut props);
    }
}

/// `printed` parses back to `tree`, unless printing (which parenthesizes fully) made it longer
/// or deeper than a rule may be.
fn round_trip<T: PartialEq + std::fmt::Debug>(
    printed: &str,
    tree: &T,
    parse: impl Fn(&str) -> Result<T, crate::rules::SqlError>,
) {
    match parse(printed) {
        Ok(back) => assert_eq!(&back, tree, "{printed}"),
        Err(e) if e.message.contains("nested more than") || e.message.contains("characters long") => {}
        Err(e) => panic!("the printed form of a parsed rule does not parse: {printed}\n{e}"),
    }
}
