//! Every log line of a test binary, kept for the test to read (and still written to stderr):
//! the WARN and ERROR lines a test asserts on (a named cause, no password, no cross-slot
//! refusal).

use std::io::Write;
use std::sync::{Mutex, OnceLock};

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

/// Installs the capturing subscriber (once per binary; a later call only returns the lines).
pub fn capture_logs() -> &'static Mutex<Vec<u8>> {
    struct Capture;
    impl Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            LOGS.get()
                .expect("set")
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            std::io::stderr().write(bytes)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            std::io::stderr().flush()
        }
    }
    let logs = LOGS.get_or_init(|| Mutex::new(Vec::new()));
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Capture)
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .try_init();
    logs
}

/// The lines kept so far.
pub fn captured(logs: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(
        &logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned()
}
