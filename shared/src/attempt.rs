//! The gateway's attempt sequence for one request: which node to try next, given what
//! the last attempt did. Pure: the gateway performs each [`Step`] and reports its
//! [`Outcome`]; nothing here sends anything, reads a clock or takes a lock.
//!
//! The rules (DESIGN.md, *The request path*):
//!
//! - nodes are tried in the routing order, at most [`MAX_NODES`] of them;
//! - a node that does not have the function (`not-found`) gets it deployed, then the
//!   request once more;
//! - a refusal before the function started (`overloaded`, `draining`) or a node that
//!   could not be reached moves the request to the next node: nothing ran there;
//!   `overloaded` only while the function's [`crate::retry_budget`] allows, else that
//!   refusal is the answer;
//! - an exchange that broke after the request may have reached the node is retried only
//!   for idempotent methods;
//! - a request whose connection the gateway gave up (gossip holds the node down) goes
//!   to the next node on the same terms, or, when none is left, to the same node once
//!   more on a new connection (it may have restarted);
//! - no answer within the gateway's timeout is final: the function may still be running;
//! - when every node tried refused, the last refusal is the answer (its `Retry-After`
//!   tells the user when to come back).

use crate::wire::Refusal;

/// Most nodes one request is tried on.
pub const MAX_NODES: usize = 3;

/// What the gateway does next for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send the request to node `usize` (an index of the routing order's view).
    Send(usize),
    /// Deploy the function on node `usize`, then send the request there again.
    Deploy(usize),
    /// Answer with the response the last attempt got.
    Answer,
    /// Answer with the last refusal a node gave.
    AnswerRefusal,
    /// Answer with an error of the gateway's own.
    Fail(Failure),
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The node answered (any status but a refusal).
    Answered,
    /// The node refused before the function started.
    Refused(Refusal),
    /// The node refused as `overloaded`, and the function's retry budget is spent.
    RefusedOverBudget,
    /// No connection: nothing was sent.
    Unreachable,
    /// The request may have reached the node, then the exchange failed.
    Broken,
    /// The gateway gave the node's connection up while the request was on it, because
    /// gossip holds the node down; `sent`: the request may have reached it.
    GivenUp {
        /// The request may have reached the node.
        sent: bool,
    },
    /// No answer within the gateway's request timeout.
    TimedOut,
    /// The function was deployed on the node.
    Deployed,
    /// The node refused the deploy.
    DeployRefused,
}

/// Why the gateway answers by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No node could take the request (none known, or every one tried failed).
    NoNode,
    /// A node took the request and gave no answer in time.
    TimedOut,
    /// The function could not be deployed on a node.
    DeployFailed,
}

/// One request's attempts.
#[derive(Debug, Clone)]
pub struct Attempts {
    order: Vec<usize>,
    /// Position in `order` of the node being tried.
    at: usize,
    idempotent: bool,
    /// The function was deployed on the current node for this request.
    deployed_here: bool,
    /// A node refused and its answer is kept.
    refusal_kept: bool,
    /// The request went to the current node once more after its connection was given
    /// up.
    resent_here: bool,
    current: Step,
}

impl Attempts {
    /// The attempts of a request over `order` (the routing decision, best first; only the
    /// first [`MAX_NODES`] are tried). `idempotent`: whether its method may be sent twice.
    pub fn new(mut order: Vec<usize>, idempotent: bool) -> Attempts {
        order.truncate(MAX_NODES);
        let current = match order.first() {
            Some(&node) => Step::Send(node),
            None => Step::Fail(Failure::NoNode),
        };
        Attempts {
            order,
            at: 0,
            idempotent,
            deployed_here: false,
            refusal_kept: false,
            resent_here: false,
            current,
        }
    }

    /// The step to take now.
    pub fn step(&self) -> Step {
        self.current
    }

    /// Whether a node is left to try after the current one.
    pub fn has_next_node(&self) -> bool {
        self.at + 1 < self.order.len()
    }

