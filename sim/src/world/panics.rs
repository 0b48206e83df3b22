//! A panic inside a run as a failure of its seed: the panic hook that keeps them quiet and
//! remembers where they happened, the future that catches one in a request, and the report of a
//! run that panicked outside any request.

use std::future::Future;
use std::sync::{Arc, Mutex};

use flashsale_check::failure::{Check, Failure};

use super::{Report, RequestSpan, RunConfig, Stats, lock};
use crate::store::{FaultCounts, SimStore};

/// What a run that panicked outside a request leaves: its storage and counters so far.
pub(super) struct Partial {
    pub(super) store: SimStore,
    pub(super) stats: Arc<Mutex<Stats>>,
    pub(super) failure: Arc<Mutex<Option<Failure>>>,
    pub(super) requests: Arc<Mutex<Vec<RequestSpan>>>,
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    pub(super) static PARTIAL: std::cell::RefCell<Option<Partial>> = const { std::cell::RefCell::new(None) };
    pub(super) static IN_RUN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic's message and where it happened.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic".to_owned());
    let location = LAST_PANIC.with(|last| last.borrow_mut().take());
    match location {
        Some(location) => format!("{message} ({location})"),
        None => message,
    }
}

/// The report of a run that panicked outside any request (the run itself cannot go on).
pub(super) fn panicked(
    config: &RunConfig,
    payload: &(dyn std::any::Any + Send),
    partial: Option<Partial>,
) -> Report {
    let message = panic_message(payload);
    let mut failure = Failure::new(Check::Panic, "panic", format!("panicked: {message}"));
    let Some(partial) = partial else {
        return Report {
            seed: config.seed,
            ops: config.plan.ops(),
            fault_counts: FaultCounts::default(),
            stats: Stats::default(),
            sim_ms: 0,
            trace_hash: 0,
            trace_events: 0,
            trace: Vec::new(),
            requests: Vec::new(),
            failure: Some(failure),
        };
    };
    let trace = partial.store.trace();
    failure.trace_tail = trace.tail();
    failure.at_ms = Some(trace.last_at_us() / 1_000);
    let first = partial
        .store
        .violation()
        .or_else(|| lock(&partial.failure).clone());
    Report {
        seed: config.seed,
        ops: config.plan.ops(),
        fault_counts: partial.store.counts(),
        stats: lock(&partial.stats).clone(),
        sim_ms: trace.last_at_us() / 1_000,
        trace_hash: trace.hash(),
        trace_events: trace.len(),
        trace: trace.events().to_vec(),
        requests: lock(&partial.requests).clone(),
        failure: Some(first.unwrap_or(failure)),
    }
}

/// Keeps panics inside a run quiet (a failing seed is reported, and shrinking panics many
/// times) while remembering where the last one happened. Panics outside a run (a failing test's
/// assertion) still go to the hook that was there before.
pub fn quiet_panics() {
    let before = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_RUN.with(std::cell::Cell::get) {
            let location = info
                .location()
                .map(|l| format!("at {}:{}", l.file(), l.line()));
            LAST_PANIC.with(|last| *last.borrow_mut() = location);
        } else {
            before(info);
        }
    }));
}

/// A future that turns a panic while polling it into `Err` with the panic's message, so a
/// panic in one request fails the seed without taking the run down.
pub(super) struct CatchUnwind<F> {
    pub(super) inner: std::pin::Pin<Box<F>>,
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.inner.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(payload) => std::task::Poll::Ready(Err(panic_message(&*payload))),
        }
    }
}
