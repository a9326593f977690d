//! CloudWatch metrics in the embedded metric format (EMF): one JSON line on
//! stdout per metric and dimension set, which Lambda sends to CloudWatch
//! Logs and CloudWatch turns into the metric the alarms watch. Counts are
//! added up during an invocation and written at its end ([`Metrics::flush`]).
//! Names and dimension values are fixed words (queue names), never data.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// The namespace of every metric the functions emit.
pub const NAMESPACE: &str = "SmsHub";
/// Texts a provider accepted.
pub const SMS_SENT: &str = "SmsSent";
/// 429 rate-limit answers from a provider (the router backs off).
pub const SMS_RATE_LIMITED: &str = "SmsRateLimited";
/// Provider failures other than a rate limit or a rejected number: 5xx,
/// timeouts, daily limit, refused credentials, unreadable Notify secret.
pub const PROVIDER_ERRORS: &str = "ProviderErrors";
/// Jobs a function reported failed, by dimension `Queue` (`extract`:
/// failed extraction attempts).
pub const JOBS_FAILED: &str = "JobsFailed";
/// The dimension of [`JOBS_FAILED`].
pub const QUEUE_DIMENSION: &str = "Queue";
/// Practices an extraction left held as `extraction_suspect` (far below
/// their registered list size): nothing is sent in the region until staff
/// decide, so the alarm on it pages them.
pub const PRACTICES_HELD: &str = "PracticesHeld";
/// 5xx answers of the HTTP functions (api, optout-link, receipts), which
/// return them as responses, so Lambda's error count never sees them.
pub const API_SERVER_ERRORS: &str = "ApiServerErrors";

type Key = (&'static str, Vec<(&'static str, String)>);

/// Counts to be written as EMF lines.
pub struct Metrics {
    counts: Mutex<BTreeMap<Key, u64>>,
    sink: Mutex<Box<dyn Write + Send>>,
}

impl Metrics {
    /// Metrics written to `sink` (stdout on Lambda).
    pub fn to_writer(sink: impl Write + Send + 'static) -> Arc<Self> {
        Arc::new(Self {
            counts: Mutex::default(),
            sink: Mutex::new(Box::new(sink)),
        })
    }

    /// The process's metrics, on stdout.
    pub fn process() -> Arc<Self> {
        static PROCESS: OnceLock<Arc<Metrics>> = OnceLock::new();
        PROCESS
            .get_or_init(|| Self::to_writer(std::io::stdout()))
            .clone()
    }

    /// Adds `count` to metric `name` with `dimensions`.
    pub fn add(&self, name: &'static str, dimensions: &[(&'static str, &str)], count: u64) {
        let key = (
            name,
            dimensions
                .iter()
                .map(|(dimension, value)| (*dimension, value.to_string()))
                .collect(),
        );
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(key).or_default() += count;
        }
    }

    /// Writes every count as one EMF line and starts again from zero.
    pub fn flush(&self) {
        let counts = match self.counts.lock() {
            Ok(mut counts) => std::mem::take(&mut *counts),
            Err(_) => return,
        };
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis() as u64)
            .unwrap_or_default();
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        for ((name, dimensions), count) in counts {
            let line = emf_line(timestamp, name, &dimensions, count);
            // A lost metric line must not fail the invocation.
            let _ = writeln!(sink, "{line}");
        }
        let _ = sink.flush();
    }
}

/// One metric value in the embedded metric format.
pub fn emf_line(
    timestamp: u64,
    name: &str,
    dimensions: &[(&'static str, String)],
    count: u64,
) -> serde_json::Value {
    let mut line = serde_json::json!({
        "_aws": {
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions.iter().map(|(d, _)| *d).collect::<Vec<_>>()],
                "Metrics": [{ "Name": name, "Unit": "Count" }],
            }],
        },
        name: count,
    });
    for (dimension, value) in dimensions {
        line[*dimension] = serde_json::Value::String(value.clone());
    }
    line
}
