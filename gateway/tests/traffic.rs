//! Versions sharing a function's traffic, over real processes: a 10/90 split over 2,000
//! HTTP/3 requests lands within binomial bounds, a sticky key always reaches one
//! version, `x-edge-version` reaches a version at 0%, a rollback from a split goes to
//! the last version that served everything, and each refusal names its field.

mod support;

use std::sync::Arc;

use edge_shared::manifest::Limits;
use edge_shared::wire::{VERSION_HEADER, VERSION_KEY_HEADER};
use http::Method;
use support::{
    admin, admin_call, client, deploy_request, function, start, url, versions_answering,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_lands_by_percentage_sticks_by_key_and_reaches_a_version_at_zero() {
    let (cluster, _dir) = start(1, vec![function("echo", Limits::default())]);
    let admin = admin(&cluster);
    let greet = "/v1/functions/greet";
    let route = serde_json::json!({ "routes": [{ "path": "/greet" }] });
    for (module, version) in [("hello", 1), ("echo", 2)] {
        let deployed = admin_call(
            &admin,
            Method::PUT,
            greet,
            Some(deploy_request(module, route.clone())),
            201,
        )
        .await;
        assert_eq!(deployed["version"], version, "{deployed}");
    }
    let c = Arc::new(client(&cluster).await);
    let at = url(&cluster, "/greet");

    // 10% to version 1, 90% to version 2: over 2,000 requests, version 1's count is
    // Binomial(2000, 0.1), mean 200, standard deviation 13.4; the bounds are 4.5 of
    // them either side (a false failure once in about 150,000 runs).
    let split = serde_json::json!({ "traffic": [
        { "version": 1, "percent": 10 },
        { "version": 2, "percent": 90 },
    ] });
    let set = admin_call(
        &admin,
        Method::PUT,
        &format!("{greet}/traffic"),
        Some(split),
        200,
    )
    .await;
    assert_eq!(set["traffic"][0]["percent"], 10, "{set}");
    let counts = versions_answering(&c, &at, 2000, &[]).await;
    let (one, two) = (counts[&1], counts[&2]);
    eprintln!("10/90 split over 2,000 requests: version 1 {one}, version 2 {two}");
    assert_eq!(one + two, 2000, "{counts:?}");
    assert!((140..=260).contains(&one), "{counts:?}");

    // A key always lands on one version; different keys reach both.
    let mut seen = std::collections::BTreeSet::new();
    for key in 0..200 {
        let keyed = [(VERSION_KEY_HEADER, format!("user-{key}"))];
        let counts = versions_answering(&c, &at, if key < 5 { 40 } else { 1 }, &keyed).await;
        assert_eq!(counts.len(), 1, "key user-{key} reached {counts:?}");
        seen.extend(counts.keys().copied());
    }
    assert_eq!(seen.len(), 2, "200 keys reached only {seen:?}");

    // Version 2 at 0%: nothing reaches it unless a request names it.
    let zero = serde_json::json!({ "traffic": [
        { "version": 1, "percent": 100 },
        { "version": 2, "percent": 0 },
    ] });
    admin_call(
        &admin,
        Method::PUT,
        &format!("{greet}/traffic"),
        Some(zero),
        200,
    )
    .await;
    let counts = versions_answering(&c, &at, 200, &[]).await;
    assert_eq!(counts.keys().collect::<Vec<_>>(), [&1], "{counts:?}");
    for named in ["2", "v2"] {
        let counts = versions_answering(&c, &at, 20, &[(VERSION_HEADER, named.into())]).await;
        assert_eq!(
            counts.keys().collect::<Vec<_>>(),
            [&2],
            "{named}: {counts:?}"
        );
    }
    // A version taking no traffic at all is not reached by naming it.
    let only = serde_json::json!({ "traffic": [{ "version": 2, "percent": 100 }] });
    admin_call(
        &admin,
        Method::PUT,
        &format!("{greet}/traffic"),
        Some(only),
        200,
    )
    .await;
    let request = http::Request::get(&at)
        .header(VERSION_HEADER, "1")
        .body(())
        .unwrap();
    let missing = c.send(request, bytes::Bytes::new()).await.unwrap();
    assert_eq!(missing.status, http::StatusCode::NOT_FOUND);
    assert!(
        String::from_utf8_lossy(&missing.body).contains("no version \"1\""),
        "{:?}",
        missing.body
    );

    // A canary of version 1 at 10%, then a rollback: to version 2, the last to serve
    // everything, as a new version serving 100%.
    let canary = serde_json::json!({ "traffic": [
        { "version": 1, "percent": 10 },
        { "version": 2, "percent": 90 },
    ] });
    admin_call(
        &admin,
        Method::PUT,
        &format!("{greet}/traffic"),
        Some(canary),
        200,
    )
    .await;
    let back = admin_call(
        &admin,
        Method::POST,
        &format!("{greet}/rollback"),
        None,
        201,
    )
    .await;
    assert_eq!(
        (back["version"].as_u64(), back["restores"].as_u64()),
        (Some(3), Some(2))
    );
    let counts = versions_answering(&c, &at, 100, &[]).await;
    assert_eq!(counts.keys().collect::<Vec<_>>(), [&3], "{counts:?}");
    let view = admin_call(&admin, Method::GET, greet, None, 200).await;
    assert_eq!(
        view["traffic"],
        serde_json::json!([{ "version": 3, "percent": 100 }]),
        "{view}"
    );

    // Refusals name what is wrong, and change nothing.
    let refusals = [
        (
            serde_json::json!({ "traffic": [{ "version": 1, "percent": 10 }, { "version": 3, "percent": 80 }] }),
            400,
            "add to 90",
        ),
        (
            serde_json::json!({ "traffic": [
                { "version": 1, "percent": 10 }, { "version": 2, "percent": 10 }, { "version": 3, "percent": 80 }
            ] }),
            400,
            "one or 2 versions",
        ),
        (
            serde_json::json!({ "traffic": [{ "version": 3, "percent": 50 }, { "version": 3, "percent": 50 }] }),
            400,
            "named twice",
        ),
        (
            serde_json::json!({ "traffic": [{ "version": 9, "percent": 100 }] }),
            404,
            "no version 9",
        ),
        (
            serde_json::json!({ "traffic": [{ "version": 3, "percent": 101 }] }),
            400,
            "add to 101",
        ),
        (
            serde_json::json!({ "traffic": [{ "version": 3, "percent": 300 }] }),
            400,
            "body",
        ),
    ];
    for (body, status, says) in refusals {
        let refused = admin_call(
            &admin,
            Method::PUT,
            &format!("{greet}/traffic"),
            Some(body),
            status,
        )
        .await;
        let why = refused["error"].as_str().unwrap();
        assert!(why.contains(says), "{why}");
    }
    // Versions with different routes cannot share traffic: a version beside the one
    // serving, at 0%, must keep its routes.
    let elsewhere = serde_json::json!({ "routes": [{ "path": "/elsewhere" }], "promote": false });
    let refused = admin_call(
        &admin,
        Method::PUT,
        greet,
        Some(deploy_request("hello", elsewhere)),
        409,
    )
    .await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("different routes"),
        "{refused}"
    );
    let after = admin_call(&admin, Method::GET, greet, None, 200).await;
    assert_eq!(
        after["traffic"][0],
        serde_json::json!({ "version": 3, "percent": 100 })
    );
    let counts = versions_answering(&c, &at, 50, &[]).await;
    assert_eq!(counts.keys().collect::<Vec<_>>(), [&3], "{counts:?}");
}
