//! The gateway-wide budget of request bodies held in memory. Each body is bounded by
//! its function's limit; this bounds them all together, so a crowd of large uploads
//! cannot take the gateway's memory. A body is covered as it arrives, chunk by chunk,
//! and the request is answered `503` the moment it would pass the budget.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget, counted in KiB.
pub struct BodyBudget(Arc<Semaphore>);

/// The part of the budget one request's body holds; given back when dropped.
#[derive(Default)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    kib: u32,
}

impl BodyBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> BodyBudget {
        let kib = usize::try_from(bytes.div_ceil(1024)).unwrap_or(usize::MAX);
        BodyBudget(Arc::new(Semaphore::new(kib.min(Semaphore::MAX_PERMITS))))
    }

    /// Extends `held` to cover a body of `total` bytes; `false` if the budget has no
    /// room for it now.
    pub fn cover(&self, held: &mut Held, total: usize) -> bool {
        let Ok(needed) = u32::try_from(total.div_ceil(1024)) else {
            return false;
        };
        if needed <= held.kib {
            return true;
        }
        match Arc::clone(&self.0).try_acquire_many_owned(needed - held.kib) {
            Ok(more) => {
                match &mut held.permit {
                    Some(permit) => permit.merge(more),
                    None => held.permit = Some(more),
                }
                held.kib = needed;
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_together_stay_within_the_budget_and_give_it_back() {
        let budget = BodyBudget::new(10 * 1024);
        let mut a = Held::default();
        assert!(budget.cover(&mut a, 3000));
        assert!(budget.cover(&mut a, 6 * 1024), "growing as it arrives");
        let mut b = Held::default();
        assert!(budget.cover(&mut b, 4 * 1024));
        assert!(!budget.cover(&mut b, 5 * 1024), "over the budget with a");
        drop(a);
        assert!(budget.cover(&mut b, 9 * 1024), "a gave its share back");
        assert!(!budget.cover(&mut Held::default(), usize::MAX));
    }
}
