//! Reading a secret's JSON without quoting it in an error.

/// What is wrong with a secret's JSON, in words that never quote a value:
/// serde's message names a missing or unknown field; a type error could
/// quote the value, so only its class is kept.
pub(crate) fn describe_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let said = text.split(" at line").next().unwrap_or("");
    if said.starts_with("missing field") || said.starts_with("unknown field") {
        said.split(", expected").next().unwrap_or(said).to_string()
    } else {
        "not a JSON object of strings".to_string()
    }
}
