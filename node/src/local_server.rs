//! The accept loop the node's local servers share (the admin socket, the metrics listener):
//! at most a few connections served at once, each on its own task, each handed the channel
//! into the node's loop; the loop ends when the node's loop has gone.

use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;

/// A listener the loop accepts from.
pub(crate) trait Listener: Send + 'static {
    type Stream: Send + 'static;
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Accepts connections on `listener`, serving at most `max` at once with `serve`, until the
/// receiving end of `calls` is dropped.
pub(crate) async fn accept_loop<L, C, F>(
    listener: L,
    max: usize,
    calls: mpsc::Sender<C>,
    serve: fn(L::Stream, mpsc::Sender<C>) -> F,
) where
    L: Listener,
    C: Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept_one().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "local accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if calls.is_closed() {
            return;
        }
        let task = serve(stream, calls.clone());
        tokio::spawn(async move {
            task.await;
            drop(permit);
        });
    }
}
