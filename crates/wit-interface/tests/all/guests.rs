//! Every guest in `guests/` builds to a component that wasmtime accepts, whose
//! imports and exports match the world it claims (and the revision the host tells from them),
//! and whose `configure()` runs (February 2024 draft).

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceTable, ResourceType};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wit_interface::{
    Client, DraftGuestPre, GuestError, MessageState, RequestOptions, Revision, ServicebusGuestPre, names,
};

/// The world each guest claims, and the revision it is of.
const CLAIMS: [(&str, &str, Revision); 5] = [
    ("sample-guest", "servicebus:messaging@0.1.0/servicebus-guest", Revision::Feb2024),
    ("test-guest", "servicebus:messaging@0.1.0/servicebus-guest", Revision::Feb2024),
    ("draft-guest", "wasi:messaging@0.2.0-draft/messaging", Revision::Feb2024),
    ("sample-handler", "wasi:messaging@0.2.0-draft/messaging-core", Revision::Dec2024),
    ("test-handler", "servicebus:messaging@0.2.0/servicebus-guest", Revision::Dec2024),
];

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

fn engine() -> Engine {
    Engine::new(&Config::new()).expect("default engine config is valid")
}

fn load(engine: &Engine, guest: &str) -> Result<Component> {
    let components = xtask::guests::ensure_built()?;
    let path = components.path(guest)?;
    Component::from_file(engine, &path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("loading {}", path.display()))
}

/// A linker with WASI, the messaging resource types, and every messaging and config function trapping.
///
/// (`Linker::define_unknown_imports_as_traps` would also stub the WASI imports by
/// their exact version, defeating the semver match with the linker's WASI.)
fn linker(engine: &Engine, component: &Component) -> Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    for (name, item) in component.component_type().imports(engine) {
        let ComponentItem::ComponentInstance(instance_ty) = item.ty else { continue };
        if !["wasi:messaging/", "servicebus:", "wasi:config/"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let mut instance = linker.instance(name)?;
        for (export, ty) in instance_ty.exports(engine) {
            match (export, ty.ty) {
                ("client", ComponentItem::Resource(_)) => {
                    instance.resource("client", ResourceType::host::<Client>(), |_, _| Ok(()))?
                }
                ("error", ComponentItem::Resource(_)) => {
                    instance.resource("error", ResourceType::host::<GuestError>(), |_, _| Ok(()))?
                }
                ("message", ComponentItem::Resource(_)) => {
                    instance.resource("message", ResourceType::host::<MessageState>(), |_, _| Ok(()))?
                }
                ("request-options", ComponentItem::Resource(_)) => {
                    instance.resource("request-options", ResourceType::host::<RequestOptions>(), |_, _| Ok(()))?
                }
                (func, ComponentItem::ComponentFunc(_)) => {
                    let what = format!("{name}#{func}");
                    instance.func_new(func, move |_, _, _, _| {
                        Err(wasmtime::format_err!("{what} is not provided in this test"))
                    })?
                }
                _ => {}
            }
        }
    }
    Ok(linker)
}

fn store(engine: &Engine, env: &[(&str, &str)]) -> Store<State> {
    let wasi = WasiCtx::builder().envs(env).build();
    Store::new(engine, State { wasi, table: ResourceTable::new() })
}

