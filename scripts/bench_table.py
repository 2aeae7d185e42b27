#!/usr/bin/env python3
"""Prints one Markdown table of criterion medians and ratios for benches/hit_path.rs.

Usage: scripts/bench_table.py [target/criterion]

Every ratio is cachette's median time divided by the other contender's (or the floor's) median
time for the same work: below 1 means cachette is faster; for throughput rows (time per hit of all
tasks together) below 1 means more hits per second. A missing bench shows as "-".
"""

import json
import pathlib
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
LOADER_NS = 10e6  # the stampede loader sleeps 10 ms

# (case, cachette bench, compared with, other bench or a constant in ns, target as text,
#  target as a test on the ratio, or None)
ROWS = [
    ("1 memory hit", "memory_hit/cachette", "moka future::Cache (floor)", "memory_hit/moka_future", "", None),
    ("1 memory hit", "memory_hit/cachette", "moka sync::Cache", "memory_hit/moka_sync", "", None),
    ("1 memory hit", "memory_hit/cachette", "cachette's store, by hand (floor)", "memory_hit/store", "<= 1.3", lambda r: r <= 1.3),
    ("1 memory hit", "memory_hit/cachette", "RwLock<HashMap> + clone", "memory_hit/locked_map", "", None),
    ("1 memory hit", "memory_hit/cachette", "cached #[cached] (async)", "memory_hit/cached_default", "", None),
    ("1 memory hit", "memory_hit/cachette", "cached ttl (async)", "memory_hit/cached_ttl", "< 1", lambda r: r < 1),
    ("1 memory hit, sync fn", "memory_hit/cachette_sync", "cachette's store, by hand (floor)", "memory_hit/store_sync", "<= 1.3", lambda r: r <= 1.3),
    ("1 memory hit, sync fn", "memory_hit/cachette_sync", "moka sync::Cache", "memory_hit/moka_sync", "", None),
    ("1 memory hit, sync fn", "memory_hit/cachette_sync", "cached #[cached] (sync)", "memory_hit/cached_default_sync", "", None),
    ("1 memory hit, sync fn", "memory_hit/cachette_sync", "cached ttl (sync)", "memory_hit/cached_ttl_sync", "< 1", lambda r: r < 1),
    ("2 contention, 64 tasks", "contention/cachette", "moka future::Cache", "contention/moka_future", "", None),
    ("2 contention, 64 tasks", "contention/cachette", "cached #[cached]", "contention/cached_default", "< 1", lambda r: r < 1),
    ("2 contention, 64 tasks", "contention/cachette", "cached ttl", "contention/cached_ttl", "< 1", lambda r: r < 1),
    ("3 key user:<id>", "key/cachette_one", "format!", "key/format_one", "", None),
    ("3 key, two placeholders", "key/cachette_two", "format!", "key/format_two", "", None),
    ("4 redis hit, sequential", "redis_hit/cachette_seq", "redis-rs GET + bincode", "redis_hit/raw_seq", "", None),
    ("4 redis hit, 64 tasks", "redis_hit/cachette_par/64", "redis-rs GET + bincode", "redis_hit/raw_par/64", "<= 1.11", lambda r: r <= 1 / 0.9),
    ("4b cluster hit, 64 tasks", "cluster_hit/cachette_par/64", "redis-rs cluster GET + bincode", "cluster_hit/raw_par/64", "<= 1.11", lambda r: r <= 1 / 0.9),
    ("5 tiered warm hit", "memory_hit/tiered", "moka future::Cache", "memory_hit/moka_future", "<= 1.5", lambda r: r <= 1.5),
    ("5 tiered warm hit", "memory_hit/tiered", "cachette memory hit", "memory_hit/cachette", "", None),
    ("6 miss, memory", "miss/cachette_memory", "moka get + insert", "miss/moka_sync", "", None),
    ("6 miss, redis", "miss/cachette_redis", "redis-rs GET + SET", "miss/raw_redis", "", None),
    ("7 stampede, 1000 callers", "stampede/cachette", "the 10 ms loader", LOADER_NS, "<= 2", lambda r: r <= 2),
    ("7 stampede, 1000 callers", "stampede/cachette", "cached #[cached]", "stampede/cached", "", None),
    ("7 stampede, 1000 callers", "stampede/cachette", "cached sync_writes", "stampede/cached_sync_writes", "", None),
    ("8 invalidate a tag of 100,000 entries", "tag_invalidation/every_backend/100000", "a tag of 10 entries", "tag_invalidation/every_backend/10", "~1 (O(1))", lambda r: r < 1.5),
]
# 9. Observability: each hit with a Prometheus recorder against the same hit without one, and
# without one against the same hit before observability (when that build was given).
OBSERVE_ROWS = [("memory", "memory hit"), ("memory_64", "memory hit, 64 tasks"),
                ("tiered", "tiered warm hit"), ("tiered_64", "tiered warm hit, 64 tasks")]
