//! What every request through one layer shares: its policy, its two sites and its throttle.

use std::time::Duration;

use crate::http::policy::CachePolicy;
use crate::http::throttle::Throttle;
use crate::site::Site;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) policy: CachePolicy,
    /// Stored responses, under variant keys.
    pub(crate) responses: &'static Site,
    /// Route generations, under route keys.
    pub(crate) generations: &'static Site,
    /// The responses whose handler failed to revalidate them, left alone for a while.
    pub(crate) throttle: Throttle,
}

impl Shared {
    pub(crate) fn new(policy: CachePolicy) -> Self {
        // Sites are `&'static` (the macro makes them `static`); a layer's live as long as the
        // process, so leaking two per layer built is the whole cost.
        let backend: &'static str = Box::leak(policy.backend.clone().into_boxed_str());
        // Kept through the stale windows, past which nothing may serve them.
        let retention = policy.retention();
        let responses = Box::leak(Box::new(Site::new(
            "cachette::http response",
            "http:<METHOD>:<route>|g<generation>|q<query>|h:<name><value>|u<identity>",
            backend,
            millis(retention),
            1,
        )));
        // A generation that outlives its variants keeps them reachable (stale ones included)
        // until their own end; one that ends sooner only costs a miss.
        let generations = Box::leak(Box::new(Site::new(
            "cachette::http route generation",
            "http:<METHOD>:<route>",
            backend,
            millis(retention.saturating_mul(2)),
            1,
        )));
        Shared {
            policy,
            responses,
            generations,
            throttle: Throttle::default(),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
