//! The run's trace: every committed write, every request sent and every client-visible answer,
//! every injected fault and chaos event, each with its simulated time, instance, request numbers
//! and transaction. Every event's line is folded into a 64-bit FNV-1a hash in order; two runs of
//! one seed must produce the same hash. The last lines are always kept (a failure shows them);
//! a `--trace` run keeps every event, to print or filter by request or product.

use std::collections::VecDeque;
use std::fmt;

use serde::Serialize;

/// Lines always kept from the end of the trace.
pub const TAIL_LINES: usize = 12;

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Simulated time since the run began, in microseconds.
    pub at_us: u64,
    /// The server instance, if one is involved.
    pub instance: Option<usize>,
    /// The requests it concerns, by number (several for a batch's transaction).
    pub requests: Vec<u64>,
    /// The storage transaction, if any.
    pub tx: Option<u64>,
    /// The product it concerns, if known (as the API numbers products).
    pub product: Option<u64>,
    /// What happened, in the API's words.
    pub text: String,
    /// What the hash takes instead of `text`, for events whose words are only written out when
    /// the trace is kept (requests and answers), so a kept and an unkept run hash alike.
    #[serde(skip)]
    pub digest: Option<[u64; 4]>,
}

impl Event {
    /// Whether the event concerns request `request`.
    pub fn is_about_request(&self, request: u64) -> bool {
        self.requests.contains(&request)
    }

    /// Whether the event concerns product `product`.
    pub fn is_about_product(&self, product: u64) -> bool {
        self.product == Some(product)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.at_us / 1_000;
        let us = self.at_us % 1_000;
        write!(f, "{ms:>7}.{us:03}ms")?;
        match self.instance {
            Some(i) => write!(f, " i{i}")?,
            None => write!(f, " --")?,
        }
        if self.requests.is_empty() {
            write!(f, " -")?;
        } else {
            let numbers: Vec<String> = self.requests.iter().map(|r| format!("r{r}")).collect();
            write!(f, " {}", numbers.join(","))?;
        }
        if let Some(tx) = self.tx {
            write!(f, " tx{tx}")?;
        }
        write!(f, " {}", self.text)
    }
}

/// A running hash of events, keeping the last few lines and optionally every event.
#[derive(Clone, Debug)]
pub struct Trace {
    hash: u64,
    events: u64,
    last_at_us: u64,
    tail: VecDeque<Event>,
    kept: Option<Vec<Event>>,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            events: 0,
            last_at_us: 0,
            tail: VecDeque::with_capacity(TAIL_LINES),
            kept: None,
        }
    }
}

impl Trace {
    /// Keeps every event from now on, for printing.
    pub fn keep(&mut self) {
        self.kept.get_or_insert_with(Vec::new);
    }

    /// Folds an event into the hash: its fields, in order (the same as hashing its line, for
    /// telling runs apart, without formatting it).
    pub fn record(&mut self, event: Event) {
        let numbers = [
            event.at_us,
            event.instance.map_or(u64::MAX, |i| i as u64),
            event.tx.unwrap_or(u64::MAX),
            event.product.unwrap_or(u64::MAX),
        ];
        let text = match event.digest {
            Some(_) => &[][..],
            None => event.text.as_bytes(),
        };
        let bytes = numbers
            .iter()
            .chain(&event.requests)
            .chain(event.digest.iter().flatten())
            .flat_map(|n| n.to_le_bytes())
            .chain(text.iter().copied())
            .chain(std::iter::once(b'\n'));
        for byte in bytes {
            self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.events = self.events.saturating_add(1);
        self.last_at_us = self.last_at_us.max(event.at_us);
        match &mut self.kept {
            Some(kept) => kept.push(event),
            None => {
                if self.tail.len() == TAIL_LINES {
                    self.tail.pop_front();
                }
                self.tail.push_back(event);
            }
        }
    }

    /// The hash so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The simulated time of the latest event, in microseconds.
    pub fn last_at_us(&self) -> u64 {
        self.last_at_us
    }

    /// Events recorded.
    pub fn len(&self) -> u64 {
        self.events
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// The last lines, oldest first.
    pub fn tail(&self) -> Vec<String> {
        match &self.kept {
            Some(kept) => {
                let from = kept.len().saturating_sub(TAIL_LINES);
                kept[from..].iter().map(ToString::to_string).collect()
            }
            None => self.tail.iter().map(ToString::to_string).collect(),
        }
    }

    /// The kept events, if keeping.
    pub fn events(&self) -> &[Event] {
        self.kept.as_deref().unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at_us: u64, text: &str) -> Event {
        Event {
            at_us,
            instance: Some(1),
            requests: vec![7],
            tx: Some(3),
            product: Some(2),
            text: text.to_owned(),
            digest: None,
        }
    }

    #[test]
    fn a_line_shows_time_instance_request_and_transaction() {
        assert_eq!(
            event(1_234_567, "commit").to_string(),
            "   1234.567ms i1 r7 tx3 commit"
        );
    }

    #[test]
    fn the_tail_keeps_the_last_lines_and_the_hash_every_event() {
        let mut a = Trace::default();
        let mut b = Trace::default();
        for i in 0..20 {
            a.record(event(i, "x"));
            b.record(event(i, if i == 3 { "y" } else { "x" }));
        }
        assert_eq!(a.tail().len(), TAIL_LINES);
        assert!(a.tail()[TAIL_LINES - 1].contains("0.019ms"));
        assert_ne!(a.hash(), b.hash(), "one different event changes the hash");
        assert!(a.events().is_empty(), "not keeping");
    }
}
