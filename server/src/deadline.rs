//! A bound on how long a request waits for its answer, whatever it waits on.
//!
//! [`Deadline`] wraps the routes' service. A request not answered within the deadline is answered
//! 503 `deadline_exceeded` with `Retry-After` ([`crate::routes::deadline_passed`]), and its handler
//! is dropped, as when its client goes away: a command queued for the next batch stays queued and
//! is decided with it (only its answer is lost), a transaction of its own is rolled back unless it
//! was committing. So a write answered so may still take effect, and the answer says so; a retry
//! under the same `Idempotency-Key` replays what it did.
//!
//! Without it an answer waits as long as the database does: a Galera cluster installing a new
//! view after a node left holds every commit for seconds, a sweep releasing tens of thousands of
//! holds holds the product row, and a client cannot tell a slow answer from a lost one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use warp::http::Request;
use warp::reply::Response;

/// The routes' service with a deadline on every answer.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    within: Duration,
}

impl<S> Deadline<S> {
    /// Wraps `inner`, answering each request within `within`.
    pub fn new(inner: S, within: Duration) -> Self {
        Deadline { inner, within }
    }
}

impl<S, B> tower_service::Service<Request<B>> for Deadline<S>
where
    S: tower_service::Service<Request<B>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let within = self.within;
        // Boxed where it is made: the routes' future is large (every route's filter future
        // nested), and each move of it by value is a copy of all of it (docs/PERFORMANCE.md).
        let answering = Box::pin(self.inner.call(request));
        Box::pin(async move {
            match tokio::time::timeout(within, answering).await {
                Ok(answered) => answered,
                Err(_) => Ok(crate::routes::deadline_passed(within)),
            }
        })
    }
}
