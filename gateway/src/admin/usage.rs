//! `GET /v1/usage[?since=RFC3339]`: what each function and version used over the
//! cluster, summed from every node's usage meter (`/_edge/v1/usage`), as a bill is
//! made. Each node says from when it counts; a node that did not answer is named, so a
//! report never passes for complete when it is not.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use edge_shared::manifest::DeploymentId;
use edge_shared::usage::{Counters, UsageReport};
use edge_shared::wire;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use super::{Admin, error, internal, json};
use crate::cluster::control_call;
use crate::functions::manifest_of;

/// Longest a node may take to send its meter.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// One version's usage.
#[derive(Debug, Serialize)]
struct VersionUsage {
    /// Its number, when the registry still has it.
    version: Option<u64>,
    deployment: DeploymentId,
    #[serde(flatten)]
    counters: Counters,
}

/// One function's usage.
#[derive(Debug, Serialize)]
struct FunctionUsage {
    function: String,
    /// Its versions' sum.
    #[serde(flatten)]
    totals: Counters,
    versions: Vec<VersionUsage>,
}

/// A node's part in the report.
#[derive(Debug, Serialize)]
struct NodeWindow {
    node: String,
    counting_since_ms: u64,
    from_ms: u64,
}

/// A node that did not answer.
#[derive(Debug, Serialize)]
struct Unanswered {
    node: String,
    error: String,
}

impl Admin {
    /// The usage report from `query`'s `since` on.
    pub(super) async fn usage(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let since_ms = match query.and_then(|q| q.strip_prefix("since=")) {
            None => None,
            Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
                Ok(t) => Some(u64::try_from(t.timestamp_millis()).unwrap_or(0)),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("since: {text:?} is not an RFC 3339 time: {e}"),
                    );
                }
            },
        };
        let versions = match self.version_numbers().await {
            Ok(v) => v,
            Err(e) => return internal(&e),
        };
        let snapshot = self.gateway.membership.snapshot();
        let asked = snapshot
            .view
            .nodes
            .iter()
            .filter(|n| n.up)
            .map(|n| async move { (n.name.clone(), self.node_usage(n.addr, since_ms).await) });
        let mut reports = Vec::new();
        let mut unanswered = Vec::new();
        for (node, answer) in futures::future::join_all(asked).await {
            match answer {
                Ok(report) => reports.push(report),
                Err(e) => unanswered.push(Unanswered { node, error: e }),
            }
        }
        let functions = sum(&reports, &versions);
        let now = crate::registry::now_ms();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "from_ms": reports.iter().map(|r| r.from_ms).min().unwrap_or(now),
                "to_ms": now,
                "nodes": reports.iter().map(|r| NodeWindow {
                    node: r.node.clone(),
                    counting_since_ms: r.counting_since_ms,
                    from_ms: r.from_ms,
                }).collect::<Vec<_>>(),
                "unanswered": unanswered,
                "functions": functions,
            }),
        )
    }

    /// Every version the registry holds, by deployment id.
    async fn version_numbers(&self) -> Result<HashMap<DeploymentId, u64>, String> {
        let records = self.registry.functions().await.map_err(|e| e.to_string())?;
        let domain = &self.gateway.config().domain;
        Ok(records
            .iter()
            .flat_map(|r| {
                r.versions.iter().map(|v| {
                    let manifest = manifest_of(&r.name, &v.spec, v.content_id.clone(), domain);
                    (manifest.deployment_id(), v.number)
                })
            })
            .collect())
    }

    /// `node`'s meter.
    async fn node_usage(
        &self,
        node: std::net::SocketAddr,
        since_ms: Option<u64>,
    ) -> Result<UsageReport, String> {
        let query = since_ms.map_or_else(String::new, |s| format!("?since_ms={s}"));
        let request = control_call(Method::GET, &format!("{}{query}", wire::USAGE_PATH));
        let asked = async {
            let (head, mut stream) = self
                .gateway
                .nodes
                .send(node, request, Bytes::new())
                .await
                .map_err(|e| e.to_string())?;
            let body = edge_net::client::read_to_end(&mut stream)
                .await
                .map_err(|e| e.to_string())?;
            if head.status() != StatusCode::OK {
                return Err(format!("answered {}", head.status()));
            }
            serde_json::from_slice(&body).map_err(|e| format!("meter not JSON: {e}"))
        };
        tokio::time::timeout(NODE_TIMEOUT, asked)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {NODE_TIMEOUT:?}")))
    }
}

/// The nodes' reports summed per function and version.
fn sum(reports: &[UsageReport], versions: &HashMap<DeploymentId, u64>) -> Vec<FunctionUsage> {
    let mut by_function: BTreeMap<&str, BTreeMap<&DeploymentId, Counters>> = BTreeMap::new();
    for d in reports.iter().flat_map(|r| &r.deployments) {
        by_function
            .entry(&d.function)
            .or_default()
            .entry(&d.deployment)
            .or_default()
            .add(&d.counters);
    }
    by_function
        .into_iter()
        .map(|(function, deployments)| {
            let mut totals = Counters::default();
            let mut versions: Vec<VersionUsage> = deployments
                .into_iter()
                .map(|(deployment, counters)| {
                    totals.add(&counters);
                    VersionUsage {
                        version: versions.get(deployment).copied(),
                        deployment: deployment.clone(),
                        counters,
                    }
                })
                .collect();
            versions.sort_by_key(|v| std::cmp::Reverse(v.version));
            FunctionUsage {
                function: function.to_string(),
                totals,
                versions,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_shared::usage::DeploymentUsage;

    #[test]
    fn nodes_sum_per_version_and_versions_per_function() {
        let id = |v: &str| DeploymentId::parse(&format!("fib@00000000000000{v}")).unwrap();
        let used = |deployment: &str, invocations, peak| DeploymentUsage {
            deployment: id(deployment),
            function: "fib".into(),
            counters: Counters {
                invocations,
                run_us: 10 * invocations,
                peak_memory_bytes: peak,
                ..Counters::default()
            },
        };
        let report = |node: &str, deployments| UsageReport {
            node: node.into(),
            counting_since_ms: 0,
            from_ms: 0,
            to_ms: 1,
            deployments,
        };
        let reports = [
            report("a", vec![used("a1", 3, 100), used("a2", 1, 50)]),
            report("b", vec![used("a1", 2, 300)]),
        ];
        let versions = HashMap::from([(id("a1"), 1), (id("a2"), 2)]);
        let functions = sum(&reports, &versions);
        assert_eq!(functions.len(), 1);
        let fib = &functions[0];
        assert_eq!(fib.totals.invocations, 6);
        assert_eq!(fib.totals.run_us, 60);
        assert_eq!(fib.totals.peak_memory_bytes, 300);
        let by_version: Vec<(Option<u64>, u64)> = fib
            .versions
            .iter()
            .map(|v| (v.version, v.counters.invocations))
            .collect();
        assert_eq!(by_version, [(Some(2), 1), (Some(1), 5)]);
    }
}
