//! The bugs a run can plant in the simulated storage (never in the service), each to prove that a
//! checker finds it, with the command-line word for each.

/// A bug planted in the storage, to prove the checkers catch it. The first line of each
/// variant's doc is what `--help` lists for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Bug {
    /// Locking a product takes no lock, so two hold requests decide on one read of its counters.
    SkipProductLock,
    /// The retirement of a hold expired for good is not written while its product's counters
    /// still move.
    ///
    /// A hold stays held that its product no longer counts among its holds to retire.
    ForgetReleaseExpired,
    /// A released hold reads back as held, so an order can consume it.
    ConsumeReleasedHold,
    /// A webhook key's record is never found, so a redelivered webhook is applied again.
    ApplyWebhookTwice,
    /// A client's Idempotency-Key record is never written, so a retry holds or orders again.
    ForgetRequestKey,
    /// A hold request never finds its product's due expiry buckets, so it is refused while
    /// their units are free.
    ///
    /// The sweeper still folds them. Invariants hold throughout: only the answers are wrong,
    /// which only the replay of answers can see.
    CountExpiredHolds,
    /// The read of a product's due expiry buckets also reads every expired hold not yet folded,
    /// as the old read of every expired hold did.
    ///
    /// Every decision comes out the same (the buckets are the same); only the rows a request
    /// reads grow with the number of holds that expired, which the work budget of every
    /// transaction catches.
    LoadEveryExpiredHold,
    /// A commit whose answer was lost is reported as a lost connection, so it runs again.
    ///
    /// The service retries a lost connection, and so runs the transaction again over the commit
    /// that applied.
    LostCommitAsLostConnection,
    /// A product read counts a bucket whose deadline is exactly now as held.
    ///
    /// A hold request counts it free, so the two disagree for one millisecond per hold; no
    /// invariant and no command's answer can see it, only reads checked at deadlines.
    ReadDeadlineAsHeld,
    /// The storage panics while committing the 5th webhook record, as a failed assertion would.
    ///
    /// It proves that a panic inside the simulation fails its seed with the panic's message,
    /// the request, and the last trace lines, instead of taking the run down.
    PanicInCommit,
}

/// The webhook record whose commit [`Bug::PanicInCommit`] panics in.
pub(super) const PANIC_AT_WEBHOOK: usize = 5;

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 10] = [
        Bug::SkipProductLock,
        Bug::ForgetReleaseExpired,
        Bug::ConsumeReleasedHold,
        Bug::ApplyWebhookTwice,
        Bug::ForgetRequestKey,
        Bug::CountExpiredHolds,
        Bug::LoadEveryExpiredHold,
        Bug::LostCommitAsLostConnection,
        Bug::ReadDeadlineAsHeld,
        Bug::PanicInCommit,
    ];

    /// The command-line word for it.
    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipProductLock => "skip-product-lock",
            Bug::ForgetReleaseExpired => "forget-release-expired",
            Bug::ConsumeReleasedHold => "consume-released-hold",
            Bug::ApplyWebhookTwice => "apply-webhook-twice",
            Bug::ForgetRequestKey => "forget-request-key",
            Bug::CountExpiredHolds => "count-expired-holds",
            Bug::LoadEveryExpiredHold => "load-every-expired-hold",
            Bug::LostCommitAsLostConnection => "lost-commit-as-lost-connection",
            Bug::ReadDeadlineAsHeld => "read-deadline-as-held",
            Bug::PanicInCommit => "panic-in-commit",
        }
    }

    /// Parses a command-line word.
    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}
