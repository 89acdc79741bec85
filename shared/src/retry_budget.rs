//! How many requests a node refused for overload the gateway sends on to another node:
//! a retry budget per function, as in Finagle's `RetryBudget` and gRPC's retry
//! throttling.
//!
//! Why: a request refused as `overloaded` waited up to its queue timeout on that node,
//! and is tried on the next node, up to [`crate::attempt::MAX_NODES`]. When one node is
//! full that is right: another has room. When every node is full, each user request
//! becomes three queued ones and three queue timeouts, which keeps the cluster full
//! after the surge that filled it has passed. The budget tells the two apart: a retry
//! spends a token, an answered request earns back `1 / answers_per_retry` of one, and
//! there are at most `burst` tokens. So retries stay at most about one in
//! `answers_per_retry` answers once overload lasts, while a short burst of refusals is
//! retried in full.
//!
//! Lock-free: one atomic counter of thousandths of a token.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::RetryBudgetConfig;

/// Thousandths of a token.
const TOKEN: u32 = 1000;

/// One function's retry budget at a gateway.
#[derive(Debug)]
pub struct RetryBudget {
    /// Tokens left, in thousandths.
    left: AtomicU32,
    /// Most tokens held, in thousandths.
    most: u32,
    /// What one answer earns, in thousandths of a token.
    per_answer: u32,
}

impl RetryBudget {
    /// A full budget of `config.burst` tokens.
    pub fn new(config: &RetryBudgetConfig) -> RetryBudget {
        let most = config.burst.saturating_mul(TOKEN);
        RetryBudget {
            left: AtomicU32::new(most),
            most,
            per_answer: TOKEN / config.answers_per_retry.max(1),
        }
    }

    /// A node answered a request of the function (anything but a refusal): the budget
    /// earns its share of a token, up to the most it holds.
    pub fn answered(&self) {
        let _ = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left < self.most).then(|| left.saturating_add(self.per_answer).min(self.most))
            });
    }

    /// A node refused a request of the function for overload: whether the request may
    /// go on to another node. Yes spends a token.
    pub fn spend(&self) -> bool {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(TOKEN)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(burst: u32, answers_per_retry: u32) -> RetryBudget {
        RetryBudget::new(&RetryBudgetConfig {
            burst,
            answers_per_retry,
        })
    }

    #[test]
    fn a_burst_of_refusals_is_retried_in_full_then_no_more() {
        let b = budget(3, 10);
        assert_eq!([b.spend(), b.spend(), b.spend()], [true; 3]);
        assert!(!b.spend());
        assert!(
            !b.spend(),
            "a refusal not retried costs nothing, and earns nothing"
        );
    }

    #[test]
    fn answers_earn_retries_back_at_the_configured_ratio_up_to_the_burst() {
        let b = budget(2, 10);
        assert!(b.spend() && b.spend() && !b.spend());
        for _ in 0..9 {
            b.answered();
        }
        assert!(!b.spend(), "nine answers earn 0.9 of a retry");
        b.answered();
        assert!(b.spend(), "the tenth makes it one");
        assert!(!b.spend());
        for _ in 0..1000 {
            b.answered();
        }
        assert!(b.spend() && b.spend(), "refilled to the burst");
        assert!(!b.spend(), "never more than the burst");
    }

    #[test]
    fn under_lasting_overload_retries_stay_near_one_per_ratio_of_answers() {
        // Scripted: 1,000 requests, every other one refused by its first node (a retry
        // is asked for each). 500 answers at 1 in 5 earn 100 retries, plus the burst.
        let b = budget(4, 5);
        let mut retried = 0;
        for i in 0..1000 {
            if i % 2 == 0 {
                retried += u32::from(b.spend());
            } else {
                b.answered();
            }
        }
        assert!((100..=104).contains(&retried), "{retried}");
    }

    #[test]
    fn zero_burst_never_retries_and_zero_ratio_is_read_as_one() {
        let b = budget(0, 10);
        b.answered();
        assert!(!b.spend());
        let b = budget(1, 0);
        assert!(b.spend());
        b.answered();
        assert!(b.spend(), "one answer a retry");
    }
}
