//! The deploy guide's examples are read by the code that reads the real
//! thing: every secret shown in infra/DEPLOY.md parses as the functions
//! parse it, every `NotifyRates` as the functions read `NOTIFY_RATES`, every
//! staff policy grants only staff routes the router serves; and the guide
//! lists every parameter and every alarm of template.yaml.

use async_trait::async_trait;
use functions::metrics::NAMESPACE;
use functions::notify::ProviderRates;
use functions::wiring::NotifySecret;
use hub_adapters::fhir::{new_es384_key_pem, ClientCredentials};
use hub_adapters::mesh::mesh_config_from_secret;
use hub_core::ports::{Secrets, SecretsError};
use secrecy::{ExposeSecret, SecretString};
use serde_yaml::Value;

fn deploy_guide() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/DEPLOY.md");
    std::fs::read_to_string(path).expect("infra/DEPLOY.md")
}

fn template() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("template.yaml"))
        .expect("template parses")
}

/// `(secret id, JSON)` of every `--secret-id … --secret-string '…'`.
fn secret_examples(guide: &str) -> Vec<(String, String)> {
    guide
        .split("--secret-id ")
        .skip(1)
        .filter_map(|rest| {
            let id = rest.split_whitespace().next()?.to_string();
            let command = rest.split("--secret-id ").next()?;
            let command = &command[..command.find("\n\n").unwrap_or(command.len())];
            let start = command.find("--secret-string '")? + "--secret-string '".len();
            let end = command[start..].find('\'')?;
            Some((id, command[start..start + end].to_string()))
        })
        .collect()
}

/// The JSON of every Notify secret in the guide.
fn notify_examples(guide: &str) -> Vec<String> {
    secret_examples(guide)
        .into_iter()
        .filter(|(id, _)| id.ends_with("/notify"))
        .map(|(_, json)| json)
        .collect()
}

/// One secret, as Secrets Manager would hand it over.
struct OneSecret(String);

#[async_trait]
impl Secrets for OneSecret {
    async fn secret(&self, _id: &str) -> Result<SecretString, SecretsError> {
        Ok(SecretString::from(self.0.clone()))
    }
}

#[test]
fn every_notify_secret_in_the_deploy_guide_is_what_the_functions_read() {
    let examples = notify_examples(&deploy_guide());
    assert!(!examples.is_empty(), "DEPLOY.md shows the Notify secret");
    for example in examples {
        let secret =
            NotifySecret::parse(&example).unwrap_or_else(|error| panic!("{error:#}: {example}"));
        assert!(secret.keys() >= 1);
    }
}

#[tokio::test]
async fn every_secret_in_the_deploy_guide_parses_with_the_functions_reader() {
    let examples = secret_examples(&deploy_guide());
    let mut seen = Vec::new();
    for (id, json) in examples {
        let field = match id.rsplit('/').next().unwrap() {
            "notify" => {
                NotifySecret::parse(&json).unwrap_or_else(|e| panic!("{id}: {e:#}"));
                seen.push("notify");
                continue;
            }
            // Read with `secret_field`, as wiring.rs reads them.
            "optout-link-key" => "key",
            "callback-token" => "token",
            // GP credentials: an OAuth client (its elided key replaced by
            // one made now), or a bearer token the FHIR adapter reads.
            _ if id.contains("/gp/") && json.contains("\"client_id\"") => {
                let pem = serde_json::to_string(&new_es384_key_pem()).unwrap();
                let json = json.replace("\"<PKCS#8 PEM>\"", &pem);
                let client =
                    ClientCredentials::parse(&json).unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(client.token_url().scheme(), "https", "{id}");
                seen.push("oauth-client");
                continue;
            }
            _ if id.contains("/gp/") && json.contains("\"mailbox_id\"") => {
                let mesh = mesh_config_from_secret(&json).unwrap_or_else(|e| panic!("{id}: {e}"));
                assert!(mesh.base_url.starts_with("https://"), "{id}");
                assert!(mesh.tls.client_identity_pem.is_some(), "{id}: client TLS");
                seen.push("mesh");
                continue;
            }
            _ if id.contains("/gp/") => "token",
            other => panic!("DEPLOY.md shows secret {id} ({other}), which no function reads"),
        };
        let value = OneSecret(json)
            .secret_field(&id, field)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(value.expose_secret().len() >= 32, "{id}: a short key");
        seen.push(field);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["key", "mesh", "notify", "oauth-client", "token", "token"]
    );
}

