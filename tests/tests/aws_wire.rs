//! The AWS adapters over the wire, against an AWS API emulator (moto) on
//! loopback, with tables, queues, secrets and schedule groups created from
//! `template.yaml`; plus checks of the template's own rules.
//!
//! What every store and queue adapter promises is the contract suite of
//! `hub-testkit`, run on these adapters by `aws_contract.rs`; this file
//! holds what only the AWS side has: item layout, fault mapping, queue
//! configuration, schedules, secrets and the template.
//!
//! Run: `cargo test -p hub-tests --features aws --test aws_wire`
//! (see `tests/src/aws/mod.rs` for how the emulator is found or started).

#[path = "../src/aws/mod.rs"]
#[allow(dead_code)]
mod aws;

use aws::template::{as_u64, intrinsic, Template};
use aws::Stack;
use chrono::{Duration, TimeZone, Utc};
use hub_adapters::aws::{
    env, DynamoHubStore, DynamoPatientStore, Secrets, SecretsError, SecretsManagerSecrets,
};
use hub_core::domain::{AuditEvent, CampaignId, ChunkId, Recipient};
use hub_core::ports::{
    HubStore, Job, JobQueue, PatientDataStore, QueueName, ScheduledAction, Scheduler, StoreError,
};
use hub_testkit::fixtures::{campaign, later, ods, recipient};
use secrecy::ExposeSecret;
use serde_yaml::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

async fn stack() -> Stack {
    Stack::create()
        .await
        .expect("emulator stack from template.yaml")
}

// ------------------------------------------------------------------ item layout

#[tokio::test]
async fn every_patient_item_carries_the_ttl_attribute() {
    let stack = stack().await;
    let patients = stack.patient_store().unwrap();
    let c = CampaignId::new();
    let until = later();
    let a = ChunkId::new(&ods(1), 0);
    let all: Vec<Recipient> = (0..5).map(|i| recipient(&a, i)).collect();
    patients.put_recipients(&c, &all, until).await.unwrap();

    let item = stack
        .clients
        .dynamodb
        .get_item()
        .table_name(patients.table_name())
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("CAMPAIGN#{c}#R#{a}")),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("0000000003".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .expect("recipient item");
    let expires: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
    assert_eq!(expires, until.timestamp());
}

/// The audit trail is listed by the events' timestamps, whatever order they
/// were appended in (the sort key starts with the time; SQLite lists in
/// append order: see its own tests).
#[tokio::test]
async fn audit_is_listed_by_timestamp_not_append_order() {
    let stack = stack().await;
    let hub = stack.hub_store().unwrap();
    let c = campaign();
    let base = Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap();
    let event = |minutes: i64, action: &str, campaign: Option<CampaignId>| AuditEvent {
        campaign,
        at: base + Duration::minutes(minutes),
        actor: "arn:aws:iam::123456789012:user/bob".into(),
        action: action.into(),
        detail: serde_json::json!({ "practices": 3 }),
    };
    hub.append_audit(&event(5, "approved", Some(c.id.clone())))
        .await
        .unwrap();
    hub.append_audit(&event(0, "created", Some(c.id.clone())))
        .await
        .unwrap();
    hub.append_audit(&event(1, "practice_added", None))
        .await
        .unwrap();
    hub.append_audit(&event(9, "cancelled", Some(c.id.clone())))
        .await
        .unwrap();
    let listed = hub.list_audit(&c.id).await.unwrap();
    assert_eq!(
        listed.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["created", "approved", "cancelled"]
    );
    assert_eq!(listed[0], event(0, "created", Some(c.id.clone())));
}

