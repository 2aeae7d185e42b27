//! What one call tells about itself: its site's counters (`stats()`), its metric handles, and
//! its span. Each call path reports its answer once, where it decides it; a load is timed by a
//! guard, so that a body that panics or is dropped is still counted, as such. The one answer a
//! call path cannot decide is the HTTP layer's hit: the layer ages the entry after the read, so
//! the call leaves the hit to it ([`Counting::HitByCaller`]), and the layer counts what it
//! answered through a [`Tally`].

use std::time::{Duration, Instant};

use tracing::field::Empty;
use tracing::Span;

use crate::observe::counters::Count;
use crate::observe::meters::SiteMeters;
use crate::observe::{Answer, LoadOutcome, Scope, Tier};
#[cfg(feature = "axum")]
use crate::registry;
use crate::site::Site;

/// One call's reporter.
pub(super) struct Report {
    site: &'static Site,
    meters: &'static SiteMeters,
    span: Span,
    served: Served,
    counting: Counting,
}

/// Who counts a call's hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counting {
    /// The call path, where it finds the value: every `#[cached]` call.
    Here,
    /// Its caller, which judges the value found before answering with it: the HTTP layer,
    /// whose hit on a stale entry answers stale (or revalidates), through a [`Tally`].
    HitByCaller,
}

/// How a call was served, for callers that say so (the HTTP layer's `Cache-Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Served {
    pub(crate) answer: Answer,
    /// The call waited for another caller's load (RFC 9211's `collapsed`).
    pub(crate) coalesced: bool,
    /// Where a hit left to the caller was found; `None` once the call counted its answer.
    uncounted_hit: Option<Tier>,
    /// The call's load was served but Redis failed to store it (its answer stays a miss: Redis
    /// answered the read; the failure is the backend's last error, in `health()`).
    pub(crate) store_failed: bool,
}

#[cfg(feature = "axum")]
impl Served {
    /// The tier of a hit the call path left for the caller to count; `None` if it counted
    /// the answer itself.
    pub(crate) fn uncounted_hit(&self) -> Option<Tier> {
        self.uncounted_hit
    }
}

impl Report {
    /// Starts the call's span: at DEBUG, so that with the usual INFO filter it is never built
    /// (one comparison against the global maximum level).
    #[inline]
    pub(super) fn start(site: &'static Site, meters: &'static SiteMeters) -> Self {
        Self::start_counting(site, meters, Counting::Here)
    }

    /// [`start`](Self::start), with its hit counted as `counting` says. `Here` is a constant
    /// on every `#[cached]` path, so the test of it in [`answer`](Self::answer) folds away.
    #[inline]
    pub(super) fn start_counting(
        site: &'static Site,
        meters: &'static SiteMeters,
        counting: Counting,
    ) -> Self {
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
                uncounted_hit: None,
                store_failed: false,
            },
            counting,
        }
    }

    /// Counts an in-process hit found before any reporter was made (the hit paths asked
    /// ahead of the full path): what `start` and `answer` would do, without building the
    /// reporter, whose fields a hit would only write and drop.
    #[inline(always)]
    pub(super) fn hit(site: &'static Site, meters: &'static SiteMeters, tier: Tier) {
        count_answer(site, meters, Answer::Hit, tier);
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            Self::hit_span(site, meters, tier);
        }
    }

    /// The hit's span, as `start` and `answer` record it, when DEBUG may be on.
    #[cold]
    #[inline(never)]
    fn hit_span(site: &'static Site, meters: &'static SiteMeters, tier: Tier) {
        let report = Self::start(site, meters);
        if !report.span.is_disabled() {
            report.span.record("result", Answer::Hit.label());
            report.span.record("tier", tier.label());
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

    /// Counts the call's answer, once per call; a hit left to the caller, not here. The span
    /// records what the call found either way.
    #[inline]
    pub(super) fn answer(&mut self, answer: Answer, tier: Tier) {
        self.served.answer = answer;
        if self.counting == Counting::HitByCaller && answer == Answer::Hit {
            self.served.uncounted_hit = Some(tier);
        } else {
            count_answer(self.site, self.meters, answer, tier);
        }
        if !self.span.is_disabled() {
            self.span.record("result", answer.label());
            self.span.record("tier", tier.label());
        }
    }

    /// Notes that Redis failed to store the call's load (nothing is counted for it).
    pub(super) fn store_failed(&mut self) {
        self.served.store_failed = true;
    }

    /// Counts a wait for another caller's load, which began at `since`.
    pub(super) fn coalesced(&mut self, scope: Scope, since: Instant) {
        self.served.coalesced = true;
        count_coalesced(self.site, self.meters, scope, since);
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

#[inline]
fn count_answer(site: &Site, meters: &SiteMeters, answer: Answer, tier: Tier) {
    let count = match answer {
        Answer::Hit => Count::Hits,
        Answer::Miss => Count::Misses,
        Answer::Stale => Count::Stale,
        Answer::Bypass => Count::Bypasses,
        Answer::Error => Count::Errors,
    };
    site.count(count, 1);
    if answer == Answer::Hit && tier == Tier::L1 {
        site.count(Count::L1Hits, 1);
    }
    meters.request(answer, tier);
}

fn count_coalesced(site: &Site, meters: &SiteMeters, scope: Scope, since: Instant) {
    site.count(Count::Coalesced, 1);
    meters.coalesce(scope, since.elapsed());
}

/// The answer to an HTTP request whose hit the call path left uncounted, counted once, when
/// dropped: as what [`settle`](Self::settle) says, or, for a request dropped (its client gone)
/// or unwound before that, as what it was last [`expect`](Self::expect)ed to be: the hit it
/// was, or the miss of a request forwarded to revalidate its entry.
#[cfg(feature = "axum")]
pub(crate) struct Tally {
    site: &'static Site,
    meters: &'static SiteMeters,
    answer: Answer,
    /// Where the entry was read: a stale answer, or the miss revalidating it, counts there.
    tier: Tier,
}

#[cfg(feature = "axum")]
impl Tally {
    /// A hit on `site` in `tier`, to be judged.
    pub(crate) fn hit(site: &'static Site, tier: Tier) -> Self {
        Tally {
            site,
            meters: &registry::resolve(site).meters,
            answer: Answer::Hit,
            tier,
        }
    }

    /// What the request is counted as should it end before it is settled.
    pub(crate) fn expect(&mut self, answer: Answer) {
        self.answer = answer;
    }

    /// Counts a wait, begun at `since`, for another request's run that decided this answer.
    pub(crate) fn coalesced(&mut self, scope: Scope, since: Instant) {
        count_coalesced(self.site, self.meters, scope, since);
    }

    /// Counts the request as `answer`.
    pub(crate) fn settle(mut self, answer: Answer) {
        self.answer = answer;
    }
}

#[cfg(feature = "axum")]
impl Drop for Tally {
    fn drop(&mut self) {
        count_answer(self.site, self.meters, self.answer, self.tier);
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
