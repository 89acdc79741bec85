//! What each member publishes in gossip, as key-values: identity, load, warm set. The
//! schema and its codecs, pure; the agent that gossips them is `edge_net::gossip`.
//!
//! | key | value |
//! | --- | --- |
//! | `identity` | the member's [`Claims`] (role, name, HTTP/3 address, version, draining, incarnation), its certificate, and its signature over both (see [`SignedClaims`]) |
//! | `load` | `in_flight queued slots ewma_run_us cpu_permille`, then `GATEWAY=N` for each gateway with requests here (spaces between) |
//! | `warm.00` … `warm.3f` | the warm set: 48-bit fingerprints of deployment ids, 12 hex digits each, sorted, split in 64 shards by their first 6 bits |
//! | `warming` | deployments the node is loading now, not ready yet: fingerprints as in the warm set, one value |
//! | `engine` | a node's engine key (compiler, target, CPU features; [`crate::artifact::engine_key`]): nodes of one key can load each other's compiled artifacts |
//!
//! A member's identity is signed with its own key, not the shared cluster key, so a
//! member can write only its own (the gossip agent verifies it: `edge_net::gossip`).
//!
//! Sharding the warm set means a deploy or an eviction re-gossips one shard, not the
//! whole set: 1,000 warm functions make 64 values of about 190 bytes each, and 3,000 of
//! about 560.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;

use sha2::{Digest, Sha256};

/// Number of warm-set shards (one per value of a fingerprint's first 6 bits).
pub const WARM_SHARDS: usize = 64;
const FINGERPRINT_HEX: usize = 12;

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs functions.
    Node,
    /// Routes requests to nodes.
    Gateway,
}

impl Role {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Gateway => "gateway",
        }
    }

    /// The role named `text` on the wire.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "node" => Some(Role::Node),
            "gateway" => Some(Role::Gateway),
            _ => None,
        }
    }
}

/// The largest count (requests, slots) a load report may carry: far above any real
/// node, far below what sums of a few of them could overflow.
pub const MAX_COUNT: usize = 1 << 24;
/// The most gateways one load report may name.
pub const MAX_GATEWAYS: usize = 1024;

/// A member's load, as it last published it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests running.
    pub in_flight: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Execution slots (0 for a gateway).
    pub slots: usize,
    /// Moving average of the guest run time, in microseconds.
    pub ewma_run_us: u64,
    /// CPU use of the member's process since its previous report, in thousandths of one
    /// core.
    pub cpu_permille: u64,
    /// Of `in_flight + queued`, how many came from each gateway (by its member name;
    /// gateways with none are left out). A gateway subtracts its own share and adds its
    /// exact count instead, so its estimate is never stale about its own requests.
    pub from_gateways: Vec<(String, usize)>,
}

impl LoadReport {
    /// Its value for the `load` key.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{} {} {} {} {}",
            self.in_flight, self.queued, self.slots, self.ewma_run_us, self.cpu_permille
        );
        for (gateway, n) in &self.from_gateways {
            let _ = write!(text, " {gateway}={n}");
        }
        text
    }

    /// The load in `text`; `None` if it is malformed or out of range (a member's
    /// report is input from the network: no value in it may overflow the arithmetic
    /// that routing does with it, see [`MAX_COUNT`]).
    pub fn decode(text: &str) -> Option<LoadReport> {
        let mut parts = text.split(' ');
        let mut next = || parts.next()?.parse::<u64>().ok();
        let mut count = || usize::try_from(next()?).ok().filter(|&n| n <= MAX_COUNT);
        let mut load = LoadReport {
            in_flight: count()?,
            queued: count()?,
            slots: count()?,
            ewma_run_us: 0,
            cpu_permille: 0,
            from_gateways: Vec::new(),
        };
        let mut next = || parts.next()?.parse::<u64>().ok();
        load.ewma_run_us = next()?;
        load.cpu_permille = next()?;
        if parts.clone().count() > MAX_GATEWAYS {
            return None;
        }
        for pair in parts {
            let (gateway, n) = pair.rsplit_once('=')?;
            let n = n.parse().ok().filter(|&n| n <= MAX_COUNT)?;
            load.from_gateways.push((gateway.to_string(), n));
        }
        Some(load)
    }

    /// Requests from `gateway` among those reported.
    pub fn from_gateway(&self, gateway: &str) -> usize {
        self.from_gateways
            .iter()
            .find(|(g, _)| g == gateway)
            .map_or(0, |&(_, n)| n)
    }
}

