//! What the admin API shows of functions: the registry's records with the routes,
//! URLs and warm nodes this gateway sees, secrets by name only, and schedules' runs.

use std::collections::BTreeMap;

use edge_shared::manifest::Route;

use super::Admin;
use crate::registry::{FunctionRecord, RunRecord, Runs, Share};
use crate::schedule::Schedule;

/// A function as the admin API shows it.
#[derive(serde::Serialize)]
pub(super) struct FunctionView {
    name: String,
    /// The versions taking traffic, with their percentages.
    traffic: Vec<Share>,
    /// Its routes in force (its primary version's).
    routes: Vec<Route>,
    /// Where users reach it at this gateway.
    urls: Vec<String>,
    /// The names of its secrets (never their values).
    secrets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<ScheduleView>,
    versions: Vec<VersionView>,
}

#[derive(serde::Serialize)]
struct VersionView {
    number: u64,
    content_id: String,
    created_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    restores: Option<u64>,
    /// The nodes holding it warm (versions taking traffic).
    warm_on: Vec<String>,
}

#[derive(serde::Serialize)]
struct ScheduleView {
    cron: String,
    /// The next tick (Unix milliseconds).
    next_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<RunRecord>,
    runs: u64,
    failed: u64,
}

impl Admin {
    /// The functions (or the one named), as the registry and the cluster have them.
    /// One function's view reads its own records only (no listing of the registry).
    pub(super) async fn views(&self, only: Option<&str>) -> Result<Vec<FunctionView>, String> {
        let (records, runs): (Vec<FunctionRecord>, BTreeMap<String, Runs>) = match only {
            None => (
                self.registry.functions().await.map_err(|e| e.to_string())?,
                self.registry.runs().await.map_err(|e| e.to_string())?,
            ),
            Some(name) => {
                let record = self
                    .registry
                    .function(name)
                    .await
                    .map_err(|e| e.to_string())?;
                let runs = self
                    .registry
                    .runs_of(name)
                    .await
                    .map_err(|e| e.to_string())?;
                (
                    record.into_iter().collect(),
                    BTreeMap::from([(name.to_string(), runs)]),
                )
            }
        };
        let served = self.gateway.functions();
        let snapshot = self.gateway.membership.snapshot();
        let now = crate::registry::now_ms();
        Ok(records
            .into_iter()
            .filter(|r| only.is_none_or(|name| r.name == name))
            .map(|r| {
                let function = served.named(&r.name);
                let primary = function.map(|f| f.primary());
                let warm_on = |number: u64| {
                    let Some(version) = function.and_then(|f| f.version(number)) else {
                        return Vec::new();
                    };
                    let nodes = snapshot.view.nodes.iter();
                    nodes
                        .filter(|n| n.warm.contains(version.key))
                        .map(|n| n.name.clone())
                        .collect()
                };
                let spec = r.primary().map(|v| &v.spec);
                let schedule = spec.and_then(|s| s.schedule.clone()).map(|cron| {
                    let of = runs.get(&r.name).cloned().unwrap_or_default();
                    ScheduleView {
                        next_ms: Schedule::parse(&cron).ok().and_then(|s| s.next_tick(now)),
                        cron,
                        last: of.last,
                        runs: of.count,
                        failed: of.failed,
                    }
                });
                FunctionView {
                    traffic: r.traffic.clone(),
                    routes: primary.map_or_else(Vec::new, |f| f.manifest.routes.clone()),
                    urls: primary.map_or_else(Vec::new, |f| self.gateway.urls(f)),
                    secrets: spec.map_or_else(Vec::new, |s| s.secrets.names().cloned().collect()),
                    schedule,
                    versions: r
                        .versions
                        .iter()
                        .map(|v| VersionView {
                            number: v.number,
                            content_id: v.content_id.as_str().to_string(),
                            created_ms: v.created_ms,
                            restores: v.restores,
                            warm_on: warm_on(v.number),
                        })
                        .collect(),
                    name: r.name,
                }
            })
            .collect())
    }
}
