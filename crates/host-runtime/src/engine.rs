//! The Wasmtime engine, and loading the guest (with a compiled-artifact cache).
//!
//! The component is compiled once and kept in the cache directory (`cache`); a
//! restart loads the artifact in microseconds instead of compiling. Its imports and
//! exports are checked here; linking it is `instance`'s (the host's store and linker).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wit_interface::names;

use crate::cache;

/// How often the epoch advances: the granularity of handler deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of a pooled linear memory reset in place rather than decommitted (see `engine()`).
const KEEP_RESIDENT_MEMORY: usize = 2 << 20;
/// The same for a pooled table.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

/// Why the guest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file does not exist or cannot be read.
    #[error("cannot read the component {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The file is a core WebAssembly module, not a component.
    #[error(
        "{path} is a core WebAssembly module, not a component: build the guest for wasm32-wasip2 \
         (cargo build --target wasm32-wasip2), which writes a component"
    )]
    CoreModule {
        /// The file.
        path: String,
    },
    /// The file is not WebAssembly.
    #[error("{path} is not a WebAssembly component (it does not start with the wasm magic bytes)")]
    NotWasm {
        /// The file.
        path: String,
    },
    /// The component does not export the messaging guest, or imports what the host does not provide.
    #[error(
        "{path} is not a wasi:messaging guest: {problem}\n  it imports: {imports}\n  it exports: {exports}\n  \
         a guest exports {guest} and imports only WASI 0.2, {draft} (and optionally {extension})",
        guest = names::MESSAGING_GUEST,
        draft = names::DRAFT_IMPORTS.join(", "),
        extension = names::EXTENSION_IMPORTS.join(", ")
    )]
    WrongWorld {
        /// The file.
        path: String,
        /// What is missing or extra.
        problem: String,
        /// What it imports.
        imports: String,
        /// What it exports.
        exports: String,
    },
    /// Compilation or linking failed.
    #[error("cannot compile or link {path}: {message}")]
    Compile {
        /// The file.
        path: String,
        /// Wasmtime's message.
        message: String,
    },
}

/// Engine limits for guests.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Memory cap of one instance, in bytes.
    pub max_memory: usize,
    /// Instances alive at once (the pool's size).
    pub max_instances: u32,
    /// Where compiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self { max_memory: 64 << 20, max_instances: 1000, cache_dir: None }
    }
}

/// The loaded guest: engine, compiled component, and the epoch ticker.
pub struct LoadedGuest {
    pub(crate) engine: Engine,
    pub(crate) component: Component,
    pub(crate) settings: EngineSettings,
    /// Where it was loaded from (for errors).
    pub(crate) path: String,
    /// Whether it imports the extension (else it is a draft-only guest).
    pub imports_settlement: bool,
    /// Whether the compiled artifact came from the cache.
    pub from_cache: bool,
    stop_ticker: Arc<AtomicBool>,
}

impl std::fmt::Debug for LoadedGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedGuest").field("imports_settlement", &self.imports_settlement).finish_non_exhaustive()
    }
}

impl Drop for LoadedGuest {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

fn engine(settings: &EngineSettings) -> Result<Engine, String> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.max_wasm_stack(1 << 20);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(settings.max_instances);
    pool.total_core_instances(settings.max_instances.saturating_mul(4));
    pool.total_memories(settings.max_instances.saturating_mul(2));
    pool.total_tables(settings.max_instances.saturating_mul(4));
    pool.total_stacks(settings.max_instances);
    pool.max_memory_size(settings.max_memory);
    // A fresh instance per message must not pay for page faults on memory its slot's previous
    // instance already touched. With PAGEMAP_SCAN (Linux 6.7+) Wasmtime finds the pages that
    // instance dirtied and resets just those in place (up to these many bytes; the rest is
    // decommitted), so they stay resident: no madvise, no TLB shootdown, no fault on next use.
    // This halves a fresh dispatch (BENCHMARKS.md). Without the ioctl, Wasmtime falls back to
    // decommitting as before.
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    pool.linear_memory_keep_resident(KEEP_RESIDENT_MEMORY.min(settings.max_memory));
    pool.table_keep_resident(KEEP_RESIDENT_TABLE);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| format!("{e:#}"))
}

/// Loads, checks and pre-instantiates the guest at `path`.
pub fn load(path: &Path, settings: EngineSettings) -> Result<LoadedGuest, LoadError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| LoadError::Read { path: shown.clone(), message: e.to_string() })?;
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => return Err(LoadError::CoreModule { path: shown }),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
        _ => return Err(LoadError::NotWasm { path: shown }),
    }
    let compile = |m: String| LoadError::Compile { path: shown.clone(), message: m };
    let engine = engine(&settings).map_err(compile)?;
    let (component, from_cache) =
        cache::compile_cached(&engine, &bytes, settings.cache_dir.as_deref()).map_err(compile)?;
    let imports_settlement = check_world(&engine, &component, &shown)?;

    let stop_ticker = Arc::new(AtomicBool::new(false));
    let ticker_engine = engine.weak();
    let stop = stop_ticker.clone();
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match ticker_engine.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
            }
        })
        .map_err(|e| compile(format!("cannot start the epoch ticker: {e}")))?;
    Ok(LoadedGuest { engine, component, settings, path: shown, imports_settlement, from_cache, stop_ticker })
}

/// Checks the component's imports and exports; returns whether it imports the extension.
fn check_world(engine: &Engine, component: &Component, path: &str) -> Result<bool, LoadError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let wrong = |problem: String| LoadError::WrongWorld {
        path: path.into(),
        problem,
        imports: if imports.is_empty() { "(nothing)".into() } else { imports.join(", ") },
        exports: if exports.is_empty() { "(nothing)".into() } else { exports.join(", ") },
    };
    if !exports.iter().any(|e| e == names::MESSAGING_GUEST) {
        return Err(wrong(format!("it does not export {}", names::MESSAGING_GUEST)));
    }
    let provided = |i: &str| {
        names::DRAFT_IMPORTS.contains(&i)
            || names::EXTENSION_IMPORTS.contains(&i)
            || names::WASI_IMPORT_PREFIXES.iter().any(|p| i.starts_with(p))
    };
    let unknown: Vec<&String> = imports.iter().filter(|i| !provided(i)).collect();
    if !unknown.is_empty() {
        return Err(wrong(format!(
            "it imports {} that this host does not provide",
            unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(imports.iter().any(|i| i == names::SETTLEMENT))
}
