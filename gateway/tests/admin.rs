//! The admin API over real processes, with curl: its own listener, the bearer token
//! (401 and a log line without it), deploying, replacing and removing functions that
//! users then reach over HTTP/3, the refusals, and `gateway/openapi.json` checked
//! against what the server answers.

mod support;

use std::path::Path;

use base64::Engine as _;
use edge_cli::cluster::LocalCluster;
use edge_shared::manifest::Limits;
use http::StatusCode;
use support::{client, example, function, start_with, url};

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
    curl_with(cluster, version, method, url, token, None).await
}

/// [`curl`] with a body: the file `body`, as JSON.
async fn curl_with(
    cluster: &LocalCluster,
    version: &str,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Path>,
) -> Answer {
    curl_for("10", cluster, version, method, url, token, body).await
}

/// [`curl_with`], for at most `seconds` (what a stream sent by then is the body).
async fn curl_for(
    seconds: &str,
    cluster: &LocalCluster,
    version: &str,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Path>,
) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let mut command = tokio::process::Command::new("curl");
    command
        .args([
            "-s",
            version,
            "-X",
            method,
            "--max-time",
            seconds,
            "-o",
            "-",
        ])
        .args(["-w", "\n%{http_code}", "-D"])
        .arg(&headers)
        .arg("--cacert")
        .arg(&cluster.certs().ca);
    if let Some(token) = token {
        command
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"));
    }
    if let Some(body) = body {
        command
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", body.display()));
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

/// `PUT url` with the deploy body in `body`.
async fn put(cluster: &LocalCluster, url: &str, token: &str, body: &Path) -> Answer {
    curl_with(cluster, "--http1.1", "PUT", url, Some(token), Some(body)).await
}

/// Writes a deploy body for the example function `module` with these extra settings
/// (JSON object fields) into `dir`, and returns its path.
fn deploy_body(dir: &Path, module: &str, extra: serde_json::Value) -> std::path::PathBuf {
    let wasm = std::fs::read(example(module)).unwrap();
    let mut body = serde_json::json!({
        "module": base64::engine::general_purpose::STANDARD.encode(wasm),
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let file = dir.join(format!("{module}-{}.json", rand_suffix()));
    std::fs::write(&file, body.to_string()).unwrap();
    file
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_deployed_through_the_admin_api_are_served_replaced_and_removed() {
    let (cluster, dir) = start_with(1, vec![function("hello", Limits::default())], |_| {});
    let token = token(&cluster);
    let greet = admin_url(&cluster, "/v1/functions/greet");
    let deploy = |body: std::path::PathBuf| {
        let (cluster, token, greet) = (&cluster, token.clone(), greet.clone());
        async move { put(cluster, &greet, &token, &body).await }
    };
    let users = client(&cluster).await;
    let answer_of = |path: &'static str| {
        let (users, url) = (&users, url(&cluster, path));
        async move {
            let r = users.get(&url).await.unwrap();
            (r.status, String::from_utf8_lossy(&r.body).to_string())
        }
    };

    // A first version: served at /greet over HTTP/3.
    let first = deploy(deploy_body(dir.path(), "hello", serde_json::json!({}))).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let first: serde_json::Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(
        (first["version"].as_u64(), first["created"].as_bool()),
        (Some(1), Some(true))
    );
    // It was compiled on its node at deploy: the first request finds it warm there.
    let r = users.get(&url(&cluster, "/greet?name=you")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&r.body), "hello, you!\n");
    let timing = r.header("server-timing").unwrap_or_default().to_string();
    assert!(
        timing.contains("deploy;dur=0.000") && timing.contains("cold;dur=0.000"),
        "the first request waited for a deploy or a compile: {timing}"
    );

    // Another module: version 2 answers instead. The same again: still version 2.
    let echo = deploy_body(
        dir.path(),
        "echo",
        serde_json::json!({ "env": { "K": "V" } }),
    );
    let second = deploy(echo.clone()).await;
    assert_eq!(second.status, 201, "{}", second.body);
    let (status, body) = answer_of("/greet?x=1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"query\":\"x=1\""), "{body}");
    let again = deploy(echo).await;
    assert_eq!(again.status, 200, "{}", again.body);
    let again: serde_json::Value = serde_json::from_str(&again.body).unwrap();
    assert_eq!(
        (again["version"].as_u64(), again["created"].as_bool()),
        (Some(2), Some(false))
    );

    let view = curl(&cluster, "--http1.1", "GET", &greet, Some(&token)).await;
    let view: serde_json::Value = serde_json::from_str(&view.body).unwrap();
    assert_eq!(serving(&view), 2, "{view}");
    assert_eq!(view["versions"].as_array().unwrap().len(), 2, "{view}");
    let all = curl(
        &cluster,
        "--http1.1",
        "GET",
        &admin_url(&cluster, "/v1/functions"),
        Some(&token),
    )
    .await;
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&all.body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["greet", "hello"],
        "the cluster file's function is in the registry too"
    );

    // Rolled back to what served before (version 1, as a new version 3), then again:
    // nothing earlier served; then to version 2 by name.
    let rollback = admin_url(&cluster, "/v1/functions/greet/rollback");
    let back = curl(&cluster, "--http1.1", "POST", &rollback, Some(&token)).await;
    assert_eq!(back.status, 201, "{}", back.body);
    let back: serde_json::Value = serde_json::from_str(&back.body).unwrap();
    assert_eq!(
        (back["version"].as_u64(), back["restores"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(answer_of("/greet?name=back").await.1, "hello, back!\n");
    let again = curl(&cluster, "--http1.1", "POST", &rollback, Some(&token)).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains("no earlier version"), "{}", again.body);
    let named = dir.path().join("to-2.json");
    std::fs::write(&named, r#"{"version": 2}"#).unwrap();
    let to_two = curl_with(
        &cluster,
        "--http1.1",
        "POST",
        &rollback,
        Some(&token),
        Some(&named),
    )
    .await;
    assert_eq!(to_two.status, 201, "{}", to_two.body);
    assert!(
        answer_of("/greet?x=1")
            .await
            .1
            .contains("\"query\":\"x=1\"")
    );
    let missing = dir.path().join("to-9.json");
    std::fs::write(&missing, r#"{"version": 9}"#).unwrap();
    let nine = curl_with(
        &cluster,
        "--http1.1",
        "POST",
        &rollback,
        Some(&token),
        Some(&missing),
    )
    .await;
    assert_eq!(nine.status, 404, "{}", nine.body);

    // Refusals, each naming what is wrong, and changing nothing.
    for (name, extra, status, says) in [
        ("Bad_Name", serde_json::json!({}), 400, "name"),
        (
            "greet",
            serde_json::json!({ "routes": [{ "path": "/hello" }] }),
            409,
            "hello",
        ),
        (
            "greet",
            serde_json::json!({ "limits": { "timeout_ms": 0 } }),
            400,
            "timeout_ms",
        ),
        (
            "greet",
            serde_json::json!({ "limits": { "timeout": 5 } }),
            400,
            "timeout",
        ),
        (
            "greet",
            serde_json::json!({ "module": "not base64!" }),
            400,
            "module",
        ),
        (
            "greet",
            serde_json::json!({ "module": "AGFzbQEAAAA=" }),
            400,
            "_start",
        ),
    ] {
        let body = deploy_body(dir.path(), "hello", extra.clone());
        let url = admin_url(&cluster, &format!("/v1/functions/{name}"));
        let answer = curl_with(
            &cluster,
            "--http1.1",
            "PUT",
            &url,
            Some(&token),
            Some(&body),
        )
        .await;
        assert_eq!(answer.status, status, "{name} {extra}: {}", answer.body);
        assert!(
            answer.body.contains(says),
            "{name} {extra}: {}",
            answer.body
        );
    }
    assert_eq!(answer_of("/hello").await.0, StatusCode::OK);
    assert!(
        answer_of("/greet?x=1").await.1.contains("\"query\""),
        "still version 2"
    );

    // Removed: users get 404, and so does the admin API.
    let removed = curl(&cluster, "--http1.1", "DELETE", &greet, Some(&token)).await;
    assert_eq!(removed.status, 204, "{}", removed.body);
    assert_eq!(answer_of("/greet").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        curl(&cluster, "--http1.1", "GET", &greet, Some(&token))
            .await
            .status,
        404
    );
    assert_eq!(
        curl(&cluster, "--http1.1", "DELETE", &greet, Some(&token))
            .await
            .status,
        404
    );
}

/// The version serving all of a function's traffic (`GET /v1/functions/{name}`).
fn serving(view: &serde_json::Value) -> u64 {
    let traffic = view["traffic"].as_array().expect("a traffic split");
    assert_eq!(traffic.len(), 1, "{view}");
    assert_eq!(traffic[0]["percent"], 100, "{view}");
    traffic[0]["version"].as_u64().unwrap()
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
    let (cluster, dir) = start_with(1, vec![function("hello", Limits::default())], |_| {});
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap(),
    )
    .unwrap();
    let token = token(&cluster);
    // Every documented operation, on a function of its own (`probe`): deploys first,
    // removals last, so each finds what it needs.
    let mut operations = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let rank = match method.as_str() {
                "put" => 0,
                "post" => 1,
                "get" => 2,
                "delete" => 3,
                "parameters" => continue,
                other => panic!("{other} {path}: no rule to exercise it"),
            };
            operations.push((
                rank,
                path.replace("{name}", "probe"),
                method.to_uppercase(),
                operation,
            ));
        }
    }
    operations.sort_by_key(|(rank, path, ..)| (*rank, path.clone()));
    for (_, path, method, operation) in &operations {
        let url = admin_url(&cluster, path);
        // The documented example as the body, else (a deploy) a real module's.
        let content = &operation["requestBody"]["content"]["application/json"];
        let body = if content["example"].is_object() {
            let file = dir.path().join(format!("example-{}.json", rand_suffix()));
            std::fs::write(&file, content["example"].to_string()).unwrap();
            Some(file)
        } else {
            content
                .is_object()
                .then(|| deploy_body(dir.path(), "hello", serde_json::json!({})))
        };
        // With the token: a documented success, whose body has the documented shape;
        // a stream of JSON lines is read for 3 s, each line of that shape.
        let lines = &operation["responses"]["200"]["content"]["application/x-ndjson"];
        let seconds = if lines.is_object() { "3" } else { "10" };
        let answer = curl_for(
            seconds,
            &cluster,
            "--http1.1",
            method,
            &url,
            Some(&token),
            body.as_deref(),
        )
        .await;
        let documented = &operation["responses"][answer.status.to_string()];
        assert!(
            documented.is_object() && answer.status < 300,
            "{method} {path}: {} is not a documented success: {}",
            answer.status,
            answer.body
        );
        let response = resolve(&spec, documented);
        let schema = &response["content"]["application/json"]["schema"];
        if schema.is_object() {
            let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            conforms(&spec, schema, &body).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        }
        if lines.is_object() {
            let events: Vec<serde_json::Value> = answer
                .body
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert!(!events.is_empty(), "{method} {path}: no line in 3 s");
            for event in &events {
                conforms(&spec, &lines["schema"], event)
                    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            }
        }
        // Without it: the documented 401.
        let refused = curl(&cluster, "--http1.1", method, &url, None).await;
        assert_eq!(refused.status, 401, "{method} {path}");
        assert!(
            operation["responses"]["401"].is_object(),
            "{method} {path}: 401 undocumented"
        );
        let error: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
        conforms(&spec, &spec["components"]["schemas"]["Error"], &error).unwrap();
    }
    assert!(
        operations.len() >= 5,
        "openapi.json documents {} calls",
        operations.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_keeps_every_function_and_version() {
    let (mut cluster, dir) = start_with(1, vec![function("hello", Limits::default())], |_| {});
    let token = token(&cluster);
    let greet = admin_url(&cluster, "/v1/functions/greet");
    for module in ["hello", "echo"] {
        let body = deploy_body(dir.path(), module, serde_json::json!({}));
        let answer = put(&cluster, &greet, &token, &body).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }

    cluster.restart_gateway().unwrap();

    let view = curl(&cluster, "--http1.1", "GET", &greet, Some(&token)).await;
    assert_eq!(view.status, 200, "{}", view.body);
    let view: serde_json::Value = serde_json::from_str(&view.body).unwrap();
    assert_eq!(serving(&view), 2, "{view}");
    assert_eq!(view["versions"].as_array().unwrap().len(), 2, "{view}");
    // The cluster file's function, deployed again at start, is still its version 1.
    let hello = admin_url(&cluster, "/v1/functions/hello");
    let hello: serde_json::Value = serde_json::from_str(
        &curl(&cluster, "--http1.1", "GET", &hello, Some(&token))
            .await
            .body,
    )
    .unwrap();
    assert_eq!(hello["versions"].as_array().unwrap().len(), 1, "{hello}");
    let users = client(&cluster).await;
    let r = users.get(&url(&cluster, "/greet?x=1")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&r.body).contains("\"query\":\"x=1\""));
    let r = users.get(&url(&cluster, "/hello")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_during_a_deploy_has_the_old_version_or_the_new_never_a_broken_one() {
    let (mut cluster, dir) = start_with(1, vec![function("hello", Limits::default())], |_| {});
    let token = token(&cluster);
    let greet = admin_url(&cluster, "/v1/functions/greet");
    let first = deploy_body(dir.path(), "hello", serde_json::json!({}));
    let answer = put(&cluster, &greet, &token, &first).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    // Each round kills the gateway a little later into a deploy of a new version.
    let mut outcomes = Vec::new();
    for (round, delay_ms) in [0u64, 2, 5, 10, 20, 40].into_iter().enumerate() {
        let env = serde_json::json!({ "env": { "ROUND": round.to_string() } });
        let body = deploy_body(dir.path(), "echo", env);
        let deploying = {
            let (greet, token, ca) = (greet.clone(), token.clone(), cluster.certs().ca.clone());
            tokio::process::Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-X",
                    "PUT",
                    "--max-time",
                    "10",
                    "--cacert",
                ])
                .arg(ca)
                .arg("-H")
                .arg(format!("Authorization: Bearer {token}"))
                .arg("--data-binary")
                .arg(format!("@{}", body.display()))
                .arg(greet)
                .spawn()
                .unwrap()
        };
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        cluster.kill_gateway();
        let _ = deploying.wait_with_output().await;
        cluster.restart_gateway().unwrap();

        let view = curl(&cluster, "--http1.1", "GET", &greet, Some(&token)).await;
        assert_eq!(view.status, 200, "round {round}: {}", view.body);
        let view: serde_json::Value = serde_json::from_str(&view.body).unwrap();
        let serving = serving(&view);
        assert_eq!(
            serving,
            view["versions"].as_array().unwrap().len() as u64,
            "{view}"
        );
        // Whichever version serves, it loads and answers.
        let r = client(&cluster)
            .await
            .get(&url(&cluster, "/greet?x=1"))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "round {round}, version {serving}");
        outcomes.push(serving);
    }
    eprintln!("versions serving after each kill: {outcomes:?}");
    assert!(outcomes.windows(2).all(|w| w[0] <= w[1]), "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_function_but_never_an_answer_of_the_api_or_a_log_line() {
    let (cluster, _dir) = start_with(1, vec![function("echo", Limits::default())], |_| {});
    let admin = support::admin(&cluster);
    let secret = format!("s3cret-{}", std::process::id());
    let body = support::deploy_request(
        "hello",
        serde_json::json!({ "secrets": { "GREETING": secret }, "env": { "PLAIN": "shown" } }),
    );
    let deployed = support::admin_call(
        &admin,
        http::Method::PUT,
        "/v1/functions/greet",
        Some(body),
        201,
    )
    .await;
    assert!(!deployed.to_string().contains(&secret), "{deployed}");

    // The function has it in its environment.
    let c = client(&cluster).await;
    let r = c.get(&url(&cluster, "/greet")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        format!("{secret}, world!\n")
    );

    // The API names it, never shows it; a refused deploy does not echo it either.
    for path in ["/v1/functions/greet", "/v1/functions"] {
        let view = support::admin_call(&admin, http::Method::GET, path, None, 200).await;
        let text = view.to_string();
        assert!(
            !text.contains(&secret) && text.contains("GREETING"),
            "{text}"
        );
    }
    let clash = support::deploy_request(
        "hello",
        serde_json::json!({ "secrets": { "PLAIN": secret }, "env": { "PLAIN": "x" } }),
    );
    let refused = support::admin_call(
        &admin,
        http::Method::PUT,
        "/v1/functions/greet",
        Some(clash),
        400,
    )
    .await;
    let why = refused["error"].as_str().unwrap();
    assert!(why.contains("PLAIN") && !why.contains(&secret), "{why}");
    let bad_key = support::deploy_request("hello", serde_json::json!({ "secrets": { "1X": "v" } }));
    let refused = support::admin_call(
        &admin,
        http::Method::PUT,
        "/v1/functions/greet",
        Some(bad_key),
        400,
    )
    .await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("secrets key \"1X\""),
        "{refused}"
    );

    // No log line of any process holds it.
    for process in ["gateway", "node-1"] {
        let log = cluster.log(process);
        assert!(!log.is_empty(), "{process} logged nothing");
        assert!(!log.contains(&secret), "{process} logged the secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_that_does_not_parse_is_refused_naming_it_and_nothing_changes() {
    let (cluster, _dir) = start_with(1, vec![function("hello", Limits::default())], |_| {});
    let admin = support::admin(&cluster);
    for (schedule, says) in [
        ("*/5 * * *", "not 5 fields"),
        ("0 */5 * * * * *", "not 5 fields"),
        ("75 * * * *", "75 * * * *"),
        ("* * * * NOPE", "NOPE"),
    ] {
        let body = support::deploy_request("hello", serde_json::json!({ "schedule": schedule }));
        let refused = support::admin_call(
            &admin,
            http::Method::PUT,
            "/v1/functions/tick",
            Some(body),
            400,
        )
        .await;
        let why = refused["error"].as_str().unwrap();
        assert!(
            why.starts_with("schedule: ") && why.contains(says),
            "{schedule}: {why}"
        );
    }
    support::admin_call(&admin, http::Method::GET, "/v1/functions/tick", None, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_no_request_could_honour_are_refused_and_precompile_is_the_deploys_choice() {
    let (cluster, _dir) = start_with(1, vec![function("echo", Limits::default())], |_| {});
    let admin = support::admin(&cluster);
    for (limits, says) in [
        (
            serde_json::json!({ "memory_limit_mib": 1_000_000 }),
            "limits.memory_limit_mib: 1000000",
        ),
        (
            serde_json::json!({ "timeout_ms": 3_600_000 }),
            "limits.timeout_ms: 3600000 is over the gateway's request_timeout_ms",
        ),
        (
            serde_json::json!({ "max_request_body_bytes": 1u64 << 40 }),
            "limits.max_request_body_bytes",
        ),
        (
            serde_json::json!({ "max_concurrency": 1_000_000 }),
            "limits.max_concurrency",
        ),
        (
            serde_json::json!({ "timeout_ms": 0 }),
            "limits.timeout_ms must be greater than zero",
        ),
    ] {
        let body = support::deploy_request("hello", serde_json::json!({ "limits": limits }));
        let refused = support::admin_call(
            &admin,
            http::Method::PUT,
            "/v1/functions/greet",
            Some(body),
            400,
        )
        .await;
        let why = refused["error"].as_str().unwrap();
        assert!(why.contains(says), "{limits}: {why}");
    }
    support::admin_call(&admin, http::Method::GET, "/v1/functions/greet", None, 404).await;

    // Precompiled (the default): on its home node by the time the deploy answers.
    let on_node = |name: &'static str| {
        let cluster = &cluster;
        async move {
            let status = support::node_status(cluster, 0).await;
            status["deployments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["id"].as_str().unwrap().starts_with(&format!("{name}@")))
        }
    };
    let body = support::deploy_request("hello", serde_json::json!({}));
    support::admin_call(
        &admin,
        http::Method::PUT,
        "/v1/functions/early",
        Some(body),
        201,
    )
    .await;
    assert!(on_node("early").await);
    // Not precompiled: nowhere until a request needs it, then deployed on demand.
    let body = support::deploy_request("hello", serde_json::json!({ "precompile": false }));
    support::admin_call(
        &admin,
        http::Method::PUT,
        "/v1/functions/late",
        Some(body),
        201,
    )
    .await;
    assert!(!on_node("late").await);
    let c = client(&cluster).await;
    let r = c.get(&url(&cluster, "/late")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(on_node("late").await);
}
