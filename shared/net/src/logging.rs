//! The process's log: `tracing` on stderr, text or JSON.

use edge_shared::config::LogFormat;

/// Installs the process's `tracing` subscriber: `format` on stderr, filtered by
/// `RUST_LOG` when set, else by `filter` (the config's `log_filter`), colored only when
/// stderr is a terminal (log files stay greppable).
pub fn init(format: LogFormat, filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
