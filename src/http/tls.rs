//! TLS for corral's front and for the operator's metrics listener, with
//! rustls (the TLS stack the binary already carries for kube and its HTTP
//! client): TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`, optional
//! client certificates. The certificate is read again on HUP and whenever
//! its files change (a Kubernetes Secret volume swaps a symlink), and a new
//! one replaces the old only if it loads: a bad certificate is refused with
//! a log line and the old one kept. Each connection takes the
//! configuration current at its handshake, so a swap never touches a
//! connection already open.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tracing::{error, info};

use crate::values::CertReqs;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client certificate roots: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Where a certificate comes from (Gunicorn's four TLS settings, checked
/// together by [`crate::config::tls_files`]); the files are read at start,
/// on HUP and when they change.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub ca_certs: Option<PathBuf>,
    pub cert_reqs: CertReqs,
}

/// What identifies a version of the files (modified, size, inode): a
/// changed one is read again.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

/// The front's certificate, swapped whole on reload.
pub struct Certs {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    stamp: Mutex<Stamp>,
}

/// How often the files are looked at for a change.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

fn pem_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Builds the server configuration from the files as they are now.
pub fn load(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = certificates(&files.certfile)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.keyfile)?)
        .map_err(|e| pem_error(&files.keyfile, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match (&files.ca_certs, files.cert_reqs) {
        (Some(ca), reqs) if reqs != CertReqs::None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = if reqs == CertReqs::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build()?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// `config` for a server that speaks HTTP/1.1 only (the admin API, the
/// operator's metrics): offered h2 by ALPN, a client would send a preface
/// such a server cannot read.
pub fn http1_only(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn stamp(files: &TlsFiles) -> Stamp {
    [
        Some(&files.certfile),
        Some(&files.keyfile),
        files.ca_certs.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        // Follows symlinks: a Secret volume's update shows as a new target.
        std::fs::metadata(p).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
                m.ino(),
            )
        })
    })
    .collect()
}

impl Certs {
    pub fn new(files: TlsFiles) -> Result<Arc<Certs>, TlsError> {
        let config = load(&files)?;
        Ok(Arc::new(Certs {
            stamp: Mutex::new(stamp(&files)),
            current: RwLock::new(Arc::new(config)),
            files,
        }))
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files again; on failure the current certificate stays
    /// and the error is logged (and returned).
    pub fn reload(&self, why: &str) -> Result<(), TlsError> {
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = stamp(&self.files);
        match load(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                info!(certfile = %self.files.certfile.display(), why, "TLS certificate loaded");
                Ok(())
            }
            Err(e) => {
                error!(error = %e, why, "new TLS certificate refused: the previous one stays");
                Err(e)
            }
        }
    }

    /// Reloads if the files changed since they were last read.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.files);
        let changed = *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) != now;
        if changed {
            let _ = self.reload("files changed");
        }
    }

    /// Watches the files for as long as the returned task runs.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let certs = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(WATCH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                certs.reload_if_changed();
            }
        })
    }
}
