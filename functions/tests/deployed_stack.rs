//! The hub as deployed: the ten real function binaries, each its own
//! process speaking the Lambda Runtime API, with exactly the environment,
//! memory and timeout of the SAM-transformed `template.yaml` and the
//! credentials of its own role; every AWS call judged against that role's
//! policies by the real IAM action and resource (`infra/deployed_stack.py`).
//! Event sources as declared: SQS mappings, the Scheduler's one-time
//! schedules, API Gateway with IAM identity. GOV.UK Notify and the GP
//! systems (FHIR) are the HTTP simulators.
//!
//! Run: `cargo nextest run -p hub-functions --test deployed_stack`
//! (needs `infra/moto.sh install`).

mod deployed;

use deployed::{wait_for, DeployInput, Deployed, Options};
use hub_core::domain::{CampaignId, OdsCode};
use hub_core::handlers::optout_token::{self, OptOutClaim};
use hub_sim::http::{
    start_fhir, start_notify, CallbackTarget, FhirServerConfig, NotifyServerConfig,
};
use hub_sim::{GatewayConfig, GatewaySim, GpEstate, RegionSpec};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

const ALICE_KEY: &str = "AKIAALICESTAFF000001";
const BOB_KEY: &str = "AKIABOBSTAFF00000002";

/// The End User Messaging sender ID the stack is configured with.
const EUM_SENDER: &str = "arn:aws:sms-voice:eu-west-2:123456789012:sender-id/NHSALERT/GB";

/// The hub deployed around simulators of Notify and the GP systems.
struct Run {
    deployed: Deployed,
    notify: hub_sim::http::NotifyServer,
    /// AWS End User Messaging, beside Notify, reached through the IAM
    /// middleware under the send role.
    eum: hub_sim::http::EumServer,
    _fhir: hub_sim::http::FhirServer,
    estate: GpEstate,
    fhir_practices: Vec<Value>,
    optout_key: String,
    http: reqwest::Client,
}

impl Run {
    async fn start(options: Options) -> anyhow::Result<Self> {
        let estate = GpEstate::generate(RegionSpec {
            practices: 3,
            patients: 450,
            seed: 12,
        });
        let gateway_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api_url = format!("http://{}/v1", gateway_listener.local_addr()?);
        let callback_token = uuid::Uuid::new_v4().simple().to_string();
        let sms = GatewaySim::new(GatewayConfig {
            rate_per_second: 1_000.0,
            latency: Duration::from_millis(1),
            delivery_failure_rate: 0.05,
            receipt_delay: Duration::from_millis(20),
            ..GatewayConfig::new("notify")
        });
        let (_, notify) = start_notify(
            sms,
            NotifyServerConfig {
                callback: Some(CallbackTarget {
                    url: format!("{api_url}/receipts/notify"),
                    bearer: SecretString::from(callback_token.clone()),
                }),
                ..NotifyServerConfig::default()
            },
        )
        .await?;
        let eum = hub_sim::http::start_eum(
            hub_sim::http::EumServerConfig::default(),
            [(EUM_SENDER.to_string(), hub_sim::http::eum_sender("eum"))],
        )
        .await?;
        let (_, fhir) = start_fhir(estate.clone(), FhirServerConfig::default()).await?;
        let fhir_practices: Vec<Value> = estate
            .practices()
            .iter()
            .enumerate()
            .filter_map(|(i, p)| fhir.practice(&p.ods, i % 2 == 0, None))
            .map(|p| serde_json::to_value(p).unwrap_or_default())
            .collect();

        // The secrets in the shapes infra/DEPLOY.md documents.
        let mut input = DeployInput::default();
        for (name, value) in [
            (
                "AlarmTopicArn",
                "arn:aws:sns:eu-west-2:123456789012:hub-alarms",
            ),
            ("SendMaxConcurrency", "2"),
            ("ExtractMaxConcurrency", "2"),
            // Alice asks, Bob approves; registry changes need both.
            (
                "StaffRoles",
                "requester=user/alice;approver=user/bob;registry_admin=user/alice,user/bob;auditor=user/bob",
            ),
            // The GP systems are simulators on loopback.
            ("PrivateGpUrls", "true"),
            // A sender ID at AWS's default 10 message parts a second.
            ("EumOriginationIdentityArn", EUM_SENDER),
            ("EumPartsPerSecond", "10"),
        ] {
            input.parameters.insert(name.into(), value.into());
        }
        input.sms_voice = Some(json!({
            "endpoint": eum.endpoint_url(),
            "access_key_id": eum.config().access_key_id,
            "secret_access_key": eum.config().secret_access_key.expose_secret(),
            "region": eum.config().region,
        }));
        input.secrets.insert(
            "NotifySecret".into(),
            json!({
                "api_key": notify.api_key().expose_secret(),
                "sms_template_id": uuid::Uuid::new_v4().to_string(),
                "email_template_id": uuid::Uuid::new_v4().to_string(),
                "letter_template_id": uuid::Uuid::new_v4().to_string(),
                "base_url": notify.base_url(),
            })
            .to_string(),
        );
        let optout_key = uuid::Uuid::new_v4().simple().to_string();
        input.secrets.insert(
            "OptoutLinkKeySecret".into(),
            json!({ "key": optout_key }).to_string(),
        );
        input.secrets.insert(
            "CallbackTokenSecret".into(),
            json!({ "token": callback_token }).to_string(),
        );
        let staff = HashMap::from([
            (
                ALICE_KEY.to_string(),
                "arn:aws:iam::123456789012:user/alice".to_string(),
            ),
            (
                BOB_KEY.to_string(),
                "arn:aws:iam::123456789012:user/bob".to_string(),
            ),
        ]);
        let deployed = Deployed::start(&input, &options, staff, gateway_listener).await?;
        Ok(Self {
            deployed,
            notify,
            eum,
            _fhir: fhir,
            estate,
            fhir_practices,
            optout_key,
            http: reqwest::Client::new(),
        })
    }