    /// Takes in what the current step did and returns the next one.
    pub fn next(&mut self, outcome: Outcome) -> Step {
        self.current = match (self.current, outcome) {
            (Step::Send(_), Outcome::Answered) => Step::Answer,
            (Step::Send(node), Outcome::Refused(Refusal::NotFound)) if !self.deployed_here => {
                Step::Deploy(node)
            }
            (Step::Send(_), Outcome::Refused(Refusal::NotFound)) => self.move_on(),
            (Step::Send(_), Outcome::Refused(_)) => {
                self.refusal_kept = true;
                self.move_on()
            }
            (Step::Send(_), Outcome::RefusedOverBudget) => {
                self.refusal_kept = true;
                self.give_up()
            }
            (Step::Send(_), Outcome::Unreachable) => self.move_on(),
            (Step::Send(_), Outcome::Broken) if self.idempotent => self.move_on(),
            (Step::Send(_), Outcome::Broken) => self.give_up(),
            (Step::Send(_), Outcome::GivenUp { sent }) if sent && !self.idempotent => {
                self.give_up()
            }
            (Step::Send(node), Outcome::GivenUp { .. })
                if !self.has_next_node() && !self.resent_here =>
            {
                self.resent_here = true;
                Step::Send(node)
            }
            (Step::Send(_), Outcome::GivenUp { .. }) => self.move_on(),
            (Step::Send(_), Outcome::TimedOut) => Step::Fail(Failure::TimedOut),
            (Step::Deploy(node), Outcome::Deployed) => {
                self.deployed_here = true;
                Step::Send(node)
            }
            (Step::Deploy(_), Outcome::DeployRefused) => Step::Fail(Failure::DeployFailed),
            // A deploy that could not reach its node, or broke: nothing ran there.
            (
                Step::Deploy(_),
                Outcome::Unreachable
                | Outcome::Broken
                | Outcome::GivenUp { .. }
                | Outcome::TimedOut,
            ) => self.move_on(),
            (done, _) => done,
        };
        self.current
    }

    /// The next node in the order, or the end.
    fn move_on(&mut self) -> Step {
        self.at += 1;
        self.deployed_here = false;
        self.resent_here = false;
        match self.order.get(self.at) {
            Some(&node) => Step::Send(node),
            None => self.give_up(),
        }
    }

