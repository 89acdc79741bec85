//! Function manifests: what the gateway knows about a function and tells the nodes.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The sha256 of a module's bytes, lower-case hex: a function's content id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentId(String);

impl ContentId {
    /// The content id of `module`.
    pub fn of(module: &[u8]) -> ContentId {
        ContentId(hex::encode(Sha256::digest(module)))
    }

    /// The id as 64 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContentId {
    type Error = ManifestError;

    fn try_from(s: String) -> Result<ContentId, ManifestError> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(ContentId(s))
        } else {
            Err(ManifestError::ContentId(s))
        }
    }
}

impl From<ContentId> for String {
    fn from(id: ContentId) -> String {
        id.0
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A function's name plus a digest of everything that makes up one deployment of it
/// (module, environment, limits): `hello@3f2a9c01d4e5b6a7`. A node keeps one loaded
/// function per deployment id; the compiled module underneath is shared by content id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeploymentId(String);

impl DeploymentId {
    /// Parses a deployment id as carried in `x-edge-function`.
    pub fn parse(s: &str) -> Result<DeploymentId, ManifestError> {
        match s.split_once('@') {
            Some((name, digest))
                if check_name(name).is_ok()
                    && digest.len() == 16
                    && digest.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Ok(DeploymentId(s.to_string()))
            }
            _ => Err(ManifestError::DeploymentId(s.to_string())),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The function name part.
    pub fn function_name(&self) -> &str {
        self.0.split_once('@').map_or(&self.0, |(name, _)| name)
    }
}

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-function limits. `None` takes the node's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Longest a request may run, in milliseconds (fuel budget and wall clock).
    pub timeout_ms: Option<u64>,
    /// Largest linear memory an instance may grow to, in MiB.
    pub memory_limit_mib: Option<u64>,
    /// Largest request body accepted, in bytes; larger gets 413.
    pub max_request_body_bytes: Option<u64>,
    /// Largest response body a function may write, in bytes; more fails the request.
    pub max_response_body_bytes: Option<u64>,
    /// Most requests of this function running at once on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Most requests of this function waiting on one node; more are refused at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u32>,
    /// Longest a request may wait for its turn, in milliseconds, before `503`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
}

/// How end users reach a function.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Route {
    /// Requests whose path is this prefix or starts with it followed by `/`.
    Path(String),
    /// Requests whose `Host` (or `:authority`) is this name, port ignored.
    Host(String),
}

/// Environment variables whose values are secret: set in the function's environment
/// like `env`, never shown by the admin API, never in a log line (`Debug` shows the names
/// only).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub BTreeMap<String, String>);

impl Secrets {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Their names.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// One deployment of a function, as the gateway announces it to nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionManifest {
    /// The function's name: lower-case letters, digits and `-`, at most 63.
    pub name: String,
    /// sha256 of the module bytes.
    pub content_id: ContentId,
    /// How end users reach it.
    pub routes: Vec<Route>,
    /// Environment variables given to the function beside the CGI ones.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret environment variables, set like `env`.
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    /// Its limits.
    #[serde(default)]
    pub limits: Limits,
}

impl FunctionManifest {
    /// The id of this deployment: the name plus a digest over the whole manifest.
    pub fn deployment_id(&self) -> DeploymentId {
        let encoded = serde_json::to_vec(self).expect("a manifest always encodes");
        let digest = hex::encode(&Sha256::digest(&encoded)[..8]);
        DeploymentId(format!("{}@{digest}", self.name))
    }

    /// Checks every field, reporting all problems at once.
    pub fn validate(&self) -> Result<(), Vec<ManifestError>> {
        let mut problems = Vec::new();
        if let Err(e) = check_name(&self.name) {
            problems.push(e);
        }
        for key in self.env.keys() {
            if !is_env_name(key) {
                problems.push(ManifestError::EnvKey(key.clone()));
            }
        }
        for key in self.secrets.names() {
            if !is_env_name(key) {
                problems.push(ManifestError::SecretKey(key.clone()));
            } else if self.env.contains_key(key) {
                problems.push(ManifestError::SecretInEnv(key.clone()));
            }
        }
        for route in &self.routes {
            let ok = match route {
                Route::Path(p) => p.starts_with('/') && p.len() > 1 && !p.ends_with('/'),
                Route::Host(h) => !h.is_empty() && !h.contains(['/', ':', ' ']),
            };
            if !ok {
                problems.push(ManifestError::Route(route.clone()));
            }
        }
        if self.limits.timeout_ms == Some(0) {
            problems.push(ManifestError::ZeroLimit("timeout_ms"));
        }
        if self.limits.memory_limit_mib == Some(0) {
            problems.push(ManifestError::ZeroLimit("memory_limit_mib"));
        }
        if self.limits.max_concurrency == Some(0) {
            problems.push(ManifestError::ZeroLimit("max_concurrency"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Whether `key` is `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `name` can name a function: `[a-z0-9-]`, 1 to 63 characters, not starting
/// with `-` (what a deploy accepts).
pub fn is_function_name(name: &str) -> bool {
    check_name(name).is_ok()
}

fn check_name(name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Name(name.to_string()))
    }
}

/// A manifest field that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The function name breaks the naming rule.
    #[error(
        "function name {0:?} must be 1-63 lower-case letters, digits or '-', not starting with '-'"
    )]
    Name(String),
    /// Not 64 lower-case hex digits.
    #[error("content id {0:?} is not a sha256 in lower-case hex")]
    ContentId(String),
    /// Not `name@16-hex-digits`.
    #[error("deployment id {0:?} is not of the form name@digest")]
    DeploymentId(String),
    /// An environment variable name that is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("env key {0:?} is not a valid environment variable name")]
    EnvKey(String),
    /// A secret's name that is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("secrets key {0:?} is not a valid environment variable name")]
    SecretKey(String),
    /// A name both in `env` and in `secrets`.
    #[error("secrets key {0:?} is in env too; a name is one or the other")]
    SecretInEnv(String),
    /// A route that cannot match anything sensible.
    #[error("route {0:?}: a path must start with '/' and not end with it; a host is a bare name")]
    Route(Route),
    /// A limit set to zero, which would refuse every request.
    #[error("limits.{0} must be greater than zero")]
    ZeroLimit(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> FunctionManifest {
        FunctionManifest {
            name: "hello".into(),
            content_id: ContentId::of(b"\0asm"),
            routes: vec![Route::Path("/hello".into())],
            env: BTreeMap::new(),
            secrets: Default::default(),
            limits: Limits::default(),
        }
    }

    #[test]
    fn deployment_id_changes_with_env_and_parses_back() {
        let a = manifest();
        let mut b = manifest();
        b.env.insert("GREETING".into(), "hi".into());
        assert_ne!(a.deployment_id(), b.deployment_id());
        assert_eq!(a.deployment_id(), manifest().deployment_id());
        let id = a.deployment_id();
        assert_eq!(DeploymentId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.function_name(), "hello");
        assert!(DeploymentId::parse("hello").is_err());
        assert!(DeploymentId::parse("Hello@0123456789abcdef").is_err());
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut m = manifest();
        m.name = "Bad_Name".into();
        m.env.insert("1X".into(), "v".into());
        m.routes.push(Route::Path("nope".into()));
        m.limits.timeout_ms = Some(0);
        assert_eq!(m.validate().unwrap_err().len(), 4);
        assert!(manifest().validate().is_ok());
    }

    #[test]
    fn content_id_round_trips_through_json_and_rejects_junk() {
        let id = ContentId::of(b"abc");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ContentId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<ContentId>("\"xyz\"").is_err());
    }
}
