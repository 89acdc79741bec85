//! A member's gossip send budget: so many bytes a second on average, kept by opening
//! fewer exchanges of its own.
//!
//! Most of gossip's bytes are digests that list every member. Each round a member opens
//! three exchanges (a chitchat `Syn`, which carries its digest) and answers about three,
//! so its cost grows with the cluster: 45 KB/s a member at 100 members with 200 ms
//! rounds. Over its budget, a member skips opening exchanges until the bucket has filled
//! again. Answers are always sent, so the exchanges others open complete. A small cluster,
//! well within the budget, gossips every round; a large one gossips as if its rounds were
//! longer (about a second at 100 members under 10 KB/s), and its failure detection,
//! which learns the spacing of heartbeats, slows with it.

use tokio::time::Instant;

/// A token bucket of bytes, refilled at the budget's rate up to one second's worth.
#[derive(Debug)]
pub struct SendBudget {
    /// Bytes per second.
    rate: f64,
    /// Bytes that may be sent now; below zero after answers overdrew it.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl SendBudget {
    /// A budget of `bytes_per_s` on average, in bursts of at most a second's worth.
    pub fn new(bytes_per_s: u64, now: Instant) -> SendBudget {
        SendBudget {
            rate: bytes_per_s as f64,
            tokens: bytes_per_s as f64,
            at: now,
        }
    }

    /// Whether a new exchange may be opened at `now`.
    pub fn opens(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + self.rate * elapsed).min(self.rate);
        self.at = now;
        self.tokens > 0.0
    }

    /// `bytes` were sent. Answers may overdraw the bucket, by a second's worth at most,
    /// so that a burst of them delays this member's own exchanges by a second at most.
    pub fn spend(&mut self, bytes: usize) {
        self.tokens = (self.tokens - bytes as f64).max(-self.rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Exchanges of `cost` bytes tried every 200 ms for `seconds` under `budget` bytes/s:
    /// how many were opened.
    fn opened(budget: u64, cost: usize, seconds: u64) -> u64 {
        let start = Instant::now();
        let mut b = SendBudget::new(budget, start);
        let mut opened = 0;
        for round in 0..seconds * 5 {
            let now = start + Duration::from_millis(200 * round);
            // Three exchanges a round, as chitchat opens.
            for _ in 0..3 {
                if b.opens(now) {
                    b.spend(cost);
                    opened += 1;
                }
            }
        }
        opened
    }

    #[test]
    fn within_the_budget_every_exchange_is_opened() {
        // 3 × 5 × 500 B = 7.5 KB/s under 10 KB/s.
        assert_eq!(opened(10_000, 500, 60), 900);
    }

    #[test]
    fn over_the_budget_the_bytes_sent_keep_to_it() {
        // 3 × 5 × 3 KB = 45 KB/s wanted; 10 KB/s allowed, plus the first second's burst
        // and one exchange of overdraft.
        let n = opened(10_000, 3_000, 60);
        let sent = n * 3_000;
        assert!(sent <= 61 * 10_000 + 3_000, "{n} exchanges, {sent} bytes");
        assert!(
            sent >= 59 * 10_000,
            "{n} exchanges, {sent} bytes: the budget went unused"
        );
    }

    #[test]
    fn answers_overdraw_the_bucket_by_a_second_at_most() {
        let start = Instant::now();
        let mut b = SendBudget::new(1_000, start);
        b.spend(1_000_000);
        assert!(!b.opens(start + Duration::from_millis(999)));
        assert!(b.opens(start + Duration::from_millis(1_001)));
    }
}
