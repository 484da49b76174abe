//! The committed contract must be what the Rust types say today.

use std::path::Path;

#[test]
fn committed_contract_matches_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join(sandbox_contract::CONTRACT_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let current = sandbox_contract::contract_text();
    assert!(
        committed == current,
        "{} is stale: the Rust wire types changed. Run `npm run contract` and commit the regenerated files.",
        path.display()
    );
}
