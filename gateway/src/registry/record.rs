//! Function records and how they change: the same rules for every backend.

use std::collections::BTreeMap;

use edge_shared::manifest::{ContentId, Limits, Route, Secrets};
use serde::{Deserialize, Serialize};

use super::RegistryError;

/// What a deploy says besides the module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// How users reach it; none means the defaults (`/NAME`, `NAME.<domain>`).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Environment variables beside the CGI ones.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables never shown by the API nor logged.
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    /// Its limits.
    #[serde(default)]
    pub limits: Limits,
    /// A 5-field cron schedule it is invoked on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Whether a new version is compiled on its home node before it takes traffic (so
    /// no user's request waits on the compile); on by default.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub precompile: bool,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_yes(b: &bool) -> bool {
    *b
}

impl Default for FunctionSpec {
    fn default() -> FunctionSpec {
        FunctionSpec {
            routes: Vec::new(),
            env: BTreeMap::new(),
            secrets: Secrets::default(),
            limits: Limits::default(),
            schedule: None,
            precompile: true,
        }
    }
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Its number: 1 for the first, one more for each deploy that changed something.
    pub number: u64,
    /// The module's content id.
    pub content_id: ContentId,
    /// What the deploy said besides the module.
    pub spec: FunctionSpec,
    /// When it was deployed (Unix milliseconds).
    pub created_ms: u64,
    /// The version it is a rollback to, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restores: Option<u64>,
}

/// A version's share of a function's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// The version.
    pub version: u64,
    /// Its percentage of the requests (0 to 100).
    pub percent: u8,
}

/// The most versions a function's traffic is split between.
pub const MAX_SPLIT: usize = 2;

/// A function: its versions and its traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredRecord")]
pub struct FunctionRecord {
    /// Its name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<Version>,
    /// Which versions take its requests: one at 100%, or two whose percentages add to
    /// 100.
    pub traffic: Vec<Share>,
    /// The versions that served all traffic, oldest first: a deploy adds its version,
    /// a rollback to the previous steps back.
    #[serde(default)]
    pub history: Vec<u64>,
    /// How many changes it has had: a gateway serving a record ignores an older one.
    #[serde(default)]
    pub generation: u64,
}

/// A record as stored, by this version of edge or an earlier one: before traffic
/// splits, a record named the one version `serving`.
#[derive(Deserialize)]
struct StoredRecord {
    name: String,
    versions: Vec<Version>,
    #[serde(default)]
    traffic: Vec<Share>,
    #[serde(default)]
    serving: Option<u64>,
    #[serde(default)]
    history: Vec<u64>,
    #[serde(default)]
    generation: u64,
}

impl From<StoredRecord> for FunctionRecord {
    fn from(stored: StoredRecord) -> FunctionRecord {
        let traffic = match (stored.traffic.is_empty(), stored.serving) {
            (true, Some(version)) => vec![Share {
                version,
                percent: 100,
            }],
            _ => stored.traffic,
        };
        FunctionRecord {
            name: stored.name,
            versions: stored.versions,
            traffic,
            history: stored.history,
            generation: stored.generation,
        }
    }
}

impl FunctionRecord {
    /// A function with no versions yet.
    pub fn new(name: &str) -> FunctionRecord {
        FunctionRecord {
            name: name.to_string(),
            versions: Vec::new(),
            traffic: Vec::new(),
            history: Vec::new(),
            generation: 0,
        }
    }

    /// The version taking all traffic, if one does.
    pub fn serving_all(&self) -> Option<&Version> {
        match self.traffic.as_slice() {
            [only] => self.version(only.version),
            _ => None,
        }
    }

    /// The version taking the most traffic (the newer at a tie).
    pub fn primary(&self) -> Option<&Version> {
        let share = self.traffic.iter().max_by_key(|s| (s.percent, s.version))?;
        self.version(share.version)
    }

    /// Version `number`.
    pub fn version(&self, number: u64) -> Option<&Version> {
        self.versions.iter().find(|v| v.number == number)
    }

    fn next_number(&self) -> u64 {
        self.versions.last().map_or(1, |v| v.number + 1)
    }

    /// Makes `module` (by its content id) with `spec` a version: serving all traffic,
    /// or with `promote` false 0% beside the version serving all. The same module and
    /// spec as the version serving all traffic is that version, unchanged.
    pub fn deploy(
        &mut self,
        content_id: ContentId,
        spec: FunctionSpec,
        promote: bool,
        now_ms: u64,
    ) -> Result<Deployed, RegistryError> {
        if let Some(serving) = self.serving_all()
            && serving.content_id == content_id
            && serving.spec == spec
        {
            return Ok(Deployed {
                version: serving.number,
                created: false,
            });
        }
        let number = self.next_number();
        if promote {
            self.traffic = vec![Share {
                version: number,
                percent: 100,
            }];
            self.history.push(number);
        } else {
            let Some(serving) = self.serving_all().map(|v| v.number) else {
                return Err(RegistryError::Conflict(format!(
                    "function {:?} has no version serving all its traffic to deploy beside; \
                     set its traffic to one version first",
                    self.name
                )));
            };
            self.traffic = vec![
                Share {
                    version: serving,
                    percent: 100,
                },
                Share {
                    version: number,
                    percent: 0,
                },
            ];
        }
        self.versions.push(Version {
            number,
            content_id,
            spec,
            created_ms: now_ms,
            restores: None,
        });
        Ok(Deployed {
            version: number,
            created: true,
        })
    }

