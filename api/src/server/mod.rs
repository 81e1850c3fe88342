//! `tally serve`: the HTTP API (`/v1`, JSON, errors as `application/problem+json`).
//!
//! [`router`] builds the whole API from an [`AppState`] (tests drive it with `oneshot`, no
//! socket); [`serve`] opens the ledger in the data directory, binds, prints
//! `listening on http://ADDR` and serves until SIGTERM or ctrl-c. Every ledger call and every
//! wasm execution runs on tokio's blocking pool. See `docs/api.md`.

mod audit;
mod auth;
mod error;
mod extract;
mod functions;
mod invoices;
mod metrics;
mod modules;
mod openapi;
mod plans;
mod store;
mod tenants;
mod usage;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use tally_instrument::CostTable;
use tally_ledger::{FunctionId, Ledger, ModuleId, SqliteLedger, Tenant, TenantId};
use tally_runtime::{DeadlineChecks, Prepared, Runtime, RuntimeConfig};

pub use error::ApiError;

use extract::BodyLimit;

/// Default largest module upload, in bytes.
pub const MODULE_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// Default largest request body other than a module (an invocation's stdin, JSON), in bytes.
pub const BODY_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Default longest time a client may take to send a request's headers once its connection is
/// ready for them (also the longest a keep-alive connection stays idle), in seconds.
pub const HEADER_READ_SECONDS_DEFAULT: u64 = 30;
/// Longest time a request body may take to arrive (a 16 MiB module at 280 KB/s), in seconds.
pub const BODY_READ_SECONDS_MAX: u64 = 60;
/// Default largest op budget of one invocation.
pub const OPS_PER_INVOCATION_MAX_DEFAULT: u64 = 10_000_000_000;
/// Default largest linear memory of one invocation, in bytes.
pub const MEMORY_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
/// Default longest wall time of one invocation, in milliseconds.
pub const WALL_MS_MAX_DEFAULT: u64 = 10_000;
/// Default largest output (stdout plus stderr) of one invocation, in bytes.
pub const OUTPUT_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Default most invocations running at once (more wait for a slot).
pub const INVOCATIONS_CONCURRENT_MAX_DEFAULT: usize = 32;
/// Default most module uploads instrumented and compiled at once (more wait for a slot).
/// Preparing a module takes about 260 bytes of memory per byte of module at its peak (regex.wasm:
/// 858 KB, 222 MB), so a 16 MiB upload can take 4 GiB; both steps already use every core.
pub const UPLOADS_CONCURRENT_MAX_DEFAULT: usize = 2;
/// Most cached tenant keys (the cache is cleared when full or when a key is revoked).
pub const KEY_CACHE_ENTRIES_MAX: usize = 10_000;
/// Most guest arguments plus environment variables of a function.
pub const FUNCTION_ARGS_MAX: usize = 256;
/// Most functions loaded (and their modules deserialized from the on-disk cache) at start-up;
/// the others are loaded on their first invocation.
pub const FUNCTIONS_WARMED_MAX: usize = 10_000;

const _: () = assert!(MODULE_BYTES_MAX_DEFAULT <= tally_instrument::MODULE_BYTES_MAX);
const _: () = assert!(OPS_PER_INVOCATION_MAX_DEFAULT <= tally_instrument::OPS_MAX);
const _: () = assert!(OUTPUT_BYTES_MAX_DEFAULT <= BODY_BYTES_MAX_DEFAULT * 16);

