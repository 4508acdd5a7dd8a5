//! The Toktra simulator: an in-process HTTP server that stands in for Toktra in the tests, the
//! benchmarks, `rotator demo` and `rotator toktra-sim`. It implements the contract in
//! `../shared/toktra-api.md` (OAuth clients, API keys, access tokens, usage, pagination, rate
//! limits), including the parts the real docs leave open, and deliberately behaves like the
//! contract rather than like a happy path: [`Faults`] inject latency, errors, rate limits, dropped
//! connections and lost or late creates, and [`Dialect`] switches each reading of an open question
//! at start or at run time. It is a product of its own beside the client ([`crate::toktra`]) and
//! imports nothing from the rest of the crate.
//!
//! Surface: `/v1/...` is the API (faults, rate limits and auth apply); `/_sim/credentials`,
//! `/_sim/faults` and `/_sim/dialect` (GET, PUT replaces) and `/_sim/stats` are the
//! unauthenticated test view, never subject to faults or limits; [`Simulator`] offers the same
//! view in-process.
//!
//! Parts, each with the invariant it keeps:
//! - `state`: credentials, access tokens and counters behind one `std::sync::Mutex` that is never
//!   held across an `.await`, so every request is applied atomically. A secret (client secret,
//!   API key, access token) leaves the simulator only in the single response that issues it; list
//!   items, the inspection view, [`Stats`] and every `Debug` output (here [`Config`]'s too) never
//!   contain one.
//! - `handlers`: the axum routes and what each `/v1` endpoint does. Faults are decided in the
//!   documented order before a request touches any state, so a request hit by an injected drop,
//!   500 or 429 has no effect; the `/_sim` routes bypass auth, faults and limits.
//! - `faults`: [`Faults`] and [`Dialect`]; a rate outside 0.0..=1.0 is refused, never clamped.
//! - `limiter`: per-credential fixed windows; every `/v1` response carries the caller's
//!   `X-RateLimit-*` budget, which an injected fault never charges.
//! - `wire`: requests parsed just enough to route them (no side effects), replies, and errors
//!   always shaped `{"error": code, "message": message}`.
//! - `pagination`: pages and cursors; a cursor is opaque, bound to one listing, expires, and keeps
//!   its place when items before it are revoked.
//! - `conn`: connections a handler can kill, so a dropped request leaves the client a transport
//!   error and no status line.

mod clock;
mod conn;
mod faults;
mod handlers;
mod limiter;
mod pagination;
mod state;
#[cfg(test)]
mod tests;
mod wire;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use conn::{Conn, SimListener};
use limiter::RATE_WINDOW_SECS;
use state::Shared;

pub use faults::{Dialect, Faults, RevokedInLists, TokenError};
pub use state::{Inspected, Stats};

/// How long `shutdown` waits for in-flight requests before it aborts the server task.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How a simulator behaves; fixed at start except for `faults` and `dialect`, which
/// `set_faults`/`set_dialect` (and `PUT /_sim/faults`, `PUT /_sim/dialect`) replace.
#[derive(Clone)]
pub struct Config {
    /// `expires_in` of issued access tokens; tests set seconds to watch tokens expire.
    pub token_lifetime: Duration,
    /// Page size when the client gives no `limit`, and also the largest page served when it is
    /// below 100 (so tests can force one item per page whatever `limit` the client sends).
    pub page_size: usize,
    /// Requests per credential per rate-limit window.
    pub rate_limit_per_minute: u32,
    /// Length of a rate-limit window: one minute as Toktra documents; tests shorten it so that
    /// waiting for a window to reset takes seconds.
    pub rate_limit_window: Duration,
    /// Faults active from the first request on.
    pub faults: Faults,
    /// Readings of the contract's open questions, active from the first request on.
    pub dialect: Dialect,
    /// A pre-existing API key with management rights, e.g. `tk_admin_...`.
    pub admin_api_key: Option<String>,
    /// A pre-existing OAuth client `(client_id, client_secret)` with management rights.
    pub admin_client: Option<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token_lifetime: Duration::from_secs(3600),
            page_size: 25,
            rate_limit_per_minute: 1000,
            rate_limit_window: Duration::from_secs(RATE_WINDOW_SECS),
            faults: Faults::default(),
            dialect: Dialect::default(),
            admin_api_key: None,
            admin_client: None,
        }
    }
}

