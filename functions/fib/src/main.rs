//! `fib`: CPU-bound on purpose, computes the `n`th Fibonacci number recursively (`?n=`).
use edge_guest::Response;

fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

fn main() {
    edge_guest::serve(
        |req| match req.query_param("n").unwrap_or("20").parse::<u32>() {
            Ok(n) if n <= 90 => Response::text(200, format!("{}\n", fib(n))),
            _ => Response::text(400, "n must be a whole number from 0 to 90\n"),
        },
    );
}
