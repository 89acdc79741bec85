//! `edge up`'s supervision of its local cluster: a member that exits is reported, the
//! rest keep serving, and it is started again with backoff.

use std::time::Duration;

use crate::cluster::{LocalCluster, Member};

/// Longest `edge up` waits before starting a member that keeps exiting again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What `edge up` does when members exit: it says so, with the cause and the log to
/// read, keeps the rest serving, and starts the member again after a backoff that
/// doubles from 1 s (to [`MAX_BACKOFF`]) while it keeps exiting.
#[derive(Default)]
pub struct Supervisor {
    /// Exited members: when to start each again, and the backoff after that.
    down: std::collections::HashMap<Member, (std::time::Instant, Duration)>,
}

impl Supervisor {
    /// Looks for exited members once and starts those that are due (unless not
    /// `restart`), saying what it does.
    pub fn round(&mut self, cluster: &mut LocalCluster, restart: bool) {
        let now = std::time::Instant::now();
        for (member, how) in cluster.exited() {
            if self.down.contains_key(&member) {
                continue;
            }
            let log = cluster.dir().join(format!("{}.log", log_name(member)));
            if restart {
                println!(
                    "edge: {how}; starting it again in 1s (its log: {})",
                    log.display()
                );
            } else {
                println!(
                    "edge: {how}; left down (--no-restart; its log: {})",
                    log.display()
                );
            }
            self.down.insert(
                member,
                (now + Duration::from_secs(1), Duration::from_secs(1)),
            );
        }
        if !restart {
            return;
        }
        let due: Vec<Member> = self
            .down
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(m, _)| *m)
            .collect();
        for member in due {
            let name = log_name(member);
            match cluster.revive(member) {
                Ok(()) => {
                    println!("edge: {name} started again");
                    self.down.remove(&member);
                }
                Err(e) => {
                    let backoff = self.down[&member].1;
                    let next = (backoff * 2).min(MAX_BACKOFF);
                    println!("edge: {name} did not start: {e:#}; trying again in {next:?}");
                    self.down
                        .insert(member, (std::time::Instant::now() + next, next));
                }
            }
        }
    }
}

/// The name a member logs under (`NAME.log`).
fn log_name(member: Member) -> String {
    match member {
        Member::Gateway(0) => "gateway".into(),
        Member::Gateway(i) => format!("gateway-{}", i + 1),
        Member::Node(i) => format!("node-{}", i + 1),
        Member::Registry => "nats".into(),
    }
}