for row, case in OBSERVE_ROWS:
    ROWS.append((f"9 {case}, Prometheus recorder", f"observe/{row}/prometheus", "no recorder",
                 f"observe/{row}/none", "<= 1.10", lambda r: r <= 1.10))
    ROWS.append((f"9 {case}, no recorder", f"observe/{row}/none", "before observability",
                 f"observe/{row}/before", "", None))

# 10. Issue 17: an `Arc` value, 10,000 warm keys, against `cached` 4's stores, one task and 64.
for group, tasks in (("arc_hit", "one task"), ("arc_hit_64", "64 tasks")):
    for mine, other, name, target in (
        ("cachette", "concurrent_cached", "#[concurrent_cached] (async)", 1.0),
        ("cachette", "concurrent_cached_ttl", "#[concurrent_cached(ttl_secs)] (async)", None),
        ("cachette", "cached_ttl", "#[cached(ttl_secs)] (async)", None),
        ("cachette_sync", "concurrent_cached_sync", "#[concurrent_cached] (sync)", 1.0),
        ("cachette_sync", "cached_ttl_sync", "#[cached(ttl_secs)] (sync)", None),
        ("cachette_tiered", "cachette", "cachette memory hit", 1.1),
        ("store_sync", "quick_cache", "quick_cache by hand (ids)", None),
        ("store_sync", "moka_sync", "moka sync::Cache by hand (ids)", None),
    ):
        check = (lambda limit: (lambda r: r <= limit))(target) if target else None
        ROWS.append((f"10 {mine}, {tasks}", f"{group}/{mine}", name, f"{group}/{other}",
                     f"<= {target}" if target else "", check))

THROUGHPUT = ("contention/", "arc_hit_64/", "redis_hit/cachette_par", "redis_hit/raw_par", "observe/memory_64",
              "observe/tiered_64", "cluster_hit/")


def median_ns(bench):
    if isinstance(bench, float):
        return bench
    path = ROOT / bench / "new" / "estimates.json"
    try:
        return json.loads(path.read_text())["median"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None


def show(ns, bench):
    if ns is None:
        return "-"
    if isinstance(bench, str) and bench.startswith(THROUGHPUT):
        return f"{ns:,.1f} ns ({1e3 / ns:,.2f} M/s)"
    if ns >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if ns >= 1e4:
        return f"{ns / 1e3:,.1f} us"
    return f"{ns:,.1f} ns"


def main():
    try:
        loads = json.loads((ROOT / "stampede" / "loads.json").read_text())
    except (OSError, ValueError):
        loads = {}
    print("| case | cachette | compared with | its median | ratio | target |")
    print("|---|---|---|---|---|---|")
    for case, ours, label, other, target, check in ROWS:
        a, b = median_ns(ours), median_ns(other)
        ratio = a / b if a is not None and b else None
        verdict = ""
        if check and ratio is not None:
            verdict = " met" if check(ratio) else " MISSED"
        if ours.startswith("stampede/"):
            name = ours.split("/")[1]
            label_loads = ""
            if isinstance(other, str):
                label_loads = f" ({loads.get(other.split('/')[1], '?')} loads)"
            case = f"{case} ({loads.get(name, '?')} loads)"
            label += label_loads
        print(
            f"| {case} | {show(a, ours)} | {label} | {show(b, other)} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} | {target}{verdict} |"
        )
    print()
    print("ratio = cachette's median / the other's median (below 1: cachette is faster).")


if __name__ == "__main__":
    main()
