//! `flashsale-load run --scenario expiry-storm`: how holds and reads of one product behave
//! before and across the moment most of its holds lapse together, as they do one TTL after a
//! flash sale opens.
//!
//! Three phases, each driven by `run::drive_phase` with the same per-connection loop, stats
//! and HTTP code as every other scenario:
//!
//! 1. **fill**: `--fill-connections` (default `--connections`) connections place `qty 1` holds
//!    on `--product` until `--fill N` were granted, reading each 201's `expires_at` to learn
//!    the earliest and the latest deadline. The TTL is the server's setting, so its answers are
//!    the only way to learn it. The fill stops early once the earliest deadline is closer than
//!    the `before` window needs, since the run could only fail past that, and at
//!    [`FILL_TIME_MAX`] in any case.
//! 2. **before**: for `--before` seconds, even-indexed connections place holds and odd ones
//!    `GET /api/products/{product}`. The window must end [`BEFORE_MARGIN`] before the earliest
//!    deadline; when the fill left less time the run fails and says so, rather than measure a
//!    shorter window than was asked for (the server's `--hold-ttl` is then too short).
//! 3. **across**: the same mix for `--across` seconds from [`ACROSS_LEAD`] before the earliest
//!    deadline (or from the end of `before`, if that is later). A deadline more than
//!    [`WAIT_MAX`] after the fill fails the run too, rather than keep it idle for an hour.
//!
//! `--warmup`, `--duration` and `--requests` are ignored: every grant of the fill counts towards
//! N and towards the deadlines, and the windows start on a server the fill has warmed. With
//! `--server-pid` (a server on this machine) the figures also hold the server's CPU time over
//! each phase and its resident memory at each phase's end, read from `/proc`.
//!
//! [`StormSummary`] is the `--json` document and renders the side-by-side table.

mod summary;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub use self::summary::{FillSummary, Ratios, StormSummary, WindowSummary};
use super::cli::RunArgs;
use super::http::Target;
use super::process as server;
pub use super::process::ServerUse;
use super::run::{self, Budget, GrantSpan, Grants, Phase, PhaseDone, Plan, Window, unix_ms};

/// Least time between the end of the `before` window and the earliest deadline, so no hold of
/// the fill lapses inside it even if the clocks of the server and the generator differ a little.
pub const BEFORE_MARGIN: Duration = Duration::from_secs(1);

/// How long before the earliest deadline the `across` window starts, so it shows the last
/// seconds of the old state next to the lapse.
pub const ACROSS_LEAD: Duration = Duration::from_secs(2);

/// Longest wait from the end of the fill to its earliest deadline. A longer one means a server
/// whose `--hold-ttl` is far longer than the fill (the default `2m` is fine, `1h` is a mistake),
/// which would keep the run idle for most of it.
pub const WAIT_MAX: Duration = Duration::from_secs(15 * 60);

/// Longest fill. A fill that grants holds stops far sooner, when its first hold nears its
/// deadline; this bounds one that grants none (a sold-out product, a server answering 503).
pub const FILL_TIME_MAX: Duration = Duration::from_secs(30 * 60);

// Both windows then start before the earliest deadline: `before` ends BEFORE_MARGIN ahead of
// it, and `across` starts at the later of that end and ACROSS_LEAD ahead of it.
const _: () = assert!(BEFORE_MARGIN.as_millis() > 0);
const _: () = assert!(ACROSS_LEAD.as_millis() > 0);
// A wait long enough for the longest before window anyone would ask for.
const _: () = assert!(WAIT_MAX.as_millis() > 60 * 1_000);

/// The request kinds of the windows, in the order of their stats: connection `i` sends kind
/// `i mod 2`.
pub const KINDS: [&str; 2] = ["hold", "get"];

/// Runs the three phases against `args.target` and returns their figures.
///
/// # Errors
/// Bad arguments (no `--fill`, fewer than two connections, a bad target); a fill that granted
/// no hold, or holds without a readable `expires_at`; a fill that left less time before its
/// earliest deadline than `--before` needs, or more than [`WAIT_MAX`].
/// Failed requests are not errors: they are counted in the figures.
pub async fn storm(args: &RunArgs) -> anyhow::Result<StormSummary> {
    let wanted = args
        .fill
        .context("expiry-storm needs --fill N: the holds to grant before the windows")?;
    if args.connections < 2 {
        bail!("expiry-storm needs --connections 2 or more: half hold, half read");
    }
    let target = Target::parse(&args.target)?;
    let server = args.server_pid;
    let fill = fill(&target, args, wanted).await?;
    if fill.span.unreadable > 0 {
        bail!(
            "{} of the fill's {} granted holds had no readable expires_at; the storm cannot \
             place its windows without them",
            fill.span.unreadable,
            fill.span.granted
        );
    }
    let Some((earliest_ms, _)) = fill.span.deadlines_ms else {
        bail!(
            "the fill granted no hold on product {} in {:.1} s ({})",
            args.product,
            fill.done.elapsed_s,
            summary::fill_answers(&fill.done)
        );
    };
    let fill_end = Instant::now();
    let schedule = Schedule::new(unix_ms(), earliest_ms, args.before, args.across)
        .map_err(|unfit| anyhow::anyhow!(unfit.explain(&fill.span, wanted, &fill.done)))?;
    let before = window(&target, args, fill_end, schedule.before_end, server).await?;
    let across_at = fill_end
        .checked_add(schedule.across_start)
        .context("the across window's start overflows")?;
    tokio::time::sleep_until(tokio::time::Instant::from_std(across_at)).await;
    // A before window whose last answers came late starts the across window late, never short.
    let across_start = across_at.max(Instant::now());
    let across_length = schedule.across_end.saturating_sub(schedule.across_start);
    let across = window(&target, args, across_start, across_length, server).await?;
    summary::storm_summary(args, wanted, &fill, &before, &across)
}

