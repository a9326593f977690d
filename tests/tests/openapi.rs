//! `openapi.yaml` against the router: the same routes and methods, request
//! schemas that match the serde request types, and a real response from
//! every route that validates against its schema.

use hub_core::domain::{CampaignState, OdsCode};
use hub_core::handlers::api::{CreateCampaignRequest, PracticeRequest, TargetRequest};
use hub_core::handlers::optout_token::{self, OptOutClaim};
use hub_core::http::{
    self, ApproveRequest, CancelRequest, DeadlineApproval, DeadlineRequest, OptOutRequest,
    PracticeApproval,
};
use hub_local::LocalStack;
use hub_tests::requests::{send, ApiRequest, ApiResponse};
use hub_tests::*;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml");
    let text = std::fs::read_to_string(path).expect("openapi.yaml is checked in");
    serde_yaml::from_str(&text).expect("openapi.yaml is valid YAML")
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

#[test]
fn every_route_is_described_and_every_description_is_routed() {
    let spec = spec();
    assert!(spec["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));
    let described: BTreeMap<String, BTreeSet<String>> = spec["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_ascii_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect();
    let routed: BTreeMap<String, BTreeSet<String>> = http::routes()
        .iter()
        .map(|route| {
            (
                route.path.to_string(),
                route.methods.iter().map(|m| m.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(described, routed);
    for route in http::routes() {
        for method in route.methods {
            let operation = &spec["paths"][route.path][method.to_ascii_lowercase()];
            let security = operation.get("security").unwrap_or(&spec["security"]);
            let public = security.as_array().is_some_and(Vec::is_empty);
            assert_eq!(public, route.public, "{method} {} security", route.path);
        }
    }
}

/// The fields a request type accepts, from serde's own refusal of an
/// unknown one ("unknown field `x`, expected one of `a`, `b`").
fn fields_of<T: DeserializeOwned>() -> BTreeSet<String> {
    let error = serde_json::from_value::<T>(json!({ "__probe__": 1 }))
        .err()
        .expect("unknown fields are refused (deny_unknown_fields)")
        .to_string();
    let expected = error
        .split_once("expected")
        .map(|(_, rest)| rest)
        .expect("serde lists the expected fields");
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The fields without a default: removing one from a valid sample makes
/// serde say "missing field".
fn required_of<T: DeserializeOwned>(sample: &Value) -> BTreeSet<String> {
    serde_json::from_value::<T>(sample.clone()).expect("the spec's example deserialises");
    let mut required = BTreeSet::new();
    for field in sample.as_object().expect("object sample").keys() {
        let mut without = sample.clone();
        without.as_object_mut().expect("object").remove(field);
        if let Err(error) = serde_json::from_value::<T>(without) {
            if error.to_string().contains("missing field") {
                required.insert(field.clone());
            }
        }
    }
    required
}

fn schema_fields(spec: &Value, name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let schema = &spec["components"]["schemas"][name];
    assert_eq!(
        schema["additionalProperties"],
        json!(false),
        "{name}: unknown fields are refused, as serde does"
    );
    let properties = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has properties"))
        .iter()
        .filter(|(_, p)| p.get("x-router-flag").is_none())
        .map(|(k, _)| k.clone())
        .collect();
    let required = schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|v| v.as_str().expect("name").to_string())
                .collect()
        })
        .unwrap_or_default();
    (properties, required)
}

fn example(spec: &Value, path: &str, method: &str) -> Value {
    spec["paths"][path][method]["requestBody"]["content"]["application/json"]["example"].clone()
}

fn check_request<T: DeserializeOwned>(spec: &Value, name: &str, sample: &Value) {
    let (properties, required) = schema_fields(spec, name);
    assert_eq!(
        properties,
        fields_of::<T>(),
        "{name}: properties = struct fields"
    );
    assert_eq!(
        required,
        required_of::<T>(sample),
        "{name}: required = fields without a default"
    );
    let errors = validate(
        spec,
        &json!({ "$ref": format!("#/components/schemas/{name}") }),
        sample,
    );
    assert!(errors.is_empty(), "{name} example: {errors:?}");
}

#[test]
fn request_schemas_match_the_request_types() {
    let spec = spec();
    let create = example(&spec, "/campaigns", "post");
    check_request::<CreateCampaignRequest>(&spec, "CreateCampaignRequest", &create);
    check_request::<TargetRequest>(&spec, "TargetRequest", &create["target"]);
    check_request::<CancelRequest>(
        &spec,
        "CancelRequest",
        &example(&spec, "/campaigns/{id}/cancel", "post"),
    );
    check_request::<DeadlineRequest>(
        &spec,
        "DeadlineRequest",
        &example(&spec, "/campaigns/{id}/deadline", "post"),
    );
    check_request::<DeadlineApproval>(
        &spec,
        "DeadlineApproval",
        &example(&spec, "/campaigns/{id}/deadline/approve", "post"),
    );
    check_request::<PracticeApproval>(
        &spec,
        "PracticeApproval",
        &example(&spec, "/practices/{ods}/approve", "post"),
    );
    check_request::<ApproveRequest>(
        &spec,
        "ApproveRequest",
        &example(&spec, "/campaigns/{id}/approve", "post"),
    );
    check_request::<OptOutRequest>(
        &spec,
        "OptOutRequest",
        &example(&spec, "/campaigns/{id}/opt-outs", "post"),
    );
    check_request::<hub_core::handlers::api::ExtractionDecisionRequest>(
        &spec,
        "ExtractionDecisionRequest",
        &example(&spec, "/campaigns/{id}/extraction-decisions", "post"),
    );
    check_request::<PracticeRequest>(
        &spec,
        "PracticeRequest",
        &example(&spec, "/practices/{ods}", "put"),
    );
}

/// Validation errors of `instance` against `schema`, with the spec's
/// components in reach of its `$ref`s.
fn validate(spec: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    let document = json!({
        "allOf": [schema],
        "components": spec["components"],
    });
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&document)
        .expect("the schema compiles");
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            spec.pointer(pointer)
                .unwrap_or_else(|| panic!("{reference} resolves"))
        }
        None => value,
    }
}

struct Checker {
    spec: Value,
    /// Operations seen answering 2xx.
    covered: BTreeSet<(String, String)>,
}

impl Checker {
    /// Checks `response` against the spec's description of `template`'s
    /// `method` for its status.
    fn check(&mut self, template: &str, request: &ApiRequest, response: &ApiResponse) {
        let method = request.method.to_ascii_lowercase();
        let operation = &self.spec["paths"][template][&method];
        assert!(operation.is_object(), "{method} {template} is described");
        let status = response.status.to_string();
        let described = resolve(&self.spec, &operation["responses"][&status]);
        assert!(
            described.is_object(),
            "{method} {template} answered {status}, which is not described: {}",
            String::from_utf8_lossy(&response.body)
        );
        let content_type = response
            .header("content-type")
            .expect("content-type")
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        let media = &described["content"][&content_type];
        assert!(
            media.is_object(),
            "{method} {template} {status}: {content_type} is described"
        );
        if content_type == "application/json" {
            let body: Value = serde_json::from_slice(&response.body).expect("JSON body");
            let errors = validate(&self.spec, &media["schema"], &body);
            assert!(
                errors.is_empty(),
                "{method} {template} {status} breaks its schema: {errors:?}\n{body:#}"
            );
        }
        if response.status < 300 {
            self.covered
                .insert((template.to_string(), method.to_ascii_uppercase()));
        }
    }

    fn error(&self, response: &ApiResponse, status: u16) {
        assert_eq!(
            response.status,
            status,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let body = response.json_body().expect("JSON error");
        let errors = validate(
            &self.spec,
            &json!({ "$ref": "#/components/schemas/Error" }),
            &body,
        );
        assert!(errors.is_empty(), "{errors:?}");
    }
}

async fn call(stack: &LocalStack, request: ApiRequest) -> (ApiRequest, ApiResponse) {
    let response = send(&http::router(stack.hub.clone()), request.clone()).await;
    (request, response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_answers_as_described() {
    let stack = LocalStack::start(config(4, 2_000, 31))
        .await
        .expect("stack");
    let mut checker = Checker {
        spec: spec(),
        covered: BTreeSet::new(),
    };
    let practices = stack.estate.practices();
    let ods: Vec<OdsCode> = practices.iter().map(|p| p.ods.clone()).collect();
    let create_body = json!({
        "name": "Heatwave alert",
        "message": "NHS: ((first_name)), a heat-health alert applies. See https://www.nhs.uk/",
        "target": { "min_age": 18 },
        "optout_deadline": (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339(),
        "justification": "Level 4 heat-health alert for the region",
        "postal_fallback": true,
    });

    let (req, res) = call(
        &stack,
        ApiRequest::new("GET", "/campaigns").caller(&alice()),
    )
    .await;
    checker.check("/campaigns", &req, &res);

    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", "/campaigns?dry_run=true")
            .caller(&alice())
            .json(&create_body),
    )
    .await;
    assert_eq!(res.status, 200);
    checker.check("/campaigns", &req, &res);
    let mut flagged = create_body.clone();
    flagged["dry_run"] = json!(true);
    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", "/campaigns")
            .caller(&alice())
            .json(&flagged),
    )
    .await;
    assert_eq!(res.status, 200, "a body flag previews too");
    checker.check("/campaigns", &req, &res);
    let (_, res) = call(
        &stack,
        ApiRequest::new("GET", "/campaigns").caller(&alice()),
    )
    .await;
    assert_eq!(
        res.json_body().expect("json")["campaigns"],
        json!([]),
        "a dry run creates nothing"
    );

    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", "/campaigns")
            .caller(&alice())
            .json(&create_body),
    )
    .await;
    assert_eq!(res.status, 201);
    checker.check("/campaigns", &req, &res);
    let id = res.json_body().expect("json")["campaign"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        res.header("location"),
        Some(format!("/campaigns/{id}").as_str())
    );
    let at = |suffix: &str| format!("/campaigns/{id}{suffix}");

    let (req, res) = call(&stack, ApiRequest::new("GET", &at("")).caller(&alice())).await;
    checker.check("/campaigns/{id}", &req, &res);
    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", &at("/approve"))
            .caller(&alice())
            .json(&json!({ "version": 0 })),
    )
    .await;
    assert_eq!(res.status, 403, "the creator cannot approve");
    checker.check("/campaigns/{id}/approve", &req, &res);
    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", &at("/approve"))
            .caller(&bob())
            .json(&json!({ "version": 0 })),
    )
    .await;
    assert_eq!(res.status, 200);
    checker.check("/campaigns/{id}/approve", &req, &res);

    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", &at("/opt-outs"))
            .caller(&bob())
            .json(&json!({ "ods": ods[0].as_str().to_ascii_lowercase() })),
    )
    .await;
    assert_eq!(res.status, 200);
    checker.check("/campaigns/{id}/opt-outs", &req, &res);

    // The practice's own link: a page first, the opt-out on its button.
    let campaign = stack
        .hub
        .campaign(&hub_core::domain::CampaignId::parse(&id).expect("id"))
        .await
        .expect("campaign");
    let token = optout_token::issue(
        &stack.hub.optout_key,
        &OptOutClaim {
            campaign: campaign.id.clone(),
            ods: ods[1].clone(),
            expires: campaign.optout_deadline,
        },
    );
    let (req, res) = call(
        &stack,
        ApiRequest::new("GET", &format!("/optout?token={token}")),
    )
    .await;
    assert_eq!(res.status, 200);
    let page = String::from_utf8_lossy(&res.body).to_string();
    assert!(page.contains("<form method=\"post\">") && page.contains("Heatwave alert"));
    checker.check("/optout", &req, &res);
    let participation = stack
        .hub
        .store
        .get_participation(&campaign.id, &ods[1])
        .await
        .expect("read")
        .expect("participation");
    assert_eq!(
        participation.state,
        hub_core::domain::ParticipationState::Notified,
        "showing the page changes nothing"
    );
    let mut confirm = ApiRequest::new("POST", "/optout");
    confirm.body = format!("token={token}").into_bytes();
    let (req, res) = call(&stack, confirm).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    checker.check("/optout", &req, &res);
    let (req, res) = call(&stack, ApiRequest::new("GET", "/optout?token=forged.token")).await;
    checker.check("/optout", &req, &res);
    checker.error(&res, 403);
    let mut browser = ApiRequest::new("GET", "/optout?token=forged.token");
    browser.headers.push(("accept".into(), "text/html".into()));
    let (req, res) = call(&stack, browser).await;
    assert_eq!(res.status, 403);
    checker.check("/optout", &req, &res);

    // One practice's list size on record is far above what its GP system
    // holds: its extraction is held for a staff decision.
    let mut inflated = stack
        .hub
        .store
        .get_practice(&ods[2])
        .await
        .expect("read")
        .expect("practice");
    inflated.list_size *= 100;
    stack
        .hub
        .store
        .put_practice(&inflated)
        .await
        .expect("saved");

    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", &at("/deadline"))
            .caller(&alice())
            .json(&json!({
                "optout_deadline": chrono::Utc::now().to_rfc3339(),
                "reason": "the alert was upgraded",
            })),
    )
    .await;
    assert_eq!(res.status, 200);
    checker.check("/campaigns/{id}/deadline", &req, &res);
    let asked = res.json_body().expect("json")["deadline_change"]["to"].clone();
    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", &at("/deadline/approve"))
            .caller(&bob())
            .json(&json!({
                "optout_deadline": asked,
                "emergency_override": true,
                "reason": "cannot wait",
            })),
    )
    .await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    checker.check("/campaigns/{id}/deadline/approve", &req, &res);
    let campaign_id = campaign.id.clone();
    hub_local::demo::wait_until(Duration::from_secs(60), || async {
        let held = stack
            .hub
            .store
            .get_participation(&campaign_id, &ods[2])
            .await?;
        Ok(
            held.is_some_and(|p| {
                p.state == hub_core::domain::ParticipationState::ExtractionSuspect
            }),
        )
    })
    .await
    .expect("held for a decision");
    let (req, res) = call(&stack, ApiRequest::new("GET", &at("")).caller(&alice())).await;
    checker.check("/campaigns/{id}", &req, &res);
    assert_eq!(
        res.json_body().expect("json")["suspect_practices"],
        json!([ods[2].as_str()])
    );
    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", &at("/extraction-decisions"))
            .caller(&bob())
            .json(&json!({ "ods": ods[3].as_str(), "decision": "proceed" })),
    )
    .await;
    assert_eq!(res.status, 409, "only a held practice is decided on");
    checker.check("/campaigns/{id}/extraction-decisions", &req, &res);
    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", &at("/extraction-decisions"))
            .caller(&bob())
            .json(&json!({ "ods": ods[2].as_str(), "decision": "proceed" })),
    )
    .await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    checker.check("/campaigns/{id}/extraction-decisions", &req, &res);
    wait_for_state(
        &stack,
        &campaign_id,
        CampaignState::Completed,
        Duration::from_secs(120),
    )
    .await;

    let (req, res) = call(&stack, ApiRequest::new("GET", &at("")).caller(&alice())).await;
    checker.check("/campaigns/{id}", &req, &res);
    let detail = res.json_body().expect("json");
    assert_eq!(detail["state"], "completed");
    assert_eq!(
        detail["practices"].as_array().map(Vec::len),
        Some(ods.len())
    );
    assert!(detail["totals"]["sent"].as_u64().is_some_and(|n| n > 0));
    let (req, res) = call(
        &stack,
        ApiRequest::new("GET", &at("/report")).caller(&alice()),
    )
    .await;
    checker.check("/campaigns/{id}/report", &req, &res);
    assert_eq!(res.json_body().expect("json")["adds_up"], true);
    let (req, res) = call(
        &stack,
        ApiRequest::new("GET", &at("/evidence")).caller(&alice()),
    )
    .await;
    checker.check("/campaigns/{id}/evidence", &req, &res);
    assert_eq!(res.json_body().expect("json")["state"], "completed");
    let (req, res) = call(
        &stack,
        ApiRequest::new("GET", &at("/audit")).caller(&alice()),
    )
    .await;
    checker.check("/campaigns/{id}/audit", &req, &res);
    let actions: Vec<String> = res.json_body().expect("json")["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap_or(""),
                e["actor"].as_str().unwrap_or("")
            )
        })
        .collect();
    for wanted in [
        format!("campaign_created {}", alice()),
        format!("campaign_approved {}", bob()),
        format!("practice_opted_out {}", bob()),
        "practice_opted_out practice-link".to_string(),
    ] {
        assert!(actions.contains(&wanted), "{wanted} in {actions:?}");
    }
    let (req, res) = call(
        &stack,
        ApiRequest::new("GET", &at("/audit")).caller(&alice()),
    )
    .await;
    checker.check("/campaigns/{id}/audit", &req, &res);
    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", &at("/cancel"))
            .caller(&alice())
            .json(&json!({ "reason": "too late" })),
    )
    .await;
    assert_eq!(res.status, 409, "a completed campaign cannot be cancelled");
    checker.check("/campaigns/{id}/cancel", &req, &res);
    let (req, res) = call(
        &stack,
        ApiRequest::new("GET", "/campaigns").caller(&alice()),
    )
    .await;
    checker.check("/campaigns", &req, &res);

    // A second campaign, cancelled while pending.
    let (_, res) = call(
        &stack,
        ApiRequest::new("POST", "/campaigns")
            .caller(&bob())
            .json(&create_body),
    )
    .await;
    let second = res.json_body().expect("json")["campaign"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", &format!("/campaigns/{second}/cancel"))
            .caller(&alice())
            .json(&json!({ "reason": "Alert withdrawn by UKHSA" })),
    )
    .await;
    assert_eq!(res.status, 200);
    checker.check("/campaigns/{id}/cancel", &req, &res);

    let (req, res) = call(
        &stack,
        ApiRequest::new("GET", "/practices").caller(&alice()),
    )
    .await;
    checker.check("/practices", &req, &res);
    let (req, res) = call(
        &stack,
        ApiRequest::new("PUT", &format!("/practices/{}", ods[2]))
            .caller(&alice())
            .json(&json!({
                "ods": ods[2],
                "name": "Renamed Surgery",
                "notice_email": "manager@example.nhs.uk",
                "dsa_signed": "2026-01-15",
                "list_size": 4321,
            })),
    )
    .await;
    assert_eq!(
        res.status, 202,
        "a new notice address waits for a second person"
    );
    checker.check("/practices/{ods}", &req, &res);
    let change_id = res.json_body().expect("json")["change_id"].clone();
    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", &format!("/practices/{}/approve", ods[2]))
            .caller(&bob())
            .json(&json!({ "change_id": change_id })),
    )
    .await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    checker.check("/practices/{ods}/approve", &req, &res);
    let (req, res) = call(
        &stack,
        ApiRequest::new("PUT", &format!("/practices/{}", ods[2]))
            .caller(&alice())
            .json(&json!({
                "ods": ods[2],
                "name": "Renamed Again Surgery",
                "notice_email": "manager@example.nhs.uk",
                "dsa_signed": "2026-01-15",
                "list_size": 4321,
            })),
    )
    .await;
    assert_eq!(res.status, 200, "a new name is saved at once");
    checker.check("/practices/{ods}", &req, &res);
    let (req, res) = call(
        &stack,
        ApiRequest::new("GET", "/practices/audit").caller(&alice()),
    )
    .await;
    checker.check("/practices/audit", &req, &res);
    let (req, res) = call(
        &stack,
        ApiRequest::new("PUT", "/practices/G12345")
            .caller(&alice())
            .json(&json!({ "ods": ods[2], "name": "x", "notice_email": "a@b.nhs.uk" })),
    )
    .await;
    assert_eq!(
        res.status, 400,
        "the body must be about the practice in the path"
    );
    checker.check("/practices/{ods}", &req, &res);

    // Everything the caller gets wrong is a described 4xx.
    let (req, res) = call(
        &stack,
        ApiRequest::new("POST", "/campaigns")
            .caller(&alice())
            .json(&json!({ "name": "x" })),
    )
    .await;
    checker.check("/campaigns", &req, &res);
    checker.error(&res, 400);
    assert_eq!(res.json_body().expect("json")["field"], "message");
    let mut malformed = ApiRequest::new("POST", "/campaigns").caller(&alice());
    malformed.body = b"{\"name\": \"x\",\n  \"message\": }".to_vec();
    let (req, res) = call(&stack, malformed).await;
    checker.check("/campaigns", &req, &res);
    let body = res.json_body().expect("json");
    assert_eq!(body["field"], "body");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 2 column")),
        "{body}"
    );
    let (req, res) = call(
        &stack,
        ApiRequest::new("GET", "/campaigns/NOT-AN-ID").caller(&alice()),
    )
    .await;
    checker.check("/campaigns/{id}", &req, &res);
    checker.error(&res, 400);
    let (req, res) = call(
        &stack,
        ApiRequest::new("GET", "/campaigns/0123456789ab/report").caller(&alice()),
    )
    .await;
    checker.check("/campaigns/{id}/report", &req, &res);
    checker.error(&res, 404);
    let (req, res) = call(&stack, ApiRequest::new("GET", "/campaigns")).await;
    checker.check("/campaigns", &req, &res);
    checker.error(&res, 403);
    let (_, res) = call(&stack, ApiRequest::new("GET", "/nowhere").caller(&alice())).await;
    checker.error(&res, 404);
    let (_, res) = call(
        &stack,
        ApiRequest::new("DELETE", "/campaigns").caller(&alice()),
    )
    .await;
    checker.error(&res, 405);
    assert_eq!(res.header("allow"), Some("GET, POST"));

    let every: BTreeSet<(String, String)> = http::routes()
        .iter()
        .flat_map(|r| {
            r.methods
                .iter()
                .map(|m| (r.path.to_string(), m.to_string()))
        })
        .collect();
    let missed: Vec<_> = every.difference(&checker.covered).collect();
    assert!(
        missed.is_empty(),
        "operations with no 2xx sample: {missed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_gets_a_5xx() {
    let stack = LocalStack::start(config(2, 200, 5)).await.expect("stack");
    let router = http::router(stack.hub.clone());
    let deep = "[".repeat(100_000);
    let long = "a".repeat(300_000);
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"1e999999".to_vec(),
        b"\"x\"".to_vec(),
        b"{\"name\": null, \"target\": {\"min_age\": 1e300}}".to_vec(),
        b"{\"name\": \"a\", \"name\": \"b\"}".to_vec(),
        b"{\"target\": {\"postcodes\": [\"\\u0000\", \"\\ud800\"]}}".to_vec(),
        b"{\"reason\": \"\", \"ods\": \"\", \"optout_deadline\": \"-9999-01-01T00:00:00Z\"}".to_vec(),
        b"{\"ods\": \"G85001\", \"name\": \"x\", \"notice_email\": \"a@b.c\", \"connection\": {\"kind\": \"fhir\"}}".to_vec(),
        vec![0xff, 0xfe, 0x00],
        deep.into_bytes(),
        long.into_bytes(),
    ];
    let paths = [
        "/campaigns",
        "/campaigns?dry_run=maybe",
        "/campaigns/0123456789ab",
        "/campaigns/%ff%fe",
        "/campaigns/../practices",
        "/campaigns/0123456789ab/approve",
        "/campaigns/0123456789ab/cancel",
        "/campaigns/0123456789ab/deadline",
        "/campaigns/0123456789ab/opt-outs",
        "/campaigns/0123456789ab/report",
        "/campaigns/0123456789ab/audit",
        "/campaigns/0123456789ab/evidence",
        "/practices",
        "/practices/G85001",
        "/practices/%20",
        "/optout",
        "/optout?token=a.b.c.d",
        "/optout?token=%00",
    ];
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "get"] {
            for body in &bodies {
                let mut request = ApiRequest::new(method, path).caller(&alice());
                request.body = body.clone();
                let response = send(&router, request).await;
                assert!(
                    response.status < 500,
                    "{method} {path} with {} bytes: {} {}",
                    body.len(),
                    response.status,
                    String::from_utf8_lossy(&response.body)
                );
                if response.header("content-type") == Some("application/json") {
                    let error = response.json_body().expect("JSON");
                    if response.status >= 400 {
                        assert!(error["code"].is_string() && error["errors"].is_array());
                    }
                }
            }
        }
    }
    assert!(stack
        .hub
        .store
        .list_campaigns()
        .await
        .expect("list")
        .is_empty());
}

