//! A real `redis-server` process per test, on a free loopback port, that a test can kill, pause
//! (SIGSTOP), resume and restart. There is no fallback: a test that needs Redis and cannot start
//! one fails, with what to do. And the one way tests open a raw connection to it: [`connect`].

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

/// How long a test connection may take to connect: generous for a loaded 2-core machine, and
/// still a loud failure rather than a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test connection waits for a reply. Longer than any blocking command the tests
/// send (a start line's `BLPOP` waits up to 30 s): redis-rs's default of 500 ms failed a start
/// line whose slowest process arrived later than that.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// One `redis-server` child process. Killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Arguments after the defaults: a cluster node's, TLS, ACL users.
    extra: Vec<String>,
    /// Whether `port` is the TLS port (the plain one is then off).
    tls: bool,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub fn start() -> RedisServer {
        RedisServer::start_with(Vec::new(), false)
    }

    /// [`start`](Self::start) with further `redis-server` arguments; with `tls`, the port is a
    /// TLS port (`--tls-port`, the arguments naming the certificates) and the plain one is off.
    pub fn start_with(extra: Vec<String>, tls: bool) -> RedisServer {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("cachette-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a directory for redis-server");
        let mut server = RedisServer {
            port,
            dir,
            child: None,
            extra,
            tls,
        };
        server.spawn();
        server
    }

    /// The server's own directory (its working directory and `--dir`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether the process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A connection of its own to this server: see [`connect`].
    pub async fn connection(&self) -> MultiplexedConnection {
        connect(&self.url()).await
    }

    /// A blocking connection of its own to this server: see [`connect_blocking`].
    pub fn blocking_connection(&self) -> redis::Connection {
        connect_blocking(&self.url())
    }

    /// Holds every client's writes (`CLIENT PAUSE <millis> WRITE`; reads still answer) until
    /// the guard is dropped or the time is up: a failover's or a slow script's stall, where a
    /// script sent now runs later.
    pub fn pause_writes(&self, millis: u64) -> WritesPaused<'_> {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(millis)
            .arg("WRITE")
            .query(&mut self.blocking_connection())
            .expect("client pause");
        WritesPaused(self)
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server (SIGKILL) from a shared reference: for a server held in a `static`,
    /// which is never dropped.
    pub fn stop(&self) {
        if self.child.is_some() {
            self.signal("KILL");
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let ports: &[&str] = if self.tls {
            &["--port", "0", "--tls-port", &port]
        } else {
            &["--port", &port]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            // Not inherited: an orphaned server must not hold the test runner's output open.
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start redis-server ({error}). The Redis tests need it on PATH: \
                     run scripts/test, which installs it from Debian's packages, or install \
                     Redis 6+ yourself"
                )
            });
        self.child = Some(child);
        self.wait_until_accepting();
    }

    /// Polls the port until the server accepts a connection: readiness has no other signal.
    fn wait_until_accepting(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut delay = Duration::from_millis(2);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "redis-server exited at start ({status}); is port {} taken?",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not accept connections in 10 s"
            );
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (paused) process too, so no resume is needed first.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A multiplexed connection to the server at `url` (a worker process has only the url), for a
/// test's own reads and writes: planting and checking keys, counting commands, start lines. Its
/// response timeout is [`RESPONSE_TIMEOUT`], not redis-rs's 500 ms; a test that needs a short
/// one (to see a paused server not answer) configures its own.
pub async fn connect(url: &str) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    redis::Client::open(url)
        .expect("valid url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|error| panic!("connect to the test redis at {url}: {error}"))
}

/// [`connect`] for code outside a runtime (a parent process driving its workers).
pub fn connect_blocking(url: &str) -> redis::Connection {
    let connection = redis::Client::open(url)
        .expect("valid url")
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .unwrap_or_else(|error| panic!("connect to the test redis at {url}: {error}"));
    connection
        .set_read_timeout(Some(RESPONSE_TIMEOUT))
        .expect("set the read timeout");
    connection
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind a free loopback port")
}

/// Writes held by [`RedisServer::pause_writes`]; dropping it (a failed test included) resumes
/// them.
pub struct WritesPaused<'a>(&'a RedisServer);

impl Drop for WritesPaused<'_> {
    fn drop(&mut self) {
        let _: Result<(), _> = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query(&mut self.0.blocking_connection());
    }
}

/// Runs its closure when dropped, unwinding from a panic included: a test whose server lives in
/// a static (never dropped) uses it to stop the server when the test ends.
pub struct OnExit<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnExit<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
