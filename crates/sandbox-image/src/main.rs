//! `sandbox-image import`: one JSON request on stdin, JSON-lines events on
//! stdout, the last one `done` (with the image) or `error` (kind + message).

use sandbox_image::error::ImportError;
use sandbox_image::progress::Reporter;
use sandbox_image::request::Request;
use serde_json::json;
use std::io::Read;

fn main() {
    let report = Reporter::new(Box::new(std::io::stdout()));
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("import") {
        eprintln!("usage: sandbox-image import < request.json   (run by @torkbot/sandbox; see src/images/import.ts)");
        std::process::exit(2);
    }
    // reqwest is built without a default crypto provider; this process uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = (|| {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input).map_err(|e| ImportError::io("reading the request", e))?;
        let req: Request = serde_json::from_str(&input).map_err(|e| ImportError::Request(e.to_string()))?;
        sandbox_image::run(&req, &report)
    })();
    match result {
        Ok(outcome) => report.emit("done", json!({ "image": outcome })),
        Err(e) => {
            let mut fields = json!({ "kind": e.kind(), "message": e.to_string() });
            if let ImportError::DigestMismatch { what, expected, actual } = &e {
                fields["what"] = json!(what);
                fields["expected"] = json!(expected);
                fields["actual"] = json!(actual);
            }
            report.emit("error", fields);
            std::process::exit(1);
        }
    }
}
