//! `hello`: the smallest useful function.
fn main() {
    edge_guest::serve(|req| {
        let name = req.query_param("name").unwrap_or("world");
        edge_guest::Response::text(200, format!("hello, {name}!\n"))
    });
}