    /// A staff call through API Gateway (`AWS_IAM` auth).
    async fn staff(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.deployed.api_url))
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential={key}/20260101/eu-west-2/execute-api/aws4_request, SignedHeaders=host, Signature=0"),
            );
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// A staff call that must succeed; the error carries the diagnosis.
    async fn staff_ok(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let (status, value) = self.staff(key, method.clone(), path, body).await?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(format!(
                "{method} {path} answered {status}: {value}\n{}",
                self.deployed.diagnosis()
            ))
        }
    }

    async fn campaign(&self, id: &str) -> Option<Value> {
        self.staff(
            ALICE_KEY,
            reqwest::Method::GET,
            &format!("/campaigns/{id}"),
            None,
        )
        .await
        .ok()
        .filter(|(status, _)| *status == 200)
        .map(|(_, v)| v)
    }

    async fn wait_for_state(
        &self,
        id: &str,
        states: &[&str],
        limit: Duration,
    ) -> Result<Value, String> {
        wait_for(
            &self.deployed,
            &format!("campaign {id} to reach {states:?}"),
            limit,
            || async {
                let campaign = self.campaign(id).await?;
                let state = campaign.get("state")?.as_str()?.to_string();
                states.contains(&state.as_str()).then_some(campaign)
            },
        )
        .await
    }

    /// Each practice is registered by one registry admin and approved by
    /// another.
    async fn register_practices(&self) -> Result<(), String> {
        for practice in &self.fhir_practices {
            let ods = practice["ods"].as_str().unwrap_or_default();
            let change = self
                .staff_ok(
                    ALICE_KEY,
                    reqwest::Method::PUT,
                    &format!("/practices/{ods}"),
                    Some(practice.clone()),
                )
                .await?;
            let change_id = change["change_id"]
                .as_str()
                .ok_or_else(|| format!("a new practice waits for approval, got {change}"))?;
            self.staff_ok(
                BOB_KEY,
                reqwest::Method::POST,
                &format!("/practices/{ods}/approve"),
                Some(json!({ "change_id": change_id })),
            )
            .await?;
        }
        Ok(())
    }

    /// Waits until the campaign's patient data is purged.
    async fn wait_for_purge(&self, id: &str) -> Result<Value, String> {
        // The purge is scheduled at the end of the receipt window: move the
        // Scheduler's clock past it.
        *self.deployed.scheduler_clock.lock().unwrap() = chrono::Duration::hours(73);
        wait_for(
            &self.deployed,
            "the purge",
            Duration::from_secs(90),
            || async {
                let campaign = self.campaign(id).await?;
                campaign
                    .get("purged_at")
                    .filter(|v| !v.is_null())
                    .map(|_| campaign.clone())
            },
        )
        .await
    }

    /// A campaign five hours into extraction, written as the functions
    /// would have left it (through the hub's own adapter, as the
    /// administrator): the first practice taken by a worker an hour ago on
    /// its last attempt (`dead`), the second frozen in but its extract job
    /// never run (`lost`). Returns (campaign, dead, lost).
    async fn stuck_campaign(&self) -> Result<(CampaignId, OdsCode, OdsCode), String> {
        use hub_core::domain::{CampaignState, Participation, ParticipationState, StaffId};
        use hub_core::ports::HubStore;
        self.register_practices().await?;
        let store = self.deployed.emulator.hub_store();
        let failed = |e: hub_core::ports::StoreError| e.to_string();
        let now = chrono::Utc::now();
        let ods = |i: usize| {
            OdsCode::parse(self.fhir_practices[i]["ods"].as_str().unwrap_or_default())
                .map_err(|e| e.to_string())
        };
        let (dead, lost) = (ods(0)?, ods(1)?);
        let mut campaign = hub_testkit::fixtures::campaign_at(now - chrono::Duration::hours(7));
        campaign.optout_deadline = now - chrono::Duration::hours(5);
        campaign.approved_by = Some(StaffId::new("arn:aws:iam::123456789012:user/bob"));
        campaign.approved_at = Some(now - chrono::Duration::hours(7));
        store.create_campaign(&campaign).await.map_err(failed)?;
        let id = campaign.id.clone();
        let notified = [&dead, &lost].map(|ods| Participation::notified(id.clone(), ods.clone()));
        store
            .create_participations(&notified)
            .await
            .map_err(failed)?;
        let frozen: Vec<Participation> = notified
            .into_iter()
            .map(|p| Participation {
                state: ParticipationState::Participating,
                notice_sent_at: Some(now - chrono::Duration::hours(7)),
                ..p
            })
            .collect();
        campaign
            .begin_extraction(2, now - chrono::Duration::hours(5))
            .map_err(|e| e.to_string())?;
        campaign.extraction_jobs_queued = true;
        store
            .freeze_participants(&campaign, &frozen)
            .await
            .map_err(failed)?;
        let mut worker_died = store
            .get_participation(&id, &dead)
            .await
            .map_err(failed)?
            .ok_or("no participation")?;
        worker_died.state = ParticipationState::Extracting;
        worker_died.extraction_attempts = 3;
        worker_died.extraction_started_at = Some(now - chrono::Duration::hours(1));
        store
            .update_participation(&worker_died)
            .await
            .map_err(failed)?;
        let stuck = store
            .get_campaign(&id)
            .await
            .map_err(failed)?
            .ok_or("no campaign")?;
        if stuck.state != CampaignState::Extracting || !stuck.extraction_jobs_queued {
            return Err(format!("not stuck in extraction: {stuck:?}"));
        }
        Ok((id, dead, lost))
    }

    /// A whole campaign from the staff API to purge. The error names what
    /// went wrong: functions that did not start, denied calls.
    async fn whole_campaign(&self) -> Result<Value, String> {
        if !self.deployed.problems().is_empty() {
            return Err(format!(
                "the stack did not start:\n{}",
                self.deployed.diagnosis()
            ));
        }
        // Staff routes are AWS_IAM: an unsigned call never reaches the api.
        let unsigned = self
            .http
            .get(format!("{}/campaigns", self.deployed.api_url))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .status();
        if unsigned != 403 {
            return Err(format!(
                "an unsigned staff call answered {unsigned}, not 403"
            ));
        }
        self.register_practices().await?;
        let created = self
            .staff_ok(
                ALICE_KEY,
                reqwest::Method::POST,
                "/campaigns",
                Some(json!({
                    "name": "Heatwave alert",
                    "message": "Urgent: ((first_name)), see www.nhs.uk",
                    "optout_deadline": (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339(),
                    "justification": "Level 4 heat-health alert for the region",
                    "postal_fallback": true,
                })),
            )
            .await?;
        let id = created
            .pointer("/campaign/id")
            .or_else(|| created.get("id"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no campaign id in {created}"))?
            .to_string();
        // The approver approves the version they were shown.
        let shown = self
            .staff_ok(
                BOB_KEY,
                reqwest::Method::GET,
                &format!("/campaigns/{id}"),
                None,
            )
            .await?;
        let version = shown
            .pointer("/campaign/version")
            .or_else(|| shown.get("version"))
            .cloned()
            .ok_or_else(|| format!("no version in {shown}"))?;
        self.staff_ok(
            BOB_KEY,
            reqwest::Method::POST,
            &format!("/campaigns/{id}/approve"),
            Some(json!({ "version": version })),
        )
        .await?;

        // Each practice is emailed its notice by practice-notices.
        let practices = self.fhir_practices.len();
        let emails = wait_for(
            &self.deployed,
            "a notice email per practice",
            Duration::from_secs(60),
            || async {
                let emails = self.notify.gateway().emails();
                (emails.len() >= practices).then(|| json!(emails.len()))
            },
        )
        .await?;
        if emails != json!(practices) {
            return Err(format!("{emails} notice emails for {practices} practices"));
        }

        // One practice opts out through the public link of its notice. (The
        // simulator keeps no email bodies, so the link's token is issued
        // here as the notice issues it, with the key in the secret.)
        let (to, _, _) = self.notify.gateway().emails()[0].clone();
        let opted_out = self
            .fhir_practices
            .iter()
            .find(|p| p["notice_email"] == json!(to))
            .and_then(|p| p["ods"].as_str())
            .ok_or_else(|| format!("no practice has the notice address {to}"))?
            .to_string();
        let campaign = self
            .campaign(&id)
            .await
            .ok_or("the campaign is not readable")?;
        let expires = campaign["optout_deadline"]
            .as_str()
            .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
            .ok_or_else(|| format!("no opt-out deadline in {campaign}"))?
            .with_timezone(&chrono::Utc);
        let token = optout_token::issue(
            &SecretString::from(self.optout_key.clone()),
            &OptOutClaim {
                campaign: CampaignId::parse(&id).ok_or("campaign id")?,
                ods: OdsCode::parse(&opted_out).map_err(|e| e.to_string())?,
                expires,
            },
        );
        let page = self
            .http
            .get(format!("{}/optout?token={token}", self.deployed.api_url))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if page.status() != 200 {
            return Err(format!(
                "GET /optout answered {}\n{}",
                page.status(),
                self.deployed.diagnosis()
            ));
        }
        let confirmed = self
            .http
            .post(format!("{}/optout", self.deployed.api_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("token", &token)
                    .finish(),
            )
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if confirmed.status() != 200 {
            return Err(format!(
                "POST /optout answered {}\n{}",
                confirmed.status(),
                self.deployed.diagnosis()
            ));
        }

        // A few 5xx and 429 answers from Notify, which the router rides out
        // (and counts: the provider-error and rate-limit metrics).
        self.notify.gateway().inject_server_errors(3);
        self.notify.gateway().inject_rate_limit_burst(3);

        // DynamoDB fails the send function's reads (500s, past the SDK's and
        // the store's retries) until one send job has failed: it is retried.
        self.deployed
            .emulator
            .set_faults("SendFunction", "dynamodb:GetItem", u64::MAX / 2)
            .await
            .map_err(|e| e.to_string())?;
        let outage = {
            let record = self.deployed.record.clone();
            let endpoint = self.deployed.emulator.manifest.endpoint.clone();
            tokio::spawn(async move {
                while !record.failed("SendFunction") {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = reqwest::Client::new()
                    .post(format!("{endpoint}/__hub_faults"))
                    .json(&json!({ "function": "SendFunction", "action": "dynamodb:GetItem", "count": 0 }))
                    .send()
                    .await;
            })
        };

        // Staff bring the deadline forward; the Scheduler fires the
        // deadline function with the schedule's input.
        // One person asks with a reason, a second approves with an
        // emergency override (the minimum window after the notices).
        let asked = self
            .staff_ok(
                ALICE_KEY,
                reqwest::Method::POST,
                &format!("/campaigns/{id}/deadline"),
                Some(json!({
                    "optout_deadline": chrono::Utc::now().to_rfc3339(),
                    "reason": "the emergency cannot wait for the full window",
                })),
            )
            .await?;
        let to = asked
            .pointer("/deadline_change/to")
            .or_else(|| asked.pointer("/campaign/deadline_change/to"))
            .cloned()
            .ok_or_else(|| format!("no deadline change waiting in {asked}"))?;
        self.staff_ok(
            BOB_KEY,
            reqwest::Method::POST,
            &format!("/campaigns/{id}/deadline/approve"),
            Some(json!({
                "optout_deadline": to,
                "emergency_override": true,
                "reason": "agreed: the emergency cannot wait",
            })),
        )
        .await?;
        let sent = self
            .wait_for_state(
                &id,
                &["awaiting_receipts", "completed"],
                Duration::from_secs(180),
            )
            .await;
        outage.abort();
        sent?;

        self.wait_for_purge(&id).await?;
        let report = self
            .staff_ok(
                ALICE_KEY,
                reqwest::Method::GET,
                &format!("/campaigns/{id}/report"),
                None,
            )
            .await?;
        Ok(json!({ "id": id, "report": report, "opted_out": opted_out }))
    }
}

fn init_times(deployed: &Deployed) -> String {
    deployed
        .init_times()
        .iter()
        .map(|(id, times)| {
            let ms: Vec<String> = times
                .iter()
                .map(|t| format!("{:.0} ms", t.as_secs_f64() * 1000.0))
                .collect();
            format!("{id}: {}", ms.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deployed_functions_run_a_whole_campaign_with_iam_enforced() {
    let run = Run::start(Options {
        max_instances: 2,
        ..Options::default()
    })
    .await
    .expect("the stack deploys");
    eprintln!(
        "init times (spawn to first /next):\n{}",
        init_times(&run.deployed)
    );
    let outcome = run.whole_campaign().await;
    let result = match outcome {
        Ok(result) => result,
        Err(why) => panic!("the deployed campaign failed:\n{why}"),
    };
    assert_eq!(
        run.deployed.functions.len(),
        10,
        "all ten functions started"
    );
    assert!(
        run.deployed.emulator.denials().is_empty(),
        "no AWS call denied"
    );

    let report = &result["report"];
    assert_eq!(
        report["adds_up"],
        json!(true),
        "the report adds up: {report}"
    );
    let totals = &report["totals"];
    let count = |key: &str| totals[key].as_u64().unwrap_or(0);
    assert!(count("sent") > 100, "most are texted: {totals}");
    let eum = run.eum.sender(EUM_SENDER).expect("the configured sender");
    let expected_sent = (run.notify.gateway().sent_count() + eum.sent_count()) as u64;
    assert_eq!(
        count("sent"),
        expected_sent,
        "the report counts the texts Notify and End User Messaging accepted"
    );
    assert!(
        eum.sent_count() > 0,
        "some texts went through End User Messaging, signed by the send role"
    );
    assert_eq!(run.eum.auth_failures(), 0);
    assert_eq!(
        run.notify.gateway().duplicate_sends() + eum.duplicate_sends(),
        0,
        "nobody texted twice"
    );
    assert_eq!(
        run.notify.gateway().references_shared_with(eum),
        0,
        "nobody texted by both providers"
    );
    let out = report["practices"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["ods"] == result["opted_out"]))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        out["sent"],
        json!(0),
        "the opted-out practice is not texted: {out}"
    );

    // No patient data left.
    let patient_table =
        &run.deployed.functions["SendFunction"].spec.environment["PATIENT_DATA_TABLE"];
    let items = run
        .deployed
        .emulator
        .dynamodb()
        .scan()
        .table_name(patient_table)
        .send()
        .await
        .expect("scan")
        .count;
    assert_eq!(items, 0, "no patient data left");
    // Nothing dead-lettered.
    let sqs = run.deployed.emulator.sqs();
    for (id, queue) in &run.deployed.emulator.manifest.queues {
        if id.ends_with("DLQ") {
            let messages = sqs
                .receive_message()
                .queue_url(&queue.url)
                .max_number_of_messages(10)
                .send()
                .await
                .expect("receive")
                .messages
                .unwrap_or_default();
            assert!(messages.is_empty(), "nothing dead-lettered on {id}");
        }
    }
    let fired = run.deployed.fired_schedules.lock().unwrap().clone();
    assert!(
        fired.len() >= 2,
        "the Scheduler ran the deadline and the purge schedules: {fired:?}"
    );
    eprintln!("SQS deliveries:\n{}", run.deployed.diagnosis());
    // Every function's AWS calls went through its role's IAM check.
    let calls = run.deployed.emulator.allowed_calls();
    for ((function, action), (n, faults)) in &calls {
        eprintln!("{function} {action}: {n} calls allowed, {faults} faults injected");
    }
    let texting: Vec<&String> = calls
        .keys()
        .filter(|(_, action)| action.starts_with("sms-voice:"))
        .map(|(function, _)| function)
        .collect();
    assert_eq!(
        texting,
        ["SendFunction"],
        "only send texts through End User Messaging, under its role"
    );
    for function in run.deployed.functions.keys() {
        assert!(
            calls.keys().any(|(f, _)| f == function),
            "{function} made AWS calls under its role: {calls:?}"
        );
    }
    // The send chunk that failed on the injected DynamoDB errors came back
    // within 2 minutes.
    let retries = run.deployed.record.retry_delays();
    for (function, delay) in &retries {
        eprintln!(
            "retry: a {function} message came back {:.1} s after it failed",
            delay.as_secs_f64()
        );
    }
    let send_retries: Vec<Duration> = retries
        .iter()
        .filter(|(f, _)| f == "SendFunction")
        .map(|(_, d)| *d)
        .collect();
    assert!(
        !send_retries.is_empty(),
        "a send chunk was retried: {retries:?}"
    );
    assert!(
        send_retries.iter().all(|d| *d < Duration::from_secs(120)),
        "a retried send chunk is back within 2 minutes: {send_retries:?}"
    );

    // The metrics the alarms watch, as the binaries wrote them (EMF).
    let metrics = run.deployed.emf_metrics();
    eprintln!("EMF metrics emitted: {metrics:?}");
    for name in ["SmsSent", "ProviderErrors", "SmsRateLimited", "JobsFailed"] {
        assert!(
            metrics.get(name).is_some_and(|v| *v > 0.0),
            "{name} emitted: {metrics:?}"
        );
    }
    let _ = &run.estate;
}

/// Every campaign ends in a recorded state on AWS too: a campaign stuck in
/// extraction (one practice's worker died on its last attempt, another's
/// job was lost) is found by the watchdog, invoked as its recurring
/// schedule invokes the purge function, under the purge role; it records
/// the dead practice as failed, queues the lost one again, and the campaign
/// goes on to send, report and purge with no call denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scheduled_watchdog_finishes_a_stuck_campaign_under_the_purge_role() {
    let run = Run::start(Options {
        max_instances: 1,
        drop_statement: None,
    })
    .await
    .expect("the stack deploys");
    // GIVEN a campaign five hours into extraction: practice `dead` taken
    // by a worker an hour ago on its last attempt, practice `lost` frozen
    // in but its job never run
    let (id, dead, lost) = run.stuck_campaign().await.expect("a stuck campaign");

    // WHEN the watchdog's schedule fires
    let answer = run
        .deployed
        .fire_recurring_schedule(&json!({ "action": "watchdog" }))
        .await
        .unwrap_or_else(|why| panic!("the watchdog failed:\n{why}"));
    eprintln!("the watchdog answered {answer}");
    let acted = answer["watchdog"].as_str().unwrap_or_default();
    assert!(
        acted.contains("extractions_retried: 1") && acted.contains("extractions_failed: 1"),
        "the watchdog retried one extraction and failed the other: {answer}"
    );

    // THEN the campaign sends, completes, reports and purges
    let id = id.to_string();
    run.wait_for_state(
        &id,
        &["awaiting_receipts", "completed"],
        Duration::from_secs(180),
    )
    .await
    .unwrap_or_else(|why| panic!("the stuck campaign did not finish:\n{why}"));
    run.wait_for_purge(&id)
        .await
        .unwrap_or_else(|why| panic!("the finished campaign was not purged:\n{why}"));
    let report = run
        .staff_ok(
            ALICE_KEY,
            reqwest::Method::GET,
            &format!("/campaigns/{id}/report"),
            None,
        )
        .await
        .expect("report");
    assert_eq!(
        report["adds_up"],
        json!(true),
        "the report adds up: {report}"
    );
    let practice = |ods: &OdsCode| {
        report["practices"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["ods"] == json!(ods.as_str())))
            .cloned()
            .unwrap_or_default()
    };
    let failed = practice(&dead);
    assert_eq!(failed["state"], json!("extraction_failed"), "{failed}");
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("stalled")),
        "the reason is recorded: {failed}"
    );
    let retried = practice(&lost);
    assert_eq!(retried["state"], json!("extracted"), "{retried}");
    assert!(
        retried["sent"].as_u64().unwrap_or(0) > 0,
        "the lost practice's patients are texted: {retried}"
    );
    assert_eq!(
        retried["sent"].as_u64(),
        Some(run.notify.gateway().sent_count() as u64),
        "the report counts the texts Notify accepted"
    );

    // Under the purge role, with nothing denied.
    assert!(
        run.deployed.emulator.denials().is_empty(),
        "no AWS call denied: {:?}",
        run.deployed.emulator.denials()
    );
    let calls = run.deployed.emulator.allowed_calls();
    assert!(
        calls.contains_key(&("PurgeFunction".to_string(), "sqs:SendMessage".to_string())),
        "the purge function queued the extraction: {calls:?}"
    );
    let audit = run
        .staff_ok(
            BOB_KEY,
            reqwest::Method::GET,
            &format!("/campaigns/{id}/audit"),
            None,
        )
        .await
        .expect("audit");
    let text = audit.to_string();
    for action in ["watchdog_extraction_retried", "practice_extraction_failed"] {
        assert!(text.contains(action), "{action} audited: {audit}");
    }
}

/// The watchdog test is a check: without the purge role's send to the
/// extract queue, the watchdog cannot re-queue the lost extraction, and
/// the denial names the purge function and the action.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_watchdog_denied_the_extract_queue_is_named() {
    let run = Run::start(Options {
        max_instances: 1,
        drop_statement: Some("PurgeFunctionRole:sqs:SendMessage:ExtractQueue".into()),
    })
    .await
    .expect("the stack deploys");
    assert!(
        run.deployed.emulator.manifest.dropped_statement.is_some(),
        "the statement was found and removed"
    );
    run.stuck_campaign().await.expect("a stuck campaign");
    let answer = run
        .deployed
        .fire_recurring_schedule(&json!({ "action": "watchdog" }))
        .await;
    eprintln!("the watchdog answered {answer:?}");
    let denials = run.deployed.emulator.denials();
    let extract_queue = &run.deployed.emulator.manifest.queues["ExtractQueue"].arn;
    assert!(
        denials.iter().any(|d| d.function == "PurgeFunction"
            && d.action == "sqs:SendMessage"
            && &d.resource == extract_queue),
        "the denial is logged: {denials:?}"
    );
}

/// The harness is the check: with one statement gone from the api role,
/// the run fails naming the api function and the action it was denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_missing_one_statement_fails_the_run_naming_the_function_and_action() {
    let run = Run::start(Options {
        max_instances: 1,
        drop_statement: Some("ApiFunctionRole:sqs:SendMessage:NoticesQueue".into()),
    })
    .await
    .expect("the stack deploys");
    assert!(
        run.deployed.emulator.manifest.dropped_statement.is_some(),
        "the statement was found and removed"
    );
    let failure = run
        .whole_campaign()
        .await
        .expect_err("the run must fail without the api role's send to the notices queue");
    eprintln!("the run failed as it should:\n{failure}");
    let denials = run.deployed.emulator.denials();
    let notices_queue = &run.deployed.emulator.manifest.queues["NoticesQueue"].arn;
    assert!(
        denials.iter().any(|d| d.function == "ApiFunction"
            && d.action == "sqs:SendMessage"
            && &d.resource == notices_queue),
        "the denial is logged: {denials:?}"
    );
    assert!(
        failure.contains("ApiFunction was denied sqs:SendMessage on"),
        "the failure names the function and the action: {failure}"
    );
}

