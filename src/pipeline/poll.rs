//! Consumers that poll their queue instead of blocking on it.
//!
//! A thread blocked in `recv` has to be woken by the sender: a futex wake and, on a busy
//! host, a context switch, paid by the sending thread. When the sender is a proxy worker in
//! the middle of a request (or the analysis thread that feeds the engine), that cost lands on
//! the path that must stay fast. A consumer that looks at its queue, and sleeps a little
//! longer each time it finds it empty, keeps the cost on its own side: at most ~500
//! wake-ups a second while traffic trickles, 50 a second when idle, and none at all while the
//! queue has work. The first sleep is 2 ms: at 500 µs the analysis thread woke four times as
//! often for a handful of items each, and its CPU per request at 12k requests/s was 3.8 against
//! 3.1 µs (medians of 3 runs, BENCHMARKS.md, session 8); a record waits at most 1.5 ms longer.

use std::time::Duration;

/// The growing sleep between looks at an empty queue.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first sleep after the queue runs dry.
    pub const MIN: Duration = Duration::from_millis(2);
    /// The longest sleep: the most an item waits after an idle spell.
    pub const MAX: Duration = Duration::from_millis(20);

    /// A backoff at its shortest sleep.
    pub fn new() -> Backoff {
        Backoff { next: Self::MIN }
    }

    /// The queue had work: the next empty look sleeps the shortest time again.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// The queue was empty: sleeps, and doubles the next sleep up to [`Backoff::MAX`].
    pub fn idle(&mut self) {
        std::thread::sleep(self.next);
        self.next = (self.next * 2).min(Self::MAX);
    }

    /// The sleep the next [`Backoff::idle`] takes.
    pub fn next_sleep(&self) -> Duration {
        self.next
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;

    #[test]
    fn the_sleep_doubles_while_idle_up_to_the_cap_and_work_resets_it() {
        let mut b = Backoff::new();
        assert_eq!(b.next_sleep(), Backoff::MIN);
        b.idle();
        assert_eq!(b.next_sleep(), Backoff::MIN * 2);
        for _ in 0..10 {
            b.idle();
        }
        assert_eq!(b.next_sleep(), Backoff::MAX);
        b.reset();
        assert_eq!(b.next_sleep(), Backoff::MIN);
    }
}