/// Server-wide maximums; a function's limits may only be lower.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Largest module upload, in bytes.
    pub module_bytes_max: usize,
    /// Largest other request body, in bytes.
    pub body_bytes_max: usize,
    /// Largest op budget.
    pub ops_max: u64,
    /// Largest linear memory, in bytes.
    pub memory_bytes_max: u64,
    /// Longest wall time, in milliseconds.
    pub wall_ms_max: u64,
    /// Largest output, in bytes.
    pub output_bytes_max: usize,
    /// Most invocations running at once.
    pub invocations_concurrent_max: usize,
    /// Most module uploads being instrumented and compiled at once.
    pub uploads_concurrent_max: usize,
    /// How the wall-time limit is enforced.
    pub deadline_checks: DeadlineChecks,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            module_bytes_max: MODULE_BYTES_MAX_DEFAULT,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            ops_max: OPS_PER_INVOCATION_MAX_DEFAULT,
            memory_bytes_max: MEMORY_BYTES_MAX_DEFAULT,
            wall_ms_max: WALL_MS_MAX_DEFAULT,
            output_bytes_max: OUTPUT_BYTES_MAX_DEFAULT,
            invocations_concurrent_max: INVOCATIONS_CONCURRENT_MAX_DEFAULT,
            uploads_concurrent_max: UPLOADS_CONCURRENT_MAX_DEFAULT,
            deadline_checks: DeadlineChecks::Epoch,
        }
    }
}

impl ServerLimits {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.module_bytes_max <= tally_instrument::MODULE_BYTES_MAX,
            "--max-module-bytes is above {}",
            tally_instrument::MODULE_BYTES_MAX
        );
        anyhow::ensure!(
            self.ops_max <= tally_instrument::OPS_MAX,
            "--max-ops is above {}",
            tally_instrument::OPS_MAX
        );
        anyhow::ensure!(
            self.memory_bytes_max <= 4 * 1024 * 1024 * 1024,
            "--max-memory-bytes is above 4 GiB"
        );
        anyhow::ensure!(
            self.output_bytes_max <= 64 * 1024 * 1024,
            "--max-output-bytes is above 64 MiB"
        );
        anyhow::ensure!(
            self.invocations_concurrent_max > 0,
            "--max-concurrency must be positive"
        );
        anyhow::ensure!(
            self.uploads_concurrent_max > 0,
            "--max-concurrent-uploads must be positive"
        );
        Ok(())
    }
}

/// Arguments of `tally serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Data directory (SQLite ledger, module files, admin token).
    #[arg(long, value_name = "DIR", default_value = "./tally-data")]
    pub data: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The admin token; if absent, DIR/admin-token is used, or one is generated and written there.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Cost table used to instrument uploaded modules (a preset name).
    #[arg(long, default_value = "default")]
    pub cost_table: String,
    /// Largest module upload, in bytes.
    #[arg(long, default_value_t = MODULE_BYTES_MAX_DEFAULT)]
    pub max_module_bytes: usize,
    /// Largest other request body (stdin of an invocation, JSON), in bytes.
    #[arg(long, default_value_t = BODY_BYTES_MAX_DEFAULT)]
    pub max_body_bytes: usize,
    /// Largest op budget of one invocation.
    #[arg(long, default_value_t = OPS_PER_INVOCATION_MAX_DEFAULT)]
    pub max_ops: u64,
    /// Largest linear memory of one invocation, in bytes.
    #[arg(long, default_value_t = MEMORY_BYTES_MAX_DEFAULT)]
    pub max_memory_bytes: u64,
    /// Longest wall time of one invocation, in milliseconds.
    #[arg(long, default_value_t = WALL_MS_MAX_DEFAULT)]
    pub max_wall_ms: u64,
    /// Largest output (stdout plus stderr) of one invocation, in bytes.
    #[arg(long, default_value_t = OUTPUT_BYTES_MAX_DEFAULT)]
    pub max_output_bytes: usize,
    /// Most invocations running at once.
    #[arg(long, default_value_t = INVOCATIONS_CONCURRENT_MAX_DEFAULT)]
    pub max_concurrency: usize,
    /// Most module uploads instrumented and compiled at once (more wait for a slot).
    #[arg(long, default_value_t = UPLOADS_CONCURRENT_MAX_DEFAULT)]
    pub max_concurrent_uploads: usize,
    /// Seconds a client may take to send a request's headers (and a keep-alive connection may
    /// stay idle) before its connection is closed.
    #[arg(long, default_value_t = HEADER_READ_SECONDS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_secs: u64,
    /// How --max-wall-ms (and a function's max_wall_ms) is enforced: `epoch` checks it in
    /// compiled code at every loop and function entry, so it stops any guest, at a run-time
    /// cost; `host-calls` checks it only when the guest calls the host and leaves code that
    /// never does to its op budget (no run-time cost; for trusted code or small budgets).
    #[arg(long, value_enum, default_value_t = DeadlineChecksArg::Epoch)]
    pub deadline_checks: DeadlineChecksArg,
}

