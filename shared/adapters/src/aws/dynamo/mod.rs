//! DynamoDB: the `hub` and `patient-data` tables.
//!
//! Both tables have string keys `pk` (partition) and `sk` (sort). Records
//! are stored as a JSON string attribute `data`, next to the few plain
//! attributes that condition expressions and counters need. See the module
//! docs of [`hub`] and [`patient`] for each table's items.

pub mod hub;
pub mod patient;

use super::fault::{backoff, Fault, FaultKind};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Select, TransactWriteItem, WriteRequest};
use aws_sdk_dynamodb::Client;
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::time::Duration;

pub use hub::DynamoHubStore;
pub use patient::DynamoPatientStore;

pub(crate) type Item = HashMap<String, AttributeValue>;

/// `BatchWriteItem` takes at most 25 requests.
pub(crate) const BATCH_WRITE_MAX: usize = 25;
/// `TransactWriteItems` takes at most 100 actions.
pub(crate) const TRANSACT_MAX: usize = 100;
/// Retries of `UnprocessedItems` (and of throttled batches) before giving up.
const BATCH_RETRIES: u32 = 8;
/// Retries of a throttled or failed single-item call, on top of the SDK's
/// own attempts: a new on-demand table throttles bursts above ~4,000
/// writes/s, and failing a whole extraction or send job over one throttled
/// write would cost far more than waiting.
const CALL_RETRIES: u32 = 5;
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Why a stored item could not be read back. Carries attribute names, never
/// values.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("attribute `{0}` is missing or not of the expected type")]
    Attribute(&'static str),
    #[error("attribute `{attribute}` holds JSON that does not decode ({category} error at line {line} column {column})")]
    Json {
        attribute: &'static str,
        category: &'static str,
        line: usize,
        column: usize,
    },
}

pub(crate) fn get_s<'a>(item: &'a Item, name: &'static str) -> Result<&'a str, DecodeError> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Ok(value),
        _ => Err(DecodeError::Attribute(name)),
    }
}

pub(crate) fn get_n<T: std::str::FromStr>(
    item: &Item,
    name: &'static str,
) -> Result<T, DecodeError> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().map_err(|_| DecodeError::Attribute(name)),
        _ => Err(DecodeError::Attribute(name)),
    }
}

/// A number attribute that counts from zero when absent.
pub(crate) fn get_n_or_zero(item: &Item, name: &'static str) -> Result<i64, DecodeError> {
    match item.get(name) {
        None => Ok(0),
        Some(_) => get_n(item, name),
    }
}

pub(crate) fn get_bool(item: &Item, name: &'static str) -> Result<bool, DecodeError> {
    match item.get(name) {
        Some(AttributeValue::Bool(value)) => Ok(*value),
        None => Ok(false),
        _ => Err(DecodeError::Attribute(name)),
    }
}

/// Decodes a JSON attribute. The error says where the JSON broke, never what
/// it held (serde's own messages quote values, which may be personal).
pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
    item: &Item,
    name: &'static str,
) -> Result<T, DecodeError> {
    let text = get_s(item, name)?;
    serde_json::from_str(text).map_err(|e| DecodeError::Json {
        attribute: name,
        category: match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        },
        line: e.line(),
        column: e.column(),
    })
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<AttributeValue, anyhow::Error> {
    Ok(s(serde_json::to_string(value)?))
}

/// Converts a counter read from DynamoDB (which may go below zero if a
/// bug double-counts) to the `u64` the domain uses.
pub(crate) fn counter(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// One failed transaction: which action's condition failed, or why else.
#[derive(Debug)]
pub(crate) enum TxError {
    /// The condition of the action at this index did not hold.
    Condition(usize),
    Fault(Fault),
}

/// A DynamoDB table and the client that reaches it.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    pub client: Client,
    pub name: String,
    /// Whether AWS error messages may be kept (false on the patient-data table).
    pub keep_messages: bool,
    /// How many requests one call keeps in flight.
    pub concurrency: usize,
}

/// Maps a record that cannot be decoded to an unexpected store error.
pub(crate) fn decode(what: String) -> impl FnOnce(DecodeError) -> hub_core::ports::StoreError {
    move |err| {
        hub_core::ports::StoreError::Unexpected(
            anyhow::Error::new(err).context(format!("reading {what}")),
        )
    }
}

pub(crate) fn build_error(err: aws_sdk_dynamodb::error::BuildError) -> hub_core::ports::StoreError {
    hub_core::ports::StoreError::Unexpected(
        anyhow::Error::new(err).context("building a DynamoDB request"),
    )
}

