//! The service `rotator serve` runs, in two steps: [`Service::build`] checks the policy set
//! against the configuration and builds everything (connections, journal, engine, notifier,
//! daemon, TLS) without listening; [`Service::run`] serves the API on a listener the caller
//! owns and runs the reconciler until a shutdown future resolves (SIGHUP reloads the policies
//! and the TLS pair meanwhile). A caller that binds port 0 reads the address from its own
//! listener, so nothing binds, drops and binds again.
//!
//! Invariant: everything `run` started ends by one deadline, `shutdown_timeout` after the stop:
//! open HTTP requests and the steps in flight first, then queued notifications, then the
//! journal closes.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{self, Config};
use crate::connect::{Connections, Reach};
use crate::daemon::{self, Daemon};
use crate::journal::{self, Journal};
use crate::listener::{self, Tls};
use crate::policy::{self, Policy};
use crate::secret::Secret;

/// Who may call the API.
pub enum Access {
    /// Callers that present this bearer token.
    Token(Secret),
    /// Anyone: the operator chose to serve without authentication (loopback only; `serve`
    /// refuses it on any other address before building).
    Open,
}

/// Why the service could not be built or ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy set cannot run with this configuration (a channel it does not define, a
    /// destination it does not reach, one secret made two by the default region).
    #[error(transparent)]
    Policies(#[from] policy::Invalid),
    /// The configuration cannot give what the policies need.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The TLS certificate or key does not load.
    #[error("tls_cert_file/tls_key_file: {0}")]
    Tls(String),
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// The listener given to `run` has no local address.
    #[error("the listener's address: {0}")]
    Listener(std::io::Error),
    /// The HTTP server's task ended with a panic.
    #[error("the HTTP server task failed: {0}")]
    Server(tokio::task::JoinError),
}

/// A built service, not yet serving.
pub struct Service {
    config: Config,
    access: Access,
    daemon: Arc<Daemon>,
    tls: Option<Arc<Tls>>,
    /// The notifier's delivery tasks, ended after the drain at shutdown.
    notifications: Vec<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Checks `policies` (loaded from `policies_dir`, which SIGHUP reads again) against
    /// `config` (what a reload checks, `daemon::runnable`, in two steps: channels before
    /// connecting, destinations after), connects to what they and the configuration name, and
    /// opens the journal. Nothing is written before the checks pass.
    pub async fn build(
        config: &Config,
        policies_dir: PathBuf,
        policies: Vec<Policy>,
        access: Access,
    ) -> Result<Service, Error> {
        // What needs no connection first: nothing logs in to Vault for a set refused anyway.
        daemon::defined_channels(&policies, &|c| config.channels.contains_key(c))?;
        // Clients for whatever the configuration provides, so a reload may add policies using them.
        let all: Vec<&Policy> = policies.iter().collect();
        let connections = Connections::for_policies(config, &all, Reach::Configured).await?;
        daemon::reachable(&policies, &connections.stores)?;
        let tls = match &config.http.tls {
            Some((cert, key)) => Some(Arc::new(Tls::load(cert, key).map_err(Error::Tls)?)),
            None => None,
        };
        let journal = Journal::open(&config.database_url).await?;
        let engine = connections.engine(config, journal);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let (notifier, notifications) = crate::notify::Notifier::start(config.channels.clone(), metrics.clone());
        let daemon = Daemon::new(config, policies_dir, policies, engine, metrics, notifier);
        Ok(Service { config: config.clone(), access, daemon, tls, notifications })
    }

    /// The daemon: the policy set in force, the journal, what the last pass saw.
    pub fn daemon(&self) -> &Arc<Daemon> {
        &self.daemon
    }

    /// Serves the API on `listener` and runs the reconciler until `shutdown` resolves (or the
    /// HTTP server fails), then stops everything by `shutdown_timeout`.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Service { config, access, daemon, tls, notifications } = self;
        let addr = listener.local_addr().map_err(Error::Listener)?;
        // The Vault token is renewed (or replaced by a new login) for as long as the service
        // runs; the task ends when this handle is dropped, at the end of this function.
        let _vault_renewal = daemon.engine.clients.vault.as_ref().map(|v| v.renew_in_background());
        tracing::info!(%addr, tls = tls.is_some(), policies = daemon.policies().len(), concurrency = config.concurrency, tick = %crate::duration::format(config.tick), "rotator serving");

        // Each SIGHUP reloads in a task of its own, so a slow reload delays nothing (the next
        // SIGHUP is skipped while it runs, with a log line). The TLS certificate and key are read
        // again too; a pair that does not load keeps the one in force.
        let reloader = {
            let (daemon, tls) = (daemon.clone(), tls.clone());
            tokio::spawn(async move {
                let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                    return;
                };
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading policies");
                    if let Some(tls) = &tls {
                        match tls.reload() {
                            Ok(()) => tracing::info!("TLS certificate and key reloaded"),
                            Err(e) => {
                                tracing::error!(error = %e, "TLS certificate and key not reloaded; the previous pair stays in force")
                            }
                        }
                    }
                    let daemon = daemon.clone();
                    tokio::spawn(async move { daemon.reload().await });
                }
            })
        };
        let reconciler = tokio::spawn(daemon.clone().run(config.tick, config.shutdown_timeout));
        let stopper = daemon.clone();
        let shutdown = async move {
            shutdown.await;
            tracing::info!("stopping: no new work; letting the steps in flight finish");
            stopper.stop();
        };
        let options = crate::server::Options {
            token: match access {
                Access::Token(token) => Some(token),
                Access::Open => None,
            },
            listen: addr,
            metrics_auth: config.metrics_auth,
            request_timeout: config.http.request_timeout,
        };
        let limits = listener::Limits {
            max_connections: config.http.max_connections,
            header_timeout: config.http.header_timeout,
        };
        let router = crate::server::router(daemon.clone(), options);
        let mut server = tokio::spawn(listener::serve(listener, router, limits, tls, shutdown));
        let failed = tokio::select! {
            served = &mut server => {
                // The server ended without a stop: stop the rest too.
                daemon.stop();
                Some(served)
            }
            _ = daemon.stopped() => None,
        };
        // Everything below ends within `shutdown_timeout` of the stop: open HTTP requests and the
        // steps in flight get it less a reserve, in which queued notifications (the failure of the
        // step that just finished, say) are delivered and the journal is closed.
        let stopped_at = tokio::time::Instant::now();
        let reserve = (config.shutdown_timeout / 4).min(std::time::Duration::from_secs(5));
        let work_deadline = stopped_at + config.shutdown_timeout - reserve;
        let deadline = stopped_at + config.shutdown_timeout;
        if failed.is_none() && tokio::time::timeout_at(work_deadline, &mut server).await.is_err() {
            tracing::warn!("HTTP requests still open at the shutdown timeout; closing them");
            server.abort();
        }
        reloader.abort();
        if tokio::time::timeout_at(work_deadline, reconciler).await.is_err() {
            tracing::warn!("shutdown timeout: rotations still in flight are left to be resumed by the next start");
        }
        let close_reserve = reserve / 4;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).saturating_sub(close_reserve);
        daemon.notifier.drain(left).await;
        for task in notifications {
            task.abort();
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(left, daemon.engine.journal.close()).await.is_err() {
            tracing::warn!("the journal did not close in time");
        }
        if let Some(Err(e)) = failed {
            return Err(Error::Server(e));
        }
        tracing::info!("stopped");
        Ok(())
    }
}
