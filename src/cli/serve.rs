//! `rotator serve`: checks the API token, the policies and their notification channels, builds
//! the daemon, the HTTP listener and the notifier, and runs them until a stop signal (SIGHUP
//! reloads policies and the TLS pair in a task of its own). Everything ends by one deadline,
//! `shutdown_timeout` after the stop.

use std::sync::Arc;

use super::open::{Connections, Reach, check_default_region, load_policies, open_journal};
use super::{Ctx, Failure, ServeArgs};
use crate::policy::Policy;

pub(super) async fn serve(ctx: &Ctx, args: ServeArgs) -> Result<(), Failure> {
    let config = ctx.config()?;
    let listen = args.listen.unwrap_or(config.listen);
    let token = config.api_token()?;
    match (&token, args.insecure_no_auth) {
        (Some(_), _) => {}
        (None, true) if listen.ip().is_loopback() => {
            tracing::warn!(%listen, "serving the API WITHOUT authentication (--insecure-no-auth, loopback only)")
        }
        (None, true) => {
            return Err(Failure::Invalid(format!(
                "--insecure-no-auth is only allowed on a loopback address, not {listen}"
            )));
        }
        (None, false) => {
            return Err(Failure::Invalid(
                "no API token: set ROTATOR_API_TOKEN or `api_token_file` in the configuration (or --insecure-no-auth on loopback)".into(),
            ));
        }
    }
    let policies = load_policies(&ctx.policies)?;
    check_default_region(&config, &policies).await?;
    for p in &policies {
        if let Some(channel) = p.notify.iter().find(|c| !config.channels.contains_key(*c)) {
            return Err(Failure::Invalid(format!(
                "{}: notify: channel `{channel}` is not defined in the configuration",
                p.source
            )));
        }
    }
    // Clients for whatever the configuration provides, so a reload may add policies using them.
    let all: Vec<&Policy> = policies.iter().collect();
    let connections = Connections::for_policies(&config, &all, Reach::Configured).await?;
    // The Vault token is renewed (or replaced by a new login) for as long as the service runs;
    // the task ends when this handle is dropped, at the end of this function.
    let _vault_renewal = connections.stores.vault.as_ref().map(|v| v.renew_in_background());
    let journal = open_journal(&config).await?;
    let engine = connections.engine(&config, journal);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let (notifier, notifications) = crate::notify::Notifier::start(config.channels.clone(), metrics.clone());
    let count = policies.len();
    let daemon = crate::daemon::Daemon::new(&config, ctx.policies.clone(), policies, engine, metrics, notifier);
    let tls = match &config.http.tls {
        Some((cert, key)) => Some(Arc::new(
            crate::listener::Tls::load(cert, key)
                .map_err(|e| Failure::Invalid(format!("tls_cert_file/tls_key_file: {e}")))?,
        )),
        None => None,
    };
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| Failure::Invalid(format!("listen {listen}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Failure::Other(e.into()))?;
    tracing::info!(%addr, tls = tls.is_some(), policies = count, concurrency = config.concurrency, tick = %crate::duration::format(config.tick), "rotator serving");

    // Each SIGHUP reloads in a task of its own, so a slow reload delays nothing (the next
    // SIGHUP is skipped while it runs, with a log line). The TLS certificate and key are read
    // again too; a pair that does not load keeps the one in force.
    let reloader = {
        let (daemon, tls) = (daemon.clone(), tls.clone());
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
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
        crate::telemetry::shutdown_signal().await;
        tracing::info!("stopping: no new work; letting the steps in flight finish");
        stopper.stop();
    };
    let options = crate::server::Options {
        token,
        listen: addr,
        metrics_auth: config.metrics_auth,
        request_timeout: config.http.request_timeout,
    };
    let limits = crate::listener::Limits {
        max_connections: config.http.max_connections,
        header_timeout: config.http.header_timeout,
    };
    let mut server = tokio::spawn(crate::listener::serve(
        listener,
        crate::server::router(daemon.clone(), options),
        limits,
        tls,
        shutdown,
    ));
    let failed = tokio::select! {
        served = &mut server => {
            // The server ended without a stop signal: stop the rest too.
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
        return Err(Failure::Other(anyhow::anyhow!("the HTTP server task failed: {e}")));
    }
    tracing::info!("stopped");
    Ok(())
}