/// When the windows run, as offsets from the end of the fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// From the end of the fill to the earliest deadline.
    pub left: Duration,
    /// The `before` window runs from the end of the fill until this.
    pub before_end: Duration,
    /// The `across` window starts here...
    pub across_start: Duration,
    /// ...and ends here.
    pub across_end: Duration,
}

/// Why the windows do not fit around the fill's earliest deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfit {
    /// The fill left less time before its earliest deadline than the `before` window needs.
    TooShort {
        /// From the end of the fill to the earliest deadline.
        left: Duration,
        /// `--before` plus [`BEFORE_MARGIN`].
        needed: Duration,
    },
    /// The earliest deadline is further away than [`WAIT_MAX`].
    TooFar {
        /// From the end of the fill to the earliest deadline.
        left: Duration,
    },
}

impl Schedule {
    /// The schedule for a fill that ended at `now_ms` (Unix milliseconds) with its earliest
    /// hold lapsing at `earliest_ms`: `before` from now, then `across` from [`ACROSS_LEAD`]
    /// before the earliest deadline, or from the end of `before` if that is later.
    ///
    /// # Errors
    /// [`Unfit::TooShort`] when `before` does not end [`BEFORE_MARGIN`] ahead of the deadline;
    /// [`Unfit::TooFar`] when the deadline is more than [`WAIT_MAX`] away.
    pub fn new(
        now_ms: u64,
        earliest_ms: u64,
        before: Duration,
        across: Duration,
    ) -> Result<Self, Unfit> {
        let left = Duration::from_millis(earliest_ms.saturating_sub(now_ms));
        let needed = before.saturating_add(BEFORE_MARGIN);
        if left < needed {
            return Err(Unfit::TooShort { left, needed });
        }
        if left > WAIT_MAX {
            return Err(Unfit::TooFar { left });
        }
        let across_start = before.max(left.saturating_sub(ACROSS_LEAD));
        Ok(Self {
            left,
            before_end: before,
            across_start,
            across_end: across_start.saturating_add(across),
        })
    }
}

impl Unfit {
    /// The error a run prints: how much TTL the fill left and what to change.
    fn explain(&self, span: &GrantSpan, wanted: u64, fill: &PhaseDone) -> String {
        let filled = format!(
            "the fill granted {} of {wanted} holds in {:.1} s",
            span.granted, fill.elapsed_s
        );
        match *self {
            Unfit::TooShort { left, needed } => format!(
                "{filled} and left {:.2} s before its first hold lapses, but --before {:.1} \
                 needs {:.2} s (the window and a {:.1} s margin): the server's --hold-ttl is too \
                 short for this fill; raise it, or lower --fill or --before",
                left.as_secs_f64(),
                needed.saturating_sub(BEFORE_MARGIN).as_secs_f64(),
                needed.as_secs_f64(),
                BEFORE_MARGIN.as_secs_f64(),
            ),
            Unfit::TooFar { left } => format!(
                "{filled}, and its first hold lapses in {:.0} s, more than the {:.0} s the storm \
                 waits: the server's --hold-ttl is far longer than this fill needs; lower it",
                left.as_secs_f64(),
                WAIT_MAX.as_secs_f64(),
            ),
        }
    }
}

/// What the fill measured.
struct Filled {
    done: PhaseDone,
    span: GrantSpan,
    start_ms: u64,
    end_ms: u64,
    server: ServerUse,
}

/// What one window measured.
struct Measured {
    done: PhaseDone,
    start_ms: u64,
    end_ms: u64,
    server: ServerUse,
}