/// A function whose role cannot read the secret it needs: the run fails
/// naming that function and the secret read it was denied (whether it
/// fails at start or at its first callback).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_function_denied_its_secret_is_named() {
    let run = Run::start(Options {
        max_instances: 1,
        drop_statement: Some(
            "ReceiptsFunctionRole:secretsmanager:GetSecretValue:CallbackTokenSecret".into(),
        ),
    })
    .await
    .expect("the stack deploys");
    let failure = run
        .whole_campaign()
        .await
        .expect_err("the run must fail without the receipts role's secret read");
    eprintln!("the run failed as it should:\n{failure}");
    assert!(
        failure.contains("ReceiptsFunction was denied secretsmanager:GetSecretValue on"),
        "the failure names the function and the action: {failure}"
    );
}

/// The IAM decision the whole test rests on, on known cases: Allow and
/// Deny, NotAction and NotResource, wildcards, the PassRole condition, and
/// each request mapped to its real IAM actions and resource ARNs.
#[test]
fn the_iam_decision_follows_iam_rules_on_known_cases() {
    let python = deployed::python();
    let out = std::process::Command::new(&python)
        .arg(deployed::repo().join("infra/deployed_stack.py"))
        .arg("--self-test")
        .output()
        .unwrap_or_else(|e| panic!("running {} (infra/moto.sh install): {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("ok:"),
        "the self-test failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lambda replaces an environment whose process died: the next request is
/// served by a fresh instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_instance_is_replaced_by_a_cold_start() {
    let run = Run::start(Options {
        max_instances: 1,
        drop_statement: None,
    })
    .await
    .expect("the stack deploys");
    assert!(
        run.deployed.problems().is_empty(),
        "{}",
        run.deployed.diagnosis()
    );
    let api = &run.deployed.functions["ApiFunction"];
    api.crash(0).await;
    wait_for(
        &run.deployed,
        "the api instance to be replaced",
        Duration::from_secs(30),
        || async { (api.restarts() == 1).then_some(Value::Null) },
    )
    .await
    .expect("replaced");
    let (status, body) = run
        .staff(ALICE_KEY, reqwest::Method::GET, "/practices", None)
        .await
        .expect("the call is answered");
    assert_eq!(status, 200, "answered by the fresh instance: {body}");
}