// Written by hand because the derived impl would print the admin secrets into logs.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("token_lifetime", &self.token_lifetime)
            .field("page_size", &self.page_size)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("faults", &self.faults)
            .field("dialect", &self.dialect)
            .field("admin_api_key", &self.admin_api_key.as_ref().map(|_| "<redacted>"))
            .field("admin_client", &self.admin_client.as_ref().map(|(id, _)| (id, "<redacted>")))
            .finish()
    }
}

/// A running simulator. Dropping it stops the server as `shutdown` does, without waiting.
pub struct Simulator {
    /// Where the server listens.
    addr: SocketAddr,
    /// Credential store, faults and stats, shared with the request handlers.
    shared: Arc<Shared>,
    /// Sending `true` (or dropping the sender) starts a graceful shutdown and cuts injected
    /// delays short, so a test's shutdown never waits out a 30 s create-timeout fault.
    shutdown: watch::Sender<bool>,
    /// The task running the server; it ends once the shutdown signal fires.
    server: JoinHandle<io::Result<()>>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Simulator {
    /// Bind 127.0.0.1:port (0 = any free port) and serve in a background tokio task.
    pub async fn start(port: u16, config: Config) -> io::Result<Simulator> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        Simulator::serve(listener, config).await
    }

    /// Serve on an already-bound listener (used by the `rotator toktra-sim` CLI command).
    pub async fn serve(listener: TcpListener, config: Config) -> io::Result<Simulator> {
        let addr = listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        let shared = Arc::new(Shared::new(config, stop.clone()));
        let app = handlers::router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let mut stop = stop;
            axum::serve(SimListener(listener), app.into_make_service_with_connect_info::<Conn>())
                // A closed channel means the `Simulator` was dropped, which also ends the server.
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stopping| *stopping).await;
                })
                .await
        });
        tracing::info!(%addr, "toktra simulator listening");
        Ok(Simulator { addr, shared, shutdown, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`; a wildcard bind address is replaced by loopback because
    /// clients cannot portably connect to `0.0.0.0`.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}/v1", SocketAddr::new(ip, self.addr.port()))
    }

    /// Moves the simulator's clocks forward by `by`: tokens issued before expire as if that time
    /// had passed, rate windows close, timestamps move on. Tests use it instead of sleeping.
    pub fn advance(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.shared.lock().faults.clone()
    }

    pub fn set_dialect(&self, dialect: Dialect) {
        self.shared.lock().dialect = dialect;
    }

    pub fn dialect(&self) -> Dialect {
        self.shared.lock().dialect
    }

    /// Every credential ever created (including the admin ones), never with secrets.
    pub fn credentials(&self) -> Vec<Inspected> {
        self.shared.credentials()
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Stop accepting connections and wait for the server task.
    pub async fn shutdown(self) {
        let Simulator { addr, shutdown, mut server, .. } = self;
        shutdown.send_replace(true);
        // A client that keeps a request half-sent would hold a graceful shutdown forever.
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(result) => log_server_end(addr, result),
            Err(_) => {
                tracing::warn!(%addr, "toktra simulator connections still open after grace period, aborting");
                server.abort();
            }
        }
    }

    /// Wait until the server stops (for the CLI, which runs until Ctrl-C).
    pub async fn wait(self) {
        // The sender must live until the server ends: dropping it is a shutdown signal.
        let Simulator { addr, shutdown: _running, server, .. } = self;
        log_server_end(addr, server.await);
    }
}

fn log_server_end(addr: SocketAddr, result: Result<io::Result<()>, tokio::task::JoinError>) {
    match result {
        Ok(Ok(())) => tracing::info!(%addr, "toktra simulator stopped"),
        Ok(Err(error)) => tracing::error!(%addr, %error, "toktra simulator failed"),
        Err(error) => tracing::error!(%addr, %error, "toktra simulator task ended abnormally"),
    }
}
