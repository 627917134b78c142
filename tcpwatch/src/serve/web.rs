//! How the HTTP endpoint is served: one accept loop for plain HTTP and TLS
//! with the limits that keep slow or many clients from exhausting the
//! daemon (a header-read timeout that is also the idle timeout, a bound on
//! connections, on requests at once and on password checks at once), and
//! TLS and basic authentication configured the way Prometheus exporters
//! are: a web configuration file in the format of the Prometheus
//! exporter-toolkit (`tls_server_config` with `cert_file` and `key_file`;
//! `basic_auth_users` mapping names to bcrypt hashes), so Prometheus's own
//! `scheme: https` and `basic_auth` scrape settings work.
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Router,
};
use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_rustls::rustls;

/// How long a client has to send a complete request head: from the start
/// of its connection (after the TLS handshake) and again from the end of
/// each answer, so that hyper's one timer is also the idle timeout of
/// kept-alive connections. A scraper sends its head in one packet; 10 s
/// allows for a slow network, and a client that idles longer simply opens
/// a new connection for its next scrape.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections held at once, handshakes included. A scrape target has a
/// few clients; 512 stays well inside the 1024 descriptors a service gets
/// by default. A connection beyond it closes the oldest one, which during
/// a flood is one that never finished its request, so a new scrape is
/// still answered instead of waiting for a slot.
pub const MAX_CONNECTIONS: usize = 512;

/// Connections the kernel queues until the server accepts them. A burst
/// beyond the default of 128 has its SYNs dropped and retried after a
/// second; 1024 absorbs one while the server is busy (the kernel caps it at
/// `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 1024;

/// Largest request head buffered (hyper answers 431 beyond it): what each
/// held connection can make the daemon keep. The API's requests are a few
/// hundred bytes; 32 KiB leaves room for large cookies a browser may send.
pub const MAX_REQUEST_HEAD: usize = 32 * 1024;

/// Requests answered at once; more are refused with 503 rather than queued,
/// so a scrape storm cannot pile work onto the event loop.
pub const MAX_CONCURRENT_REQUESTS: usize = 16;

/// Largest request body read (the API takes none).
pub const MAX_REQUEST_BODY: usize = 1024;

/// bcrypt verifications at once. Each costs tens of milliseconds of CPU on
/// purpose, and a client whose credentials verified once is answered from
/// the cache without one, so only new or wrong passwords need one: two
/// keep a flood of wrong ones from taking every core; a request beyond them
/// is answered 503 at once.
pub const PASSWORD_CHECKS_AT_ONCE: usize = 2;

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
                message: crate::serve::config::one_line(&e.to_string()),
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
        let auth = (!file.basic_auth_users.is_empty())
            .then(|| Arc::new(BasicAuth::new(file.basic_auth_users)));
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
/// a set lookup, and only [`PASSWORD_CHECKS_AT_ONCE`] verifications run at
/// a time.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashSet<String>>,
    checks: Arc<Semaphore>,
}

/// Credentials remembered after verification.
const REMEMBERED: usize = 64;

/// What a request's credentials get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Refused,
    /// Not checked: as many passwords as allowed are being verified.
    Busy,
}

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> BasicAuth {
        BasicAuth {
            users,
            verified: Mutex::new(HashSet::new()),
            checks: Arc::new(Semaphore::new(PASSWORD_CHECKS_AT_ONCE)),
        }
    }

    /// Whether an `Authorization` header value names a user and password.
    async fn allows(self: Arc<Self>, authorization: Option<String>) -> Verdict {
        let Some(encoded) = authorization
            .as_deref()
            .and_then(|v| v.strip_prefix("Basic "))
            .map(str::trim)
        else {
            return Verdict::Refused;
        };
        if self.verified.lock().is_ok_and(|v| v.contains(encoded)) {
            return Verdict::Allowed;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return Verdict::Refused;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return Verdict::Refused;
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return Verdict::Refused;
        };
        let Some(hash) = self.users.get(user).cloned() else {
            return Verdict::Refused;
        };
        let Ok(permit) = self.checks.clone().try_acquire_owned() else {
            return Verdict::Busy;
        };
        let password = password.to_owned();
        // Off the event loop: a verification takes tens of milliseconds. The
        // permit goes with it, so a client that hangs up does not free it
        // before the work is done.
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if !ok {
            return Verdict::Refused;
        }
        if let Ok(mut v) = self.verified.lock() {
            if v.len() >= REMEMBERED {
                v.clear();
            }
            v.insert(encoded.to_owned());
        }
        Verdict::Allowed
    }
}

