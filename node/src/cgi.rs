//! The WAGI convention: a request as CGI environment variables, and a CGI response
//! (`Status:` and other headers, a blank line, the body) parsed back into HTTP.

use edge_shared::wire::{
    connection_nominated, is_internal_request_header, is_reserved_response_header,
};
use http::{HeaderName, HeaderValue, StatusCode};

/// What the CGI variables are made of.
#[derive(Clone, Copy)]
pub struct CgiRequest<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The route prefix that matched (empty for a host route): `SCRIPT_NAME`.
    pub script_name: &'a str,
    /// The full request path.
    pub path: &'a str,
    /// The query string without `?`.
    pub query: &'a str,
    /// The host the user asked for (`:authority` or `Host`), port included if given.
    pub host: Option<&'a str>,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
    /// Body length.
    pub content_length: usize,
    /// The request id.
    pub request_id: &'a str,
}

impl<'a> CgiRequest<'a> {
    /// The variables' source for `request` (the user's, as the gateway forwarded it)
    /// under route prefix `script_name`, with a body of `content_length` bytes.
    pub fn of(
        request: &'a http::Request<()>,
        script_name: &'a str,
        content_length: usize,
        request_id: &'a str,
    ) -> CgiRequest<'a> {
        CgiRequest {
            method: request.method().as_str(),
            script_name,
            path: request.uri().path(),
            query: request.uri().query().unwrap_or(""),
            host: request.uri().authority().map(|a| a.as_str()),
            headers: request.headers(),
            content_length,
            request_id,
        }
    }
}

/// The CGI environment of a request, followed by the function's own variables: the
/// one place a guest's environment is made.
pub fn environment(
    req: &CgiRequest<'_>,
    function_env: &[(String, String)],
) -> Vec<(String, String)> {
    let path_info = match req.path.strip_prefix(req.script_name) {
        Some("") => "/",
        Some(rest) => rest,
        None => req.path,
    };
    let request_uri = if req.query.is_empty() {
        req.path.to_string()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let mut env = vec![
        ("GATEWAY_INTERFACE".to_string(), "CGI/1.1".to_string()),
        ("SERVER_PROTOCOL".to_string(), "HTTP/1.1".to_string()),
        ("SERVER_SOFTWARE".to_string(), "edge".to_string()),
        ("REQUEST_METHOD".to_string(), req.method.to_string()),
        ("SCRIPT_NAME".to_string(), req.script_name.to_string()),
        ("PATH_INFO".to_string(), path_info.to_string()),
        ("QUERY_STRING".to_string(), req.query.to_string()),
        ("REQUEST_URI".to_string(), request_uri),
        ("CONTENT_LENGTH".to_string(), req.content_length.to_string()),
        ("X_EDGE_REQUEST_ID".to_string(), req.request_id.to_string()),
    ];
    if let Some(ct) = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        env.push(("CONTENT_TYPE".to_string(), ct.to_string()));
    }
    if let Some(host) = req.host {
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        env.push(("SERVER_NAME".to_string(), name.to_string()));
        env.push(("HTTP_HOST".to_string(), host.to_string()));
    }
    let nominated = connection_nominated(
        req.headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    for name in req.headers.keys() {
        if is_internal_request_header(name.as_str()) || nominated.iter().any(|n| n == name.as_str())
        {
            continue;
        }
        let values: Vec<&str> = req
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let var = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        env.push((var, values.join(", ")));
    }
    env.extend(function_env.iter().cloned());
    env
}

/// A function's response.
#[derive(Debug)]
pub struct CgiResponse {
    /// Status from `Status:`, 302 with only `Location:`, else 200.
    pub status: StatusCode,
    /// The other headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Offset in the output where the body starts.
    pub body_start: usize,
}

/// Why a function's output is not a CGI response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgiError {
    /// No blank line ends the header block.
    #[error("no blank line after the CGI headers")]
    NoHeaderEnd,
    /// A header line that does not parse.
    #[error("bad CGI header line {0:?}")]
    BadHeader(String),
    /// A `Status:` that is not a valid status code.
    #[error("bad CGI status {0:?}")]
    BadStatus(String),
}

