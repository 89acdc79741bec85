//! `hello`: the smallest useful function. It greets with `$GREETING` when the deploy
//! sets it (in `env` or `secrets`), else with "hello".
fn main() {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
    edge_guest::serve(|req| {
        let name = req.query_param("name").unwrap_or("world");
        edge_guest::Response::text(200, format!("{greeting}, {name}!\n"))
    });
}
