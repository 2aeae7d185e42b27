//! Review 27: the shards' locks striped by thread (`striped.rs`), attacked through the store:
//! hits from thread-local destructors and from threads that come and go, a user's `Clone` that
//! panics under the read guard, and the first hit of a forked child (crossbeam's `ShardedLock`,
//! the first cut, numbered threads under a process-wide lock that a child could inherit
//! locked: 3 of 393 children hung).

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Instant;

use super::slot::Probe;
use super::*;
use crate::shape::AnyValue;
use crate::KeyBuilder;

fn key(n: u32) -> CacheKey {
    KeyBuilder::new().lit("k:").arg(&n).finish()
}

fn get<V: Clone + 'static>(backend: &MemoryBackend, key: &CacheKey) -> Option<V> {
    backend.read(key, |value| value.downcast_ref::<V>().cloned())
}

/// `count` keys, after `after`, in the shard of `of`.
fn same_shard(backend: &MemoryBackend, of: &CacheKey, count: usize, after: u32) -> Vec<CacheKey> {
    let store = &backend.shared.store;
    let shard = store.shard_of(Probe::key(of).hash);
    (after + 1..)
        .map(key)
        .filter(|k| store.shard_of(Probe::key(k).hash) == shard)
        .take(count)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Thread-local teardown: a hit (and a write) from a TLS destructor.

struct HitOnDrop {
    backend: MemoryBackend,
    done: mpsc::Sender<(Option<u32>, Option<u32>)>,
}

impl Drop for HitOnDrop {
    fn drop(&mut self) {
        let hit = get::<u32>(&self.backend, &key(1));
        self.backend
            .insert(key(2), Arc::new(2u32) as AnyValue, Duration::from_secs(60));
        let again = get::<u32>(&self.backend, &key(2));
        let _ = self.done.send((hit, again));
    }
}

thread_local! {
    static ON_EXIT: RefCell<Option<HitOnDrop>> = const { RefCell::new(None) };
}

/// `order`: 0, the thread never read before its TLS teardown (its stripe is numbered there);
/// 1, it read before the TLS with the hit was set; 2, it read after.
fn hit_from_a_tls_destructor(order: u8) {
    let backend = MemoryBackend::default();
    backend.insert(key(1), Arc::new(1u32) as AnyValue, Duration::from_secs(60));
    let (done, finished) = mpsc::channel();
    let thread_backend = backend.clone();
    let thread = std::thread::spawn(move || {
        if order == 1 {
            assert_eq!(get::<u32>(&thread_backend, &key(1)), Some(1));
        }
        ON_EXIT.with(|slot| {
            *slot.borrow_mut() = Some(HitOnDrop {
                backend: thread_backend.clone(),
                done,
            })
        });
        if order == 2 {
            assert_eq!(get::<u32>(&thread_backend, &key(1)), Some(1));
        }
    });
    let seen = finished
        .recv_timeout(Duration::from_secs(5))
        .expect("the TLS destructor's hit hung or never ran");
    thread.join().expect("the thread exited cleanly");
    assert_eq!(seen, (Some(1), Some(2)));
    // The shard's stripes are all free again: a write from here does not wait.
    backend.insert(key(3), Arc::new(3u32) as AnyValue, Duration::from_secs(60));
    assert_eq!(get::<u32>(&backend, &key(3)), Some(3));
}

#[test]
fn tls_destructor_hit_on_a_thread_that_never_read() {
    hit_from_a_tls_destructor(0);
}

#[test]
fn tls_destructor_hit_on_a_thread_numbered_before_it_was_set() {
    hit_from_a_tls_destructor(1);
}

#[test]
fn tls_destructor_hit_on_a_thread_numbered_after_it_was_set() {
    hit_from_a_tls_destructor(2);
}

/// Many short-lived threads, each one hit, more threads than stripes: every hit still reads
/// what was stored.
#[test]
fn threads_that_come_and_go_each_hit_what_was_stored() {
    let backend = MemoryBackend::default();
    backend.insert(key(1), Arc::new(1u32) as AnyValue, Duration::from_secs(60));
    for _ in 0..200 {
        let backend = backend.clone();
        let hit = std::thread::spawn(move || get::<u32>(&backend, &key(1)))
            .join()
            .expect("a hit");
        assert_eq!(hit, Some(1));
    }
}

// ---------------------------------------------------------------------------------------------
// User code under a guard: a value's Clone runs under the shard's read guard.

#[derive(Debug)]
struct PanickyClone;

impl Clone for PanickyClone {
    fn clone(&self) -> Self {
        panic!("a user's Clone panics under the read guard");
    }
}

#[test]
fn a_clone_that_panics_under_the_read_guard_releases_its_stripe() {
    let backend = MemoryBackend::default();
    let hot = key(0);
    backend.insert(
        hot.clone(),
        Arc::new(PanickyClone) as AnyValue,
        Duration::from_secs(60),
    );
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        get::<PanickyClone>(&backend, &hot)
    }));
    assert!(panicked.is_err());
    let (done, finished) = mpsc::channel();
    let writer = backend.clone();
    let other = same_shard(&backend, &hot, 1, 0).remove(0);
    std::thread::spawn(move || {
        writer.insert(other, Arc::new(1u32) as AnyValue, Duration::from_secs(60));
        writer.invalidate(hot.as_str());
        writer.invalidate_all();
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(5))
        .expect("a write waited on a stripe a panicking Clone left locked");
}