/// The values of `--deadline-checks`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineChecksArg {
    /// wasmtime epoch interruption.
    Epoch,
    /// Only at calls into the host.
    HostCalls,
}

impl From<DeadlineChecksArg> for DeadlineChecks {
    fn from(arg: DeadlineChecksArg) -> DeadlineChecks {
        match arg {
            DeadlineChecksArg::Epoch => DeadlineChecks::Epoch,
            DeadlineChecksArg::HostCalls => DeadlineChecks::HostCalls,
        }
    }
}

impl ServeArgs {
    fn limits(&self) -> ServerLimits {
        ServerLimits {
            module_bytes_max: self.max_module_bytes,
            body_bytes_max: self.max_body_bytes,
            ops_max: self.max_ops,
            memory_bytes_max: self.max_memory_bytes,
            wall_ms_max: self.max_wall_ms,
            output_bytes_max: self.max_output_bytes,
            invocations_concurrent_max: self.max_concurrency,
            uploads_concurrent_max: self.max_concurrent_uploads,
            deadline_checks: self.deadline_checks.into(),
        }
    }
}

/// A function ready to run.
pub(crate) struct FunctionEntry {
    pub id: FunctionId,
    pub module: ModuleId,
    pub config: wire::FunctionConfig,
    pub prepared: Arc<Prepared>,
}

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    ledger: Arc<dyn Ledger>,
    runtime: Runtime,
    costs: Arc<CostTable>,
    limits: ServerLimits,
    admin_token_sha256: [u8; 32],
    store: store::Store,
    prepared: Mutex<HashMap<ModuleId, Arc<Prepared>>>,
    functions: Mutex<FunctionCache>,
    keys: Mutex<HashMap<[u8; 32], Tenant>>,
    metrics: metrics::Metrics,
    invoke_slots: tokio::sync::Semaphore,
    /// Held by an upload from before it is instrumented until it is compiled and stored, also
    /// when its client goes away meanwhile (the work on the blocking pool does not stop).
    upload_slots: Arc<tokio::sync::Semaphore>,
}

/// Functions ready to run, by (tenant, name).
#[derive(Default)]
struct FunctionCache {
    entries: HashMap<(TenantId, String), Arc<FunctionEntry>>,
    /// Bumped, under the same lock, whenever a function changes. A loader reads it before it
    /// reads the function from the ledger and caches what it built only if it is unchanged, so
    /// an update that lands while a first invocation loads the old version cannot leave the old
    /// version cached.
    generation: u64,
}

impl AppState {
    /// State over a ledger and a data directory (module files, replies).
    pub fn new(
        ledger: Arc<dyn Ledger>,
        data_dir: PathBuf,
        admin_token: &str,
        cost_table: &str,
        limits: ServerLimits,
    ) -> anyhow::Result<AppState> {
        limits.check()?;
        let costs = CostTable::preset(cost_table).with_context(|| {
            format!(
                "unknown cost table {cost_table:?} (presets: {})",
                tally_instrument::PRESETS.join(", ")
            )
        })?;
        // One pooled instance slot per concurrent invocation (the semaphore below caps them),
        // each sized for the server-wide memory maximum.
        let runtime = Runtime::new(&RuntimeConfig {
            deadline_checks: limits.deadline_checks,
            pooling_instances: u32::try_from(limits.invocations_concurrent_max)
                .context("too many concurrent invocations")?,
            pooling_memory_bytes: limits.memory_bytes_max,
            cache_dir: Some(data_dir.join("cache")),
            ..RuntimeConfig::default()
        })
        .context("starting the runtime")?;
        let store = store::Store::open(data_dir)?;
        Ok(AppState {
            inner: Arc::new(Inner {
                ledger,
                runtime,
                costs: Arc::new(costs),
                invoke_slots: tokio::sync::Semaphore::new(limits.invocations_concurrent_max),
                upload_slots: Arc::new(tokio::sync::Semaphore::new(limits.uploads_concurrent_max)),
                limits,
                admin_token_sha256: auth::digest(admin_token),
                store,
                prepared: Mutex::new(HashMap::new()),
                functions: Mutex::new(FunctionCache::default()),
                keys: Mutex::new(HashMap::new()),
                metrics: metrics::Metrics::default(),
            }),
        })
    }

