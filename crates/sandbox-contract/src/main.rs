//! `sandbox-contract [--write PATH]`: prints the wire contract, or writes it.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let text = sandbox_contract::contract_text();
    match args.as_slice() {
        [] => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        [flag, path] if flag == "--write" => match std::fs::write(path, text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sandbox-contract: cannot write {path}: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: sandbox-contract [--write PATH]");
            ExitCode::from(2)
        }
    }
}