#[test]
fn a_notify_secret_without_its_template_names_the_missing_field_and_not_the_key() {
    // The placeholder the template generates: the key but no template id.
    let error = NotifySecret::parse(r#"{"api_key":"s3cret-key"}"#)
        .err()
        .expect("refused");
    let text = format!("{error:#}");
    assert!(text.contains("`sms_template_id`"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    let error = NotifySecret::parse(r#"{"api_key": 42, "sms_template_id": "t"}"#)
        .err()
        .expect("refused");
    assert!(!format!("{error:#}").contains("42"), "{error:#}");
}

#[test]
fn a_notify_secret_still_holding_rates_is_refused_naming_the_field_and_not_the_key() {
    let error = NotifySecret::parse(
        r#"{"api_key":"s3cret-key","sms_template_id":"t","rate_per_second":50}"#,
    )
    .err()
    .expect("refused");
    let text = format!("{error:#}");
    assert!(text.contains("`rate_per_second`"), "{text}");
    assert!(text.contains("NotifyRates"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn every_notify_rates_in_the_guide_and_the_template_parses_and_matches_the_keys() {
    let guide = deploy_guide();
    // `rates='…'`, given to SAM quoted: `--parameter-overrides "NotifyRates='$rates'"`
    // (unquoted, SAM cuts the value at its first comma).
    assert!(guide.contains(r#"--parameter-overrides "NotifyRates='$rates'""#));
    let overrides: Vec<&str> = guide
        .split("\nrates='")
        .skip(1)
        .filter_map(|rest| rest.split('\'').next())
        .collect();
    assert!(!overrides.is_empty(), "DEPLOY.md shows NotifyRates");
    let keys = NotifySecret::parse(&notify_examples(&guide)[0])
        .unwrap()
        .keys();
    for rates in overrides {
        let parsed = ProviderRates::parse(rates).unwrap_or_else(|e| panic!("{e:#}: {rates}"));
        assert_eq!(
            parsed.0.len(),
            keys,
            "one rate per key in the Notify example"
        );
    }
    let default = template()["Parameters"]["NotifyRates"]["Default"]
        .as_str()
        .expect("a default")
        .to_string();
    ProviderRates::parse(&default).expect("the template's default parses");
    assert_eq!(
        default,
        functions::notify::DEFAULT_NOTIFY_RATES,
        "the functions' default is the template's"
    );
}

#[test]
fn the_guide_lists_every_parameter_and_has_a_runbook_line_for_every_alarm() {
    let guide = deploy_guide();
    let template = template();
    for name in template["Parameters"].as_mapping().unwrap().keys() {
        let name = name.as_str().unwrap();
        assert!(
            guide.contains(&format!("| `{name}` |")),
            "parameter {name} is not in DEPLOY.md's table"
        );
    }
    let runbook = guide
        .split("## Runbook")
        .nth(1)
        .expect("a runbook section")
        .split("\n## ")
        .next()
        .unwrap();
    for (id, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"].as_str() == Some("AWS::CloudWatch::Alarm") {
            let id = id.as_str().unwrap();
            assert!(
                runbook.contains(&format!("`{id}`")),
                "alarm {id} has no runbook line"
            );
        }
    }
}

/// Does `pattern` (an execute-api resource path, `*` matching anything)
/// match `path`?
fn matches(pattern: &str, path: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == path,
        Some((prefix, rest)) => {
            path.starts_with(prefix)
                && (0..=path.len() - prefix.len())
                    .any(|skip| matches(rest, &path[prefix.len() + skip..]))
        }
    }
}

#[test]
fn every_staff_policy_in_the_guide_grants_only_staff_routes_the_router_serves() {
    let guide = deploy_guide();
    let routes = hub_core::http::routes();
    let policies: Vec<serde_json::Value> = guide
        .split("```json\n")
        .skip(1)
        .map(|block| serde_json::from_str(block.split("```").next().unwrap()).expect("JSON"))
        .collect();
    assert!(policies.len() >= 2, "DEPLOY.md shows the staff policies");
    for policy in policies {
        assert_eq!(policy["Version"], "2012-10-17");
        for statement in policy["Statement"].as_array().unwrap() {
            assert_eq!(statement["Effect"], "Allow");
            assert_eq!(statement["Action"], "execute-api:Invoke");
            let resources = match &statement["Resource"] {
                serde_json::Value::String(one) => vec![one.clone()],
                many => many
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            };
            for resource in resources {
                let (_, route) = resource.split_once("/v1/").expect("stage v1");
                let (method, pattern) = route.split_once('/').unwrap();
                let granted: Vec<_> = routes
                    .iter()
                    .filter(|r| {
                        r.methods.contains(&method)
                            && matches(pattern, &concrete(r.path.trim_start_matches('/')))
                    })
                    .collect();
                assert!(!granted.is_empty(), "{resource} grants no route");
                assert!(
                    granted.iter().all(|r| !r.public),
                    "{resource} grants a public route"
                );
            }
        }
    }
}

/// A route path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|part| if part.starts_with('{') { "x" } else { part })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn the_guides_metric_line_is_in_the_functions_namespace() {
    let guide = deploy_guide();
    let start = guide.find("`{\"_aws\"").expect("an EMF example") + 1;
    let end = start + guide[start..].find('`').unwrap();
    let line: serde_json::Value = serde_json::from_str(&guide[start..end]).unwrap();
    let directive = &line["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], NAMESPACE);
    let name = directive["Metrics"][0]["Name"].as_str().unwrap();
    assert_eq!(name, functions::metrics::PROVIDER_ERRORS);
    assert_eq!(line[name], 1);
}