/// The 48-bit fingerprint a deployment id is known by in warm sets. Collisions among a
/// few thousand functions are about one in 10^8.
pub fn fingerprint(deployment_id: &str) -> u64 {
    let digest = Sha256::digest(deployment_id.as_bytes());
    let mut bytes = [0u8; 8];
    bytes[2..].copy_from_slice(&digest[..6]);
    u64::from_be_bytes(bytes)
}

/// A set of warm deployments, by [`fingerprint`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmSet(HashSet<u64>);

impl WarmSet {
    /// The set of these deployment ids.
    pub fn of<'a>(ids: impl IntoIterator<Item = &'a str>) -> WarmSet {
        WarmSet(ids.into_iter().map(fingerprint).collect())
    }

    /// Whether the deployment with this fingerprint is in the set.
    pub fn contains(&self, fingerprint: u64) -> bool {
        self.0.contains(&fingerprint)
    }

    /// How many deployments.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The 64 shard values (`warm.00` … `warm.3f`).
    pub fn encode(&self) -> [String; WARM_SHARDS] {
        let mut sorted: Vec<u64> = self.0.iter().copied().collect();
        sorted.sort_unstable();
        let mut shards: [String; WARM_SHARDS] = std::array::from_fn(|_| String::new());
        for f in sorted {
            let shard = (f >> 42) as usize & (WARM_SHARDS - 1);
            let _ = write!(shards[shard], "{f:012x}");
        }
        shards
    }

    /// The set as one value (`warming`): the fingerprints, sorted.
    pub fn encode_one(&self) -> String {
        self.encode().concat()
    }

    /// The set in one value of [`WarmSet::encode_one`]; a malformed value is empty.
    pub fn decode(text: &str) -> WarmSet {
        let mut set = WarmSet::default();
        set.add_shard(text);
        set
    }

    /// Adds the fingerprints in one shard value; a malformed value adds nothing.
    pub fn add_shard(&mut self, text: &str) {
        if !text.len().is_multiple_of(FINGERPRINT_HEX) || !text.is_ascii() {
            return;
        }
        for chunk in text.as_bytes().chunks(FINGERPRINT_HEX) {
            let digits = std::str::from_utf8(chunk).unwrap_or_default();
            if let Ok(f) = u64::from_str_radix(digits, 16) {
                self.0.insert(f);
            }
        }
    }
}

/// The key of the set of deployments a node is loading now.
pub const WARMING_KEY: &str = "warming";
/// The key of a node's engine key.
pub const ENGINE_KEY: &str = "engine";

/// The key of warm-set shard `i`.
pub fn warm_key(i: usize) -> String {
    format!("warm.{i:02x}")
}

/// The key of a member's signed identity.
pub const IDENTITY_KEY: &str = "identity";
/// The tag an identity value starts with: the format's version.
const IDENTITY_FORMAT: &str = "edge-identity/1";
/// The longest identity value accepted (a certificate of a few hundred bytes, in hex).
pub const MAX_IDENTITY_BYTES: usize = 16 * 1024;

/// Whether `name` may name a member: a DNS label (`[a-z0-9-]{1,63}`, no leading or
/// trailing `-`), since a node's certificate names it (see [`member_dns_name`]).
pub fn is_member_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The DNS name a node's certificate carries for its member name: what binds the
/// name a node claims in gossip to the key it signs with.
pub fn member_dns_name(name: &str) -> String {
    format!("{name}.node.edge")
}

/// What a member says of itself in gossip, signed with its own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// What it is.
    pub role: Role,
    /// Its configured name.
    pub name: String,
    /// Where it serves HTTP/3.
    pub quic: SocketAddr,
    /// Its software version.
    pub version: String,
    /// Whether it is shutting down.
    pub draining: bool,
    /// Its incarnation (the gossip layer's generation): a signed identity is valid for
    /// one incarnation only.
    pub generation: u64,
    /// Its gossip address (part of the gossip layer's id of it).
    pub gossip: SocketAddr,
    /// When it signed these claims (Unix milliseconds): of two valid identities of one
    /// incarnation, the later counts, so an old one replayed never undoes a newer one.
    pub issued_ms: u64,
}

/// A member's identity as it travels: its claims, its certificate and its signature
/// over both.
///
/// Value: `edge-identity/1 ROLE NAME QUIC VERSION DRAINING GENERATION GOSSIP ISSUED
/// CERT | SCHEME SIGNATURE`, the certificate (DER) and the signature in hex. The
/// signature covers everything before ` | `; `SCHEME` is the TLS signature scheme's
/// number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedClaims {
    /// What it claims.
    pub claims: Claims,
    /// Its certificate (DER), issued by the cluster CA.
    pub certificate: Vec<u8>,
    /// The text the signature covers.
    pub signed: String,
    /// The TLS signature scheme (its IANA number).
    pub scheme: u16,
    /// The signature.
    pub signature: Vec<u8>,
}

