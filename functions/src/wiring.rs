//! Builds the [`Hub`] for a Lambda function from its environment: the AWS
//! adapters, GOV.UK Notify, AWS End User Messaging when configured
//! ([`crate::eum`]), FHIR for the GP systems.
//!
//! Each function reads only the secrets its role may read: the opt-out link
//! key at start-up where every invocation needs it (practice-notices signs
//! links, optout-link checks them), the Notify secret on the first message
//! sent (`notify::LazyNotify`), the callback token only in receipts
//! ([`callback_token`]). A missing variable, or a secret the function needs
//! at start-up, fails fast.

use anyhow::Context;
use hub_adapters::aws::{
    self, env, DynamoHubStore, DynamoPatientStore, EventBridgeScheduler, ScheduleTargets, Secrets,
    SecretsManagerSecrets, SqsJobQueue,
};
use hub_adapters::fhir::{FhirConfig, FhirGpConnector};
use hub_adapters::mesh::{LazyMeshGpConnector, RoutedGpConnector};
use hub_core::handlers::{Hub, HubConfig, HubParts};
use hub_core::ports::SmsProvider;
use hub_core::ports::SystemClock;
use secrecy::SecretString;
use std::sync::Arc;

use crate::notify::{LazyNotify, NotifyService};
pub use crate::notify::{NotifySecret, ProviderRates, DEFAULT_NOTIFY_RATES};

/// The ten functions of `template.yaml`, for what each one reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Api,
    OptoutLink,
    PracticeNotices,
    Deadline,
    Extract,
    Send,
    Writeback,
    Letters,
    Receipts,
    Purge,
}

impl Function {
    /// The function that consumes `queue`.
    pub fn consuming(queue: hub_core::ports::QueueName) -> Self {
        use hub_core::ports::QueueName;
        match queue {
            QueueName::Notices => Self::PracticeNotices,
            QueueName::Extract => Self::Extract,
            QueueName::Send => Self::Send,
            QueueName::Writeback => Self::Writeback,
            QueueName::Letters => Self::Letters,
            QueueName::Purge => Self::Purge,
        }
    }

    /// Signs (practice-notices) or checks (optout-link) opt-out links on
    /// every invocation, so reads the key at start-up; no other function
    /// may read it.
    pub fn reads_optout_key(self) -> bool {
        matches!(self, Self::OptoutLink | Self::PracticeNotices)
    }
}