// ---------------------------------------------------------------------------------------------
// fork: a thread's first hit numbers its stripe. Numbered under a process-wide lock (crossbeam's
// `ShardedLock` takes one on a thread's first read and again when it exits), a child forked
// while another thread held it inherited it locked, and the child's first hit from a thread
// that had not read before waited on it forever.

#[cfg(target_os = "linux")]
#[test]
fn a_forked_childs_first_hit_does_not_hang() {
    // On a fresh thread: one that has never read (libtest may run tests on a thread that
    // earlier tests numbered).
    std::thread::spawn(forks_whose_child_hits_first)
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

#[cfg(target_os = "linux")]
fn forks_whose_child_hits_first() {
    let backend = MemoryBackend::default();
    let hot = key(1);
    // A write: it takes every stripe and numbers no thread, so this thread stays unnumbered.
    backend.insert(
        hot.clone(),
        Arc::new(1u32) as AnyValue,
        Duration::from_secs(60),
    );
    let stop = Arc::new(AtomicBool::new(false));
    // Short-lived threads that each hit once (a tokio blocking pool's, a thread per request):
    // each is numbered on its hit.
    let churners: Vec<_> = (0..2)
        .map(|_| {
            let (backend, hot, stop) = (backend.clone(), hot.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (backend, hot) = (backend.clone(), hot.clone());
                    std::thread::spawn(move || get::<u32>(&backend, &hot))
                        .join()
                        .expect("a hit");
                }
            })
        })
        .collect();
    let started = Instant::now();
    let (mut forks, mut hung) = (0, 0);
    while forks < 1_000 && hung < 3 && started.elapsed() < Duration::from_secs(20) {
        forks += 1;
        // SAFETY: the child uses only this backend (glibc's allocator is fork-safe) and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let served = get::<u32>(&backend, &hot) == Some(1);
            // SAFETY: exits the child without running the parent's exit handlers.
            unsafe { libc::_exit(if served { 0 } else { 2 }) };
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut status = 0;
        loop {
            // SAFETY: our own child, a valid pointer.
            let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if waited == pid {
                assert!(libc::WIFEXITED(status), "{status}");
                assert_eq!(libc::WEXITSTATUS(status), 0, "the child's hit missed");
                break;
            }
            if Instant::now() > deadline {
                hung += 1;
                let wchan =
                    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
                eprintln!("child {pid} hung, waiting in the kernel at {wchan:?}");
                // SAFETY: our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for churner in churners {
        churner.join().expect("a churner");
    }
    eprintln!("{forks} forks, {hung} children whose first hit hung (killed after 1 s)");
    assert_eq!(
        hung, 0,
        "{hung} of {forks} forked children hung on their first hit"
    );
}
