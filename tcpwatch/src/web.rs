//! TLS and basic authentication of the HTTP endpoint, configured the way
//! Prometheus exporters are: a web configuration file in the format of the
//! Prometheus exporter-toolkit (`tls_server_config` with `cert_file` and
//! `key_file`; `basic_auth_users` mapping names to bcrypt hashes), so
//! Prometheus's own `scheme: https` and `basic_auth` scrape settings work.
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use serde::Deserialize;
use tokio_rustls::rustls;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot read the web configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("web configuration file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("cannot read {what} {path}: {source}")]
    Pem {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the TLS certificate {cert} and key {key} do not make a server configuration: {message}"
    )]
    Tls {
        cert: String,
        key: String,
        message: String,
    },
    #[error("web configuration file {path}: the password of user `{user}` is not a bcrypt hash")]
    NotBcrypt { path: String, user: String },
}

/// The file, as exporter-toolkit documents it (the keys tcpwatch uses;
/// any other key is refused by name).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<TlsServerConfig>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// What the HTTP server enforces.
#[derive(Clone, Default)]
pub struct Web {
    /// TLS when configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: Option<Arc<BasicAuth>>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hashes or keys.
        f.debug_struct("Web")
            .field("tls", &self.tls.is_some())
            .field("basic_auth", &self.auth.is_some())
            .finish()
    }
}

impl Web {
    /// Reads and checks a web configuration file: certificates load, every
    /// password is a bcrypt hash.
    pub fn load(path: &Path) -> Result<Web, WebError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| WebError::Read {
            path: shown.clone(),
            source,
        })?;
        Web::parse(&text, &shown)
    }

    pub fn parse(text: &str, path: &str) -> Result<Web, WebError> {
        let file: WebConfigFile = if text.trim().is_empty() {
            WebConfigFile::default()
        } else {
            serde_norway::from_str(text).map_err(|e| WebError::Parse {
                path: path.to_owned(),
                message: crate::config::one_line(&e.to_string()),
            })?
        };
        for (user, hash) in &file.basic_auth_users {
            if !hash.starts_with("$2") {
                return Err(WebError::NotBcrypt {
                    path: path.to_owned(),
                    user: user.clone(),
                });
            }
        }
        let tls = file.tls_server_config.map(tls_config).transpose()?;
        let auth = (!file.basic_auth_users.is_empty()).then(|| {
            Arc::new(BasicAuth {
                users: file.basic_auth_users,
                verified: Mutex::new(HashSet::new()),
            })
        });
        Ok(Web { tls, auth })
    }
}

fn tls_config(c: TlsServerConfig) -> Result<Arc<rustls::ServerConfig>, WebError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let shown = |p: &Path| p.display().to_string();
    let pem_error = |what, path: &Path, e: rustls::pki_types::pem::Error| WebError::Pem {
        what,
        path: shown(path),
        source: std::io::Error::other(e.to_string()),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert_file)
        .map_err(|e| pem_error("the TLS certificate", &c.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error("the TLS certificate", &c.cert_file, e))?;
    let key = PrivateKeyDer::from_pem_file(&c.key_file)
        .map_err(|e| pem_error("the TLS key", &c.key_file, e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
    .map_err(|e| WebError::Tls {
        cert: shown(&c.cert_file),
        key: shown(&c.key_file),
        message: e.to_string(),
    })?;
    Ok(Arc::new(config))
}

/// Users and their bcrypt hashes. bcrypt is slow on purpose, so a
/// credential that verified is remembered (bounded) and later scrapes cost
/// a set lookup.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashSet<String>>,
}

/// Credentials remembered after verification.
const REMEMBERED: usize = 64;

impl BasicAuth {
    /// Whether an `Authorization` header value names a user and password.
    async fn allows(self: Arc<Self>, authorization: Option<String>) -> bool {
        let Some(encoded) = authorization
            .as_deref()
            .and_then(|v| v.strip_prefix("Basic "))
            .map(str::trim)
        else {
            return false;
        };
        if self.verified.lock().is_ok_and(|v| v.contains(encoded)) {
            return true;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return false;
        };
        let Some(hash) = self.users.get(user).cloned() else {
            return false;
        };
        let password = password.to_owned();
        // Off the event loop: a verification takes tens of milliseconds.
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if ok {
            if let Ok(mut v) = self.verified.lock() {
                if v.len() >= REMEMBERED {
                    v.clear();
                }
                v.insert(encoded.to_owned());
            }
        }
        ok
    }
}

/// Serves `router` over TLS on `listener`: each connection's handshake (at
/// most 10 s) and requests run in a task of their own, so a slow or silent
/// client holds only itself.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, typically: back off instead of spinning.
                log::warn!("cannot accept an HTTPS connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
            let Ok(Ok(tls)) = handshake.await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Middleware: 401 with a challenge unless the request carries a user and
/// password of the web configuration.
pub async fn require_basic_auth(
    State(auth): State<Arc<BasicAuth>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if auth.allows(authorization).await {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"tcpwatch\"")],
            "unauthorized\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_keys_and_plain_passwords() {
        let e = Web::parse("tls_server_config:\n  cert_fle: x\n", "w.yml").unwrap_err();
        assert!(e.to_string().contains("cert_fle"), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
        let e = Web::parse("basic_auth_users:\n  prom: hunter2\n", "w.yml").unwrap_err();
        assert!(e.to_string().contains("`prom`"), "{e}");
        let e = Web::parse(
            "tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n",
            "w.yml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent.pem"), "{e}");
        let web = Web::parse("", "w.yml").unwrap();
        assert!(web.tls.is_none() && web.auth.is_none());
    }

    #[tokio::test]
    async fn checks_passwords_against_bcrypt_hashes() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let web = Web::parse(&format!("basic_auth_users:\n  prom: '{hash}'\n"), "w.yml").unwrap();
        let auth = web.auth.unwrap();
        let header = |creds: &str| {
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(creds)
            ))
        };
        assert!(auth.clone().allows(header("prom:s3cret")).await);
        // Remembered: the second time costs no bcrypt.
        assert!(auth.clone().allows(header("prom:s3cret")).await);
        assert!(!auth.clone().allows(header("prom:wrong")).await);
        assert!(!auth.clone().allows(header("other:s3cret")).await);
        assert!(!auth.clone().allows(Some("Basic !!!".into())).await);
        assert!(!auth.allows(None).await);
    }
}
