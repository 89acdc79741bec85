//! `stream`: answers `?mib=N` MiB of numbered 64-byte lines (default 1, at most 64),
//! writing them 64 KiB at a time as it makes them; with `?fail=K` it traps after K KiB.
//! The node sends each piece on while the function still writes the next.
use std::io::Write;

const LINE: usize = 64;

fn main() {
    let req = edge_guest::Request::from_cgi();
    let mib: usize = req
        .query_param("mib")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1)
        .min(64);
    let fail_after: Option<usize> = req.query_param("fail").and_then(|k| k.parse().ok());
    let mut out = std::io::stdout().lock();
    // No content-length: the length is known only at the end, as for most streams.
    let _ = out.write_all(b"Status: 200\ncontent-type: text/plain\n\n");
    let mut block = Vec::with_capacity(64 << 10);
    let lines = (mib << 20) / LINE;
    for n in 0..lines {
        let _ = writeln!(block, "{n:08} {}", "x".repeat(LINE - 10));
        if block.len() == 64 << 10 {
            if fail_after.is_some_and(|k| (n + 1) * LINE >= k << 10) {
                panic!("asked to fail after {} KiB", (n + 1) * LINE >> 10);
            }
            if out.write_all(&block).is_err() {
                return;
            }
            block.clear();
        }
    }
    let _ = out.write_all(&block);
}
