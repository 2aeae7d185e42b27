//! A TCP forwarder on a free loopback port in front of a real server, that can hold back every
//! *new* connection's first bytes for a while: connections it has already forwarded keep
//! flowing untouched. What a client sees is a server that is slow to connect to (a debug build's
//! TLS handshake on a loaded machine, a distant seed), made deterministic, while the server
//! itself answers as usual.
//!
//! It runs on the test's Tokio runtime; dropping it stops accepting and closes every connection
//! it forwards.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// One forwarder: `127.0.0.1:<port>` to `127.0.0.1:<upstream>`.
pub struct DelayingProxy {
    port: u16,
    shared: Arc<Shared>,
    accepting: JoinHandle<()>,
}

struct Shared {
    upstream: u16,
    /// How long a connection accepted now waits before anything is forwarded, in ms.
    delay_millis: AtomicU64,
    /// Connections accepted so far.
    accepted: AtomicUsize,
}

impl DelayingProxy {
    /// Listens on a free loopback port and forwards to the server on `upstream`, at once until
    /// [`delay_new_connections`](Self::delay_new_connections) says otherwise.
    pub async fn start(upstream: u16) -> DelayingProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a loopback port for the proxy");
        let port = listener.local_addr().expect("a bound address").port();
        let shared = Arc::new(Shared {
            upstream,
            delay_millis: AtomicU64::new(0),
            accepted: AtomicUsize::new(0),
        });
        let accepting = tokio::spawn(accept(listener, Arc::clone(&shared)));
        DelayingProxy {
            port,
            shared,
            accepting,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every connection accepted from now on forwards nothing, either way, until `delay` has
    /// passed (the client's handshake waits in the socket); those already forwarded go on.
    pub fn delay_new_connections(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_millis.store(millis, Ordering::SeqCst);
    }

    /// How many connections clients opened through this proxy.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for DelayingProxy {
    fn drop(&mut self) {
        // The forwarding tasks live in the accept loop's `JoinSet`: aborting it drops them.
        self.accepting.abort();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut forwarding = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let delay = Duration::from_millis(shared.delay_millis.load(Ordering::SeqCst));
                forwarding.spawn(forward(client, shared.upstream, delay));
            }
            // Reaps finished connections so the set does not grow with every one.
            Some(_) = forwarding.join_next(), if !forwarding.is_empty() => {}
        }
    }
}

async fn forward(mut client: TcpStream, upstream: u16, delay: Duration) {
    tokio::time::sleep(delay).await;
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