/// The limits of [`serve`]; the defaults are the constants above.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// A listening socket on `addr` with a backlog of [`LISTEN_BACKLOG`].
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std and tokio's own bind do: a restart binds while the previous
    // run's connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The connections being served, oldest first, each with the handle that
/// closes it (aborting its task drops the socket).
#[derive(Default)]
struct Open {
    next: u64,
    by_age: BTreeMap<u64, tokio::task::AbortHandle>,
}

/// A connection's place in [`Open`], given up when its task ends or is
/// aborted.
struct Registered {
    id: u64,
    open: Arc<Mutex<Open>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock_open(&self.open).by_age.remove(&self.id);
    }
}

fn lock_open(open: &Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How often a full server says so in the log, at most.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Serves `router` on `listener`, over TLS when `tls` is given. Each
/// connection runs in a task of its own, so a slow or silent client holds
/// only itself, and within `limits`: a TLS handshake and each request head
/// have a deadline (hyper's `header_read_timeout`, which also closes idle
/// kept-alive connections), and at most `max_connections` are held, a new
/// one closing the oldest.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ServeLimits,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_REQUEST_HEAD);
    let open = Arc::new(Mutex::new(Open::default()));
    let mut warned: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, typically: back off instead of spinning.
                log::warn!("cannot accept an HTTP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (id, evicted) = {
            let mut o = lock_open(&open);
            let mut evicted = Vec::new();
            while o.by_age.len() >= limits.max_connections.max(1) {
                match o.by_age.pop_first() {
                    Some((_, oldest)) => evicted.push(oldest),
                    None => break,
                }
            }
            o.next += 1;
            (o.next, evicted)
        };
        // Outside the lock: an aborted task's end takes it.
        for oldest in &evicted {
            oldest.abort();
        }
        let task = tokio::spawn(connection(
            stream,
            router.clone(),
            tls.clone(),
            http.clone(),
            limits.tls_handshake_timeout,
            Registered {
                id,
                open: open.clone(),
            },
        ));
        {
            let mut o = lock_open(&open);
            // A task that already ended removed nothing; one that ends from
            // now on waits for this lock, so finds its entry.
            if !task.is_finished() {
                o.by_age.insert(id, task.abort_handle());
            }
        }
        if !evicted.is_empty() && warned.is_none_or(|t| t.elapsed() >= FULL_WARNING_EVERY) {
            warned = Some(Instant::now());
            log::warn!(
                "the HTTP server holds {} connections, its limit; new ones close the oldest (a client opening many and not finishing its requests?)",
                limits.max_connections
            );
        }
    }
}

/// One connection: the TLS handshake if any, then HTTP/1.1 until either
/// side closes or a limit does.
async fn connection(
    stream: tokio::net::TcpStream,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    http: hyper::server::conn::http1::Builder,
    handshake_timeout: Duration,
    _registered: Registered,
) {
    use hyper_util::rt::TokioIo;
    let service = hyper_util::service::TowerToHyperService::new(router);
    // Errors are the client's (a timeout, a reset, a malformed request):
    // the connection ends, nothing else is affected.
    match tls {
        None => {
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
            if let Ok(Ok(stream)) = handshake.await {
                let _ = http.serve_connection(TokioIo::new(stream), service).await;
            }
        }
    }
}

/// The routes behind the endpoint's layers, innermost first: the body
/// limit, basic authentication when configured, and the concurrency limit
/// around both, so that password checks count against it and a flood of
/// them is shed like any other.
pub fn guard<S>(routes: Router<S>, auth: Option<Arc<BasicAuth>>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let limits = tower::ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(
            |_: axum::BoxError| async { too_many("requests") },
        ))
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ));
    let mut routes = routes.layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY));
    if let Some(auth) = auth {
        routes = routes.layer(axum::middleware::from_fn_with_state(
            auth,
            require_basic_auth,
        ));
    }
    routes.layer(limits)
}

/// 503 for work refused rather than queued.
fn too_many(what: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        format!("too many {what} at once; retry\n"),
    )
        .into_response()
}

