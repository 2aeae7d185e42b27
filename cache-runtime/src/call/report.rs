//! What one call tells about itself: its site's counters (`stats()`), its metric handles, and
//! its span. Each call path reports its answer once, where it decides it; a load is timed by a
//! guard, so that a body that panics or is dropped is still counted, as such.

use std::time::{Duration, Instant};

use tracing::field::Empty;
use tracing::Span;

use crate::observe::counters::Count;
use crate::observe::meters::SiteMeters;
use crate::observe::{Answer, LoadOutcome, Scope, Tier};
use crate::site::Site;

/// One call's reporter.
pub(super) struct Report {
    site: &'static Site,
    meters: &'static SiteMeters,
    span: Span,
    served: Served,
}

/// How a call was served, for callers that say so (the HTTP layer's `Cache-Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Served {
    pub(crate) answer: Answer,
    /// The call waited for another caller's load (RFC 9211's `collapsed`).
    pub(crate) coalesced: bool,
}

impl Report {
    /// Starts the call's span: at DEBUG, so that with the usual INFO filter it is never built
    /// (one comparison against the global maximum level).
    #[inline]
    pub(super) fn start(site: &'static Site, meters: &'static SiteMeters) -> Self {
        let span = tracing::debug_span!(
            "cached",
            site = site.function(),
            backend = site.backend_name(),
            result = Empty,
            tier = Empty,
            coalesced = false,
        );
        Report {
            site,
            meters,
            span,
            served: Served {
                answer: Answer::Bypass,
                coalesced: false,
            },
        }
    }

    /// How the call was served, as reported so far.
    pub(super) fn served(&self) -> Served {
        self.served
    }

    /// The span, for the body to run in: the function's own events then nest under it.
    pub(super) fn span(&self) -> &Span {
        &self.span
    }

    /// Counts the call's answer, once per call.
    #[inline]
    pub(super) fn answer(&mut self, answer: Answer, tier: Tier) {
        self.served.answer = answer;
        let count = match answer {
            Answer::Hit => Count::Hits,
            Answer::Miss => Count::Misses,
            Answer::Stale => Count::Stale,
            Answer::Bypass => Count::Bypasses,
            Answer::Error => Count::Errors,
        };
        self.site.count(count, 1);
        if answer == Answer::Hit && tier == Tier::L1 {
            self.site.count(Count::L1Hits, 1);
        }
        self.meters.request(answer, tier);
        if !self.span.is_disabled() {
            self.span.record("result", answer.label());
            self.span.record("tier", tier.label());
        }
    }

    /// Counts a wait for another caller's load, which began at `since`.
    pub(super) fn coalesced(&mut self, scope: Scope, since: Instant) {
        let waited = since.elapsed();
        self.served.coalesced = true;
        self.site.count(Count::Coalesced, 1);
        self.meters.coalesce(scope, waited);
        self.span.record("coalesced", true);
    }

    /// Starts timing a run of the body; the guard counts it when it ends, however it ends.
    pub(super) fn load(&self) -> LoadTimer<'_> {
        LoadTimer {
            report: self,
            started: Instant::now(),
            ended: false,
        }
    }

    fn loaded(&self, outcome: LoadOutcome, took: Duration) {
        self.site.count(Count::Loads, 1);
        if outcome != LoadOutcome::Ok {
            self.site.count(Count::LoadFailures, 1);
        }
        self.site.counters().add_duration(Count::LoadNanos, took);
        self.meters.load(outcome, took);
    }
}

/// A run of the body under way. Dropped without [`end`](Self::end), it counts the run as
/// panicked (while unwinding) or cancelled (the future was dropped).
pub(super) struct LoadTimer<'a> {
    report: &'a Report,
    started: Instant,
    ended: bool,
}

impl LoadTimer<'_> {
    /// The body returned: `failed` if the shape says it produced nothing to cache (`Err`).
    pub(super) fn end(mut self, failed: bool) {
        self.ended = true;
        let outcome = if failed {
            LoadOutcome::Err
        } else {
            LoadOutcome::Ok
        };
        self.report.loaded(outcome, self.started.elapsed());
    }
}

impl Drop for LoadTimer<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let outcome = if std::thread::panicking() {
                LoadOutcome::Panic
            } else {
                LoadOutcome::Cancelled
            };
            self.report.loaded(outcome, self.started.elapsed());
        }
    }
}
