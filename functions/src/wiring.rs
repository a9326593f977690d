//! Builds the [`Hub`] for a Lambda function from its environment: the AWS
//! adapters, GOV.UK Notify from its secret, FHIR for the GP systems.
//! Read once at start-up; a missing variable or secret fails fast.

use anyhow::Context;
use hub_adapters::aws::{
    self, env, DynamoHubStore, DynamoPatientStore, EventBridgeScheduler, ScheduleTargets, Secrets,
    SecretsManagerSecrets, SqsJobQueue,
};
use hub_adapters::fhir::{FhirConfig, FhirGpConnector};
use hub_adapters::notify::{NotifyClient, NotifyConfig, NotifyTemplates};
use hub_core::handlers::{Hub, HubConfig, HubParts};
use hub_core::ports::{SmsProvider, SystemClock};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Arc;

/// The Notify secret's JSON: the one definition of its shape, which
/// `infra/DEPLOY.md` documents and a test checks the examples against.
#[derive(Deserialize)]
pub struct NotifySecret {
    api_key: String,
    sms_template_id: String,
    #[serde(default)]
    email_template_id: Option<String>,
    #[serde(default)]
    letter_template_id: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    /// Messages per second for this key (Notify's default is 3,000/min).
    #[serde(default = "default_rate")]
    rate_per_second: f64,
    /// More Notify services to spread the load across.
    #[serde(default)]
    extra_keys: Vec<ExtraKey>,
}

#[derive(Deserialize)]
struct ExtraKey {
    api_key: String,
    #[serde(default = "default_rate")]
    rate_per_second: f64,
}

impl NotifySecret {
    /// Reads the secret's value. The error names a missing field, or else
    /// only the position: serde's other messages may quote the value.
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        serde_json::from_str(json).map_err(|e| {
            let message = e.to_string();
            let field = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            match field {
                Some(field) => anyhow::anyhow!(
                    "the Notify secret has no `{field}` (see infra/DEPLOY.md for its JSON)"
                ),
                None => anyhow::anyhow!(
                    "the Notify secret is not valid JSON of the documented shape: \
                     line {} column {}",
                    e.line(),
                    e.column()
                ),
            }
        })
    }

    /// How many Notify API keys it holds.
    pub fn keys(&self) -> usize {
        1 + self.extra_keys.len()
    }
}

fn default_rate() -> f64 {
    50.0
}

/// Everything a function needs besides the hub: secrets it checks itself.
pub struct Wired {
    pub hub: Hub,
    pub callback_token: SecretString,
    pub secrets: Arc<dyn Secrets>,
}

pub async fn hub_from_env() -> anyhow::Result<Wired> {
    let lookup = aws::process_env;
    let sdk = aws::load_sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let store = Arc::new(DynamoHubStore::new(
        dynamo.clone(),
        aws::required(&lookup, env::HUB_TABLE)?,
    ));
    let patients = Arc::new(DynamoPatientStore::new(
        dynamo,
        aws::required(&lookup, env::PATIENT_DATA_TABLE)?,
    ));
    let queue = Arc::new(SqsJobQueue::new(
        aws_sdk_sqs::Client::new(&sdk),
        aws::queue_urls(&lookup)?,
    ));
    let scheduler = Arc::new(EventBridgeScheduler::new(
        aws_sdk_scheduler::Client::new(&sdk),
        ScheduleTargets::from_lookup(&lookup)?,
    ));
    let secrets: Arc<dyn Secrets> = Arc::new(SecretsManagerSecrets::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
    ));
    let notify_id = aws::required(&lookup, env::NOTIFY_SECRET_ARN)?;
    let notify = NotifySecret::parse(
        secrets
            .secret(&notify_id)
            .await
            .context("reading the Notify secret")?
            .expose_secret(),
    )?;
    let templates = NotifyTemplates {
        sms: notify.sms_template_id.clone(),
        email: notify.email_template_id.clone(),
        letter: notify.letter_template_id.clone(),
    };
    let base_url = notify
        .base_url
        .clone()
        .unwrap_or_else(|| hub_adapters::notify::NOTIFY_PRODUCTION_URL.to_string());
    let share: u32 = lookup(env::SEND_MAX_CONCURRENCY)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut providers: Vec<(Arc<dyn SmsProvider>, f64)> = Vec::new();
    let mut keys = vec![(notify.api_key.clone(), notify.rate_per_second)];
    keys.extend(
        notify
            .extra_keys
            .iter()
            .map(|k| (k.api_key.clone(), k.rate_per_second)),
    );
    let mut primary = None;
    for (i, (key, rate)) in keys.into_iter().enumerate() {
        let mut config = NotifyConfig::new(&base_url, SecretString::from(key), templates.clone());
        config.name = format!("notify-{}", i + 1);
        let client = Arc::new(NotifyClient::new(config)?);
        if primary.is_none() {
            primary = Some(client.clone());
        }
        providers.push((client, rate));
    }
    let primary = primary.context("the Notify secret names no API key")?;
    let optout_key = secrets
        .secret_field(
            &aws::required(&lookup, env::OPTOUT_LINK_KEY_SECRET_ARN)?,
            "key",
        )
        .await
        .context("reading the opt-out link key")?;
    let callback_token = secrets
        .secret_field(
            &aws::required(&lookup, env::CALLBACK_TOKEN_SECRET_ARN)?,
            "token",
        )
        .await
        .context("reading the callback token")?;
    let hub = HubParts {
        store,
        patients,
        queue,
        scheduler,
        sms: providers,
        send_workers: share,
        email: primary.clone(),
        letters: primary,
        gp: Arc::new(FhirGpConnector::new(FhirConfig::default())?),
        clock: Arc::new(SystemClock),
        optout_key,
        config: HubConfig {
            optout_base_url: lookup(env::PUBLIC_BASE_URL).unwrap_or_default(),
            access: hub_core::domain::AccessPolicy::parse(
                &lookup(env::HUB_ROLES).unwrap_or_default(),
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", env::HUB_ROLES))?,
            ..HubConfig::default()
        },
    }
    .build()?;
    Ok(Wired {
        hub,
        callback_token,
        secrets,
    })
}
