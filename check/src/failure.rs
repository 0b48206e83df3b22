//! A failed seed, in the API's words: which check failed, what it saw (ids as the API shows
//! them), and where: the request's number, the instance that served it and the simulated time,
//! with the last lines of the trace before it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Trace lines kept with a failure.
pub const TRACE_TAIL_LINES: usize = 12;

/// Which checker failed a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// An invariant of docs/DESIGN.md after a commit.
    Invariant,
    /// The commit-order replay (rows or answers).
    Refinement,
    /// A client idempotency key.
    Idempotency,
    /// Every answer to one webhook key the same.
    Webhook,
    /// Everything settles once faults stop.
    Liveness,
    /// A panic inside the simulation (an assertion in the core, the service or the simulator).
    Panic,
    /// A transaction took a row lock against the core's global lock order.
    LockOrder,
    /// A transaction loaded or wrote more rows than its commands' budget
    /// (`flashsale_core::Plan::budget`): work that grows with history inside a request.
    Budget,
}

impl Check {
    /// The word for it.
    pub fn name(self) -> &'static str {
        match self {
            Check::Invariant => "invariant",
            Check::Refinement => "refinement",
            Check::Idempotency => "idempotency",
            Check::Webhook => "webhook",
            Check::Liveness => "liveness",
            Check::Panic => "panic",
            Check::LockOrder => "lock order",
            Check::Budget => "work budget",
        }
    }
}

/// A failed check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The checker.
    pub check: Check,
    /// What kind of failure within the checker, stable across runs (shrinking keeps it).
    pub kind: String,
    /// What it saw, in the API's words.
    pub message: String,
    /// The request it concerns, by its number in the run (`r<N>` in the trace).
    pub request: Option<u64>,
    /// The server instance that served that request (from 0).
    pub instance: Option<usize>,
    /// Simulated time since the run began, in milliseconds: when the check failed, or when the
    /// request was sent.
    pub at_ms: Option<u64>,
    /// The last trace lines before the failure.
    pub trace_tail: Vec<String>,
}

impl Failure {
    /// A failure of `check`, of `kind`, saying `message`, located nowhere yet.
    pub fn new(check: Check, kind: &str, message: String) -> Failure {
        Failure {
            check,
            kind: format!("{}: {kind}", check.name()),
            message,
            request: None,
            instance: None,
            at_ms: None,
            trace_tail: Vec::new(),
        }
    }

    /// The failure, about `request`.
    pub fn at_request(mut self, request: Option<u64>) -> Failure {
        self.request = request;
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check.name(), self.message)?;
        let mut place = Vec::new();
        if let Some(request) = self.request {
            place.push(format!("request r{request}"));
        }
        if let Some(instance) = self.instance {
            place.push(format!("instance {instance}"));
        }
        if let Some(at_ms) = self.at_ms {
            place.push(format!("at {at_ms} ms simulated"));
        }
        if !place.is_empty() {
            write!(f, " [{}]", place.join(", "))?;
        }
        Ok(())
    }
}
