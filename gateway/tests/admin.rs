//! The admin API over real processes, with curl: its own listener, the bearer token
//! (401 and a log line without it), and `gateway/openapi.json` checked against what the
//! server answers.

mod support;

use edge_cli::cluster::LocalCluster;
use edge_shared::manifest::Limits;
use support::{function, start_with};

/// What curl got: status, body, and the headers as text.
struct Answer {
    status: u16,
    body: String,
    headers: String,
}

/// `method url` with curl, HTTP `version`, trusting the cluster's CA, with `token` as
/// the bearer token if given.
async fn curl(
    cluster: &LocalCluster,
    version: &str,
    method: &str,
    url: &str,
    token: Option<&str>,
) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let mut command = tokio::process::Command::new("curl");
    command
        .args(["-s", version, "-X", method, "--max-time", "10", "-o", "-"])
        .args(["-w", "\n%{http_code}", "-D"])
        .arg(&headers)
        .arg("--cacert")
        .arg(&cluster.certs().ca);
    if let Some(token) = token {
        command
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"));
    }
    let output = command.arg(url).output().await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Answer {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
    }
}

fn token(cluster: &LocalCluster) -> String {
    std::fs::read_to_string(&cluster.certs().admin_token)
        .unwrap()
        .trim()
        .to_string()
}

fn admin_url(cluster: &LocalCluster, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", cluster.admin_addr().port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_and_is_never_on_the_users_port() {
    let (cluster, _dir) = start_with(1, vec![function("hello", Limits::default())], |_| {});
    let cluster_url = admin_url(&cluster, "/v1/cluster");
    let token = token(&cluster);

    for given in [None, Some("not-the-token"), Some(&token[1..])] {
        let answer = curl(&cluster, "--http1.1", "GET", &cluster_url, given).await;
        assert_eq!(answer.status, 401, "{given:?}: {}", answer.body);
        let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert!(error["error"].as_str().unwrap().contains("bearer token"));
        assert!(
            answer
                .headers
                .to_lowercase()
                .contains("www-authenticate: bearer"),
            "{}",
            answer.headers
        );
    }
    assert!(
        cluster.log("gateway").contains("admin call refused"),
        "{}",
        cluster.log("gateway")
    );

    // With the token, over HTTP/1.1 and HTTP/2: the cluster as the gateway sees it.
    for version in ["--http1.1", "--http2"] {
        let answer = curl(&cluster, version, "GET", &cluster_url, Some(&token)).await;
        assert_eq!(answer.status, 200, "{version}: {}", answer.body);
        let view: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(view["nodes"][0]["name"], "node-1", "{view}");
        assert_eq!(view["nodes"][0]["state"], "usable", "{view}");
    }
    let other = curl(&cluster, "--http1.1", "POST", &cluster_url, Some(&token)).await;
    assert_eq!(other.status, 405);
    let unknown = admin_url(&cluster, "/v1/nothing");
    assert_eq!(
        curl(&cluster, "--http1.1", "GET", &unknown, Some(&token))
            .await
            .status,
        404
    );

    // The users' port has no admin calls, token or not.
    let users = format!(
        "https://127.0.0.1:{}/v1/cluster",
        cluster.gateway_addr().port()
    );
    let answer = curl(&cluster, "--http1.1", "GET", &users, Some(&token)).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
}

/// The schema `value` names, following one `$ref` into `spec`.
fn resolve<'a>(spec: &'a serde_json::Value, value: &'a serde_json::Value) -> &'a serde_json::Value {
    match value["$ref"].as_str() {
        Some(reference) => {
            let path = reference.trim_start_matches("#/");
            path.split('/').fold(spec, |node, key| &node[key])
        }
        None => value,
    }
}

/// Whether `value` has every property `schema` requires, recursively into objects and
/// arrays of objects.
fn conforms(
    spec: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
) -> Result<(), String> {
    let schema = resolve(spec, schema);
    for required in schema["required"].as_array().into_iter().flatten() {
        let key = required.as_str().unwrap();
        if value.get(key).is_none() {
            return Err(format!("{key} missing in {value}"));
        }
    }
    for (key, property) in schema["properties"].as_object().into_iter().flatten() {
        let (property, Some(field)) = (resolve(spec, property), value.get(key)) else {
            continue;
        };
        if property["type"] == "array" {
            for item in field.as_array().into_iter().flatten() {
                conforms(spec, &property["items"], item)?;
            }
        } else if property["type"] == "object" || property.get("required").is_some() {
            conforms(spec, property, field)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_in_openapi_json_answers_as_it_says() {
    let (cluster, _dir) = start_with(1, vec![function("hello", Limits::default())], |_| {});
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap(),
    )
    .unwrap();
    let token = token(&cluster);
    let mut checked = 0;
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let url = admin_url(&cluster, path);
            let method = method.to_uppercase();
            // With the token: a documented success, whose body has the documented shape.
            let answer = curl(&cluster, "--http1.1", &method, &url, Some(&token)).await;
            let documented = &operation["responses"][answer.status.to_string()];
            assert!(
                documented.is_object() && answer.status < 300,
                "{method} {path}: {} is not a documented success: {}",
                answer.status,
                answer.body
            );
            let response = resolve(&spec, documented);
            let schema = &response["content"]["application/json"]["schema"];
            let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            conforms(&spec, schema, &body).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            // Without it: the documented 401.
            let refused = curl(&cluster, "--http1.1", &method, &url, None).await;
            assert_eq!(refused.status, 401, "{method} {path}");
            assert!(
                operation["responses"]["401"].is_object(),
                "{method} {path}: 401 undocumented"
            );
            let error: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
            conforms(&spec, &spec["components"]["schemas"]["Error"], &error).unwrap();
            checked += 1;
        }
    }
    assert!(checked > 0, "openapi.json documents no call");
}