    /// Unix milliseconds: the API is the only place with a clock.
    pub fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    fn cached_key(&self, digest: &[u8; 32]) -> Option<Tenant> {
        lock(&self.inner.keys).get(digest).cloned()
    }

    fn cache_key(&self, digest: [u8; 32], tenant: Tenant) {
        let mut keys = lock(&self.inner.keys);
        if keys.len() >= KEY_CACHE_ENTRIES_MAX {
            keys.clear();
        }
        keys.insert(digest, tenant);
    }

    fn forget_keys(&self) {
        lock(&self.inner.keys).clear();
    }

    /// Loads up to [`FUNCTIONS_WARMED_MAX`] functions with their compiled modules (deserialized
    /// from the on-disk cache after a restart) and instantiates each once, so that a first
    /// invocation pays for none of it (blocking). A function that cannot be loaded is logged
    /// and left for its first invocation to report. Returns how many were loaded.
    pub fn warm_blocking(&self) -> anyhow::Result<usize> {
        let ledger = &self.inner.ledger;
        let mut loaded = 0;
        'tenants: for tenant in ledger.list_tenants()? {
            let generation = self.functions_generation();
            for function in ledger.list_functions(tenant.id)? {
                if loaded == FUNCTIONS_WARMED_MAX {
                    break 'tenants;
                }
                match self.load_function_blocking(&function, generation) {
                    Ok(entry) => {
                        self.inner.runtime.warm(&entry.prepared);
                        loaded += 1;
                    }
                    Err(error) => tracing::warn!(
                        tenant = tenant.id.0,
                        function = function.name,
                        "not loaded at start-up: {error:?}"
                    ),
                }
            }
        }
        Ok(loaded)
    }
}

/// Locks a mutex, ignoring poisoning (the maps hold plain caches).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn route_not_found() -> ApiError {
    ApiError::RouteNotFound
}

/// Request bodies of a declared length up to this are read before the request is routed.
const EARLY_READ_BYTES_MAX: u64 = 1 << 20;

