//! `weft-proxy`: the sidecar proxy. Until the data plane lands it only answers `--version`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V" | "version") => {
            println!("weft-proxy {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h" | "help") => {
            println!(
                "weft-proxy {}\nusage: weft-proxy --version\n(the proxy itself arrives with the data-plane work)",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        other => {
            eprintln!(
                "weft-proxy: unsupported arguments {other:?}; this build only answers --version"
            );
            ExitCode::from(2)
        }
    }
}
