//! What the fuzz targets check (`fuzz/`, run by `scripts/fuzz.sh` on the nightly
//! toolchain), for the inputs edge takes from strangers: deploy bodies, manifests,
//! gossip values and configuration files. Each harness feeds its input to the code that
//! parses it and checks what must hold of the result (a round trip, a bound), not only
//! that nothing panics. The targets are thin wrappers over these, and each crate's
//! `fuzz_corpus` test replays the kept corpus (`fuzz/corpus/TARGET`) through them on
//! stable, so CI checks every input the fuzzer ever kept and every crash it found.

use std::path::Path;

use crate::config::{ClusterConfig, ConfigFile, GatewayConfig, NodeConfig};
use crate::gossip::{LoadReport, MAX_COUNT, SignedClaims, WarmSet};
use crate::manifest::{DeploymentId, FunctionManifest};
use crate::wire::{decode_deploy_body, encode_deploy_body};

/// A node's deploy body: a manifest line, then a module. Whatever decodes encodes back
/// to the same manifest and module, and the manifest and module checks never panic.
pub fn deploy_body(data: &[u8]) {
    let Ok((manifest, module)) = decode_deploy_body(data) else {
        return;
    };
    let again = encode_deploy_body(&manifest, module);
    let (manifest_again, module_again) = decode_deploy_body(&again).expect("re-decodes");
    assert_eq!(manifest_again, manifest);
    assert_eq!(module_again, module);
    let _ = manifest.validate();
    let _ = crate::module_check::check_module(module);
}

/// A function manifest as JSON. A manifest that validates has a deployment id that
/// parses back to itself.
pub fn manifest(data: &[u8]) {
    let Ok(manifest) = serde_json::from_slice::<FunctionManifest>(data) else {
        return;
    };
    if manifest.validate().is_ok() {
        let id = manifest.deployment_id();
        assert_eq!(DeploymentId::parse(id.as_str()).as_ref(), Ok(&id));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = DeploymentId::parse(text);
    }
}

/// A gossip value, by its first byte: a load report, a warm-set shard or a signed
/// identity. What decodes is within its bounds and encodes back to itself.
pub fn gossip_values(data: &[u8]) {
    let Some((which, text)) = choice_and_text(data) else {
        return;
    };
    match which % 3 {
        0 => {
            if let Some(load) = LoadReport::decode(text) {
                let counts = [load.in_flight, load.queued, load.slots];
                assert!(counts.iter().all(|&n| n <= MAX_COUNT), "{load:?}");
                assert!(load.from_gateways.iter().all(|&(_, n)| n <= MAX_COUNT));
                assert_eq!(LoadReport::decode(&load.encode()), Some(load));
            }
        }
        1 => {
            let mut warm = WarmSet::default();
            warm.add_shard(text);
            assert!(warm.len() <= text.len() / 12);
            let mut again = WarmSet::default();
            for shard in warm.encode() {
                again.add_shard(&shard);
            }
            assert_eq!(again, warm);
        }
        _ => {
            if let Some(signed) = SignedClaims::decode(text) {
                let again = SignedClaims::encode(&signed.signed, signed.scheme, &signed.signature);
                assert_eq!(SignedClaims::decode(&again), Some(signed));
            }
        }
    }
}

/// A configuration file, by its first byte: a node's, a gateway's or a cluster's. It
/// loads or names its problems; it never panics.
pub fn config_files(data: &[u8]) {
    let Some((which, text)) = choice_and_text(data) else {
        return;
    };
    match which % 3 {
        0 => load_checked::<NodeConfig>(text),
        1 => load_checked::<GatewayConfig>(text),
        _ => load_checked::<ClusterConfig>(text),
    }
}

/// The first byte (which kind of input) and the rest as text, if it is UTF-8.
fn choice_and_text(data: &[u8]) -> Option<(u8, &str)> {
    let (&which, rest) = data.split_first()?;
    Some((which, std::str::from_utf8(rest).ok()?))
}

/// Loads `text` as a `T` from a file of no folder, and checks that a refusal names the
/// file and at least one problem.
pub fn load_checked<T: ConfigFile>(text: &str) {
    let origin = Path::new("fuzzed.toml");
    if let Err(e) = crate::config::load_str::<T>(text, origin, Path::new("/nonexistent")) {
        assert_eq!(e.file, origin);
        assert!(!e.problems.is_empty());
    }
}

/// Feeds every file of the kept corpus of `target` (in `root/fuzz/corpus/`) to
/// `harness`; returns how many. A corpus folder that is missing is an error: the test
/// replaying it would otherwise pass on nothing.
pub fn replay(root: &Path, target: &str, harness: fn(&[u8])) -> usize {
    let dir = root.join("fuzz/corpus").join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus of {target} at {}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        harness(&data);
        n += 1;
    }
    n
}