/// Most bytes of CGI headers read.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// Parses the header block at the start of `output`.
pub fn parse_response(output: &[u8]) -> Result<CgiResponse, CgiError> {
    let window = &output[..output.len().min(MAX_HEADER_BYTES)];
    let (head_len, body_start) = find_header_end(window).ok_or(CgiError::NoHeaderEnd)?;
    let head = std::str::from_utf8(&output[..head_len])
        .map_err(|_| CgiError::BadHeader("(not UTF-8)".into()))?;
    let mut status = None;
    let mut location = false;
    let mut headers = Vec::new();
    for line in head.lines() {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| CgiError::BadHeader(line.to_string()))?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        if name == "status" {
            let code = value.split_whitespace().next().unwrap_or("");
            let parsed = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| CgiError::BadStatus(value.to_string()))?;
            // 1xx (101 Switching Protocols among them) belongs to the connection, not
            // to a function's answer.
            if parsed.is_informational() {
                return Err(CgiError::BadStatus(value.to_string()));
            }
            status = Some(parsed);
            continue;
        }
        if is_reserved_response_header(&name) {
            continue;
        }
        location |= name == "location";
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| CgiError::BadHeader(line.to_string()))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| CgiError::BadHeader(line.to_string()))?;
        headers.push((name, value));
    }
    let status = status.unwrap_or(if location {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(CgiResponse {
        status,
        headers,
        body_start,
    })
}

/// Length of the header block and start of the body.
fn find_header_end(out: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'\n' {
            if out.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if out.get(i + 1) == Some(&b'\r') && out.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let out = b"Status: 201 Created\nContent-Type: text/plain\nX-A: b\n\nbody";
        let r = parse_response(out).unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.headers.len(), 2);
        assert_eq!(&out[r.body_start..], b"body");

        let crlf = b"Location: /x\r\n\r\n";
        let r = parse_response(crlf).unwrap();
        assert_eq!(r.status, StatusCode::FOUND);
        assert_eq!(r.body_start, crlf.len());
    }

    #[test]
    fn a_guest_cannot_speak_for_the_node_or_the_connection() {
        let out = b"Status: 200\nx-edge-refused: not-found\nX_Edge_Node: other\n\
            server-timing: run;dur=0\nalt-svc: h3=\":1\"\nconnection: close\nupgrade: h2c\n\
            content-length: 99\ntransfer-encoding: chunked\nset-cookie: a=b\n\nbody";
        let r = parse_response(out).unwrap();
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["set-cookie"]);
        for status in ["100 Continue", "101 Switching Protocols", "103"] {
            let out = format!("Status: {status}\n\n");
            assert!(
                matches!(parse_response(out.as_bytes()), Err(CgiError::BadStatus(_))),
                "{status}"
            );
        }
    }

    #[test]
    fn rejects_malformed_output() {
        assert_eq!(parse_response(b"hello").unwrap_err(), CgiError::NoHeaderEnd);
        assert!(matches!(
            parse_response(b"nocolon\n\n"),
            Err(CgiError::BadHeader(_))
        ));
        assert!(matches!(
            parse_response(b"Status: abc\n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse_response(b"Status: 99\n\n"),
            Err(CgiError::BadStatus(_))
        ));
    }

    #[test]
    fn environment_follows_cgi() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-custom", "1".parse().unwrap());
        headers.append("accept", "a".parse().unwrap());
        headers.append("accept", "b".parse().unwrap());
        headers.insert("x-edge-function", "f@0".parse().unwrap());
        headers.insert("x_edge_request_id", "forged".parse().unwrap());
        headers.insert("connection", "x-secret".parse().unwrap());
        headers.insert("x-secret", "hop".parse().unwrap());
        let req = CgiRequest {
            host: Some("hello.edge.localhost:4433"),
            method: "POST",
            script_name: "/echo",
            path: "/echo/a/b",
            query: "x=1",
            headers: &headers,
            content_length: 3,
            request_id: "r1",
        };
        let env = environment(&req, &[("GREETING".into(), "hi".into())]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH_INFO"), Some("/a/b"));
        assert_eq!(get("SCRIPT_NAME"), Some("/echo"));
        assert_eq!(get("QUERY_STRING"), Some("x=1"));
        assert_eq!(get("REQUEST_URI"), Some("/echo/a/b?x=1"));
        assert_eq!(get("HTTP_ACCEPT"), Some("a, b"));
        assert_eq!(get("HTTP_X_CUSTOM"), Some("1"));
        assert_eq!(get("SERVER_NAME"), Some("hello.edge.localhost"));
        assert_eq!(get("HTTP_HOST"), Some("hello.edge.localhost:4433"));
        assert_eq!(get("HTTP_X_EDGE_FUNCTION"), None);
        assert_eq!(
            get("HTTP_X_EDGE_REQUEST_ID"),
            None,
            "an alias of an internal header"
        );
        assert_eq!(get("HTTP_X_SECRET"), None, "nominated by Connection");
        assert_eq!(get("HTTP_CONNECTION"), None);
        assert_eq!(get("GREETING"), Some("hi"));
        let root = CgiRequest {
            path: "/echo",
            query: "",
            ..req
        };
        let env = environment(&root, &[]);
        assert!(env.contains(&("PATH_INFO".into(), "/".into())));
    }
}
