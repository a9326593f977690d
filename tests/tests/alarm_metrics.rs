//! Every alarm on a metric of the functions' own (namespace `SmsHub` in
//! template.yaml) watches a metric some code path emits: the alarm's
//! namespace, name and dimensions are read from the template and found in
//! the embedded-metric-format lines the functions' code writes.
//!
//! Run: `cargo nextest run -p hub-tests --features aws --test alarm_metrics`

#[path = "../src/aws/mod.rs"]
#[allow(dead_code)]
mod aws;

use async_trait::async_trait;
use aws::template::Template;
use aws_lambda_events::event::sqs::SqsEvent;
use functions::lambda::{api_gateway_counting, handle_sqs_redelivering, Redelivery};
use functions::metrics::{Metrics, NAMESPACE};
use functions::notify::{LazyNotify, NotifyService};
use hub_core::domain::{CampaignId, OdsCode, OutcomeCounts, Participation, Personal, UkMobile};
use hub_core::ports::{QueueName, Secrets, SecretsError, SmsProvider, SmsRequest};
use hub_local::LocalStack;
use hub_tests::config;
use secrecy::SecretString;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

/// (namespace, metric, dimensions)
type MetricId = (String, String, BTreeMap<String, String>);

/// What the metrics sink received.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Every metric of every EMF line, checked to be well formed.
    fn metrics(&self) -> BTreeSet<MetricId> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        let mut found = BTreeSet::new();
        for line in text.lines() {
            let line: serde_json::Value = serde_json::from_str(line).expect("one JSON per line");
            let aws = &line["_aws"];
            assert!(
                aws["Timestamp"].as_u64().unwrap() > 1_700_000_000_000,
                "{line}"
            );
            for directive in aws["CloudWatchMetrics"].as_array().unwrap() {
                let namespace = directive["Namespace"].as_str().unwrap();
                for dimension_set in directive["Dimensions"].as_array().unwrap() {
                    let dimensions: BTreeMap<String, String> = dimension_set
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| {
                            let d = d.as_str().unwrap();
                            (
                                d.to_string(),
                                line[d].as_str().expect("dimension value").to_string(),
                            )
                        })
                        .collect();
                    for metric in directive["Metrics"].as_array().unwrap() {
                        let name = metric["Name"].as_str().unwrap();
                        assert!(line[name].as_u64().unwrap() >= 1, "{line}");
                        found.insert((namespace.to_string(), name.to_string(), dimensions.clone()));
                    }
                }
            }
        }
        found
    }
}

/// The metrics `SmsHub` alarms watch, directly or in metric math.
fn alarmed_metrics(template: &Template) -> BTreeMap<String, MetricId> {
    let mut alarmed = BTreeMap::new();
    for alarm in template.resources_of("AWS::CloudWatch::Alarm") {
        let mut metrics: Vec<&Value> = vec![alarm.properties];
        if let Some(math) = alarm.properties.get("Metrics").and_then(Value::as_sequence) {
            metrics.extend(
                math.iter()
                    .filter_map(|m| m.get("MetricStat").and_then(|s| s.get("Metric"))),
            );
        }
        for metric in metrics {
            let namespace = metric.get("Namespace").and_then(Value::as_str);
            if namespace != Some(NAMESPACE) {
                continue;
            }
            let name = metric.get("MetricName").and_then(Value::as_str).unwrap();
            let dimensions = metric
                .get("Dimensions")
                .and_then(Value::as_sequence)
                .map(|ds| {
                    ds.iter()
                        .map(|d| {
                            let value =
                                d.get("Value").and_then(Value::as_str).unwrap_or_else(|| {
                                    panic!("{}: an SmsHub dimension is a literal", alarm.logical_id)
                                });
                            (d["Name"].as_str().unwrap().to_string(), value.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            alarmed.insert(
                alarm.logical_id.to_string(),
                (NAMESPACE.to_string(), name.to_string(), dimensions),
            );
        }
    }
    alarmed
}

/// No secret can be read: the provider cannot send.
struct NoSecrets;

#[async_trait]
impl Secrets for NoSecrets {
    async fn secret(&self, id: &str) -> Result<SecretString, SecretsError> {
        Err(SecretsError::NotFound(id.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alarm_on_an_smshub_metric_watches_a_metric_the_functions_emit() {
    let template = Template::load().unwrap();
    let alarmed = alarmed_metrics(&template);
    assert!(alarmed.len() >= 3, "{alarmed:?}");
    let captured = Captured::default();
    let metrics = Metrics::to_writer(captured.clone());

    // A text the provider cannot take (its secret unreadable): the send
    // function's provider error.
    let service = NotifyService::new(Arc::new(NoSecrets), "notify".into(), 1, metrics.clone());
    let failed = LazyNotify::new(service, 0)
        .send_sms(&SmsRequest {
            to: UkMobile::parse("07700900123").unwrap(),
            body: Personal::new("Stay safe".to_string()),
            reference: "c.G85001-0001.1".into(),
            fragments: 1,
        })
        .await;
    assert!(failed.is_err());
    metrics.flush();

    // An extraction that fails, through the extract function's glue; its
    // practice was held as extraction_suspect before.
    let stack = aws::Stack::create().await.expect("emulator stack");
    let local = LocalStack::start(config(2, 100, 12)).await.expect("hub");
    let campaign = CampaignId::new();
    let mut held = Participation::notified(campaign.clone(), OdsCode::parse("G85001").unwrap());
    held.hold_as_suspect(0, OutcomeCounts::default(), 0, 3);
    local
        .hub
        .store
        .create_participations(&[held])
        .await
        .unwrap();
    let mut event: SqsEvent = serde_json::from_str(include_str!("../data/sqs_event.json")).unwrap();
    event.records.truncate(1);
    event.records[0].body = Some(format!(
        "{{\"job\":\"extract\",\"campaign\":\"{campaign}\",\"ods\":\"G85001\"}}"
    ));
    let redelivery = Redelivery::new(stack.job_queue().unwrap(), QueueName::Extract);
    let response = handle_sqs_redelivering(
        &local.hub,
        QueueName::Extract,
        event,
        1,
        &redelivery,
        &metrics,
    )
    .await
    .unwrap();
    assert_eq!(response.batch_item_failures.len(), 1);

    // A request the API answers with a 500.
    let router = axum::Router::new().route(
        "/campaigns",
        axum::routing::post(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }),
    );
    let request = lambda_http::request::from_str(
        &include_str!("../data/apigw_create_campaign.json").replace("\"BODY\"", "\"{}\""),
    )
    .unwrap();
    let answer = api_gateway_counting(router, metrics.clone())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(answer.status(), 500);

    let emitted = captured.metrics();
    for (alarm, metric) in alarmed {
        assert!(
            emitted.contains(&metric),
            "{alarm} watches {metric:?}, which no code path emitted; emitted: {emitted:?}"
        );
    }
}
