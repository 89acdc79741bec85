//! `sleep`: waits `?ms=` milliseconds (default 20) without using CPU, like a function
//! waiting on a backend; it holds its execution slot all the while.
use std::time::{Duration, Instant};

use edge_guest::Response;

fn main() {
    edge_guest::serve(
        |req| match req.query_param("ms").unwrap_or("20").parse::<u64>() {
            Ok(ms) if ms <= 60_000 => {
                let started = Instant::now();
                std::thread::sleep(Duration::from_millis(ms));
                Response::text(200, format!("slept {} ms\n", started.elapsed().as_millis()))
            }
            _ => Response::text(400, "ms must be a whole number from 0 to 60000\n"),
        },
    );
}