    /// Splits the traffic as `shares` say (checked by [`check_split`]).
    pub fn set_traffic(&mut self, shares: &[Share]) -> Result<(), RegistryError> {
        check_split(shares).map_err(RegistryError::Invalid)?;
        for share in shares {
            if self.version(share.version).is_none() {
                return Err(RegistryError::NotFound(format!(
                    "function {:?} has no version {}",
                    self.name, share.version
                )));
            }
        }
        self.traffic = shares.to_vec();
        if let Some(only) = shares.iter().find(|s| s.percent == 100)
            && self.history.last() != Some(&only.version)
        {
            self.history.push(only.version);
        }
        Ok(())
    }

    /// The version a rollback goes to: `to`, or the previous version that served all
    /// traffic.
    pub fn rollback_target(&self, to: Option<u64>) -> Result<&Version, RegistryError> {
        let number = match to {
            Some(n) => n,
            None => {
                let serving = self.serving_all().map(|v| v.number);
                let back =
                    usize::from(serving.is_some() && self.history.last() == serving.as_ref());
                match self.history.len().checked_sub(1 + back) {
                    Some(i) => self.history[i],
                    None => {
                        return Err(RegistryError::Conflict(format!(
                            "function {:?} has no earlier version that served all its traffic",
                            self.name
                        )));
                    }
                }
            }
        };
        self.version(number).ok_or_else(|| {
            RegistryError::NotFound(format!("function {:?} has no version {number}", self.name))
        })
    }

    /// Makes a new version with the module and settings of the rollback target
    /// ([`FunctionRecord::rollback_target`]), serving all traffic.
    pub fn rollback(&mut self, to: Option<u64>, now_ms: u64) -> Result<RolledBack, RegistryError> {
        let target = self.rollback_target(to)?.clone();
        if to.is_none() {
            // Step back past the target, and past the version serving if it is the last.
            while let Some(last) = self.history.pop() {
                if last == target.number {
                    break;
                }
            }
        }
        let number = self.next_number();
        self.versions.push(Version {
            number,
            created_ms: now_ms,
            restores: Some(target.number),
            ..target.clone()
        });
        self.history.push(number);
        self.traffic = vec![Share {
            version: number,
            percent: 100,
        }];
        Ok(RolledBack {
            version: number,
            restores: target.number,
        })
    }
}

/// Checks a traffic split: one or two distinct versions whose percentages add to 100.
pub fn check_split(shares: &[Share]) -> Result<(), String> {
    if shares.is_empty() || shares.len() > MAX_SPLIT {
        return Err(format!(
            "traffic: one or {MAX_SPLIT} versions, not {}",
            shares.len()
        ));
    }
    if shares.len() == 2 && shares[0].version == shares[1].version {
        return Err(format!(
            "traffic: version {} is named twice",
            shares[0].version
        ));
    }
    let total: u32 = shares.iter().map(|s| u32::from(s.percent)).sum();
    if total != 100 {
        return Err(format!("traffic: the percentages add to {total}, not 100"));
    }
    Ok(())
}

/// What a deploy made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deployed {
    /// The version serving now.
    pub version: u64,
    /// Whether it is new (else the same module and spec were serving already).
    pub created: bool,
}

/// What a rollback made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolledBack {
    /// The new version, serving.
    pub version: u64,
    /// The version whose module and settings it has.
    pub restores: u64,
}

/// A change to one function's record, the same for every backend.
#[derive(Debug, Clone)]
pub enum Change {
    /// [`FunctionRecord::deploy`] (a new record if the function has none).
    Deploy {
        /// The module's content id.
        content_id: ContentId,
        /// What the deploy says besides the module.
        spec: Box<FunctionSpec>,
        /// Whether it serves all traffic.
        promote: bool,
    },
    /// [`FunctionRecord::set_traffic`].
    Traffic(Vec<Share>),
    /// [`FunctionRecord::rollback`].
    Rollback(Option<u64>),
}

/// What a [`Change`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// A deploy's version.
    Deployed(Deployed),
    /// A traffic split, in force.
    Traffic,
    /// A rollback's new version.
    RolledBack(RolledBack),
}

