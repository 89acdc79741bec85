//! Guest SDK for edge functions.
//!
//! A function is a WASI preview1 command module called WAGI-style: the request line and
//! headers arrive as CGI environment variables (`REQUEST_METHOD`, `PATH_INFO`,
//! `QUERY_STRING`, `HTTP_<HEADER>`, `CONTENT_LENGTH`), the body on stdin; the response goes
//! to stdout as CGI headers (`Status:`, `Content-Type:`, ...), a blank line, then the body.
//! Lines written to stderr are the function's log.
//!
//! This crate turns that convention into `fn(Request) -> Response`:
//!
//! ```no_run
//! fn main() {
//!     edge_guest::serve(|req| edge_guest::Response::text(200, format!("hi {}", req.path)));
//! }
//! ```

use std::io::{Read, Write};

/// An HTTP request as the function sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path below the function's route prefix, starting with `/`.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Request headers, names lower-cased with `-` separators.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
}

impl Request {
    /// Reads the request from the CGI environment and stdin.
    pub fn from_cgi() -> Request {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let mut headers: Vec<(String, String)> = std::env::vars()
            .filter_map(|(k, v)| {
                k.strip_prefix("HTTP_")
                    .map(|name| (name.to_ascii_lowercase().replace('_', "-"), v))
            })
            .collect();
        headers.sort();
        let mut body = Vec::new();
        // A failed read leaves a short body; the host enforces the declared length.
        let _ = std::io::stdin().read_to_end(&mut body);
        Request {
            method: var("REQUEST_METHOD"),
            path: var("PATH_INFO"),
            query: var("QUERY_STRING"),
            headers,
            body,
        }
    }

    /// The first value of query parameter `name`, undecoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP response produced by the function.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::with_type(
            status,
            "text/plain; charset=utf-8",
            body.into().into_bytes(),
        )
    }

    /// An `application/json` response from an already-encoded JSON document.
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response::with_type(status, "application/json", body.into().into_bytes())
    }

    /// A response with the given content type.
    pub fn with_type(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("content-type".to_string(), content_type.to_string())],
            body,
        }
    }

    /// Writes the response to stdout in CGI form.
    pub fn write_cgi(&self) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        let mut head = format!("Status: {}\n", self.status);
        for (k, v) in &self.headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push('\n');
        }
        head.push('\n');
        out.write_all(head.as_bytes())?;
        out.write_all(&self.body)?;
        out.flush()
    }
}

/// Runs `handler` on the request from the CGI environment and writes its response.
pub fn serve(handler: impl FnOnce(Request) -> Response) {
    let response = handler(Request::from_cgi());
    if let Err(e) = response.write_cgi() {
        eprintln!("writing the response failed: {e}");
    }
}

/// Encodes `s` as a JSON string literal, quotes included.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
