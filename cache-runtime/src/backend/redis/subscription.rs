//! A pub/sub subscription to one channel on every node that publishes on it: the one server,
//! or each master of a cluster. The scripts publish with classic `PUBLISH` on the master that
//! runs them (ARCHITECTURE.md, "Redis Cluster"), so listening on every master means a message
//! reaches this process on its own connection to the node that published it, with no hop over
//! the cluster bus that could drop it unseen; losing any of these connections is noticed (the
//! stream ends, or a ping fails), which is what the bus's loss detection relies on. Each
//! message arrives once per master (the cluster bus forwards it to the others): receivers are
//! idempotent.

use std::time::Duration;

use futures_util::stream::{BoxStream, SelectAll};
use futures_util::StreamExt;
use redis::aio::PubSubSink;

use super::connection::Target;

/// A live subscription to one channel on every publishing node.
pub(crate) struct Subscription {
    sinks: Vec<PubSubSink>,
    /// Each node's payloads, then one `None` when its connection closes.
    messages: SelectAll<BoxStream<'static, Option<Vec<u8>>>>,
}

impl Subscription {
    /// Subscribes to `channel` on every node of `target`, each step within `timeout`; `None`
    /// unless every node confirmed.
    pub(crate) async fn open(target: &Target, channel: &str, timeout: Duration) -> Option<Self> {
        let nodes = target.masters(timeout).await.ok()?;
        let subscriptions = nodes.iter().map(|node| async move {
            let mut pubsub = tokio::time::timeout(timeout, node.get_async_pubsub())
                .await
                .ok()?
                .ok()?;
            tokio::time::timeout(timeout, pubsub.subscribe(channel))
                .await
                .ok()?
                .ok()?;
            Some(pubsub.split())
        });
        let mut sinks = Vec::with_capacity(nodes.len());
        let mut messages = SelectAll::new();
        for subscribed in futures_util::future::join_all(subscriptions).await {
            let (sink, stream) = subscribed?;
            sinks.push(sink);
            let payloads = stream
                .map(|message| Some(message.get_payload_bytes().to_vec()))
                .chain(futures_util::stream::once(async { None }));
            messages.push(payloads.boxed());
        }
        (!sinks.is_empty()).then_some(Subscription { sinks, messages })
    }

    /// The next message's payload; `None` once any node's connection closed.
    pub(crate) async fn next_payload(&mut self) -> Option<Vec<u8>> {
        self.messages.next().await.flatten()
    }

    /// Pings every node's connection; false if one did not answer within `timeout`.
    pub(crate) async fn ping(&mut self, timeout: Duration) -> bool {
        let pings = self
            .sinks
            .iter_mut()
            .map(|sink| tokio::time::timeout(timeout, sink.ping::<redis::Value>()));
        futures_util::future::join_all(pings)
            .await
            .into_iter()
            .all(|pong| matches!(pong, Ok(Ok(_))))
    }
}