/// A delivery receipt is counted on the chunk's receipts item, spread over
/// 32 keys by the chunk id, never on the campaign's own key; a chunk created
/// before receipts items existed is counted on its own record; reads add both.
#[tokio::test]
async fn receipts_are_counted_off_the_campaigns_key() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use hub_core::domain::DeliveryStatus;
    let stack = stack().await;
    let (hub, patients) = (stack.hub_store().unwrap(), stack.patient_store().unwrap());
    let c = CampaignId::new();
    let chunks = [ChunkId::new(&ods(1), 0), ChunkId::new(&ods(1), 1)];
    hub.put_chunks(&[
        hub_testkit::fixtures::chunk_record(&c, &ods(1), 0),
        hub_testkit::fixtures::chunk_record(&c, &ods(1), 1),
    ])
    .await
    .unwrap();
    for chunk in &chunks {
        let all: Vec<Recipient> = (0..2).map(|i| recipient(chunk, i)).collect();
        patients.put_recipients(&c, &all, later()).await.unwrap();
    }
    let key = |pk: String, chunk: &ChunkId| {
        HashMap::from([
            ("pk".to_string(), AttributeValue::S(pk)),
            (
                "sk".to_string(),
                AttributeValue::S(format!("CHUNK#{chunk}")),
            ),
        ])
    };
    let item = |pk: String, chunk: &ChunkId| {
        let key = key(pk, chunk);
        let dynamodb = stack.clients.dynamodb.clone();
        let table = hub.table_name().to_string();
        async move {
            dynamodb
                .get_item()
                .table_name(table)
                .set_key(Some(key))
                .send()
                .await
                .unwrap()
                .item
        }
    };
    let receipts_pk = |chunk: &ChunkId| format!("CAMPAIGN#{c}#RECEIPTS#{:02}", chunk.shard(32));

    assert!(patients
        .record_delivery(&c, &chunks[0], 0, DeliveryStatus::Delivered)
        .await
        .unwrap());
    let counted = item(receipts_pk(&chunks[0]), &chunks[0])
        .await
        .expect("the receipts item, created with the chunk");
    assert_eq!(counted["delivered"].as_n().unwrap(), "1");
    let record = item(format!("CAMPAIGN#{c}"), &chunks[0]).await.unwrap();
    assert!(
        !record.contains_key("delivered"),
        "nothing counted on the campaign's key"
    );

    // A chunk from before receipts items: counted on its own record.
    stack
        .clients
        .dynamodb
        .delete_item()
        .table_name(hub.table_name())
        .set_key(Some(key(receipts_pk(&chunks[1]), &chunks[1])))
        .send()
        .await
        .unwrap();
    assert!(patients
        .record_delivery(&c, &chunks[1], 0, DeliveryStatus::PermanentFailure)
        .await
        .unwrap());
    assert!(!patients
        .record_delivery(&c, &chunks[1], 0, DeliveryStatus::PermanentFailure)
        .await
        .unwrap());
    let older = hub.get_chunk(&c, &chunks[1]).await.unwrap().unwrap();
    assert_eq!((older.counts.delivered, older.counts.failed), (0, 1));
    let listed: Vec<(u64, u64)> = hub
        .list_chunks(&c)
        .await
        .unwrap()
        .iter()
        .map(|chunk| (chunk.counts.delivered, chunk.counts.failed))
        .collect();
    assert_eq!(listed, [(1, 0), (0, 1)]);
}

// ------------------------------------------------------------------ errors