    fn give_up(&self) -> Step {
        if self.refusal_kept {
            Step::AnswerRefusal
        } else {
            Step::Fail(Failure::NoNode)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `outcomes` through a sequence over `order`; returns every step taken.
    fn run(order: &[usize], idempotent: bool, outcomes: &[Outcome]) -> Vec<Step> {
        let mut attempts = Attempts::new(order.to_vec(), idempotent);
        let mut steps = vec![attempts.step()];
        for &outcome in outcomes {
            steps.push(attempts.next(outcome));
        }
        steps
    }

    use Outcome::*;
    use Step::*;

    #[test]
    fn an_answer_is_returned_from_the_first_node() {
        assert_eq!(run(&[4, 2], true, &[Answered]), [Send(4), Answer]);
    }

    #[test]
    fn no_node_at_all_fails_at_once() {
        assert_eq!(run(&[], true, &[]), [Fail(Failure::NoNode)]);
    }

    #[test]
    fn a_refusal_moves_to_the_next_node_and_the_last_refusal_is_the_answer() {
        let overloaded = Refused(Refusal::Overloaded);
        let draining = Refused(Refusal::Draining);
        assert_eq!(
            run(&[0, 1, 2], false, &[overloaded, Answered]),
            [Send(0), Send(1), Answer]
        );
        assert_eq!(
            run(&[0, 1, 2], false, &[draining, overloaded, overloaded]),
            [Send(0), Send(1), Send(2), AnswerRefusal]
        );
    }

    #[test]
    fn an_overload_refusal_past_the_budget_is_the_answer_at_once() {
        assert_eq!(
            run(&[0, 1, 2], true, &[RefusedOverBudget]),
            [Send(0), AnswerRefusal]
        );
        let mut attempts = Attempts::new(vec![0, 1], true);
        assert!(attempts.has_next_node());
        attempts.next(Refused(Refusal::Overloaded));
        assert!(
            !attempts.has_next_node(),
            "the last node: no retry to spend on"
        );
        // Retried once while the budget held, then not.
        assert_eq!(
            run(
                &[0, 1, 2],
                true,
                &[Refused(Refusal::Overloaded), RefusedOverBudget]
            ),
            [Send(0), Send(1), AnswerRefusal]
        );
    }

    #[test]
    fn a_connection_given_up_moves_on_or_tries_the_last_node_once_more() {
        let given_up = GivenUp { sent: true };
        assert_eq!(
            run(&[0, 1], true, &[given_up, Answered]),
            [Send(0), Send(1), Answer]
        );
        // The last node: once more (a new connection finds it if it restarted), then no.
        assert_eq!(
            run(&[0, 1], true, &[given_up, given_up, given_up]),
            [Send(0), Send(1), Send(1), Fail(Failure::NoNode)]
        );
        // Never sent twice when it may have run and is not idempotent; nothing sent is
        // another matter.
        assert_eq!(
            run(&[0, 1], false, &[given_up]),
            [Send(0), Fail(Failure::NoNode)]
        );
        assert_eq!(
            run(&[0], false, &[GivenUp { sent: false }, Answered]),
            [Send(0), Send(0), Answer]
        );
    }

    #[test]
    fn at_most_three_nodes_are_tried() {
        assert_eq!(
            run(
                &[0, 1, 2, 3, 4],
                true,
                &[Unreachable, Unreachable, Unreachable]
            ),
            [Send(0), Send(1), Send(2), Fail(Failure::NoNode)]
        );
    }

    #[test]
    fn not_found_deploys_then_sends_again_once() {
        let not_found = Refused(Refusal::NotFound);
        assert_eq!(
            run(&[7, 8], false, &[not_found, Deployed, Answered]),
            [Send(7), Deploy(7), Send(7), Answer]
        );
        // Still not found after the deploy: the next node (which may need it too).
        assert_eq!(
            run(
                &[7, 8],
                false,
                &[
                    not_found, Deployed, not_found, not_found, Deployed, Answered
                ]
            ),
            [
                Send(7),
                Deploy(7),
                Send(7),
                Send(8),
                Deploy(8),
                Send(8),
                Answer
            ]
        );
        assert_eq!(
            run(&[7, 8], false, &[not_found, DeployRefused]),
            [Send(7), Deploy(7), Fail(Failure::DeployFailed)]
        );
        assert_eq!(
            run(&[7, 8], false, &[not_found, Unreachable, Answered]),
            [Send(7), Deploy(7), Send(8), Answer]
        );
    }

    #[test]
    fn a_broken_exchange_is_retried_only_when_idempotent() {
        assert_eq!(
            run(&[0, 1], true, &[Broken, Answered]),
            [Send(0), Send(1), Answer]
        );
        assert_eq!(
            run(&[0, 1], false, &[Broken]),
            [Send(0), Fail(Failure::NoNode)]
        );
        // A refusal kept from an earlier node is still the better answer.
        assert_eq!(
            run(&[0, 1], false, &[Refused(Refusal::Overloaded), Broken]),
            [Send(0), Send(1), AnswerRefusal]
        );
    }

    #[test]
    fn a_timeout_is_final_even_when_idempotent() {
        assert_eq!(
            run(&[0, 1], true, &[TimedOut]),
            [Send(0), Fail(Failure::TimedOut)]
        );
    }

    #[test]
    fn a_finished_sequence_stays_finished() {
        let mut attempts = Attempts::new(vec![0], true);
        attempts.next(Answered);
        assert_eq!(attempts.next(Unreachable), Answer);
    }
}
