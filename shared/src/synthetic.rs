//! Big modules made to measure, for the benchmarks and tests that need a function with
//! a megabyte of real code (a stand-in for a big real guest) rather than `hello`'s 70
//! KB: how long one takes to compile, to deserialize, to travel between nodes.

use std::fmt::Write;

/// The text of a module with about `code_bytes` bytes of code: many small functions of
/// arithmetic that `_start` calls in a chain. With `answer`, `_start` then writes a CGI
/// answer of that text (`text/plain`) to stdout, so that calling it is a 200; without,
/// it imports nothing.
pub fn module_wat(code_bytes: usize, answer: Option<&str>) -> String {
    let body = "local.get 0 i32.const 7 i32.mul i32.const 3 i32.add local.tee 0 \
                i32.const 13 i32.rem_u local.get 0 i32.xor local.set 0 ";
    // What one function of twelve bodies takes, compiled and encoded.
    let functions = code_bytes / 232;
    let mut wat = String::from("(module ");
    if answer.is_some() {
        wat.push_str(
            "(import \"wasi_snapshot_preview1\" \"fd_write\" \
             (func $w (param i32 i32 i32 i32) (result i32)))\n",
        );
    }
    wat.push_str("(memory (export \"memory\") 1)\n");
    for i in 0..functions {
        let next = if i + 1 < functions {
            format!("local.get 0 call $f{}", i + 1)
        } else {
            "local.get 0".to_string()
        };
        let _ = writeln!(
            wat,
            "(func $f{i} (param i32) (result i32) {} {next})",
            body.repeat(12)
        );
    }
    match answer {
        None => wat.push_str("(func (export \"_start\") i32.const 1 call $f0 drop))"),
        Some(text) => {
            // One iovec at 0 pointing at the answer at 16, written to fd 1.
            let cgi = format!("Content-Type: text/plain\n\n{text}\n");
            let escaped: String = cgi.bytes().map(|b| format!("\\{b:02x}")).collect();
            let _ = write!(
                wat,
                "(data (i32.const 16) \"{escaped}\") \
                 (func (export \"_start\") i32.const 1 call $f0 drop \
                 (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const {})) \
                 (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))",
                cgi.len()
            );
        }
    }
    wat
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_as_many_functions_as_the_size_asks_and_answers_when_told() {
        let quiet = module_wat(232 * 10, None);
        assert_eq!(quiet.matches("(func $f").count(), 10);
        assert!(!quiet.contains("import"));
        let answering = module_wat(232 * 3, Some("big"));
        assert_eq!(answering.matches("(func $f").count(), 3);
        assert!(answering.contains("fd_write"));
        // "Content-Type: text/plain\n\nbig\n", escaped byte by byte.
        assert!(answering.contains("(i32.const 30)"));
        assert!(answering.contains("\\43\\6f\\6e\\74"));
    }
}
