//! The one client of the daemon's API: HTTP/1.1 over its Unix socket. The
//! CLI, the tests and the benchmarks all use it.
//!
//! Before a byte is sent (a request may carry a PIN or passphrase), the
//! client checks that the socket's folder is this user's own and that the
//! process at the other end runs as this user (`SO_PEERCRED`): another
//! local user who got to create the folder first, or who listens on a
//! socket we were pointed at, receives nothing.
//!
//! Answers are read into the [`crate::wire`] types; a problem answer
//! becomes [`ClientError::Problem`]. A request body is zeroized after it
//! was sent: it may carry a secret.

use crate::wire::{
    AccountInit, AccountLog, CreateKey, CreatedKey, KeyView, LockState, Problem, SignRequest,
    Signed, Status, Unlock,
};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use keybridge_backends::TokenListing;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;
use zeroize::Zeroizing;

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "the keybridge daemon is not running (no socket at {0}); start it with `keybridge serve`"
    )]
    NotRunning(PathBuf),
    /// The daemon answered with a problem.
    #[error("{}", .0.detail)]
    Problem(Box<Problem>),
    /// Transport failure, or an answer that is not what the API promises.
    #[error("talking to the daemon: {0}")]
    Transport(String),
    /// The socket's folder or the process behind the socket is not this
    /// user's: nothing was sent.
    #[error("{0}")]
    Untrusted(String),
}

impl ClientError {
    /// The problem's stable code, if the daemon answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Problem(p) => Some(&p.code),
            _ => None,
        }
    }
}

/// The daemon at one socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// One open (keep-alive) connection.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<std::io::Cursor<Zeroizing<Vec<u8>>>>>,
}

/// An answer as it came: status and body bytes.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
    /// When the answer's head arrived (before its body): for measuring.
    pub head_at: std::time::Instant,
}