/// A key no other function holds, for a function that never signs or
/// checks a link: a link it signed would not verify anywhere, and no link
/// verifies against it (an empty key would let anyone forge one).
fn unshared_key() -> SecretString {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The secrets client every function shares (values cached per execution
/// environment by the adapter).
pub async fn secrets_from_env() -> Arc<dyn Secrets> {
    let sdk = aws::load_sdk_config().await;
    Arc::new(SecretsManagerSecrets::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
    ))
}

/// The receipts function's bearer token for delivery callbacks.
pub async fn callback_token(secrets: &dyn Secrets) -> anyhow::Result<SecretString> {
    let lookup = &aws::process_env;
    secrets
        .secret_field(
            &aws::required(lookup, env::CALLBACK_TOKEN_SECRET_ARN)?,
            "token",
        )
        .await
        .context("reading the callback token")
}

/// Visibility changes on `queue`, the function's own.
pub async fn redelivery_from_env(
    queue: hub_core::ports::QueueName,
) -> anyhow::Result<crate::lambda::Redelivery> {
    let sdk = aws::load_sdk_config().await;
    let queue_adapter = SqsJobQueue::new(
        aws_sdk_sqs::Client::new(&sdk),
        aws::queue_urls(&aws::process_env)?,
    );
    Ok(crate::lambda::Redelivery::new(queue_adapter, queue))
}

/// The hub for `function`, from the process environment.
pub async fn hub_from_env(function: Function) -> anyhow::Result<Hub> {
    let secrets = secrets_from_env().await;
    hub_with_secrets(function, secrets).await
}

/// The hub for `function` with the given secrets client, from the process
/// environment.
pub async fn hub_with_secrets(
    function: Function,
    secrets: Arc<dyn Secrets>,
) -> anyhow::Result<Hub> {
    hub_with(function, secrets, &aws::process_env).await
}

/// The hub for `function`: variables through `lookup`, secrets through
/// `secrets`.
pub async fn hub_with(
    function: Function,
    secrets: Arc<dyn Secrets>,
    lookup: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Hub> {
    let sdk = aws::load_sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let hub_table = aws::required(lookup, env::HUB_TABLE)?;
    let store = Arc::new(DynamoHubStore::new(dynamo.clone(), hub_table.clone()));
    // Receipts are counted on the hub table's chunks in the same write.
    let patients = Arc::new(
        DynamoPatientStore::new(dynamo, aws::required(lookup, env::PATIENT_DATA_TABLE)?)
            .counting_receipts_in(hub_table),
    );
    let queue = Arc::new(SqsJobQueue::new(
        aws_sdk_sqs::Client::new(&sdk),
        aws::queue_urls(lookup)?,
    ));
    let scheduler = Arc::new(EventBridgeScheduler::new(
        aws_sdk_scheduler::Client::new(&sdk),
        ScheduleTargets::from_lookup(lookup)?,
    ));
    let rates = ProviderRates::parse(
        &lookup(env::NOTIFY_RATES)
            .filter(|rates| !rates.is_empty())
            .unwrap_or_else(|| DEFAULT_NOTIFY_RATES.to_string()),
    )?;
    let notify = NotifyService::new(
        secrets.clone(),
        aws::required(lookup, env::NOTIFY_SECRET_ARN)?,
        rates.0.len(),
        crate::metrics::Metrics::process(),
    );
    let mut providers: Vec<(Arc<dyn SmsProvider>, f64)> = rates
        .0
        .iter()
        .enumerate()
        .map(|(i, rate)| {
            let provider: Arc<dyn SmsProvider> =
                Arc::new(LazyNotify::new(notify.clone(), i).with_daily_cap(rate.daily_limit));
            (provider, rate.rate_per_second)
        })
        .collect();
    // End User Messaging beside the Notify keys, when configured.
    let eum = crate::eum::EumSettings::from_lookup(lookup)?;
    if let Some(eum) = &eum {
        let client = hub_adapters::eum::sdk::Client::new(&sdk);
        let provider: Arc<dyn SmsProvider> =
            Arc::new(eum.provider(client, crate::metrics::Metrics::process()));
        providers.push((provider, eum.parts_per_second));
    }
    let primary = Arc::new(LazyNotify::new(notify, 0));
    // More than one send invocation at once: they share the pacing
    // buckets in the hub table (one alone paces in memory).
    let send_workers: u32 = lookup(env::SEND_MAX_CONCURRENCY)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let optout_key = if function.reads_optout_key() {
        secrets
            .secret_field(
                &aws::required(lookup, env::OPTOUT_LINK_KEY_SECRET_ARN)?,
                "key",
            )
            .await
            .context("reading the opt-out link key")?
    } else {
        unshared_key()
    };
    let mut hub = HubParts {
        store,
        patients,
        queue,
        scheduler,
        sms: providers,
        send_workers,
        email: primary.clone(),
        letters: primary,
        // GP credentials are read when a practice first needs one (extract
        // and writeback, whose roles may read the GP secrets), the MESH
        // mailbox's too (its secret lives under the same prefix).
        gp: Arc::new(RoutedGpConnector {
            fhir: Some(Arc::new(
                FhirGpConnector::new(FhirConfig::default())?
                    .with_credential_source(secrets.clone()),
            )),
            mesh: lookup(env::MESH_SECRET_NAME)
                .filter(|name| !name.is_empty())
                .map(|name| {
                    Arc::new(LazyMeshGpConnector::new(secrets.clone(), name))
                        as Arc<dyn hub_core::ports::GpConnector>
                }),
            simulated: None,
        }),
        clock: Arc::new(SystemClock),
        optout_key,
        config: HubConfig {
            optout_base_url: lookup(env::PUBLIC_BASE_URL).unwrap_or_default(),
            access: hub_core::domain::AccessPolicy::parse(
                &lookup(env::HUB_ROLES).unwrap_or_default(),
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", env::HUB_ROLES))?,
            local_gp_urls: lookup(env::HUB_PRIVATE_GP_URLS).as_deref() == Some("true"),
            ..HubConfig::default()
        },
    }
    .build()?;
    // The plan counts the services' daily limits too, which the router
    // does not know.
    let mut plan_rates = rates.plan_rates();
    plan_rates.extend(eum.as_ref().map(crate::eum::EumSettings::plan_rate));
    Arc::make_mut(&mut hub.config).providers = plan_rates;
    Ok(hub)
}