impl Claims {
    /// The text a member signs: its claims and its certificate.
    pub fn to_be_signed(&self, certificate: &[u8]) -> String {
        format!(
            "{IDENTITY_FORMAT} {} {} {} {} {} {} {} {} {}",
            self.role.as_str(),
            self.name,
            self.quic,
            self.version,
            u8::from(self.draining),
            self.generation,
            self.gossip,
            self.issued_ms,
            hex::encode(certificate)
        )
    }
}

impl SignedClaims {
    /// The identity value: `signed` (from [`Claims::to_be_signed`]) with its signature.
    pub fn encode(signed: &str, scheme: u16, signature: &[u8]) -> String {
        format!("{signed} | {scheme} {}", hex::encode(signature))
    }

    /// Parses an identity value (input from the network); `None` if malformed. The
    /// signature is not checked here: that is the gossip agent's, with the CA.
    pub fn decode(text: &str) -> Option<SignedClaims> {
        if text.len() > MAX_IDENTITY_BYTES {
            return None;
        }
        let (signed, signature) = text.split_once(" | ")?;
        let (scheme, signature) = signature.split_once(' ')?;
        let mut fields = signed.split(' ');
        let mut next = || fields.next();
        if next()? != IDENTITY_FORMAT {
            return None;
        }
        let role = Role::parse(next()?)?;
        let name = next()?.to_string();
        let quic = next()?.parse().ok()?;
        let version = next()?.to_string();
        let draining = match next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let generation = next()?.parse().ok()?;
        let gossip = next()?.parse().ok()?;
        let issued_ms = next()?.parse().ok()?;
        let certificate = hex::decode(next()?).ok()?;
        if next().is_some() || name.is_empty() {
            return None;
        }
        Some(SignedClaims {
            claims: Claims {
                role,
                name,
                quic,
                version,
                draining,
                generation,
                gossip,
                issued_ms,
            },
            certificate,
            signed: signed.to_string(),
            scheme: scheme.parse().ok()?,
            signature: hex::decode(signature).ok()?,
        })
    }
}

/// One member as gossip knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its configured name.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Where it serves HTTP/3 (nodes: for gateways).
    pub quic: SocketAddr,
    /// Its software version.
    pub version: String,
    /// Whether it said it is shutting down.
    pub draining: bool,
    /// Whether the failure detector holds it alive.
    pub live: bool,
    /// Its gossip address.
    pub gossip: SocketAddr,
    /// Its incarnation: a restart at the same address is a new one.
    pub generation: u64,
    /// Its last published load.
    pub load: LoadReport,
    /// Its warm set.
    pub warm: WarmSet,
    /// Deployments it is loading now (not ready yet).
    pub warming: WarmSet,
    /// Its engine key (nodes; empty if it did not say).
    pub engine: String,
    /// The version of its latest state change seen (changes whenever it publishes).
    pub state_version: u64,
}

impl Member {
    /// A member from its verified `claims` and its other key-values (`get` looks one
    /// up). `identity` is what the gossip layer itself knows of it.
    pub fn decode<'a>(
        claims: &Claims,
        get: impl Fn(&str) -> Option<&'a str>,
        identity: Identity,
    ) -> Member {
        let mut warm = WarmSet::default();
        for i in 0..WARM_SHARDS {
            if let Some(text) = get(&warm_key(i)) {
                warm.add_shard(text);
            }
        }
        Member {
            name: claims.name.clone(),
            role: claims.role,
            quic: claims.quic,
            version: claims.version.clone(),
            draining: claims.draining,
            live: identity.live,
            gossip: identity.gossip,
            generation: identity.generation,
            load: get("load").and_then(LoadReport::decode).unwrap_or_default(),
            warm,
            warming: get(WARMING_KEY).map_or_else(WarmSet::default, WarmSet::decode),
            engine: get(ENGINE_KEY).unwrap_or_default().to_string(),
            state_version: identity.state_version,
        }
    }
}

