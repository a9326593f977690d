//! The layering the workspace promises (docs/ARCHITECTURE.md): no Lambda
//! function depends on SQLite, the simulators or the local stack, and the
//! core depends on no adapter. Read from `cargo metadata`'s resolved graph.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;

/// Package name -> names of its normal (non-dev, non-build) dependencies,
/// as cargo resolved the whole workspace with every feature on.
fn normal_dependencies() -> HashMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--all-features"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata failed");
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    let names: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|node| {
            let deps = node["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .expect("dep_kinds")
                        .iter()
                        .any(|kind| kind["kind"].is_null())
                })
                .map(|dep| names[dep["pkg"].as_str().unwrap()].to_string())
                .collect();
            (names[node["id"].as_str().unwrap()].to_string(), deps)
        })
        .collect()
}

/// Every package `root` pulls in at run time.
fn closure(graph: &HashMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(package) = todo.pop() {
        if seen.insert(package.clone()) {
            todo.extend(graph.get(&package).into_iter().flatten().cloned());
        }
    }
    seen
}

#[test]
fn no_function_binary_depends_on_sqlite_the_simulators_or_the_local_stack() {
    let graph = normal_dependencies();
    let functions = closure(&graph, "hub-functions");
    assert!(functions.contains("hub-core") && functions.contains("aws-sdk-dynamodb"));
    for forbidden in [
        "rusqlite",
        "libsqlite3-sys",
        "hub-sim",
        "hub-local",
        "hub-testkit",
    ] {
        assert!(
            !functions.contains(forbidden),
            "hub-functions depends on {forbidden}"
        );
    }
}

#[test]
fn the_core_depends_on_no_adapter_and_no_sdk() {
    let graph = normal_dependencies();
    let core = closure(&graph, "hub-core");
    for forbidden in [
        "hub-adapters",
        "hub-sim",
        "hub-local",
        "rusqlite",
        "reqwest",
        "aws-sdk-dynamodb",
        "lambda_runtime",
    ] {
        assert!(!core.contains(forbidden), "hub-core depends on {forbidden}");
    }
    // The simulators and the local stack sit above the production adapters.
    let local = closure(&graph, "hub-local");
    assert!(local.contains("hub-sim") && local.contains("rusqlite"));
}
