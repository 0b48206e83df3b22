//! One server instance: its service over the shared storage, with a batch scope that carries
//! each queued request's context to the batch deciding it and turns a panic in a batch into the
//! seed's failure, and its sweeper.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashsale_check::failure::{Check, Failure};
use flashsale_check::recording::{self, OpContext};
use flashsale_core::Command;
use flashsale_service::store::StoreError;
use flashsale_service::{BatchRun, BatchScope, BatchTag, Config, Service};

use super::panics::CatchUnwind;
use super::{Lane, Svc, World, record_failure};
use crate::clock::SimClock;
use crate::store::SimStore;

/// One server instance's service: queued requests carry their request context to the batch that
/// decides them, so the storage logs a batch's transaction for each of its requests, and a panic
/// while deciding a batch fails the seed at the batch's first request.
pub(super) fn instance_service(
    store: &SimStore,
    clock: SimClock,
    config: Config,
    failure: &Arc<Mutex<Option<Failure>>>,
) -> Arc<Svc> {
    let service = Service::new(store.clone(), clock, config);
    let scope = BatchOfRequests {
        store: store.clone(),
        failure: failure.clone(),
    };
    Arc::new(service.with_batch_scope(Arc::new(scope)))
}

/// An instance's batch scope: its requests' contexts carried to the batch's transaction
/// ([`recording::RequestContexts`]), and a panic while deciding the batch recorded as the seed's
/// failure at the batch's first request, as a panic in a request's own task is; the batch's
/// requests are then answered that their commit is unknown.
#[derive(Debug)]
struct BatchOfRequests {
    store: SimStore,
    failure: Arc<Mutex<Option<Failure>>>,
}

impl BatchScope for BatchOfRequests {
    fn capture(&self) -> Option<BatchTag> {
        recording::RequestContexts.capture()
    }

    fn scope<'a>(&self, tags: Vec<Option<BatchTag>>, run: BatchRun<'a>) -> BatchRun<'a> {
        let first = tags
            .iter()
            .flatten()
            .find_map(|tag| tag.downcast_ref::<OpContext>().map(|op| op.id));
        let size = tags.len();
        let run = recording::RequestContexts.scope(tags, run);
        let (store, failure) = (self.store.clone(), self.failure.clone());
        Box::pin(async move {
            match (CatchUnwind {
                inner: Box::pin(run),
            })
            .await
            {
                Ok(answers) => answers,
                Err(message) => {
                    let panicked =
                        Failure::new(Check::Panic, "panic", format!("panicked: {message}"));
                    record_failure(&failure, &store, panicked.at_request(first));
                    let unknown = || StoreError::CommitUnknown("the batch panicked".into());
                    (0..size).map(|_| Err(unknown().into())).collect()
                }
            }
        })
    }
}

impl World {
    pub(super) async fn sweep_forever(self: Arc<Self>, instance: usize) {
        loop {
            madsim::time::sleep(Duration::from_millis(1_000)).await;
            let call = self.call(
                (instance, Lane::Sweeper),
                None,
                Command::Sweep,
                None,
                |s| async move { s.sweep().await },
            );
            let _ = call.await;
        }
    }
}