impl Table {
    /// `keep_messages` is false for the patient-data table, whose AWS error
    /// messages may quote values.
    pub fn new(client: Client, name: String, keep_messages: bool) -> Self {
        Self {
            client,
            name,
            keep_messages,
            concurrency: 16,
        }
    }

    pub fn fault<E: ProvideErrorMetadata>(
        &self,
        operation: &'static str,
        err: &aws_sdk_dynamodb::error::SdkError<E>,
    ) -> Fault {
        Fault::from_sdk(operation, err, self.keep_messages)
    }

    /// Makes an SDK call, retrying transient faults (throttling, 5xx,
    /// timeouts) with exponential backoff and jitter. On failure returns
    /// the classified fault and the SDK error (for callers that inspect it).
    pub async fn call<T, E, Fut>(
        &self,
        operation: &'static str,
        mut send: impl FnMut() -> Fut,
    ) -> Result<T, (Fault, aws_sdk_dynamodb::error::SdkError<E>)>
    where
        E: ProvideErrorMetadata,
        Fut: std::future::Future<Output = Result<T, aws_sdk_dynamodb::error::SdkError<E>>>,
    {
        let mut attempt = 0u32;
        loop {
            match send().await {
                Ok(out) => return Ok(out),
                Err(err) => {
                    let fault = self.fault(operation, &err);
                    if !fault.is_transient() || attempt >= CALL_RETRIES {
                        return Err((fault, err));
                    }
                }
            }
            tokio::time::sleep(backoff(attempt, BACKOFF_BASE, BACKOFF_CAP)).await;
            attempt += 1;
        }
    }

