//! A cached function's body as the call paths take it. Most sites' bodies run in the call and
//! may borrow the caller's arguments; a site with `refresh` or `timeout` lets a load outlive
//! its caller (a refresh-ahead started by a hit, a load that goes on after a soft timeout), so
//! its expansion passes a body that owns everything (`Send + 'static`), which a path may move
//! into a task of its own.

use std::future::Future;
use std::pin::Pin;

use super::fail_safe::{self, Leader};
use super::remote::{LoadPermit, Stale};
use super::report::Report;
use crate::key::CacheKey;
use crate::shape::{PortableValue, ReturnShape};
use crate::site::Site;

/// A body moved into a task: boxed, so that a path can start awaiting it in the call and hand
/// it, half run, to a task (a pinned box moves without moving the future in it).
pub(crate) type Detached<R> = Pin<Box<dyn Future<Output = R> + Send + 'static>>;

/// A body, and whether it may be moved into a task.
pub(crate) trait Body<R>: Sized {
    /// The future that runs it in the call.
    type Run: Future<Output = R>;

    /// The body, to await in the call.
    fn run(self) -> Self::Run;

    /// Starts a refresh-ahead of `key` with this body, if it may outlive the call (a body that
    /// may not is only dropped: its site has no `refresh`).
    fn refresh<S>(self, site: &'static Site, shape: S, key: &CacheKey)
    where
        S: ReturnShape<R>,
        S::Value: PortableValue;

    /// A leader's load with a stale value at hand (fail-safe): under the site's soft timeout
    /// if this body may outlive the call, else in the call.
    async fn load_with_stale<S>(
        self,
        leader: Leader,
        report: &mut Report,
        shape: S,
        stale: Stale<S::Value>,
        permit: LoadPermit,
    ) -> R
    where
        S: ReturnShape<R>,
        S::Value: PortableValue;
}

/// A body that runs in the call only (it may borrow the arguments).
pub(crate) struct Inline<F>(pub(crate) F);

impl<R, F: Future<Output = R>> Body<R> for Inline<F> {
    type Run = F;

    fn run(self) -> F {
        self.0
    }

    fn refresh<S>(self, _: &'static Site, _: S, _: &CacheKey)
    where
        S: ReturnShape<R>,
        S::Value: PortableValue,
    {
    }

    async fn load_with_stale<S>(
        self,
        leader: Leader,
        report: &mut Report,
        shape: S,
        stale: Stale<S::Value>,
        permit: LoadPermit,
    ) -> R
    where
        S: ReturnShape<R>,
        S::Value: PortableValue,
    {
        fail_safe::serve_stale(leader, report, shape, self.0, stale, permit).await
    }
}

/// A body that owns what it uses, and so may go on in a task after its caller has returned.
pub(crate) struct Detachable<F>(pub(crate) F);

impl<R, F> Body<R> for Detachable<F>
where
    R: Send + 'static,
    F: Future<Output = R> + Send + 'static,
{
    type Run = F;

    fn run(self) -> F {
        self.0
    }

    fn refresh<S>(self, site: &'static Site, shape: S, key: &CacheKey)
    where
        S: ReturnShape<R>,
        S::Value: PortableValue,
    {
        super::refresh::start(site, shape, key, Box::pin(self.0));
    }

    async fn load_with_stale<S>(
        self,
        leader: Leader,
        report: &mut Report,
        shape: S,
        stale: Stale<S::Value>,
        permit: LoadPermit,
    ) -> R
    where
        S: ReturnShape<R>,
        S::Value: PortableValue,
    {
        match leader.0.soft_timeout() {
            Some(soft) => {
                let body = Box::pin(self.0);
                fail_safe::within_soft_timeout(leader, report, shape, body, stale, permit, soft)
                    .await
            }
            None => fail_safe::serve_stale(leader, report, shape, self.0, stale, permit).await,
        }
    }
}
