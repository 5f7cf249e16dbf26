//! Emulator throughput: send + receive (peek-lock) + complete of 1 KiB messages,
//! on one connection and on four, each connection with its own sender, receiver
//! and queue. Clients are fe2o3-amqp's, in the same process.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::ReceiverSettleMode;
use fe2o3_amqp::types::messaging::Message;
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use servicebus_emulator::{Config, Emulator, QueueConfig, QueueProperties};

const MESSAGES_PER_CONNECTION: usize = 2000;
const PAYLOAD: usize = 1024;
/// Sends in flight before waiting for their outcomes.
const WINDOW: usize = 200;

struct Client {
    _connection: ConnectionHandle<()>,
    _session: SessionHandle<()>,
    sender: Sender,
    receiver: Receiver,
}

async fn client(emulator: &Emulator, queue: &str) -> Client {
    let url = format!("amqp://RootManageSharedAccessKey:SAS_KEY_VALUE@{}", emulator.local_addr());
    let mut connection = Connection::open(format!("bench-{queue}"), url.as_str()).await.unwrap();
    let mut session =
        Session::builder().incoming_window(100_000).outgoing_window(100_000).begin(&mut connection).await.unwrap();
    let sender = Sender::attach(&mut session, format!("s-{queue}"), queue).await.unwrap();
    let receiver = Receiver::builder()
        .name(format!("r-{queue}"))
        .source(queue)
        .receiver_settle_mode(ReceiverSettleMode::Second)
        .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Auto(WINDOW as u32))
        .attach(&mut session)
        .await
        .unwrap();
    Client { _connection: connection, _session: session, sender, receiver }
}

/// Sends `n` messages and, concurrently, receives and completes `n`.
async fn round(c: &mut Client, n: usize) {
    let body = Binary::from(vec![7u8; PAYLOAD]);
    let Client { sender, receiver, .. } = c;
    let send = async {
        let mut pending = Vec::with_capacity(WINDOW);
        for _ in 0..n {
            let fut = sender.send_batchable(Message::builder().data(body.clone()).build()).await.unwrap();
            pending.push(fut);
            if pending.len() == WINDOW {
                for f in pending.drain(..) {
                    assert!(f.await.unwrap().is_accepted());
                }
            }
        }
        for f in pending {
            assert!(f.await.unwrap().is_accepted());
        }
    };
    let receive = async {
        for _ in 0..n {
            let d = receiver
                .recv::<fe2o3_amqp::types::messaging::Body<fe2o3_amqp::types::primitives::Value>>()
                .await
                .unwrap();
            receiver.accept(&d).await.unwrap();
        }
    };
    tokio::join!(send, receive);
}

fn throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("emulator_send_receive_complete_1KiB");
    group.sample_size(10).measurement_time(Duration::from_secs(15)).warm_up_time(Duration::from_secs(2));
    for connections in [1usize, 4] {
        let queues: Vec<String> = (0..connections).map(|i| format!("bench-{i}")).collect();
        let config = Config {
            queues: queues
                .iter()
                .map(|q| QueueConfig { name: q.clone(), properties: QueueProperties::default() })
                .collect(),
            ..Config::default()
        };
        let (emulator, clients) = runtime.block_on(async {
            let emulator =
                Emulator::builder().config(config).bind("127.0.0.1:0".parse().unwrap()).start().await.unwrap();
            let mut clients = Vec::new();
            for q in &queues {
                clients.push(client(&emulator, q).await);
            }
            (emulator, clients)
        });
        let mut clients: Vec<Option<Client>> = clients.into_iter().map(Some).collect();
        group.throughput(Throughput::Elements((MESSAGES_PER_CONNECTION * connections) as u64));
        group.bench_function(BenchmarkId::new("connections", connections), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let tasks: Vec<_> = clients
                            .iter_mut()
                            .map(|slot| {
                                let mut c = slot.take().unwrap();
                                tokio::spawn(async move {
                                    round(&mut c, MESSAGES_PER_CONNECTION).await;
                                    c
                                })
                            })
                            .collect();
                        for (slot, t) in clients.iter_mut().zip(tasks) {
                            *slot = Some(t.await.unwrap());
                        }
                        total += start.elapsed();
                    }
                    total
                })
            })
        });
        drop(clients);
        runtime.block_on(emulator.shutdown());
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
