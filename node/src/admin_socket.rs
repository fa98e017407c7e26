//! The node's local admin socket: a Unix socket `admin.sock` in the data directory, mode 0600
//! in a 0700 directory, so only the node's own user reaches it. One JSON
//! [`AdminRequest`] per connection, one JSON [`AdminResponse`] back, then the connection
//! closes. Reads are bounded in size and time; a handful of connections are served at once.
//!
//! The socket task only carries requests: the node's loop answers them (the core for its
//! state, the driver for logs and backups), so an admin request is ordered with everything
//! else the node does and its writes are durable before the answer.

use crate::relay::{AdminRequest, AdminResponse};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// The socket's file name in the node's data directory.
pub const SOCKET_NAME: &str = "admin.sock";
/// Longest request line read.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// Longest answer a client reads (a user list of many accounts is long).
pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;
/// A client that has not sent its request by then is dropped.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4;
/// How long a client waits for the node's answer (a backup of a large database takes a while).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// A request handed to the node's loop, and where its answer goes.
pub struct AdminCall {
    pub request: AdminRequest,
    pub reply: oneshot::Sender<AdminResponse>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "no node is running with data directory {0} (its admin socket is missing); start it with hestia node run"
    )]
    NotRunning(PathBuf),
    #[error("cannot reach the node's admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node's answer is not understood: {0}")]
    Protocol(String),
    #[error("another node is running with this data directory (its admin socket {0} answers)")]
    InUse(PathBuf),
}

/// Binds the socket in `data_dir`, replacing a stale one left by a node that died, and
/// refusing if a running node answers on it.
pub fn bind(data_dir: &Path) -> Result<UnixListener, AdminError> {
    let path = data_dir.join(SOCKET_NAME);
    let io = |source| AdminError::Io {
        path: path.clone(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(AdminError::InUse(path));
        }
        std::fs::remove_file(&path).map_err(io)?;
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Accepts connections until the node's loop goes away.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<AdminCall>) {
    crate::local_server::accept_loop(
        listener,
        MAX_CONNECTIONS,
        calls,
        |stream, calls| async move {
            if let Err(e) = answer(stream, calls).await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        },
    )
    .await
}

async fn answer(stream: UnixStream, calls: mpsc::Sender<AdminCall>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES);
    let n = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let response = if n == 0 || !line.ends_with('\n') {
        AdminResponse::Error("the request is not one line of JSON".into())
    } else {
        match serde_json::from_str::<AdminRequest>(&line) {
            Err(e) => AdminResponse::Error(format!("not an admin request: {e}")),
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                if calls.send(AdminCall { request, reply }).await.is_err() {
                    AdminResponse::Error("the node is shutting down".into())
                } else {
                    answer.await.unwrap_or_else(|_| {
                        AdminResponse::Error("the node is shutting down".into())
                    })
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Sends `request` to the node running with `data_dir` and waits for its answer.
pub async fn call(data_dir: &Path, request: &AdminRequest) -> Result<AdminResponse, AdminError> {
    let path = data_dir.join(SOCKET_NAME);
    let io = |source| AdminError::Io {
        path: path.clone(),
        source,
    };
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(AdminError::NotRunning(data_dir.to_path_buf()));
        }
        Err(e) => return Err(io(e)),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| AdminError::Protocol(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    let mut reader = BufReader::new(read).take(MAX_RESPONSE_BYTES);
    tokio::time::timeout(ANSWER_TIMEOUT, reader.read_line(&mut answer))
        .await
        .map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer",
            ))
        })?
        .map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| AdminError::Protocol(e.to_string()))
}
