//! `forever`: never returns; the host's timeout must stop it.
fn main() {
    edge_guest::serve(|_| {
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    });
}
