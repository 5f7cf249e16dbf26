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
use wit_interface::{Revision, names};

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
         a guest of the February 2024 draft exports {feb} and imports only WASI 0.2 and {feb_imports};\n  \
         a guest of the December 2024 revision exports {dec} and imports only WASI 0.2 and {dec_imports}",
        feb = Revision::Feb2024.export(),
        feb_imports = Revision::Feb2024.imports().join(", "),
        dec = Revision::Dec2024.export(),
        dec_imports = Revision::Dec2024.imports().join(", "),
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
    /// The revision of `wasi:messaging` it targets.
    pub revision: Revision,
    /// Whether it imports the extension's `settlement`.
    pub imports_settlement: bool,
    /// Whether the compiled artifact came from the cache.
    pub from_cache: bool,
    stop_ticker: Arc<AtomicBool>,
}

impl std::fmt::Debug for LoadedGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedGuest")
            .field("revision", &self.revision)
            .field("imports_settlement", &self.imports_settlement)
            .finish_non_exhaustive()
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
    let (revision, imports_settlement) = check_world(&engine, &component, &shown)?;

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
    Ok(LoadedGuest { engine, component, settings, path: shown, revision, imports_settlement, from_cache, stop_ticker })
}

/// Checks the component's imports and exports: its revision, and whether it imports the
/// extension's `settlement`.
fn check_world(engine: &Engine, component: &Component, path: &str) -> Result<(Revision, bool), LoadError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let revision =
        Revision::of(imports.iter().map(String::as_str), exports.iter().map(String::as_str)).map_err(|e| {
            let listed = |names: &[String]| if names.is_empty() { "(nothing)".into() } else { names.join(", ") };
            LoadError::WrongWorld {
                path: path.into(),
                problem: e.to_string(),
                imports: listed(&imports),
                exports: listed(&exports),
            }
        })?;
    let settlement = match revision {
        Revision::Feb2024 => names::SETTLEMENT,
        Revision::Dec2024 => names::SETTLEMENT_DEC2024,
    };
    Ok((revision, imports.iter().any(|i| i == settlement)))
}