#[tokio::test]
async fn faults_map_to_the_right_store_errors() {
    let stack = stack().await;
    // A table that does not exist is a misconfiguration, not "try later".
    let missing = DynamoHubStore::new(stack.clients.dynamodb.clone(), "no-such-table");
    assert!(matches!(
        missing.get_campaign(&CampaignId::new()).await,
        Err(StoreError::Unexpected(_))
    ));
    // Nothing listening: a transient fault the caller retries.
    let config = aws_sdk_dynamodb::config::Builder::from(&stack.clients.config)
        .endpoint_url("http://127.0.0.1:9")
        .build();
    let unreachable = DynamoPatientStore::new(aws_sdk_dynamodb::Client::from_conf(config), "t");
    match unreachable.count_campaign(&CampaignId::new()).await {
        Err(StoreError::Unavailable {
            what: message,
            source,
        }) => {
            assert!(message.contains("Query"), "{message}");
            // The SDK's fault stays attached as the cause.
            assert!(source.is_some_and(|cause| cause.to_string().contains("Query failed")));
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

// ------------------------------------------------------------------ queues

#[tokio::test]
async fn a_queue_without_a_url_is_a_configuration_error() {
    let stack = stack().await;
    let queue = hub_adapters::aws::SqsJobQueue::new(stack.clients.sqs.clone(), HashMap::new());
    let result = queue
        .send(&[Job::Purge {
            campaign: CampaignId::new(),
        }])
        .await;
    assert!(matches!(
        result,
        Err(hub_core::ports::QueueError::Unexpected(_))
    ));
}

#[tokio::test]
async fn every_queue_redrives_to_its_dead_letter_queue() {
    let stack = stack().await;
    for name in QueueName::ALL {
        let url =
            stack.lookup().unwrap()(env::queue_url(name)).expect("queue URL in the environment");
        let attributes = stack
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default();
        let policy: serde_json::Value = serde_json::from_str(
            attributes
                .get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
                .expect("a redrive policy"),
        )
        .unwrap();
        assert!(
            policy["deadLetterTargetArn"]
                .as_str()
                .unwrap()
                .ends_with("DLQ"),
            "{name:?}: {policy}"
        );
    }
}

// ------------------------------------------------------------------ scheduler

async fn get_schedule(
    stack: &Stack,
    group: &str,
    name: &str,
) -> Option<aws_sdk_scheduler::operation::get_schedule::GetScheduleOutput> {
    match stack
        .clients
        .scheduler
        .get_schedule()
        .group_name(group)
        .name(name)
        .send()
        .await
    {
        Ok(out) => Some(out),
        Err(err) => {
            assert!(
                err.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()),
                "{err:?}"
            );
            None
        }
    }
}

#[tokio::test]
async fn schedules_are_created_replaced_and_cancelled() {
    let stack = stack().await;
    let scheduler = stack.scheduler().unwrap();
    let targets = stack.schedule_targets().unwrap();
    let c = CampaignId::new();
    let deadline = ScheduledAction::Deadline {
        campaign: c.clone(),
    };
    let at = Utc::now() + Duration::days(2);
    let at = at - Duration::nanoseconds(i64::from(at.timestamp_subsec_nanos()));

    scheduler.schedule(&deadline, at).await.unwrap();
    let got = get_schedule(&stack, &targets.group, &deadline.name())
        .await
        .expect("created");
    assert_eq!(
        got.schedule_expression(),
        Some(format!("at({})", at.format("%Y-%m-%dT%H:%M:%S")).as_str())
    );
    assert_eq!(got.schedule_expression_timezone(), Some("UTC"));
    assert_eq!(
        got.flexible_time_window().map(|w| w.mode().as_str()),
        Some("OFF")
    );
    assert_eq!(
        got.action_after_completion().map(|a| a.as_str()),
        Some("DELETE")
    );
    let target = got.target().expect("a target");
    assert_eq!(target.arn(), targets.deadline_function_arn);
    assert!(target
        .arn()
        .ends_with(&format!("{}-deadline", stack.prefix)));
    assert_eq!(target.role_arn(), targets.role_arn);
    let input: ScheduledAction = serde_json::from_str(target.input().unwrap()).unwrap();
    assert_eq!(input, deadline);

    // Scheduling again replaces (the deadline moved).
    let moved = at + Duration::hours(3);
    scheduler.schedule(&deadline, moved).await.unwrap();
    let got = get_schedule(&stack, &targets.group, &deadline.name())
        .await
        .unwrap();
    assert_eq!(
        got.schedule_expression(),
        Some(format!("at({})", moved.format("%Y-%m-%dT%H:%M:%S")).as_str())
    );

    // A purge goes to the purge queue with a purge job body.
    let purge = ScheduledAction::Purge {
        campaign: c.clone(),
    };
    scheduler.schedule(&purge, moved).await.unwrap();
    let got = get_schedule(&stack, &targets.group, &purge.name())
        .await
        .unwrap();
    let target = got.target().unwrap();
    assert_eq!(target.arn(), targets.purge_queue_arn);
    let job: Job = serde_json::from_str(target.input().unwrap()).unwrap();
    assert_eq!(
        job,
        Job::Purge {
            campaign: c.clone()
        }
    );

    scheduler.cancel(&deadline).await.unwrap();
    assert!(get_schedule(&stack, &targets.group, &deadline.name())
        .await
        .is_none());
    scheduler.cancel(&deadline).await.unwrap();
    assert!(get_schedule(&stack, &targets.group, &purge.name())
        .await
        .is_some());
    scheduler.cancel(&purge).await.unwrap();
}

// ------------------------------------------------------------------ secrets

#[tokio::test]
async fn secrets_are_fetched_once_and_cached() {
    let stack = stack().await;
    let lookup = stack.lookup().unwrap();
    let arn = lookup(env::OPTOUT_LINK_KEY_SECRET_ARN).unwrap();
    let secrets = stack.secrets();

    let key = secrets.secret_field(&arn, "key").await.unwrap();
    assert_eq!(
        key.expose_secret().len(),
        64,
        "generated as the template says"
    );
    assert!(!format!("{key:?}").contains(key.expose_secret()));

    // GIVEN the secret rotates WHEN read again THEN this process keeps its copy
    stack
        .clients
        .secrets
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(r#"{"key":"rotated"}"#)
        .send()
        .await
        .unwrap();
    let again = secrets.secret_field(&arn, "key").await.unwrap();
    assert_eq!(again.expose_secret(), key.expose_secret());
    // ... and a new execution environment sees the new value.
    let fresh = SecretsManagerSecrets::new(stack.clients.secrets.clone());
    assert_eq!(
        fresh
            .secret_field(&arn, "key")
            .await
            .unwrap()
            .expose_secret(),
        "rotated"
    );

    // Concurrent first reads agree.
    let shared_secrets = Arc::new(SecretsManagerSecrets::new(stack.clients.secrets.clone()));
    let callback = lookup(env::CALLBACK_TOKEN_SECRET_ARN).unwrap();
    let reads = futures::future::join_all((0..8).map(|_| {
        let (secrets, id) = (shared_secrets.clone(), callback.clone());
        async move {
            secrets
                .secret_field(&id, "token")
                .await
                .unwrap()
                .expose_secret()
                .to_string()
        }
    }))
    .await;
    assert!(reads.iter().all(|r| r == &reads[0] && r.len() == 64));

    assert!(matches!(
        secrets.secret("no-such-secret").await,
        Err(SecretsError::NotFound(_))
    ));
    assert!(matches!(
        secrets.secret_field(&arn, "missing").await,
        Err(SecretsError::Malformed { .. })
    ));
    let notify = lookup(env::NOTIFY_SECRET_ARN).unwrap();
    assert!(secrets.secret_field(&notify, "api_key").await.is_ok());
}

// ------------------------------------------------------------------ template rules
// (no emulator needed)

const FUNCTIONS: [(&str, &str); 10] = [
    ("ApiFunction", "api"),
    ("OptoutLinkFunction", "optout-link"),
    ("PracticeNoticesFunction", "practice-notices"),
    ("DeadlineFunction", "deadline"),
    ("ExtractFunction", "extract"),
    ("SendFunction", "send"),
    ("WritebackFunction", "writeback"),
    ("LettersFunction", "letters"),
    ("ReceiptsFunction", "receipts"),
    ("PurgeFunction", "purge"),
];

fn template() -> Template {
    Template::load().expect("template.yaml parses")
}

fn str_of(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str)
}

#[test]
fn one_binary_per_function_built_with_cargo_lambda_on_arm64() {
    let t = template();
    let functions = t.resources_of("AWS::Serverless::Function");
    assert_eq!(functions.len(), FUNCTIONS.len());
    let root = aws::template::template_path();
    let root = root.parent().unwrap();
    for (logical_id, package) in FUNCTIONS {
        let f = t
            .resource(logical_id)
            .unwrap_or_else(|| panic!("{logical_id} missing"));
        let code = str_of(f.properties.get("CodeUri")).unwrap();
        assert_eq!(code, "functions");
        let manifest = std::fs::read_to_string(root.join(code).join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!(
                "[[bin]]\nname = \"{package}\"\npath = \"src/bin/{package}.rs\""
            )),
            "{logical_id}"
        );
        assert!(
            root.join(code)
                .join(format!("src/bin/{package}.rs"))
                .is_file(),
            "{logical_id}"
        );
        let metadata = f.body.get("Metadata").unwrap();
        assert_eq!(
            str_of(metadata.get("BuildMethod")),
            Some("rust-cargolambda")
        );
        assert_eq!(
            str_of(
                metadata
                    .get("BuildProperties")
                    .and_then(|b| b.get("Binary"))
            ),
            Some(package)
        );
        assert_eq!(
            str_of(t.function_property(&f, "Runtime")),
            Some("provided.al2023")
        );
        assert_eq!(
            str_of(t.function_property(&f, "Handler")),
            Some("bootstrap")
        );
        let arch = t
            .function_property(&f, "Architectures")
            .and_then(Value::as_sequence)
            .unwrap();
        assert_eq!(arch, &vec![Value::String("arm64".into())]);
        assert!(f.properties.get("VpcConfig").is_none(), "no VPC");
        assert!(f.properties.get("ProvisionedConcurrencyConfig").is_none());
    }
    assert!(t
        .resources()
        .iter()
        .all(|r| !r.kind.starts_with("AWS::EC2::")));
}

#[test]
fn sqs_consumers_report_partial_failures_and_have_room_to_finish() {
    let t = template();
    let mut consumed = HashSet::new();
    for f in t.resources_of("AWS::Serverless::Function") {
        let timeout = as_u64(t.function_property(&f, "Timeout").unwrap()).unwrap();
        let Some(events) = f.properties.get("Events").and_then(Value::as_mapping) else {
            continue;
        };
        for (name, event) in events {
            if str_of(event.get("Type")) != Some("SQS") {
                continue;
            }
            let props = event.get("Properties").unwrap();
            let types = props
                .get("FunctionResponseTypes")
                .and_then(Value::as_sequence);
            assert_eq!(
                types.map(|t| t.iter().filter_map(Value::as_str).collect::<Vec<_>>()),
                Some(vec!["ReportBatchItemFailures"]),
                "{}.{name:?}",
                f.logical_id
            );
            let (function, queue_ref) = intrinsic(props.get("Queue").unwrap()).unwrap();
            assert_eq!(function, "Fn::GetAtt");
            let queue_id = queue_ref
                .as_str()
                .unwrap()
                .trim_end_matches(".Arn")
                .to_string();
            let queue = t.resource(&queue_id).unwrap();
            let visibility = as_u64(queue.properties.get("VisibilityTimeout").unwrap()).unwrap();
            assert!(
                visibility >= 6 * timeout,
                "{queue_id}: visibility {visibility}s < 6 x {timeout}s"
            );
            let redrive = queue.properties.get("RedrivePolicy").expect("a DLQ");
            assert!(as_u64(redrive.get("maxReceiveCount").unwrap()).unwrap() >= 1);
            if queue_id == "SendQueue" {
                let max = props
                    .get("ScalingConfig")
                    .and_then(|s| s.get("MaximumConcurrency"));
                let (function, parameter) = intrinsic(max.expect("send concurrency")).unwrap();
                assert_eq!(
                    (function.as_str(), parameter.as_str()),
                    ("Ref", Some("SendMaxConcurrency"))
                );
            }
            consumed.insert(queue_id);
        }
    }
    let expected: HashSet<String> = QueueName::ALL
        .iter()
        .map(|q| {
            let name = q.as_str();
            format!("{}{}Queue", name[..1].to_uppercase(), &name[1..])
        })
        .collect();
    assert_eq!(consumed, expected);
}

#[test]
fn staff_routes_are_signed_and_only_two_routes_are_public() {
    let t = template();
    let api = t.resource("HubApi").unwrap();
    let auth = api.properties.get("Auth").unwrap();
    assert_eq!(str_of(auth.get("DefaultAuthorizer")), Some("AWS_IAM"));
    let mut public = Vec::new();
    for f in t.resources_of("AWS::Serverless::Function") {
        let Some(events) = f.properties.get("Events").and_then(Value::as_mapping) else {
            continue;
        };
        for event in events.values() {
            if str_of(event.get("Type")) != Some("Api") {
                continue;
            }
            let props = event.get("Properties").unwrap();
            let authorizer = props.get("Auth").and_then(|a| a.get("Authorizer"));
            if str_of(authorizer) == Some("NONE") {
                public.push((
                    f.logical_id.to_string(),
                    str_of(props.get("Path")).unwrap().to_string(),
                ));
            } else {
                assert!(
                    authorizer.is_none(),
                    "{}: only NONE overrides IAM",
                    f.logical_id
                );
            }
        }
    }
    public.sort();
    assert_eq!(
        public,
        [
            ("OptoutLinkFunction".to_string(), "/optout".to_string()),
            ("OptoutLinkFunction".to_string(), "/optout".to_string()),
            (
                "ReceiptsFunction".to_string(),
                "/receipts/{provider}".to_string()
            ),
        ]
    );
}

#[test]
fn the_functions_environment_is_what_the_adapters_read() {
    let t = template();
    let names: BTreeMap<String, Value> = t
        .global_environment()
        .into_iter()
        .filter(|(name, _)| name != "RUST_LOG")
        .collect();
    let expected: Vec<&str> = {
        let mut all: Vec<&str> = env::ALL
            .into_iter()
            .filter(|name| env::PER_FUNCTION.iter().all(|(own, _)| own != name))
            .collect();
        all.sort();
        all
    };
    assert_eq!(
        names.keys().map(String::as_str).collect::<Vec<_>>(),
        expected
    );
    for (variable, binary) in env::PER_FUNCTION {
        let holders: Vec<String> = t
            .resources_of("AWS::Serverless::Function")
            .into_iter()
            .filter(|function| {
                function
                    .properties
                    .get("Environment")
                    .and_then(|e| e.get("Variables"))
                    .and_then(|vars| vars.get(variable))
                    .is_some()
            })
            .map(|function| {
                str_of(
                    function
                        .body
                        .get("Metadata")
                        .and_then(|m| m.get("BuildProperties"))
                        .and_then(|b| b.get("Binary")),
                )
                .unwrap_or_default()
                .to_string()
            })
            .collect();
        assert_eq!(holders, [binary], "{variable}");
    }
}

#[test]
fn tables_are_on_demand_encrypted_and_patient_data_expires() {
    let t = template();
    for table in t.resources_of("AWS::DynamoDB::Table") {
        assert_eq!(
            str_of(table.properties.get("BillingMode")),
            Some("PAY_PER_REQUEST")
        );
        let sse = table.properties.get("SSESpecification").unwrap();
        assert_eq!(sse.get("SSEEnabled").and_then(Value::as_bool), Some(true));
    }
    let patient = t.resource("PatientDataTable").unwrap().properties;
    let ttl = patient.get("TimeToLiveSpecification").unwrap();
    assert_eq!(str_of(ttl.get("AttributeName")), Some("expires_at"));
    assert_eq!(ttl.get("Enabled").and_then(Value::as_bool), Some(true));
    let pitr = patient.get("PointInTimeRecoverySpecification").unwrap();
    assert_eq!(
        pitr.get("PointInTimeRecoveryEnabled")
            .and_then(Value::as_bool),
        Some(false)
    );
}

#[test]
fn every_failure_signal_has_an_alarm_on_the_topic() {
    let t = template();
    let alarms = t.resources_of("AWS::CloudWatch::Alarm");
    let dimension_refs = |alarm: &aws::template::Resource| -> Vec<String> {
        alarm
            .properties
            .get("Dimensions")
            .and_then(Value::as_sequence)
            .map(|dims| {
                dims.iter()
                    .filter_map(|d| intrinsic(d.get("Value")?))
                    .filter_map(|(_, v)| {
                        v.as_str().map(|s| s.split('.').next().unwrap().to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let has = |namespace: &str, metric: &str, resource: Option<&str>| {
        alarms.iter().any(|a| {
            str_of(a.properties.get("Namespace")) == Some(namespace)
                && str_of(a.properties.get("MetricName")) == Some(metric)
                && resource.is_none_or(|r| dimension_refs(a).iter().any(|d| d == r))
        })
    };
    for (logical_id, _) in FUNCTIONS {
        assert!(
            has("AWS/Lambda", "Errors", Some(logical_id)),
            "{logical_id} errors"
        );
        assert!(
            has("AWS/Lambda", "Throttles", Some(logical_id)),
            "{logical_id} throttles"
        );
    }
    for queue in t.resources_of("AWS::SQS::Queue") {
        if queue.logical_id.ends_with("DLQ") {
            assert!(
                has(
                    "AWS/SQS",
                    "ApproximateNumberOfMessagesVisible",
                    Some(queue.logical_id)
                ),
                "{}",
                queue.logical_id
            );
        }
    }
    assert!(has(
        "AWS/SQS",
        "ApproximateAgeOfOldestMessage",
        Some("SendQueue")
    ));
    assert!(has("SmsHub", "ProviderErrors", None));
    for alarm in &alarms {
        let actions = alarm
            .properties
            .get("AlarmActions")
            .and_then(Value::as_sequence)
            .unwrap();
        let (function, target) = intrinsic(&actions[0]).unwrap();
        assert_eq!(
            (function.as_str(), target.as_str()),
            ("Ref", Some("AlarmTopicArn"))
        );
    }
}

#[test]
fn secrets_are_generated_not_written_in_the_template() {
    let t = template();
    let secrets = t.resources_of("AWS::SecretsManager::Secret");
    let mut ids: Vec<&str> = secrets.iter().map(|s| s.logical_id).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["CallbackTokenSecret", "NotifySecret", "OptoutLinkKeySecret"]
    );
    for secret in secrets {
        assert!(
            secret.properties.get("SecretString").is_none(),
            "{}",
            secret.logical_id
        );
        assert!(secret.properties.get("GenerateSecretString").is_some());
    }
}
