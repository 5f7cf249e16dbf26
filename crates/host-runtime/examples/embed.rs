//! Service Bus messaging in a Wasmtime program of your own.
//!
//! This program has its own store type ([`App`]) and its own linker. It tells which revision
//! of `wasi:messaging` the guest targets, adds WASI and that revision's messaging imports to
//! the linker, receives a message itself, runs the guest's handler on it (`handler` of the
//! February 2024 draft, or `incoming-handler.handle` of the December 2024 revision), and has
//! what the guest left unsettled settled by the host's matrix (complete after `ok`, abandon
//! after an error). The guest settles and sends through the same imports as under
//! `messaging-host`.
//!
//! With the emulator running (`cargo xtask run` starts one with `orders` and `payments`),
//! and an order on `orders`:
//!
//! ```text
//! cargo run -p host-runtime --example embed -- target/components/sample-guest.wasm \
//!     "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"
//! ```
//!
//! The tests compile this file and call [`run`] against the emulator
//! (`crates/host-runtime/tests/all/embed.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use amqp_servicebus::{ClientOptions, ReceiverOptions, ServiceBusClient};
use anyhow::{Context as _, Result};
use host_runtime::delivery::DeliveryState;
use host_runtime::links::DEFAULT_CONNECTION;
use host_runtime::messaging::{self, CallCtx, Messaging, MessagingCtx};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wit_interface::{Revision, ServicebusGuest, dec2024};

/// The program's own store data: WASI, the resource table WASI and messaging share, and the
/// two messaging contexts (the process's, and this call's).
struct App {
    wasi: WasiCtx,
    table: ResourceTable,
    messaging: Arc<MessagingCtx>,
    call: CallCtx,
}

impl WasiView for App {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl App {
    /// Where the messaging imports find their view of the store.
    fn messaging(&mut self) -> Messaging<'_> {
        Messaging::new(&self.messaging, &mut self.call, &mut self.table)
    }
}

/// Receives one message from `channel` (waiting up to 10 s), runs `component`'s handler on it
/// with the guest allowed to send to `allowed`, settles what it left, and returns how the
/// message ended.
pub(crate) async fn run(
    component: &Path,
    connection_string: &str,
    channel: &str,
    allowed: &[&str],
) -> Result<DeliveryState> {
    let engine = Engine::new(&Config::new())?;
    let component = Component::from_file(&engine, component)
        .map_err(|e| anyhow::anyhow!("loading the component {}: {e:#}", component.display()))?;
    let ty = component.component_type();
    let (imports, exports): (Vec<String>, Vec<String>) = (
        ty.imports(&engine).map(|(n, _)| n.to_string()).collect(),
        ty.exports(&engine).map(|(n, _)| n.to_string()).collect(),
    );
    let revision = Revision::of(imports.iter().map(String::as_str), exports.iter().map(String::as_str))?;
    let mut linker = Linker::<App>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    messaging::add_to_linker(&mut linker, revision, App::messaging)?;

    let client = ServiceBusClient::new(connection_string, ClientOptions::default())?;
    let mut ctx = MessagingCtx::builder().connection(DEFAULT_CONNECTION, client);
    for channel in allowed {
        ctx = ctx.allow(channel);
    }
    let ctx = Arc::new(ctx.build()?);

    // The program receives the message itself, and makes it a delivery the guest can settle.
    let receiver = ctx
        .links()
        .receiver(DEFAULT_CONNECTION, channel, ReceiverOptions::default())
        .context("the default connection exists")?;
    let message = receiver
        .receive(1, Duration::from_secs(10))
        .await?
        .pop()
        .with_context(|| format!("no message arrived on {channel} within 10 s"))?;
    let delivery = ctx.delivery(channel, message, receiver);

    let app = App {
        wasi: WasiCtx::builder().inherit_stdout().inherit_stderr().build(),
        table: ResourceTable::new(),
        messaging: ctx.clone(),
        call: CallCtx::new(channel, std::slice::from_ref(&delivery)),
    };
    let mut store = Store::new(&engine, app);
    let failure = match revision {
        Revision::Feb2024 => {
            let guest = ServicebusGuest::instantiate_async(&mut store, &component, &linker).await?;
            let messages = [delivery.guest_message()];
            let result = guest.wasi_messaging_messaging_guest().call_handler(&mut store, &messages).await?;
            result.err().map(|e| store.data_mut().messaging().take_error(e).to_string())
        }
        Revision::Dec2024 => {
            let guest = dec2024::ServicebusGuest::instantiate_async(&mut store, &component, &linker).await?;
            // The message is a handle: its state, which names the delivery, in the store's table.
            let message = store.data_mut().table.push(delivery.message_state())?;
            let result = guest.wasi_messaging_incoming_handler().call_handle(&mut store, message).await?;
            result.err().map(|e| format!("{e:?}"))
        }
    };
    if let Some(error) = &failure {
        tracing::warn!("the handler returned an error: {error}");
    }
    let succeeded = failure.is_none();
    // What the guest pulled belongs to the call too.
    ctx.settle_leftovers(&store.data().call.deliveries(), succeeded).await;
    ctx.close().await;
    Ok(delivery.state())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info")).init();
    let mut args = std::env::args().skip(1);
    let (Some(component), Some(connection_string)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: embed <component.wasm> <connection string> [channel] (the channel defaults to orders)");
    };
    let channel = args.next().unwrap_or_else(|| "orders".into());
    let state = run(Path::new(&component), &connection_string, &channel, &["payments", "review"]).await?;
    tracing::info!("{channel}: the message ended {state:?}");
    Ok(())
}
