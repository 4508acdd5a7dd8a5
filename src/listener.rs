//! How `serve` accepts connections, below the router: at most `max_connections` open at once
//! (further clients wait in the kernel's backlog, never refused mid-request), the request head
//! within `header_timeout` (a client that connects and sends nothing, or trickles its headers,
//! holds no connection slot for longer), optional TLS from certificate and key files (reloaded on
//! `SIGHUP` without dropping open connections; a bad pair keeps the one in force), and a graceful
//! shutdown that ends idle connections at once and lets requests in flight finish. Requests
//! themselves (their bodies, their time) are bounded by the router, which answers in JSON.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Bounds on connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// For the request head (and, with TLS, the handshake) of each request.
    pub header_timeout: Duration,
}

/// The certificate and key the service presents, read from files; [`Tls::reload`] reads them
/// again. New connections get what was loaded last; open ones keep theirs.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

impl Tls {
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, String> {
        let config = server_config(cert, key)?;
        Ok(Tls { cert: cert.to_path_buf(), key: key.to_path_buf(), config: RwLock::new(Arc::new(config)) })
    }

    /// Reads the files again; on any problem the pair in force stays and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.cert, &self.key)?;
        if let Ok(mut current) = self.config.write() {
            *current = Arc::new(config);
        }
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.config.read().map(|c| c.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        tokio_rustls::TlsAcceptor::from(config)
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("TLS certificate {}: no certificate in the file", cert.display()));
    }
    // The key's own error never holds key material; the path says which file.
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("TLS key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| format!("TLS certificate {} and key {}: {e}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Serves `router` on `listener` until `shutdown` completes, then tells every open connection
/// to finish (idle ones close at once, requests in flight complete) and returns once all have
/// ended. The caller bounds that wait.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopped) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut shutdown = pin!(shutdown);
    loop {
        // A slot first, then a connection: at the limit, clients wait in the backlog.
        if slots.available_permits() == 0 {
            tracing::warn!(max_connections = limits.max_connections, "connection limit reached; new connections wait");
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot { Ok(s) => s, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (builder, router, tls, mut stopped) = (builder.clone(), router.clone(), tls.clone(), stopped.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let io: Box<dyn Io> = match tls {
                Some(tls) => match tokio::time::timeout(limits.header_timeout, tls.acceptor().accept(stream)).await {
                    Ok(Ok(stream)) => Box::new(stream),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                },
                None => Box::new(stream),
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(router));
            let mut connection = pin!(connection);
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    changed = stopped.changed() => {
                        connection.as_mut().graceful_shutdown();
                        if changed.is_err() {
                            // The sender is gone: finish without listening for more.
                            let _ = connection.as_mut().await;
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every slot back means every connection has ended.
    let _ = slots.acquire_many(limits.max_connections.max(1) as u32).await;
}
