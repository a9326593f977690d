//! AWS End User Messaging SMS as the functions use it: one origination
//! identity (a sender ID, phone number or pool, by ARN) beside the Notify
//! keys, configured by the template's `Eum*` parameters and off unless one
//! is given. Nothing here is secret: the send role's identity signs.

use crate::metrics::{Metrics, PROVIDER_ERRORS, SMS_RATE_LIMITED, SMS_SENT};
use hub_adapters::aws::env;
use hub_adapters::eum::{sdk, EumConfig, EumSmsClient};
use hub_core::domain::pacing::RateUnit;
use hub_core::domain::plan::ProviderRate;
use hub_core::ports::{Accepted, ProviderError, ProviderRecord, SmsProvider, SmsRequest};
use std::sync::Arc;

/// The router's and the report's name for the sender.
pub const EUM_PROVIDER_NAME: &str = "eum";

/// AWS's default for a sender ID: 10 message parts a second.
pub const DEFAULT_PARTS_PER_SECOND: f64 = 10.0;

/// What the `EUM_*` variables configure.
#[derive(Debug, Clone, PartialEq)]
pub struct EumSettings {
    /// The origination identity's ARN: what the send role may use, and
    /// what each request names.
    pub origination_identity_arn: String,
    pub parts_per_second: f64,
    pub daily_limit: Option<u64>,
}

impl EumSettings {
    /// `None` when `EUM_ORIGINATION_IDENTITY` is empty or unset (the
    /// default: Notify only). Errors name the variable and the problem.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let Some(arn) = lookup(env::EUM_ORIGINATION_IDENTITY).filter(|v| !v.trim().is_empty())
        else {
            return Ok(None);
        };
        let arn = arn.trim().to_string();
        let kind = arn
            .split(':')
            .nth(5)
            .and_then(|resource| resource.split('/').next());
        if !arn.starts_with("arn:")
            || arn.split(':').nth(2) != Some("sms-voice")
            || !matches!(kind, Some("sender-id" | "phone-number" | "pool"))
        {
            anyhow::bail!(
                "{} must be the ARN of an End User Messaging sender ID, phone number or pool \
                 (arn:<partition>:sms-voice:<region>:<account>:sender-id/<id>/<country>)",
                env::EUM_ORIGINATION_IDENTITY
            );
        }
        let parts_per_second = match lookup(env::EUM_PARTS_PER_SECOND).filter(|v| !v.is_empty()) {
            None => DEFAULT_PARTS_PER_SECOND,
            Some(raw) => match raw.trim().parse::<f64>() {
                Ok(rate) if rate.is_finite() && rate > 0.0 => rate,
                _ => anyhow::bail!(
                    "{} must be a positive number of message parts a second",
                    env::EUM_PARTS_PER_SECOND
                ),
            },
        };
        let daily_limit = match lookup(env::EUM_DAILY_LIMIT).filter(|v| !v.is_empty()) {
            None => None,
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(limit) => Some(limit),
                Err(_) => anyhow::bail!(
                    "{} must be a whole number of texts a day (0: no limit)",
                    env::EUM_DAILY_LIMIT
                ),
            },
        };
        Ok(Some(Self {
            origination_identity_arn: arn,
            parts_per_second,
            daily_limit,
        }))
    }

    /// The sender as the plan counts it.
    pub fn plan_rate(&self) -> ProviderRate {
        ProviderRate {
            name: EUM_PROVIDER_NAME.into(),
            per_second: self.parts_per_second,
            unit: RateUnit::Parts,
            daily_limit: self.daily_limit,
        }
    }

    /// The provider, on `client` (the function's SDK configuration: its
    /// role's credentials, region and endpoint).
    pub fn provider(&self, client: sdk::Client, metrics: Arc<Metrics>) -> CountedEum {
        let mut config = EumConfig::new(&self.origination_identity_arn);
        config.name = EUM_PROVIDER_NAME.into();
        config.daily_cap = self.daily_limit;
        CountedEum {
            client: EumSmsClient::new(client, config),
            metrics,
        }
    }
}

/// The EUM adapter with the same metrics as a Notify key, so the
/// provider-errors alarm and the dashboard count both.
pub struct CountedEum {
    client: EumSmsClient,
    metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl SmsProvider for CountedEum {
    fn name(&self) -> &str {
        self.client.name()
    }

    fn rate_unit(&self) -> RateUnit {
        self.client.rate_unit()
    }

    fn daily_cap(&self) -> Option<u64> {
        self.client.daily_cap()
    }

    async fn send_sms(&self, request: &SmsRequest) -> Result<Accepted, ProviderError> {
        let outcome = self.client.send_sms(request).await;
        let metric = match &outcome {
            Ok(_) => Some(SMS_SENT),
            Err(ProviderError::RateLimited { .. }) => Some(SMS_RATE_LIMITED),
            Err(ProviderError::Rejected(_)) => None,
            Err(_) => Some(PROVIDER_ERRORS),
        };
        if let Some(metric) = metric {
            self.metrics.add(metric, &[], 1);
        }
        outcome
    }

    async fn find_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<ProviderRecord>, ProviderError> {
        self.client.find_by_reference(reference).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Option<EumSettings>> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EumSettings::from_lookup(&|name| vars.get(name).cloned())
    }

    const ARN: &str = "arn:aws:sms-voice:eu-west-2:123456789012:sender-id/NHSALERT/GB";

    #[test]
    fn off_unless_an_origination_identity_is_given() {
        assert_eq!(settings(&[]).unwrap(), None);
        assert_eq!(
            settings(&[(env::EUM_ORIGINATION_IDENTITY, "")]).unwrap(),
            None
        );
    }

    #[test]
    fn reads_the_identity_rate_and_daily_limit() {
        let on = settings(&[(env::EUM_ORIGINATION_IDENTITY, ARN)])
            .unwrap()
            .unwrap();
        assert_eq!(on.parts_per_second, 10.0);
        assert_eq!(on.daily_limit, None);
        let on = settings(&[
            (env::EUM_ORIGINATION_IDENTITY, ARN),
            (env::EUM_PARTS_PER_SECOND, "20"),
            (env::EUM_DAILY_LIMIT, "100000"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(on.parts_per_second, 20.0);
        assert_eq!(on.daily_limit, Some(100_000));
        assert_eq!(on.plan_rate().unit, RateUnit::Parts);
        assert_eq!(on.plan_rate().name, "eum");
    }

    #[test]
    fn bad_values_are_named() {
        let error = settings(&[(env::EUM_ORIGINATION_IDENTITY, "NHSALERT")]).unwrap_err();
        assert!(
            error.to_string().contains(env::EUM_ORIGINATION_IDENTITY),
            "{error}"
        );
        let error = settings(&[
            (env::EUM_ORIGINATION_IDENTITY, ARN),
            (env::EUM_PARTS_PER_SECOND, "-1"),
        ])
        .unwrap_err();
        assert!(error.to_string().contains(env::EUM_PARTS_PER_SECOND));
        let error = settings(&[
            (env::EUM_ORIGINATION_IDENTITY, ARN),
            (env::EUM_DAILY_LIMIT, "lots"),
        ])
        .unwrap_err();
        assert!(error.to_string().contains(env::EUM_DAILY_LIMIT));
    }
}
