//! The CLI's side of the API: HTTP/1.1 over the daemon's Unix socket.

use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
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
    #[error("{detail}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: String,
        /// Human-readable detail.
        detail: String,
        /// PIN attempts left, when known.
        retries_left: Option<u64>,
    },
    /// Transport failure.
    #[error("talking to the daemon: {0}")]
    Transport(String),
    /// The socket's folder or the process behind the socket is not this
    /// user's: nothing was sent.
    #[error("{0}")]
    Untrusted(String),
}

/// A connection to the daemon.
///
/// Before a byte is sent (a request may carry a PIN or passphrase), the
/// client checks that the socket's folder is this user's own and that the
/// process at the other end runs as this user (`SO_PEERCRED`): another
/// local user who got to create the folder first, or who listens on a
/// socket we were pointed at, receives nothing.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon at `socket`.
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_owned(),
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, Zeroizing::new(Vec::new()))
            .await
    }

    /// `POST path` with a JSON body. The body buffer is zeroized after the
    /// request: it may carry a PIN or passphrase.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let bytes = Zeroizing::new(serde_json::to_vec(body).expect("JSON serializes"));
        self.call(Method::POST, path, bytes).await
    }

    /// Connects after checking the folder, and checks the peer.
    async fn connect(&self) -> Result<UnixStream, ClientError> {
        let dir = self.socket.parent().unwrap_or(Path::new("."));
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

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<Value, ClientError> {
        let t = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
        let stream = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| t(&e))?;
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "keybridge")
            .header("content-type", "application/json")
            // The body is handed over as is, and zeroized when hyper drops it.
            .body(Full::new(std::io::Cursor::new(body)))
            .map_err(|e| t(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| t(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| t(&e))?
            .to_bytes();
        drop(sender);
        let _ = conn.await;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Transport(format!("daemon answered non-JSON: {e}")))?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(ClientError::Problem {
                status: status.as_u16(),
                code: value["code"].as_str().unwrap_or("unknown").to_owned(),
                detail: value["detail"]
                    .as_str()
                    .unwrap_or("the daemon refused")
                    .to_owned(),
                retries_left: value["retries_left"].as_u64(),
            })
        }
    }
}
