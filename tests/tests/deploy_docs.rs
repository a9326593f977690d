//! The deploy guide's examples are read by the code that reads the real
//! thing: every Notify secret shown in infra/DEPLOY.md parses as the
//! functions parse the secret at start-up.

use functions::wiring::NotifySecret;

fn deploy_guide() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/DEPLOY.md");
    std::fs::read_to_string(path).expect("infra/DEPLOY.md")
}

/// The JSON of every `--secret-string '…'` given for the Notify secret.
fn notify_examples(guide: &str) -> Vec<String> {
    guide
        .split("--secret-id sms-hub/notify")
        .skip(1)
        .filter_map(|rest| {
            let start = rest.find("--secret-string '")? + "--secret-string '".len();
            let end = rest[start..].find('\'')?;
            Some(rest[start..start + end].to_string())
        })
        .collect()
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
