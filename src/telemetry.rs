//! Logging setup and process signals. Logs go to stderr (stdout carries command output), as
//! human-readable text or JSON lines. Libraries that log every non-2xx answer at ERROR level
//! (vaultrs, rustify: expected 404s and check-and-set conflicts included) are silenced by default; rotator reports the failures that matter itself.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

const QUIET: &str = "rustify=off,vaultrs=off,tokio_cron_scheduler=warn,aws_config=warn,aws_smithy_runtime=warn,sqlx=warn,hyper=warn,reqwest=warn";

/// `quiet`: warnings and errors only unless `verbose` (the demo, whose output is its story).
pub fn init(format: LogFormat, verbose: bool, quiet: bool) {
    let level = match (verbose, quiet) {
        (true, _) => "debug",
        (false, true) => "warn",
        (false, false) => "info",
    };
    let default = format!("{level},{QUIET}");
    // RUST_LOG adds to the quiet defaults rather than replacing them, so `RUST_LOG=debug` does
    // not bring back the noisy libraries; naming one of them (`vaultrs=debug`) still does.
    let filter = match std::env::var("RUST_LOG") {
        Ok(user) if !user.trim().is_empty() => EnvFilter::new(format!("{QUIET},{user}")),
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => {
            // Colour only on a terminal, and never when NO_COLOR is set (no-color.org).
            let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_target(false).with_ansi(colour).try_init()
        }
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