async fn fill(target: &Target, args: &RunArgs, wanted: u64) -> anyhow::Result<Filled> {
    let connections = args.fill_connections.unwrap_or(args.connections);
    let cutoff = args.before.saturating_add(BEFORE_MARGIN);
    let phase = Phase {
        plan: Plan::Single(run::hold(args.product)?),
        window: Window::after(Instant::now(), Duration::ZERO, FILL_TIME_MAX)?,
        budget: Budget::Grants(Grants::new(wanted, cutoff)),
        connections,
        timeout: args.timeout,
    };
    let cpu_start = args.server_pid.and_then(server::cpu_s);
    let start_ms = unix_ms();
    let done = run::drive_phase(target, phase).await?;
    let end_ms = unix_ms();
    let span = done
        .grants
        .context("the fill's budget counts grants, so its phase returns them")?;
    let server = ServerUse::since(args.server_pid, cpu_start);
    Ok(Filled {
        done,
        span,
        start_ms,
        end_ms,
        server,
    })
}

/// One window of the hold/read mix from `start` for `length`.
async fn window(
    target: &Target,
    args: &RunArgs,
    start: Instant,
    length: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<Measured> {
    let plan = Plan::Split(vec![
        run::hold(args.product)?,
        run::get_product(args.product)?,
    ]);
    let phase = Phase {
        plan,
        window: Window::after(start, Duration::ZERO, length)?,
        budget: Budget::Window,
        connections: args.connections,
        timeout: args.timeout,
    };
    let cpu_start = server_pid.and_then(server::cpu_s);
    let start_ms = unix_ms();
    let done = run::drive_phase(target, phase).await?;
    let end_ms = unix_ms();
    Ok(Measured {
        done,
        start_ms,
        end_ms,
        server: ServerUse::since(server_pid, cpu_start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;

    #[test]
    fn the_across_window_starts_its_lead_before_the_earliest_deadline() {
        let now_ms = 1_700_000_000_000;
        let schedule = Schedule::new(now_ms, now_ms + 30 * S, secs(8), secs(20));
        assert_eq!(
            schedule,
            Ok(Schedule {
                left: secs(30),
                before_end: secs(8),
                across_start: secs(28),
                across_end: secs(48),
            })
        );
    }

    #[test]
    fn the_across_window_follows_a_before_window_that_ends_inside_the_lead() {
        let now_ms = 1_700_000_000_000;
        let schedule = Schedule::new(now_ms, now_ms + 9_500, secs(8), secs(20));
        assert_eq!(schedule.map(|s| s.across_start), Ok(secs(8)));
    }

    #[test]
    fn a_before_window_that_does_not_fit_before_the_deadline_is_refused() {
        let now_ms = 1_700_000_000_000;
        let too_short = Schedule::new(now_ms, now_ms + 8_999, secs(8), secs(20));
        assert_eq!(
            too_short,
            Err(Unfit::TooShort {
                left: Duration::from_millis(8_999),
                needed: secs(9),
            })
        );
        assert!(Schedule::new(now_ms, now_ms + 9 * S, secs(8), secs(20)).is_ok());
    }

    #[test]
    fn a_deadline_already_past_leaves_no_time() {
        let now_ms = 1_700_000_000_000;
        let past = Schedule::new(now_ms, now_ms - S, secs(0), secs(20));
        assert_eq!(
            past,
            Err(Unfit::TooShort {
                left: Duration::ZERO,
                needed: BEFORE_MARGIN,
            })
        );
    }

    #[test]
    fn a_deadline_further_than_the_longest_wait_is_refused() -> anyhow::Result<()> {
        let now_ms = 1_700_000_000_000;
        let hour_ms = 3_600 * S;
        let too_far = Schedule::new(now_ms, now_ms + hour_ms, secs(8), secs(20));
        assert_eq!(too_far, Err(Unfit::TooFar { left: secs(3_600) }));
        let limit_ms = u64::try_from(WAIT_MAX.as_millis())?;
        assert!(Schedule::new(now_ms, now_ms + limit_ms, secs(8), secs(20)).is_ok());
        Ok(())
    }

    #[test]
    fn the_too_short_error_says_how_much_ttl_was_left_and_blames_the_ttl() -> anyhow::Result<()> {
        let span = GrantSpan {
            granted: 700,
            unreadable: 0,
            deadlines_ms: Some((40 * S, 45 * S)),
        };
        let done = PhaseDone {
            stats: crate::load::stats::RunStats::new(1, false)?,
            elapsed_s: 33.0,
            grants: Some(span),
        };
        let short = Unfit::TooShort {
            left: Duration::from_millis(6_500),
            needed: secs(9),
        };
        let message = short.explain(&span, 1_000, &done);
        assert!(
            message.contains("granted 700 of 1000 holds in 33.0 s"),
            "{message}"
        );
        assert!(
            message.contains("left 6.50 s before its first hold lapses"),
            "{message}"
        );
        assert!(message.contains("--before 8.0 needs 9.00 s"), "{message}");
        assert!(
            message.contains("--hold-ttl is too short for this fill"),
            "{message}"
        );
        Ok(())
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }
}