/// What the gossip layer knows of a member besides its key-values.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Its gossip address.
    pub gossip: SocketAddr,
    /// Its incarnation.
    pub generation: u64,
    /// Whether the failure detector holds it alive.
    pub live: bool,
    /// The version of its latest state change seen.
    pub state_version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_sets_round_trip_through_their_shards() {
        let ids: Vec<String> = (0..3000).map(|i| format!("fn-{i}@v1")).collect();
        let set = WarmSet::of(ids.iter().map(String::as_str));
        assert_eq!(set.len(), 3000);
        let shards = set.encode();
        let total: usize = shards.iter().map(String::len).sum();
        assert_eq!(total, 3000 * FINGERPRINT_HEX);
        // Balanced: about 47 fingerprints a shard, none with twice that.
        let mean = 3000 * FINGERPRINT_HEX / WARM_SHARDS;
        assert!(
            shards.iter().all(|s| s.len() < 2 * mean),
            "shards are balanced"
        );
        // One more warm function changes one shard: what gossip re-sends.
        let more = WarmSet::of(ids.iter().map(String::as_str).chain(["fn-new@v1"]));
        let changed = more
            .encode()
            .iter()
            .zip(&shards)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, 1);
        let mut back = WarmSet::default();
        for s in &shards {
            back.add_shard(s);
        }
        assert_eq!(back, set);
        assert!(back.contains(fingerprint("fn-42@v1")));
        assert!(!back.contains(fingerprint("fn-3000@v1")));
        back.add_shard("nothex");
        back.add_shard("zzzzzzzzzzzz");
        assert_eq!(back.len(), 3000);
    }

    fn claims() -> Claims {
        Claims {
            role: Role::Node,
            name: "node-1".into(),
            quic: "127.0.0.1:5000".parse().unwrap(),
            version: "0.1.0".into(),
            draining: true,
            generation: 17,
            gossip: "127.0.0.1:7946".parse().unwrap(),
            issued_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn signed_identities_round_trip_and_malformed_ones_are_refused() {
        let signed = claims().to_be_signed(b"cert");
        let text = SignedClaims::encode(&signed, 0x0403, b"sig");
        let back = SignedClaims::decode(&text).unwrap();
        assert_eq!(back.claims, claims());
        assert_eq!(back.certificate, b"cert");
        assert_eq!(back.signed, signed);
        assert_eq!(
            (back.scheme, back.signature.as_slice()),
            (0x0403, &b"sig"[..])
        );
        for bad in [
            String::new(),
            signed.clone(),
            text.replacen("edge-identity/1", "edge-identity/2", 1),
            text.replacen(" node ", " queen ", 1),
            text.replacen(" 1 17 ", " 2 17 ", 1),
            text.replacen(" | ", " extra | ", 1),
            text.replace("63657274", "zz"),
            format!("{text}{}", "0".repeat(MAX_IDENTITY_BYTES)),
        ] {
            assert_eq!(SignedClaims::decode(&bad), None, "{bad}");
        }
    }

    #[test]
    fn member_names_are_dns_labels() {
        for good in ["node-1", "n", "a1-b2", &"x".repeat(63)] {
            assert!(is_member_name(good), "{good}");
        }
        let long = "x".repeat(64);
        for bad in [
            "",
            "Node",
            "node_1",
            "-a",
            "a-",
            "a.b",
            "gateway@127.0.0.1:1",
            &long,
        ] {
            assert!(!is_member_name(bad), "{bad}");
        }
        assert_eq!(member_dns_name("node-1"), "node-1.node.edge");
    }

    #[test]
    fn loads_round_trip_and_bad_ones_are_refused() {
        let load = LoadReport {
            in_flight: 3,
            queued: 1,
            slots: 4,
            ewma_run_us: 250,
            cpu_permille: 1500,
            from_gateways: vec![("gateway@127.0.0.1:4433".into(), 3)],
        };
        assert_eq!(LoadReport::decode(&load.encode()).as_ref(), Some(&load));
        assert_eq!(load.from_gateway("gateway@127.0.0.1:4433"), 3);
        assert_eq!(load.from_gateway("gateway@elsewhere"), 0);
        assert_eq!(LoadReport::decode("1 2 3 4 5 gw"), None);
        assert_eq!(LoadReport::decode("1 2 3"), None);
        assert_eq!(LoadReport::decode("a b c d e"), None);
        // Values that would overflow routing's arithmetic are refused where decoded.
        let huge = format!("{} 0 4 0 0", usize::MAX);
        assert_eq!(LoadReport::decode(&huge), None);
        assert_eq!(
            LoadReport::decode(&format!("0 {} 4 0 0", MAX_COUNT + 1)),
            None
        );
        assert_eq!(
            LoadReport::decode(&format!("0 0 4 0 0 gw={}", u64::MAX)),
            None
        );
        assert!(LoadReport::decode(&format!("{MAX_COUNT} {MAX_COUNT} 4 0 0")).is_some());
    }
}