#[test]
fn the_guest_list_is_what_these_tests_cover() {
    let names = xtask::guests::guest_names().unwrap();
    let claimed: Vec<String> = {
        let mut v: Vec<String> = CLAIMS.iter().map(|(g, _, _)| g.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(names, claimed, "a guest was added or removed: say which world it claims in CLAIMS");
}

#[test]
fn every_guest_imports_and_exports_what_its_world_says() -> Result<()> {
    let engine = engine();
    for (guest, world, revision) in CLAIMS {
        check_claim(&engine, guest, world, revision)?;
    }
    Ok(())
}

#[test]
fn the_python_and_javascript_guests_are_components_of_upstreams_world() -> Result<()> {
    let engine = engine();
    for guest in xtask::componentize::GUESTS {
        check_claim(&engine, guest.name, "wasi:messaging@0.2.0-draft/messaging-core", Revision::Dec2024)?;
    }
    Ok(())
}

/// `guest` imports only what `world` (of `revision`'s WIT) and WASI 0.2 have, exports the
/// interfaces the world exports, and the host tells it is of `revision`.
fn check_claim(engine: &Engine, guest: &str, world: &str, revision: Revision) -> Result<()> {
    let (resolve, _) = match revision {
        Revision::Feb2024 => super::wit::resolve(),
        Revision::Dec2024 => super::wit::resolve_dec2024(),
    };
    let component = load(engine, guest)?;
    let ty = component.component_type();
    let imports: BTreeSet<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: BTreeSet<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let (world_imports, world_exports) = super::wit::world_interfaces(&resolve, world);
    assert_eq!(
        Revision::of(imports.iter().map(String::as_str), exports.iter().map(String::as_str)),
        Ok(revision),
        "{guest}"
    );
    let foreign: Vec<&String> = imports
        .iter()
        .filter(|i| !world_imports.contains(*i) && !names::WASI_IMPORT_PREFIXES.iter().any(|p| i.starts_with(p)))
        .collect();
    assert!(foreign.is_empty(), "{guest} imports {foreign:?}, which {world} does not have");
    let types = match revision {
        Revision::Feb2024 => names::MESSAGING_TYPES,
        Revision::Dec2024 => names::TYPES,
    };
    assert!(imports.contains(types), "{guest} should import {types}: {imports:?}");
    // Interfaces only: componentize-py adds a plain export of its own (`exports`).
    let interfaces: BTreeSet<String> = exports.into_iter().filter(|e| e.contains(':')).collect();
    assert_eq!(interfaces, world_exports, "{guest} exports differ from {world}");
    Ok(())
}

#[test]
fn the_draft_guest_imports_nothing_from_the_extension() -> Result<()> {
    let engine = engine();
    let component = load(&engine, "draft-guest")?;
    let imports: Vec<String> = component.component_type().imports(&engine).map(|(n, _)| n.to_string()).collect();
    assert!(imports.iter().all(|i| !i.starts_with("servicebus:")), "{imports:?}");
    assert!(imports.iter().any(|i| i == names::CONSUMER), "{imports:?}");
    Ok(())
}

#[test]
fn the_extension_guests_import_settlement() -> Result<()> {
    let engine = engine();
    for guest in ["sample-guest", "test-guest"] {
        let component = load(&engine, guest)?;
        let imports: Vec<String> = component.component_type().imports(&engine).map(|(n, _)| n.to_string()).collect();
        assert!(imports.iter().any(|i| i == names::SETTLEMENT), "{guest}: {imports:?}");
    }
    Ok(())
}

/// Instantiates `guest` as the servicebus world and returns what `configure()` gave.
async fn configure(guest: &str, env: &[(&str, &str)]) -> Result<(Vec<String>, Option<Vec<(String, String)>>)> {
    let engine = engine();
    let component = load(&engine, guest)?;
    let pre = ServicebusGuestPre::new(linker(&engine, &component)?.instantiate_pre(&component)?)?;
    let mut store = store(&engine, env);
    let bindings = pre.instantiate_async(&mut store).await?;
    let config = bindings
        .wasi_messaging_messaging_guest()
        .call_configure(&mut store)
        .await?
        .map_err(|e| anyhow::anyhow!("{guest}'s configure returned an error handle {}", e.rep()))?;
    Ok((config.channels, config.extensions))
}

#[tokio::test]
async fn the_sample_guest_asks_for_orders_and_payments() -> Result<()> {
    let (channels, extensions) = configure("sample-guest", &[]).await?;
    assert_eq!(channels, ["orders", "payments"]);
    assert_eq!(extensions, None);
    Ok(())
}

#[tokio::test]
async fn the_test_guest_takes_its_configuration_from_the_environment() -> Result<()> {
    let (channels, extensions) = configure("test-guest", &[]).await?;
    assert_eq!(channels, ["test-in"]);
    assert_eq!(extensions, None);
    let (channels, extensions) = configure(
        "test-guest",
        &[("TEST_GUEST_CHANNELS", "a,b/Subscriptions/c"), ("TEST_GUEST_EXTENSIONS", "prefetch=4,a.max-batch-size=2")],
    )
    .await?;
    assert_eq!(channels, ["a", "b/Subscriptions/c"]);
    assert_eq!(extensions, Some(vec![("prefetch".into(), "4".into()), ("a.max-batch-size".into(), "2".into())]));
    Ok(())
}

#[tokio::test]
async fn the_draft_guest_runs_as_either_world() -> Result<()> {
    let (channels, _) = configure("draft-guest", &[]).await?;
    assert_eq!(channels, ["draft-in"]);

    let engine = engine();
    let component = load(&engine, "draft-guest")?;
    let pre = DraftGuestPre::new(linker(&engine, &component)?.instantiate_pre(&component)?)?;
    let mut store = store(&engine, &[]);
    let bindings = pre.instantiate_async(&mut store).await?;
    let config = bindings.wasi_messaging_messaging_guest().call_configure(&mut store).await?;
    assert_eq!(config.map(|c| c.channels).ok(), Some(vec!["draft-in".to_string()]));
    Ok(())
}