impl Change {
    /// Whether it may make a function that has no record yet.
    pub fn creates(&self) -> bool {
        matches!(self, Change::Deploy { .. })
    }

    /// Applies it to `record` at `now_ms`.
    pub fn apply(
        &self,
        record: &mut FunctionRecord,
        now_ms: u64,
    ) -> Result<Changed, RegistryError> {
        match self {
            Change::Deploy {
                content_id,
                spec,
                promote,
            } => record
                .deploy(content_id.clone(), spec.as_ref().clone(), *promote, now_ms)
                .map(Changed::Deployed),
            Change::Traffic(shares) => record.set_traffic(shares).map(|()| Changed::Traffic),
            Change::Rollback(to) => record.rollback(*to, now_ms).map(Changed::RolledBack),
        }
    }
}

/// One run of a scheduled function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The tick it ran for (Unix milliseconds).
    pub tick_ms: u64,
    /// The HTTP status it answered (a gateway's own for a failure to reach it).
    pub status: u16,
}

/// A function's schedule: the last tick claimed and what its runs did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runs {
    /// The last tick claimed (Unix milliseconds).
    pub claimed_ms: u64,
    /// The last run recorded.
    pub last: Option<RunRecord>,
    /// Runs recorded.
    pub count: u64,
    /// Of those, runs that did not answer 2xx.
    pub failed: u64,
}

impl Runs {
    /// Claims tick `tick_ms`: whether no tick as late was claimed before.
    pub fn claim(&mut self, tick_ms: u64) -> bool {
        let won = self.claimed_ms < tick_ms;
        if won {
            self.claimed_ms = tick_ms;
        }
        won
    }

    /// Counts `run`.
    pub fn record(&mut self, run: RunRecord) {
        self.count += 1;
        if !(200..300).contains(&run.status) {
            self.failed += 1;
        }
        if self.last.is_none_or(|l| l.tick_ms <= run.tick_ms) {
            self.last = Some(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_written_before_traffic_splits_reads_as_its_version_serving_all() {
        // As the first registry wrote it (a `.edge/` kept from then).
        let old = r#"{"name":"hello","versions":[{"number":1,"content_id":"33c8916b0d87307059da79717d6d62f71adfaadab83f185c567c94f479e2e4f7","spec":{"routes":[],"env":{},"limits":{"timeout_ms":null,"memory_limit_mib":null,"max_request_body_bytes":null,"max_response_body_bytes":null}},"created_ms":1796130536370}],"serving":1}"#;
        let record: FunctionRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.traffic, [share(1, 100)]);
        assert_eq!(record.serving_all().unwrap().number, 1);
        assert!(record.versions[0].spec.precompile);
        // Written again, it is in today's form, and reads back the same.
        let again: FunctionRecord =
            serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(again, record);
    }

    fn share(version: u64, percent: u8) -> Share {
        Share { version, percent }
    }

    #[test]
    fn a_split_keeps_two_versions_and_a_rollback_goes_to_the_last_that_served_all() {
        let mut record = FunctionRecord::new("greet");
        let spec = FunctionSpec::default();
        let id = |n: u8| ContentId::of(&[n]);
        record.deploy(id(1), spec.clone(), true, 0).unwrap();
        record.deploy(id(2), spec.clone(), true, 0).unwrap();
        // A version beside it at 0%, then a canary at 10%.
        let canary = record.deploy(id(3), spec.clone(), false, 0).unwrap();
        assert_eq!(canary.version, 3);
        assert_eq!(record.traffic, vec![share(2, 100), share(3, 0)]);
        record.set_traffic(&[share(3, 10), share(2, 90)]).unwrap();
        assert_eq!(record.primary().unwrap().number, 2);
        assert!(record.serving_all().is_none());
        // Another deploy beside a split is refused, as is a bad split; nothing changes.
        let before = record.clone();
        assert!(matches!(
            record.deploy(id(4), spec.clone(), false, 0),
            Err(RegistryError::Conflict(_))
        ));
        for bad in [
            vec![share(3, 10), share(2, 80)],
            vec![share(3, 50), share(3, 50)],
            vec![share(1, 40), share(2, 30), share(3, 30)],
            vec![],
        ] {
            assert!(
                matches!(record.set_traffic(&bad), Err(RegistryError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            record.set_traffic(&[share(9, 100)]),
            Err(RegistryError::NotFound(_))
        ));
        assert_eq!(record, before);
        // Rolling back from the split goes to 2, the last to serve all traffic.
        let back = record.rollback(None, 0).unwrap();
        assert_eq!(back.restores, 2);
        assert_eq!(record.traffic, vec![share(back.version, 100)]);
        // Promoting the canary to 100% makes it history: the next rollback leaves it.
        record.set_traffic(&[share(3, 100)]).unwrap();
        assert_eq!(record.rollback(None, 0).unwrap().restores, back.version);
    }
}