/// A path reaches its template with its `{parameter}`, a trailing slash is
/// ignored, and anything else is a 404; only the opt-out link is served
/// without a caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_match_their_templates() {
    let stack = LocalStack::start(config(2, 100, 8)).await.expect("stack");
    let router = http::router(stack.hub.clone());
    let res = send(
        &router,
        ApiRequest::new("POST", "/campaigns/0123456789ab/opt-outs")
            .caller(&alice())
            .json(&json!({ "ods": "G85001" })),
    )
    .await;
    assert_eq!(res.status, 404);
    assert_eq!(
        res.json_body().expect("json")["message"],
        "campaign 0123456789ab not found"
    );
    let res = send(
        &router,
        ApiRequest::new("GET", "/campaigns/").caller(&alice()),
    )
    .await;
    assert_eq!(res.status, 200, "as /campaigns");
    for path in ["/campaigns//approve", "/nope", "/"] {
        let res = send(&router, ApiRequest::new("POST", path).caller(&alice())).await;
        assert_eq!(res.status, 404, "{path}");
        assert_eq!(res.json_body().expect("json")["code"], "not_found");
    }
    let res = send(&router, ApiRequest::new("GET", "/optout")).await;
    assert_eq!(
        res.status, 400,
        "public: the token is missing, not the caller"
    );
    assert_eq!(res.json_body().expect("json")["field"], "token");
    let res = send(&router, ApiRequest::new("GET", "/campaigns")).await;
    assert_eq!(res.status, 403);
}
