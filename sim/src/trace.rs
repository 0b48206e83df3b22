//! The run's trace: every committed write and client-visible answer, folded into a 64-bit FNV-1a
//! hash in order. Two runs of one seed must produce the same hash; a `--trace` run also keeps the
//! events to print them.

/// A running hash of events, optionally keeping them.
#[derive(Clone, Debug)]
pub struct Trace {
    hash: u64,
    events: u64,
    kept: Option<Vec<String>>,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            events: 0,
            kept: None,
        }
    }
}

impl Trace {
    /// Keeps every event from now on, for printing.
    pub fn keep(&mut self) {
        self.kept.get_or_insert_with(Vec::new);
    }

    /// Folds an event into the hash.
    pub fn record(&mut self, event: &str) {
        for byte in event.bytes().chain(std::iter::once(b'\n')) {
            self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.events = self.events.saturating_add(1);
        if let Some(kept) = &mut self.kept {
            kept.push(event.to_owned());
        }
    }

    /// The hash so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Events recorded.
    pub fn len(&self) -> u64 {
        self.events
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// The kept events, if keeping.
    pub fn events(&self) -> &[String] {
        self.kept.as_deref().unwrap_or(&[])
    }
}
