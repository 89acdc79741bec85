//! The route table: which function a request is for, by host or by path prefix. Pure.

use std::collections::HashMap;

use crate::manifest::{FunctionManifest, Route};

/// A request's function and the prefix that matched (CGI `SCRIPT_NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    /// Index of the function in the list the table was built from.
    pub function: usize,
    /// The matched path prefix, empty for a host match.
    pub script_name: &'a str,
}

/// Routes of all functions.
#[derive(Debug, Default)]
pub struct RouteTable {
    hosts: HashMap<String, usize>,
    /// Longest prefix first.
    paths: Vec<(String, usize)>,
}

/// The routes a function gets when its manifest declares none.
pub fn default_routes(name: &str, domain: &str) -> Vec<Route> {
    vec![
        Route::Path(format!("/{name}")),
        Route::Host(format!("{name}.{domain}")),
    ]
}

impl RouteTable {
    /// Builds the table; a route claimed by two functions is an error naming both.
    pub fn new(functions: &[FunctionManifest]) -> Result<RouteTable, String> {
        let mut table = RouteTable::default();
        let mut owner: HashMap<&Route, &str> = HashMap::new();
        for (i, f) in functions.iter().enumerate() {
            for route in &f.routes {
                if let Some(other) = owner.insert(route, &f.name) {
                    return Err(format!(
                        "route {route:?} is claimed by both {other:?} and {:?}",
                        f.name
                    ));
                }
                match route {
                    Route::Host(h) => {
                        table.hosts.insert(h.to_ascii_lowercase(), i);
                    }
                    Route::Path(p) => table.paths.push((p.clone(), i)),
                }
            }
        }
        table
            .paths
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(table)
    }

    /// The function for a request with this host (port allowed) and path.
    pub fn resolve(&self, host: Option<&str>, path: &str) -> Option<RouteMatch<'_>> {
        if let Some(host) = host {
            let name = match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host,
            };
            if let Some(&function) = self.hosts.get(&name.to_ascii_lowercase()) {
                return Some(RouteMatch {
                    function,
                    script_name: "",
                });
            }
        }
        self.paths.iter().find_map(|(prefix, function)| {
            let rest = path.strip_prefix(prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some(RouteMatch {
                function: *function,
                script_name: prefix,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ContentId, Limits};

    fn function(name: &str, routes: Vec<Route>) -> FunctionManifest {
        FunctionManifest {
            name: name.into(),
            content_id: ContentId::of(name.as_bytes()),
            routes,
            env: Default::default(),
            secrets: Default::default(),
            limits: Limits::default(),
        }
    }

    #[test]
    fn resolves_hosts_then_longest_prefix() {
        let table = RouteTable::new(&[
            function("hello", default_routes("hello", "edge.localhost")),
            function("api", vec![Route::Path("/api".into())]),
            function("v2", vec![Route::Path("/api/v2".into())]),
        ])
        .unwrap();
        let m = table
            .resolve(Some("Hello.edge.localhost:4433"), "/anything")
            .unwrap();
        assert_eq!((m.function, m.script_name), (0, ""));
        let m = table.resolve(Some("127.0.0.1:4433"), "/hello/x").unwrap();
        assert_eq!((m.function, m.script_name), (0, "/hello"));
        assert_eq!(table.resolve(None, "/api/v2/users").unwrap().function, 2);
        assert_eq!(table.resolve(None, "/api/v3").unwrap().function, 1);
        assert_eq!(table.resolve(None, "/api").unwrap().function, 1);
        assert_eq!(table.resolve(None, "/apix"), None);
        assert_eq!(table.resolve(Some("other.example"), "/"), None);
    }

    #[test]
    fn refuses_a_route_claimed_twice() {
        let err = RouteTable::new(&[
            function("a", vec![Route::Path("/x".into())]),
            function("b", vec![Route::Path("/x".into())]),
        ])
        .unwrap_err();
        assert!(err.contains("\"a\"") && err.contains("\"b\""), "{err}");
    }
}
