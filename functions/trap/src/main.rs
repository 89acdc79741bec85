//! `trap`: panics, which under `panic = "abort"` is a wasm trap.
fn main() {
    edge_guest::serve(|req| panic!("trap asked to fail on {}", req.path));
}
