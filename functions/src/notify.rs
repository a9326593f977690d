//! GOV.UK Notify as the functions use it: the secret (API keys and template
//! ids) read on the first message sent, not at start-up, so a function whose
//! role may not read it (api, deadline, extract, ...) starts and plans with
//! the rates from its non-secret configuration and never touches the secret.

use crate::metrics::{Metrics, PROVIDER_ERRORS, SMS_RATE_LIMITED, SMS_SENT};
use hub_adapters::aws::Secrets;
use hub_adapters::notify::{NotifyClient, NotifyConfig, NotifyTemplates};
use hub_core::domain::plan::ProviderRate;
use hub_core::ports::{
    Accepted, EmailProvider, EmailRequest, LetterProvider, LetterRequest, ProviderError,
    ProviderRecord, SecretsError, SmsProvider, SmsRequest,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// The Notify secret's JSON: the one definition of its shape, which
/// `infra/DEPLOY.md` documents and a test checks the examples against.
/// Only what is secret or belongs to the Notify service lives here; the
/// rates are configuration ([`ProviderRates`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySecret {
    api_key: String,
    sms_template_id: String,
    #[serde(default)]
    email_template_id: Option<String>,
    #[serde(default)]
    letter_template_id: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    /// More Notify services to spread the load across, in the order of
    /// their rates after the first in `NOTIFY_RATES`.
    #[serde(default)]
    extra_keys: Vec<ExtraKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtraKey {
    api_key: String,
}

impl NotifySecret {
    /// Reads the secret's value. The error names a missing or unknown
    /// field, or else only the position: serde's other messages may quote
    /// the value.
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        serde_json::from_str(json).map_err(|e| {
            let message = e.to_string();
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            let unknown = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next());
            match (missing, unknown) {
                (Some(field), _) => anyhow::anyhow!(
                    "the Notify secret has no `{field}` (see infra/DEPLOY.md for its JSON)"
                ),
                (_, Some(field)) => anyhow::anyhow!(
                    "the Notify secret has `{field}`, which it does not take \
                     (rates are the NotifyRates parameter; see infra/DEPLOY.md)"
                ),
                _ => anyhow::anyhow!(
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

    /// One client per API key, in order, each checked (key format, template
    /// ids, base URL).
    fn clients(&self) -> anyhow::Result<Vec<Arc<NotifyClient>>> {
        let templates = NotifyTemplates {
            sms: self.sms_template_id.clone(),
            email: self.email_template_id.clone(),
            letter: self.letter_template_id.clone(),
        };
        let base_url = self
            .base_url
            .clone()
            .unwrap_or_else(|| hub_adapters::notify::NOTIFY_PRODUCTION_URL.to_string());
        std::iter::once(&self.api_key)
            .chain(self.extra_keys.iter().map(|extra| &extra.api_key))
            .enumerate()
            .map(|(i, key)| {
                let mut config = NotifyConfig::new(
                    &base_url,
                    SecretString::from(key.clone()),
                    templates.clone(),
                );
                config.name = provider_name(i);
                Ok(Arc::new(NotifyClient::new(config)?))
            })
            .collect()
    }
}

/// The router's and the report's name for the `index`th Notify key.
pub fn provider_name(index: usize) -> String {
    format!("notify-{}", index + 1)
}

/// One Notify service's sending limits: configuration, not secret (the
/// api function plans with them and may not read the Notify secret).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRate {
    /// Messages per second this key may send (Notify's default limit is
    /// 3,000 a minute).
    pub rate_per_second: f64,
    /// Texts a day the service may send, if limited (Notify's default is
    /// 250,000 for a live service).
    #[serde(default)]
    pub daily_limit: Option<u64>,
}

/// `NOTIFY_RATES`: a JSON array, one entry per Notify API key in the
/// secret (the `api_key` first, then each of `extra_keys`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderRates(pub Vec<ServiceRate>);

/// Used when `NOTIFY_RATES` is not set: one live Notify service at its
/// default limits (50/s, 250,000 texts a day).
pub const DEFAULT_NOTIFY_RATES: &str = r#"[{"rate_per_second":50,"daily_limit":250000}]"#;

impl ProviderRates {
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        let rates: Vec<ServiceRate> = serde_json::from_str(json).map_err(|e| {
            anyhow::anyhow!(
                "NOTIFY_RATES is not a JSON array of {{\"rate_per_second\", \"daily_limit\"}}: {e}"
            )
        })?;
        if rates.is_empty() {
            anyhow::bail!("NOTIFY_RATES names no Notify service");
        }
        if let Some(bad) = rates
            .iter()
            .position(|rate| !(rate.rate_per_second.is_finite() && rate.rate_per_second > 0.0))
        {
            anyhow::bail!("NOTIFY_RATES[{bad}].rate_per_second must be a positive number");
        }
        Ok(Self(rates))
    }

    /// The rates as the plan counts them.
    pub fn plan_rates(&self) -> Vec<ProviderRate> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, rate)| ProviderRate {
                name: provider_name(i),
                per_second: rate.rate_per_second,
                // Notify limits API requests, one per text whatever its length.
                unit: hub_core::domain::pacing::RateUnit::Requests,
                daily_limit: rate.daily_limit,
            })
            .collect()
    }
}

