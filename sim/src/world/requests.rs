//! Sending one request to an instance: as a task a crash of the instance cuts off, bounded by
//! the client's timeout, noted in the trace when sent and when answered, with its span kept for
//! the report and its answer kept for the replay.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flashsale_check::failure::{Check, Failure};
use flashsale_check::history::{Answer, Request};
use flashsale_check::recording::{OP, OpContext};
use flashsale_check::words;
use flashsale_core::{IdempotencyKey, ProductId};
use flashsale_service::ServiceError;

use super::answers::Answered;
use super::panics::CatchUnwind;
use super::{Lane, RequestSpan, Svc, World, lock, record_failure};
use crate::store::sim_us;
use crate::trace::Event;

/// How long a client waits for an answer before giving up on a request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a client request got no answer from the service.
#[derive(Debug)]
pub(super) enum CallError {
    Service(ServiceError),
    Crashed,
    Timeout,
}

impl World {
    /// Sends `request` to an instance as a task that a crash of that instance cuts off, and
    /// keeps what the client saw for the replay to check. A panic in the request fails the run
    /// and answers the client as a crash would. Returns the request's number and its answer.
    pub(super) async fn call<T, F, Fut>(
        &self,
        (instance, lane): (usize, Lane),
        product: Option<ProductId>,
        asked: impl Into<Request>,
        key: Option<IdempotencyKey>,
        request: F,
    ) -> (u64, Result<T, CallError>)
    where
        T: Answered + Send + 'static,
        F: FnOnce(Arc<Svc>) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>> + Send + 'static,
    {
        self.count(|s| s.requests += 1);
        let op = self.next_op();
        let start_us = sim_us();
        let lane_code = match lane {
            Lane::Client(c) => c as u64,
            Lane::Provider => 1 << 32,
            Lane::Admin => 2 << 32,
            Lane::Sweeper => 3 << 32,
        };
        let asked = asked.into();
        // Words cost: they are written out only when the trace is kept.
        let what = if self.keep {
            let key = key
                .as_ref()
                .map(|k| format!(" with Idempotency-Key {k}"))
                .unwrap_or_default();
            format!("{}{key}", words::request(&asked))
        } else {
            String::new()
        };
        let sent = if self.keep {
            format!("{lane} sends {what}")
        } else {
            String::new()
        };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let instance = {
            let mut instances = lock(&self.instances);
            let count = instances.len();
            let index = instance % count;
            let instance = &mut instances[index];
            let future = request(instance.service.clone());
            instance.inflight.retain(|handle| !handle.is_finished());
            let command = match asked {
                Request::Command(command) => Some(command),
                Request::Read(_) => None,
            };
            let context = OpContext::on(op, command, key, index, product);
            let scoped = CatchUnwind {
                inner: Box::pin(OP.scope(context, future)),
            };
            let (store, failure) = (self.store.clone(), self.failure.clone());
            instance.inflight.push(madsim::task::spawn(async move {
                match scoped.await {
                    Ok(answer) => {
                        let _ = sender.send(answer);
                    }
                    Err(message) => {
                        let failure_of_request =
                            Failure::new(Check::Panic, "panic", format!("panicked: {message}"))
                                .at_request(Some(op));
                        record_failure(&failure, &store, failure_of_request);
                    }
                }
            }));
            index
        };
        self.store.note(Event {
            at_us: start_us,
            instance: Some(instance),
            requests: vec![op],
            tx: None,
            product: product.map(|p| p.0),
            text: sent,
            digest: Some([0, lane_code, 0, 0]),
        });
        let answer = match madsim::time::timeout(CLIENT_TIMEOUT, receiver).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(CallError::Service(error)),
            Ok(Err(_)) => Err(CallError::Crashed),
            Err(_) => Err(CallError::Timeout),
        };
        let seen = match &answer {
            Ok(value) => value.answer(),
            Err(CallError::Service(ServiceError::Rejected(rejection))) => {
                Some(Answer::Rejected(rejection.clone()))
            }
            Err(_) => None,
        };
        let digest = match &answer {
            Ok(value) => value.digest(),
            Err(CallError::Service(ServiceError::Rejected(r))) => {
                let code = r
                    .code()
                    .bytes()
                    .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
                [6, code, 0]
            }
            Err(CallError::Service(_)) => [7, 0, 0],
            Err(CallError::Crashed) => [8, 0, 0],
            Err(CallError::Timeout) => [9, 0, 0],
        };
        let outcome = if self.keep {
            match &answer {
                Ok(value) => value.describe(),
                Err(CallError::Service(ServiceError::Rejected(r))) => {
                    format!("{} {r}", r.code())
                }
                Err(CallError::Service(error)) => format!("error: {error}"),
                Err(CallError::Crashed) => "no answer: the instance crashed".to_owned(),
                Err(CallError::Timeout) => "no answer: timed out".to_owned(),
            }
        } else {
            String::new()
        };
        let answered = if self.keep {
            format!("{lane} is answered {outcome}")
        } else {
            String::new()
        };
        let end_us = sim_us();
        self.store.note(Event {
            at_us: end_us,
            instance: Some(instance),
            requests: vec![op],
            tx: None,
            product: product.map(|p| p.0),
            text: answered,
            digest: Some([1, lane_code, digest[0] << 32 | digest[1], digest[2]]),
        });
        lock(&self.requests).push(RequestSpan {
            request: op,
            instance,
            lane,
            start_us,
            end_us,
            what,
            outcome,
        });
        if let Some(seen) = seen {
            lock(&self.client_answers).insert(op, seen);
        }
        if matches!(&answer, Err(CallError::Crashed | CallError::Timeout))
            || matches!(&answer, Err(CallError::Service(e)) if !matches!(e, ServiceError::Rejected(_)))
        {
            self.count(|s| s.request_errors += 1);
        }
        (op, answer)
    }
}