/// Middleware: 401 with a challenge unless the request carries a user and
/// password of the web configuration; 503 when its password cannot be
/// checked now.
async fn require_basic_auth(
    State(auth): State<Arc<BasicAuth>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match auth.allows(authorization).await {
        Verdict::Allowed => next.run(request).await,
        Verdict::Busy => too_many("password checks"),
        Verdict::Refused => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"tcpwatch\"")],
            "unauthorized\n",
        )
            .into_response(),
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

    fn basic(creds: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        )
    }

    #[tokio::test]
    async fn checks_passwords_against_bcrypt_hashes() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let web = Web::parse(&format!("basic_auth_users:\n  prom: '{hash}'\n"), "w.yml").unwrap();
        let auth = web.auth.unwrap();
        // The second time it is remembered and costs no bcrypt.
        for (authorization, verdict) in [
            (Some(basic("prom:s3cret")), Verdict::Allowed),
            (Some(basic("prom:s3cret")), Verdict::Allowed),
            (Some(basic("prom:wrong")), Verdict::Refused),
            (Some(basic("other:s3cret")), Verdict::Refused),
            (Some("Basic !!!".to_owned()), Verdict::Refused),
            (None, Verdict::Refused),
        ] {
            assert_eq!(auth.clone().allows(authorization).await, verdict);
        }
    }

    /// 64 wrong passwords at once: only [`PASSWORD_CHECKS_AT_ONCE`] run
    /// bcrypt, the rest are busy at once; a remembered credential is
    /// allowed meanwhile, and the right password is verified after.
    #[tokio::test]
    async fn password_checks_at_once_are_bounded() {
        let hash = bcrypt::hash("s3cret", 8).unwrap();
        let auth = Arc::new(BasicAuth::new(BTreeMap::from([("prom".into(), hash)])));
        assert_eq!(
            auth.clone().allows(Some(basic("prom:s3cret"))).await,
            Verdict::Allowed
        );
        let mut storm = tokio::task::JoinSet::new();
        for i in 0..64 {
            storm.spawn(auth.clone().allows(Some(basic(&format!("prom:wrong{i}")))));
        }
        assert_eq!(
            auth.clone().allows(Some(basic("prom:s3cret"))).await,
            Verdict::Allowed
        );
        let verdicts = storm.join_all().await;
        let busy = verdicts.iter().filter(|v| **v == Verdict::Busy).count();
        let refused = verdicts.iter().filter(|v| **v == Verdict::Refused).count();
        assert_eq!(busy + refused, 64, "{verdicts:?}");
        assert!(
            (1..=2 * PASSWORD_CHECKS_AT_ONCE).contains(&refused),
            "{verdicts:?}"
        );
        // Quiet again: checked, not shed.
        assert_eq!(
            auth.clone().allows(Some(basic("prom:wrong"))).await,
            Verdict::Refused
        );
        assert_eq!(
            auth.clone().allows(Some(basic("prom:s3cret"))).await,
            Verdict::Allowed
        );
    }

    /// Authentication sits inside the concurrency limit: while every slot
    /// is taken, a wrong password is shed (503) before any bcrypt, not
    /// refused (401) after one.
    #[tokio::test]
    async fn authentication_is_inside_the_concurrency_limit() {
        use tower::ServiceExt as _;
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = Arc::new(BasicAuth::new(BTreeMap::from([("prom".into(), hash)])));
        let gate = Arc::new(Semaphore::new(0));
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let routes = Router::new().route(
            "/hold",
            axum::routing::get({
                let (gate, inside) = (gate.clone(), inside.clone());
                move || async move {
                    inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // One permit lets one request through; closing, all.
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                    "held\n"
                }
            }),
        );
        let router = guard(routes, Some(auth));
        let request = |creds: &str| {
            axum::http::Request::get("/hold")
                .header(header::AUTHORIZATION, basic(creds))
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let status = |router: Router, creds: &str| {
            let request = request(creds);
            async move { router.oneshot(request).await.map(|r| r.status()) }
        };
        gate.add_permits(1);
        assert_eq!(
            status(router.clone(), "prom:s3cret").await.unwrap(),
            StatusCode::OK
        );
        let held: Vec<_> = (0..MAX_CONCURRENT_REQUESTS)
            .map(|_| tokio::spawn(status(router.clone(), "prom:s3cret")))
            .collect();
        while inside.load(std::sync::atomic::Ordering::SeqCst) < 1 + MAX_CONCURRENT_REQUESTS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            status(router.clone(), "prom:wrong").await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        gate.close();
        for h in held {
            assert_eq!(h.await.unwrap().unwrap(), StatusCode::OK);
        }
        assert_eq!(
            status(router, "prom:wrong").await.unwrap(),
            StatusCode::UNAUTHORIZED
        );
    }

    /// [`serve`] on a loopback port with short limits, answering `/` "ok".
    async fn server(
        limits: ServeLimits,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Router::new().route("/", axum::routing::get(|| async { "ok\n" }));
        tokio::spawn(serve(listener, routes, tls, limits));
        addr
    }

    const SHORT: ServeLimits = ServeLimits {
        header_read_timeout: Duration::from_millis(500),
        tls_handshake_timeout: Duration::from_millis(500),
        max_connections: 8,
    };

    const HALF_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ";

    /// When the server closed `s` (end of stream or reset), whatever it
    /// sent before; None if not within `wait`.
    async fn closed_within<S>(s: &mut S, wait: Duration) -> Option<Instant>
    where
        S: tokio::io::AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 1024];
        tokio::time::timeout(wait, async {
            while let Ok(1..) = s.read(&mut buf).await {}
            Instant::now()
        })
        .await
        .ok()
    }

    /// A request and its whole answer, then the connection closes.
    async fn get(addr: std::net::SocketAddr) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer).await;
        answer
    }

    #[tokio::test]
    async fn a_half_sent_head_and_an_idle_connection_are_closed_in_time() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = server(SHORT, None).await;
        let opened = Instant::now();
        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        half.write_all(HALF_HEAD).await.unwrap();
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; 1024];
        let n = idle.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"));
        assert!(get(addr).await.ends_with("ok\n"));
        for s in [&mut half, &mut silent, &mut idle] {
            let after = closed_within(s, Duration::from_secs(3))
                .await
                .map(|t| t - opened);
            assert!(
                after.is_some_and(|t| t >= SHORT.header_read_timeout),
                "{after:?}"
            );
        }
    }

    /// The deadline is for the whole head: bytes trickling in do not
    /// extend it. A head over [`MAX_REQUEST_HEAD`] is refused; a large
    /// answer is not cut.
    #[tokio::test]
    async fn heads_are_bounded_in_time_and_size_answers_are_not() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = server(SHORT, None).await;
        let opened = Instant::now();
        let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
        trickle.write_all(HALF_HEAD).await.unwrap();
        let mut closed = None;
        for _ in 0..30 {
            if trickle.write_all(b"x").await.is_err() {
                break;
            }
            closed = closed_within(&mut trickle, Duration::from_millis(100)).await;
            if closed.is_some() {
                break;
            }
        }
        let after = closed.map(|t| t - opened);
        assert!(
            after.is_some_and(
                |t| t >= SHORT.header_read_timeout && t < 4 * SHORT.header_read_timeout
            ),
            "{after:?}"
        );

        let mut big = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET / HTTP/1.0\r\nX-Big: {}\r\n\r\n",
            "x".repeat(MAX_REQUEST_HEAD)
        );
        let _ = big.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = big.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = "y".repeat(4 << 20);
        let routes = Router::new().route("/", axum::routing::get(move || async move { body }));
        tokio::spawn(serve(listener, routes, None, SHORT));
        let answer = get(addr).await;
        let (_, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
        assert_eq!(body.len(), 4 << 20);
    }

    #[tokio::test]
    async fn a_full_server_closes_its_oldest_connection() {
        use tokio::io::AsyncWriteExt as _;
        let limits = ServeLimits {
            header_read_timeout: Duration::from_secs(30),
            ..SHORT
        };
        let addr = server(limits, None).await;
        let mut held = Vec::new();
        for _ in 0..limits.max_connections {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(HALF_HEAD).await.unwrap();
            held.push(s);
        }
        // All accepted before the next one arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = tokio::time::timeout(Duration::from_secs(2), get(addr)).await;
        assert!(answer.is_ok_and(|a| a.ends_with("ok\n")));
        assert!(closed_within(&mut held[0], Duration::from_secs(1))
            .await
            .is_some());
        for s in &mut held[1..] {
            assert!(closed_within(s, Duration::from_millis(50)).await.is_none());
        }
    }

    #[tokio::test]
    async fn tls_handshakes_and_heads_have_deadlines() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = std::env::temp_dir().join(format!("tcpwatch-web-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, certified.cert.pem()).unwrap();
        std::fs::write(&key_file, certified.key_pair.serialize_pem()).unwrap();
        let tls = tls_config(TlsServerConfig {
            cert_file,
            key_file,
        })
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let addr = server(SHORT, Some(tls)).await;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let connect = || async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            connector
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap()
        };
        let mut ok = connect().await;
        ok.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = ok.read_to_end(&mut answer).await;
        assert!(String::from_utf8_lossy(&answer).ends_with("ok\n"));

        let opened = Instant::now();
        let mut no_handshake = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut half = connect().await;
        half.write_all(HALF_HEAD).await.unwrap();
        half.flush().await.unwrap();
        let closed = closed_within(&mut no_handshake, Duration::from_secs(3)).await;
        assert!(
            closed.is_some_and(|t| t - opened >= SHORT.tls_handshake_timeout),
            "{closed:?}"
        );
        let closed = closed_within(&mut half, Duration::from_secs(3)).await;
        assert!(
            closed.is_some_and(|t| t - opened >= SHORT.header_read_timeout),
            "{closed:?}"
        );
    }
}
