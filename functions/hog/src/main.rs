//! `hog`: grows its memory a mebibyte at a time until the host's memory limit stops it.
fn main() {
    edge_guest::serve(|_| {
        let mut held: Vec<Vec<u8>> = Vec::new();
        loop {
            held.push(vec![1u8; 1 << 20]);
            eprintln!("holding {} MiB", held.len());
        }
    });
}
