//! What the `hub` binary's tests share: starting `hub local serve`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts the built `hub local serve --port 0` with `args` and returns the
/// process and the URL it printed. Its stdout keeps being drained, so the
/// server never blocks on a full pipe.
pub fn local_serve(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
        .args(["local", "serve", "--port", "0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hub local serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .expect("a first line")
        .expect("readable stdout");
    let url = first
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}