impl Client {
    /// A client for the daemon at `socket`.
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_owned(),
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connects after checking the folder, and checks the peer.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let stream = self.connect_checked().await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(conn);
        Ok(Connection { sender })
    }

    async fn connect_checked(&self) -> Result<UnixStream, ClientError> {
        let dir = match self.socket.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let not_running = || ClientError::NotRunning(self.socket.clone());
        match crate::paths::check_private_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_running()),
            Err(e) => return Err(ClientError::Untrusted(e.to_string())),
        }
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            use std::io::ErrorKind::*;
            match e.kind() {
                NotFound | ConnectionRefused => not_running(),
                _ => ClientError::Transport(format!("{}: {e}", self.socket.display())),
            }
        })?;
        let me = rustix::process::getuid().as_raw();
        match stream.peer_cred().map(|c| c.uid()) {
            Ok(uid) if uid == me => Ok(stream),
            Ok(uid) => Err(ClientError::Untrusted(format!(
                "the process listening on {} runs as uid {uid}, not as you (uid {me}): refusing to talk to it (another user may be impersonating the keybridge daemon)",
                self.socket.display()
            ))),
            Err(e) => Err(ClientError::Untrusted(format!(
                "cannot tell who listens on {}: {e}",
                self.socket.display()
            ))),
        }
    }

    /// One request on a fresh connection.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        self.connect().await?.call(method, path, body).await
    }

    /// `GET /v1/status`
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }

    /// `GET /v1/keys`
    pub async fn keys(&self) -> Result<Vec<KeyView>, ClientError> {
        self.call(Method::GET, "/v1/keys", None::<&()>).await
    }

    /// `GET /v1/keys/{name}`
    pub async fn key(&self, name: &str) -> Result<KeyView, ClientError> {
        self.call(Method::GET, &key_path(name, ""), None::<&()>)
            .await
    }

    /// `POST /v1/keys`
    pub async fn create_key(&self, req: &CreateKey) -> Result<CreatedKey, ClientError> {
        self.call(Method::POST, "/v1/keys", Some(req)).await
    }

    /// `POST /v1/keys/{name}/unlock`
    pub async fn unlock(&self, name: &str, req: &Unlock) -> Result<LockState, ClientError> {
        self.call(Method::POST, &key_path(name, "/unlock"), Some(req))
            .await
    }

    /// `POST /v1/keys/{name}/lock`
    pub async fn lock(&self, name: &str) -> Result<LockState, ClientError> {
        self.call(Method::POST, &key_path(name, "/lock"), None::<&()>)
            .await
    }

    /// `POST /v1/sign`
    pub async fn sign(&self, req: &SignRequest) -> Result<Signed, ClientError> {
        self.call(Method::POST, "/v1/sign", Some(req)).await
    }

    /// `POST /v1/sign/batch`: `request` (no devices) on the first line,
    /// then `ids`, which must be device ids one per line, each ending in
    /// `\n`. The answer comes as it is made: read it with
    /// [`BatchAnswer::chunk`].
    pub async fn sign_batch(
        &self,
        request: &SignRequest,
        ids: Bytes,
    ) -> Result<BatchAnswer, ClientError> {
        let t = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
        let stream = self.connect_checked().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, BatchBody>(TokioIo::new(stream))
                .await
                .map_err(|e| t(&e))?;
        tokio::spawn(conn);
        let mut head = serde_json::to_vec(request).map_err(|e| t(&e))?;
        head.push(b'\n');
        let body = futures_util::stream::iter(
            [head.into(), ids]
                .map(|b: Bytes| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))),
        );
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/sign/batch")
            .header("host", "keybridge")
            .header("content-type", "application/x-ndjson")
            .body(http_body_util::StreamBody::new(body))
            .map_err(|e| t(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| t(&e))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if status == 200 {
            return Ok(BatchAnswer { body });
        }
        // A problem: small, but bounded all the same.
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(|e| t(&e))?.into_data() {
                if bytes.len() + data.len() > crate::api::MAX_BODY {
                    return Err(t(&"the daemon's problem answer is too long"));
                }
                bytes.extend_from_slice(&data);
            }
        }
        RawAnswer {
            status,
            body: bytes.into(),
            head_at: std::time::Instant::now(),
        }
        .read::<serde_json::Value>()
        .and(Err(t(&format!(
            "the daemon answered {status} without a problem"
        ))))
    }

    /// `POST /v1/account/init`
    pub async fn account_init(&self, req: &AccountInit) -> Result<AccountLog, ClientError> {
        self.call(Method::POST, "/v1/account/init", Some(req)).await
    }

    /// `POST /v1/keys/{name}/request`
    pub async fn key_request(
        &self,
        name: &str,
        req: &crate::api::log::MakeRequest,
    ) -> Result<crate::api::log::MadeRequest, ClientError> {
        self.call(Method::POST, &key_path(name, "/request"), Some(req))
            .await
    }

    /// `POST /v1/log/{route}` (`approve`, `reject`, `revoke`, `threshold`)
    /// with its body.
    pub async fn log_event(
        &self,
        route: &str,
        body: &impl Serialize,
    ) -> Result<crate::api::log::Appended, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/log/{}", encode(route)),
            Some(body),
        )
        .await
    }

    /// `POST /v1/pairings`
    pub async fn pair(&self, origin: &str) -> Result<crate::api::pair::PairingView, ClientError> {
        let req = crate::api::pair::PairRequest {
            origin: origin.to_owned(),
        };
        self.call(Method::POST, "/v1/pairings", Some(&req)).await
    }

    /// `GET /v1/pairings`
    pub async fn pairings(&self) -> Result<Vec<crate::api::pair::PairingView>, ClientError> {
        self.call(Method::GET, "/v1/pairings", None::<&()>).await
    }

    /// `DELETE /v1/pairings/{which}`
    pub async fn unpair(
        &self,
        which: &str,
    ) -> Result<Vec<crate::api::pair::PairingView>, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/pairings/{}", encode(which)),
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/backends/{backend}/tokens?location=…`
    pub async fn tokens(
        &self,
        backend: &str,
        location: Option<&str>,
    ) -> Result<Vec<TokenListing>, ClientError> {
        let mut path = format!("/v1/backends/{}/tokens", encode(backend));
        if let Some(l) = location {
            path.push_str("?location=");
            path.push_str(&encode(l));
        }
        self.call(Method::GET, &path, None::<&()>).await
    }
}

/// The body of a streamed batch request: the request line, then the ids.
type BatchBody = http_body_util::StreamBody<
    futures_util::stream::Iter<
        std::array::IntoIter<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>, 2>,
    >,
>;

/// The answer of `POST /v1/sign/batch` as it arrives.
pub struct BatchAnswer {
    body: hyper::body::Incoming,
}

impl BatchAnswer {
    /// The next piece of the NDJSON answer (lines may span pieces); `None`
    /// at its end. A stream the daemon cut short is an error — or ends
    /// without its `"complete"` line, which the reader must check.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        while let Some(frame) = self.body.frame().await {
            let frame = frame.map_err(|e| {
                ClientError::Transport(format!("the batch answer was cut short: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

/// `/v1/keys/NAME…` with the name percent-encoded (a label may hold any
/// character).
fn key_path(name: &str, rest: &str) -> String {
    format!("/v1/keys/{}{rest}", encode(name))
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Connection {
    /// Sends one request whose body is `body` (zeroized once sent) and
    /// returns the answer as it came, whatever its status.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<RawAnswer, ClientError> {
        let t = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
        self.sender.ready().await.map_err(|e| t(&e))?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "keybridge")
            .header("content-type", "application/json")
            .body(Full::new(std::io::Cursor::new(body)))
            .map_err(|e| t(&e))?;
        let resp = self.sender.send_request(req).await.map_err(|e| t(&e))?;
        let head_at = std::time::Instant::now();
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| t(&e))?
            .to_bytes();
        Ok(RawAnswer {
            status,
            body,
            head_at,
        })
    }

    /// Sends `body` as JSON and reads the answer as `T`, or its problem.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        // Serialized into a buffer that does not grow for a request with a
        // secret (a reallocation would leave a copy behind), zeroized once
        // sent.
        let mut bytes = Zeroizing::new(Vec::with_capacity(4096));
        if let Some(b) = body {
            serde_json::to_writer(&mut *bytes, b)
                .map_err(|e| ClientError::Transport(e.to_string()))?;
        }
        let answer = self.send(method, path, bytes).await?;
        answer.read()
    }
}

impl RawAnswer {
    /// The body as `T` on success, else the problem it carries.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        if (200..300).contains(&self.status) {
            serde_json::from_slice(&self.body).map_err(|e| {
                ClientError::Transport(format!("the daemon's answer is not what the API says: {e}"))
            })
        } else {
            Err(ClientError::Problem(Box::new(
                serde_json::from_slice(&self.body).map_err(|e| {
                    ClientError::Transport(format!(
                        "the daemon answered {} without a problem body: {e}",
                        self.status
                    ))
                })?,
            )))
        }
    }
}
