//! `echo`: returns the method, path, query, headers and body it received, as JSON; with
//! an `x-echo-log` header, it writes that header's value to its log (stderr) first.
use edge_guest::{Response, json_string};

fn main() {
    edge_guest::serve(|req| {
        // A line for the function's log, when asked for one.
        if let Some((_, line)) = req.headers.iter().find(|(k, _)| k == "x-echo-log") {
            eprintln!("{line}");
        }
        let headers: Vec<String> = req
            .headers
            .iter()
            .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
            .collect();
        let body = String::from_utf8_lossy(&req.body);
        Response::json(
            200,
            format!(
                "{{\"method\":{},\"path\":{},\"query\":{},\"headers\":{{{}}},\"body\":{}}}",
                json_string(&req.method),
                json_string(&req.path),
                json_string(&req.query),
                headers.join(","),
                json_string(&body)
            ),
        )
    });
}
