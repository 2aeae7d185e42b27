//! Item 9, what observability costs on the hit path: the same hits with no `metrics` recorder and
//! with metrics-exporter-prometheus' recorder installed (and, when given a bench binary built
//! from the commit before observability, the hits as they were).
//!
//! A global recorder can be installed once per process, and a site registers its handles on
//! its first call, so the variants cannot share a process. Every (row, variant) pair therefore
//! runs in a process of its own: this binary re-executes itself (or runs the earlier build)
//! with [`CHILD`] set, one pair at a time, the variants of a row back to back, so that they
//! see the same machine. Each child warms its keys the same way and reports to the same
//! criterion directory, under `observe/<row>/<variant>`.

use std::hint::black_box;
use std::process::Command;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};

use super::{
    cachette_tiered_user, cachette_user, contended, current_thread, multi_thread, next, setup, HOT,
    TIERED, WARM,
};

/// Set in a child: `<variant>:<row>`.
const CHILD: &str = "CACHETTE_BENCH_OBSERVE";
/// A `hit_path` bench binary built from the commit before observability (89061f0) with this
/// file added: its rows run as the variant `before`.
const BEFORE: &str = "CACHETTE_BENCH_BEFORE";

const ROWS: [&str; 4] = ["memory", "memory_64", "tiered", "tiered_64"];

/// Runs every row's variants, each in a child process (the group of the parent's run).
pub(super) fn observe(_: &mut Criterion) {
    let me = std::env::current_exe().expect("the bench binary's path");
    let before = std::env::var_os(BEFORE);
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    for row in ROWS {
        if row.starts_with("tiered") && super::redis_url().is_none() {
            eprintln!("observe/{row}: skipped (CACHETTE_BENCH_REDIS_URL is not set)");
            continue;
        }
        let mut variants = vec![("none", me.clone().into_os_string())];
        variants.push(("prometheus", me.clone().into_os_string()));
        if let Some(before) = &before {
            variants.insert(0, ("before", before.clone()));
        }
        for (variant, exe) in variants {
            let status = Command::new(&exe)
                .args(&args)
                .env(CHILD, format!("{variant}:{row}"))
                .status()
                .expect("start the bench child");
            assert!(status.success(), "observe/{row}/{variant}: {status}");
        }
    }
}

/// In a child: measures one row in one variant. Returns false if this is not a child.
pub(super) fn child() -> bool {
    let Ok(spec) = std::env::var(CHILD) else {
        return false;
    };
    let (variant, row) = spec.split_once(':').expect("<variant>:<row>");
    // Before anything registers a handle: sites register theirs on their first call.
    let prometheus = (variant == "prometheus").then(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("the only recorder");
        handle
    });
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("observe");
    let id = BenchmarkId::new(row, variant);
    let mut ran = false;
    match row {
        "memory" => {
            let rt = current_thread();
            group.bench_function(id, |b| {
                if !ran {
                    setup();
                    rt.block_on(async {
                        for id in 0..WARM {
                            cachette_user(id).await;
                        }
                    });
                    ran = true;
                }
                b.to_async(&rt).iter_custom(|iters| async move {
                    let start = Clock::start();
                    let mut n = 0;
                    for _ in 0..iters {
                        black_box(cachette_user(black_box(next(&mut n, WARM))).await);
                    }
                    start.elapsed()
                })
            });
        }
        "tiered" => {
            let rt = current_thread();
            group.bench_function(id, |b| {
                if !ran {
                    setup();
                    rt.block_on(warm_tiered(WARM));
                    ran = true;
                }
                b.to_async(&rt).iter_custom(|iters| async move {
                    let start = Clock::start();
                    let mut n = 0;
                    for _ in 0..iters {
                        black_box(cachette_tiered_user(black_box(next(&mut n, WARM))).await);
                    }
                    start.elapsed()
                })
            });
        }
        "memory_64" => {
            let rt = multi_thread();
            group.bench_function(id, |b| {
                if !ran {
                    setup();
                    rt.block_on(async {
                        for id in 0..HOT {
                            cachette_user(id).await;
                        }
                    });
                    ran = true;
                }
                b.to_async(rt).iter_custom(|iters| async move {
                    let start = Clock::start();
                    contended(iters, cachette_user).await;
                    start.elapsed()
                })
            });
        }
        "tiered_64" => {
            let rt = multi_thread();
            group.bench_function(id, |b| {
                if !ran {
                    setup();
                    rt.block_on(warm_tiered(HOT));
                    ran = true;
                }
                b.to_async(rt).iter_custom(|iters| async move {
                    let start = Clock::start();
                    contended(iters, cachette_tiered_user).await;
                    start.elapsed()
                })
            });
        }
        other => panic!("no such row: {other}"),
    }
    group.finish();
    if let (Some(handle), true) = (prometheus, ran) {
        // The recorder really saw the hits: the exported counter of this row's site.
        let site = if row.starts_with("tiered") {
            "cachette_tiered_user"
        } else {
            "cachette_user"
        };
        let text = handle.render();
        let hits: f64 = text
            .lines()
            .filter(|line| line.starts_with("cachette_requests_total{"))
            .filter(|line| line.contains(&format!("::{site}\"")) && line.contains("result=\"hit\""))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(hits > 0.0, "no hits exported for {site}:\n{text}");
        eprintln!("observe/{row}/prometheus: {hits} hits exported");
    }
    true
}

/// What a row's time is: wall-clock time by default, or with `CACHETTE_BENCH_CLOCK=cpu` the CPU
/// time the process spent (all its threads: the 64-task rows run on every worker). CPU time
/// leaves out the time other processes held the cores, which on a shared machine is most of
/// the noise; it still includes what sharing costs (caches evicted, lines moved between cores),
/// and it sees contention between our own threads only while they run at the same time.
enum Clock {
    Wall(std::time::Instant),
    Cpu(Duration),
}

impl Clock {
    fn start() -> Clock {
        match std::env::var("CACHETTE_BENCH_CLOCK").as_deref() {
            Ok("cpu") => Clock::Cpu(process_cpu_time()),
            _ => Clock::Wall(std::time::Instant::now()),
        }
    }

    fn elapsed(&self) -> Duration {
        match self {
            Clock::Wall(start) => start.elapsed(),
            Clock::Cpu(start) => process_cpu_time() - *start,
        }
    }
}

fn process_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant libc defines.
    let failed = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(failed, 0, "the process CPU clock");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Subscribes the tiered backend's bus (L1 is used only then) and fills L1 with `keys` keys.
async fn warm_tiered(keys: u64) {
    cachette_tiered_user(0).await;
    TIERED.get().expect("redis given").l1_ready().await;
    for id in 0..keys {
        cachette_tiered_user(id).await;
    }
}