    pub fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
        HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
    }

    /// Strongly consistent `GetItem`.
    pub async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, Fault> {
        let request = self
            .client
            .get_item()
            .table_name(&self.name)
            .set_key(Some(Self::key(pk, sk)))
            .consistent_read(true);
        let out = self
            .call("GetItem", || request.clone().send())
            .await
            .map_err(|(fault, _)| fault)?;
        Ok(out.item)
    }

    /// One page of a query; returns the items and where the next page starts.
    pub async fn query_page(
        &self,
        build: &(dyn Fn(QueryFluentBuilder) -> QueryFluentBuilder + Sync),
        start: Option<Item>,
    ) -> Result<(Vec<Item>, Option<Item>), Fault> {
        let request =
            build(self.client.query().table_name(&self.name)).set_exclusive_start_key(start);
        let out = self
            .call("Query", || request.clone().send())
            .await
            .map_err(|(fault, _)| fault)?;
        let next = out.last_evaluated_key.filter(|key| !key.is_empty());
        Ok((out.items.unwrap_or_default(), next))
    }

    /// Every item a query matches, following pagination.
    pub async fn query_all(
        &self,
        build: &(dyn Fn(QueryFluentBuilder) -> QueryFluentBuilder + Sync),
    ) -> Result<Vec<Item>, Fault> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self.query_page(build, start).await?;
            items.extend(page);
            match next {
                Some(key) => start = Some(key),
                None => return Ok(items),
            }
        }
    }

    /// How many items a query matches (`Select=COUNT`), following pagination.
    pub async fn query_count(
        &self,
        build: &(dyn Fn(QueryFluentBuilder) -> QueryFluentBuilder + Sync),
    ) -> Result<u64, Fault> {
        let mut total = 0u64;
        let mut start = None;
        loop {
            let request = build(self.client.query().table_name(&self.name))
                .select(Select::Count)
                .set_exclusive_start_key(start);
            let out = self
                .call("Query", || request.clone().send())
                .await
                .map_err(|(fault, _)| fault)?;
            total += u64::try_from(out.count).unwrap_or(0);
            match out.last_evaluated_key.filter(|key| !key.is_empty()) {
                Some(key) => start = Some(key),
                None => return Ok(total),
            }
        }
    }

    /// Items in the table (`Scan`, `Select=COUNT`) that have one of these
    /// attributes: not for hot paths.
    pub async fn scan_count(&self, having_any_of: &[&str]) -> Result<u64, Fault> {
        let mut total = 0u64;
        let mut start = None;
        let filter = having_any_of
            .iter()
            .enumerate()
            .map(|(i, _)| format!("attribute_exists(#a{i})"))
            .collect::<Vec<_>>()
            .join(" OR ");
        loop {
            let mut request = self
                .client
                .scan()
                .table_name(&self.name)
                .select(Select::Count)
                .consistent_read(true)
                .set_exclusive_start_key(start);
            if !having_any_of.is_empty() {
                request = request.filter_expression(&filter);
                for (i, name) in having_any_of.iter().enumerate() {
                    request = request.expression_attribute_names(format!("#a{i}"), *name);
                }
            }
            let out = self
                .call("Scan", || request.clone().send())
                .await
                .map_err(|(fault, _)| fault)?;
            total += u64::try_from(out.count).unwrap_or(0);
            match out.last_evaluated_key.filter(|key| !key.is_empty()) {
                Some(key) => start = Some(key),
                None => return Ok(total),
            }
        }
    }

    /// Writes requests with `BatchWriteItem`, 25 per call and
    /// `self.concurrency` calls in flight. `UnprocessedItems` and throttled
    /// calls are retried with exponential backoff and full jitter.
    pub async fn batch_write(&self, requests: Vec<WriteRequest>) -> Result<(), Fault> {
        let mut batches = Vec::with_capacity(requests.len().div_ceil(BATCH_WRITE_MAX));
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            batches.push(requests.by_ref().take(BATCH_WRITE_MAX).collect::<Vec<_>>());
        }
        futures::stream::iter(batches)
            .map(|batch| self.batch_write_one(batch))
            .buffer_unordered(self.concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn batch_write_one(&self, mut pending: Vec<WriteRequest>) -> Result<(), Fault> {
        let mut attempt = 0u32;
        loop {
            let result = self
                .client
                .batch_write_item()
                .request_items(&self.name, pending.clone())
                .send()
                .await;
            match result {
                Ok(out) => {
                    pending = out
                        .unprocessed_items
                        .and_then(|mut unprocessed| unprocessed.remove(&self.name))
                        .unwrap_or_default();
                    if pending.is_empty() {
                        return Ok(());
                    }
                    if attempt >= BATCH_RETRIES {
                        let mut fault =
                            Fault::new(FaultKind::Transient, "BatchWriteItem", "UnprocessedItems");
                        fault.message = Some(format!(
                            "{} items still unprocessed after {attempt} retries",
                            pending.len()
                        ));
                        return Err(fault);
                    }
                }
                Err(err) => {
                    let fault = self.fault("BatchWriteItem", &err);
                    if !fault.is_transient() || attempt >= BATCH_RETRIES {
                        return Err(fault);
                    }
                }
            }
            tokio::time::sleep(backoff(attempt, BACKOFF_BASE, BACKOFF_CAP)).await;
            attempt += 1;
        }
    }

    /// `TransactWriteItems`; a cancelled transaction names the action whose
    /// condition failed. Transaction conflicts and throttling are transient.
    pub async fn transact(&self, actions: Vec<TransactWriteItem>) -> Result<(), TxError> {
        debug_assert!(actions.len() <= TRANSACT_MAX);
        // One idempotency token for every attempt: a retry after a lost
        // response is recognised by DynamoDB (for 10 minutes) as done.
        let token = uuid::Uuid::new_v4().to_string();
        let mut attempt = 0u32;
        loop {
            match self.transact_once(actions.clone(), &token).await {
                Err(TxError::Fault(fault)) if fault.is_transient() && attempt < CALL_RETRIES => {
                    tokio::time::sleep(backoff(attempt, BACKOFF_BASE, BACKOFF_CAP)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn transact_once(
        &self,
        actions: Vec<TransactWriteItem>,
        token: &str,
    ) -> Result<(), TxError> {
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .client_request_token(token)
            .send()
            .await;
        let err = match result {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
            err.as_service_error()
        {
            let reasons = cancelled.cancellation_reasons();
            if let Some(index) = reasons
                .iter()
                .position(|r| r.code() == Some("ConditionalCheckFailed"))
            {
                return Err(TxError::Condition(index));
            }
            let code = reasons
                .iter()
                .filter_map(|r| r.code())
                .find(|code| *code != "None")
                .unwrap_or("TransactionCanceled");
            let kind = match code {
                "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded" => {
                    FaultKind::Transient
                }
                _ => FaultKind::Permanent,
            };
            return Err(TxError::Fault(Fault::new(kind, "TransactWriteItems", code)));
        }
        Err(TxError::Fault(self.fault("TransactWriteItems", &err)))
    }
}

pub(crate) fn backoff_for_retry(attempt: u32) -> Duration {
    backoff(attempt, BACKOFF_BASE, BACKOFF_CAP)
}