/// The Notify secret, read once, when first needed, and shared by every
/// key's provider. A failed read is not kept: the next message tries again.
pub struct NotifyService {
    metrics: Arc<Metrics>,
    secrets: Arc<dyn Secrets>,
    secret_id: String,
    configured_keys: usize,
    clients: OnceCell<Vec<Arc<NotifyClient>>>,
}

impl NotifyService {
    pub fn new(
        secrets: Arc<dyn Secrets>,
        secret_id: String,
        configured_keys: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            secrets,
            secret_id,
            configured_keys,
            clients: OnceCell::new(),
        })
    }

    async fn load(&self) -> Result<Vec<Arc<NotifyClient>>, ProviderError> {
        let value = self
            .secrets
            .secret(&self.secret_id)
            .await
            .map_err(|error| {
                match error {
                    // Throttled or a blip: worth another attempt.
                    SecretsError::Unavailable(_) => {
                        ProviderError::Unavailable(format!("reading the Notify secret: {error}"))
                    }
                    // Denied, missing or malformed: configuration, stop sending.
                    other => {
                        ProviderError::Unauthorised(format!("reading the Notify secret: {other}"))
                    }
                }
            })?;
        let configuration =
            |error: anyhow::Error| ProviderError::Unauthorised(format!("{error:#}"));
        let secret = NotifySecret::parse(value.expose_secret()).map_err(configuration)?;
        if secret.keys() != self.configured_keys {
            return Err(ProviderError::Unauthorised(format!(
                "the Notify secret holds {} API keys but NOTIFY_RATES gives rates for {}",
                secret.keys(),
                self.configured_keys
            )));
        }
        secret.clients().map_err(configuration)
    }

    /// The client of the `index`th key.
    async fn client(&self, index: usize) -> Result<Arc<NotifyClient>, ProviderError> {
        let clients = self.clients.get_or_try_init(|| self.load()).await?;
        clients.get(index).cloned().ok_or_else(|| {
            ProviderError::Unauthorised(format!("no Notify API key number {}", index + 1))
        })
    }
}

impl NotifyService {
    /// Counts what a provider call came to, for the alarms and dashboard.
    fn count<T>(&self, outcome: &Result<T, ProviderError>, success: Option<&'static str>) {
        let name = match outcome {
            Ok(_) => success,
            Err(ProviderError::RateLimited { .. }) => Some(SMS_RATE_LIMITED),
            // The number, not the provider: counted in the report.
            Err(ProviderError::Rejected(_)) => None,
            Err(_) => Some(PROVIDER_ERRORS),
        };
        if let Some(name) = name {
            self.metrics.add(name, &[], 1);
        }
    }
}

/// One Notify API key as a provider; its client is built on first use.
pub struct LazyNotify {
    service: Arc<NotifyService>,
    index: usize,
    name: String,
    daily_cap: Option<u64>,
}

impl LazyNotify {
    pub fn new(service: Arc<NotifyService>, index: usize) -> Self {
        Self {
            service,
            index,
            name: provider_name(index),
            daily_cap: None,
        }
    }

    /// The key's daily text limit (`NOTIFY_RATES`), so the router moves
    /// traffic elsewhere, or pauses, at it.
    pub fn with_daily_cap(mut self, daily_cap: Option<u64>) -> Self {
        self.daily_cap = daily_cap;
        self
    }

    /// `request` on this key's client, counted (`success` names the metric
    /// of an accepted call, if any).
    async fn call<T, F, Fut>(
        &self,
        success: Option<&'static str>,
        request: F,
    ) -> Result<T, ProviderError>
    where
        F: FnOnce(Arc<NotifyClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let outcome = match self.service.client(self.index).await {
            Ok(client) => request(client).await,
            Err(error) => Err(error),
        };
        self.service.count(&outcome, success);
        outcome
    }
}

#[async_trait::async_trait]
impl SmsProvider for LazyNotify {
    fn name(&self) -> &str {
        &self.name
    }

    fn rate_unit(&self) -> hub_core::domain::pacing::RateUnit {
        hub_core::domain::pacing::RateUnit::Requests
    }

    fn daily_cap(&self) -> Option<u64> {
        self.daily_cap
    }

    async fn send_sms(&self, request: &SmsRequest) -> Result<Accepted, ProviderError> {
        self.call(Some(SMS_SENT), |client| async move {
            client.send_sms(request).await
        })
        .await
    }

    async fn find_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<ProviderRecord>, ProviderError> {
        self.call(None, |client| async move {
            client.find_by_reference(reference).await
        })
        .await
    }
}

#[async_trait::async_trait]
impl EmailProvider for LazyNotify {
    async fn send_email(&self, request: &EmailRequest) -> Result<Accepted, ProviderError> {
        self.call(
            None,
            |client| async move { client.send_email(request).await },
        )
        .await
    }
}

#[async_trait::async_trait]
impl LetterProvider for LazyNotify {
    async fn send_letter(&self, request: &LetterRequest) -> Result<Accepted, ProviderError> {
        self.call(
            None,
            |client| async move { client.send_letter(request).await },
        )
        .await
    }

    async fn find_letter(&self, reference: &str) -> Result<Option<ProviderRecord>, ProviderError> {
        self.call(
            None,
            |client| async move { client.find_letter(reference).await },
        )
        .await
    }
}