/// Reads a small request body before routing, so that an answer given without looking at the
/// body (401 for a missing key, 404, 405) still finds it consumed. hyper closes a connection
/// whose request body is left unread, and a client still sending that body then sees a reset
/// instead of the answer. Bodies without a declared length, or larger than
/// [`EARLY_READ_BYTES_MAX`], stream to their handler as before (an unauthenticated large
/// upload is still cut off, not read).
async fn read_small_body(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .filter(|&length| length > 0 && length <= EARLY_READ_BYTES_MAX);
    let Some(length) = declared else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    // The same time limit as the handlers' own body reads.
    let seconds = BODY_READ_SECONDS_MAX;
    let read = axum::body::to_bytes(body, length as usize);
    match tokio::time::timeout(std::time::Duration::from_secs(seconds), read).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Ok(Err(error)) => {
            ApiError::InvalidRequest(format!("reading the request body: {error}")).into_response()
        }
        Err(_) => ApiError::BodyTimeout { seconds }.into_response(),
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let body_max = state.inner.limits.body_bytes_max;
    let module_max = state.inner.limits.module_bytes_max;
    let uploads = Router::new()
        .route(
            "/v1/modules",
            post(modules::upload_module).get(modules::list_modules),
        )
        .layer(DefaultBodyLimit::max(module_max))
        .layer(axum::Extension(BodyLimit(module_max)));
    let api = Router::new()
        .route("/healthz", get(metrics::healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route(
            "/v1/tenants",
            post(tenants::create_tenant).get(tenants::list_tenants),
        )
        .route("/v1/tenants/{tenant}", get(tenants::get_tenant))
        .route(
            "/v1/tenants/{tenant}/keys",
            post(tenants::create_key).get(tenants::list_keys),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}",
            axum::routing::delete(tenants::revoke_key),
        )
        .route(
            "/v1/tenants/{tenant}/subscriptions",
            post(plans::subscribe).get(plans::list_subscriptions),
        )
        .route("/v1/plans", post(plans::create_plan).get(plans::list_plans))
        .route("/v1/plans/{plan}", get(plans::get_plan))
        .route("/v1/plans/{plan}/versions", post(plans::add_version))
        .route("/v1/modules/{module}", get(modules::get_module))
        .route(
            "/v1/modules/{module}/original",
            get(modules::download_original),
        )
        .route(
            "/v1/modules/{module}/instrumented",
            get(modules::download_instrumented),
        )
        .route("/v1/functions", get(functions::list_functions))
        .route(
            "/v1/functions/{name}",
            put(functions::put_function).get(functions::get_function),
        )
        .route("/v1/functions/{name}/invoke", post(functions::invoke))
        .route("/v1/usage", get(usage::list_usage))
        .route("/v1/usage/daily", get(usage::daily_usage))
        .route("/v1/usage/{id}", get(usage::get_usage))
        .route(
            "/v1/invoices",
            post(invoices::finalize_invoice).get(invoices::list_invoices),
        )
        .route("/v1/invoices/draft", post(invoices::draft_invoice))
        .route("/v1/invoices/{id}", get(invoices::get_invoice))
        .route("/v1/invoices/{id}/void", post(invoices::void_invoice))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/audit/records/{id}", get(audit::audit_record))
        .layer(DefaultBodyLimit::max(body_max))
        .layer(axum::Extension(BodyLimit(body_max)));
    Router::new()
        .merge(uploads)
        .merge(api)
        .fallback(route_not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(read_small_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track_http,
        ))
        .with_state(state)
}

fn admin_token(args: &ServeArgs) -> anyhow::Result<String> {
    if let Some(token) = &args.admin_token {
        anyhow::ensure!(
            token.len() >= 16,
            "the admin token must be at least 16 characters"
        );
        return Ok(token.clone());
    }
    let path = args.data.join("admin-token");
    if path.exists() {
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        println!("admin token: read from {}", path.display());
        return Ok(token.trim().to_owned());
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = format!("tla_{}", hex::encode(random));
    store::write_private(&path, token.as_bytes())?;
    println!("admin token: {token} (saved in {})", path.display());
    Ok(token)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Runs `tally serve` until SIGTERM or ctrl-c.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let limits = args.limits();
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let token = admin_token(&args)?;
    let data = args.data.clone();
    let ledger = tokio::task::spawn_blocking(move || SqliteLedger::open(&data))
        .await?
        .with_context(|| format!("opening the ledger in {}", args.data.display()))?;
    let state = AppState::new(
        Arc::new(ledger),
        args.data.clone(),
        &token,
        &args.cost_table,
        limits,
    )?;
    let warming = state.clone();
    let started = std::time::Instant::now();
    let warmed = tokio::task::spawn_blocking(move || warming.warm_blocking()).await??;
    tracing::info!(
        functions = warmed,
        "functions loaded in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr()?;
    {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on http://{local}")?;
        stdout.flush()?;
    }
    tracing::info!(data = %args.data.display(), "tally serve listening on {local}");
    let header_timeout = std::time::Duration::from_secs(args.header_timeout_secs);
    serve_connections(listener, router(state), header_timeout, shutdown_signal()).await;
    Ok(())
}

/// Accepts connections until `shutdown` resolves, then waits for the requests in flight.
///
/// Like `axum::serve`, plus what it lacks: a client must send a request's headers within
/// `header_timeout` of the connection (or its previous response) being ready for them, so
/// idle and slow-header connections are closed instead of held forever.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Status helper for handlers answering 201.
pub(crate) const CREATED: StatusCode = StatusCode::CREATED;

#[cfg(test)]
mod tests;
