//! `PatientDataStore` on the `patient-data` table (short-lived).
//!
//! | item        | pk                          | sk                  | other attributes |
//! |-------------|-----------------------------|---------------------|------------------|
//! | recipient   | `CAMPAIGN#id#R#<chunk>`     | `<index, 10 digits>` | `data` (the recipient as written), `state` (status tag), `status` (status JSON), `delivery`, `written_back`, `expires_at` |
//! | dedupe key  | `CAMPAIGN#id#K#<shard>`     | `<dedupe storage key>` | `ods` (the practice holding it), `expires_at` |
//! | chunk entry | `CAMPAIGN#id#CHUNKS`        | `<chunk>`           | `expires_at` (no patient data: which chunks hold recipients) |
//!
//! No partition key holds a campaign: DynamoDB serves at most 1,000 write
//! and 3,000 read units a second per partition key, so one key for the
//! ~4,000,000 items of the reference campaign would take over an hour to
//! extract. A chunk (250 recipients) is its own partition; dedupe keys
//! spread over [`KEY_SHARDS`] partitions by a hash of the key; the chunk
//! entries (one write per chunk) let a practice's chunks and the whole
//! campaign be found for deletion and counting. A chunk id starts with its
//! practice's ODS code, so one practice's chunks are the sort-key prefix
//! `<ods>-` of the chunk entries. Counts and purge totals cover recipients
//! and dedupe keys; the chunk entries are deleted with them.
//!
//! Every item carries `expires_at` (epoch seconds), the table's TTL
//! attribute: the safety net behind `purge_campaign`, never the plan.
//!
//! Nothing read from this table reaches an error message: AWS messages are
//! dropped, JSON errors keep only their position, and errors name items by
//! chunk and index, never by dedupe key.

use super::{
    build_error, decode, get_bool, get_json, get_s, n, s, to_json, DecodeError, Item, Table,
    TxError,
};
use crate::aws::fault::FaultKind;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, PutRequest, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use hub_core::domain::{
    CampaignId, ChunkId, DedupeKey, DeliveryStatus, OdsCode, Recipient, RecipientStatus,
};
use hub_core::ports::{PatientDataStore, Placement, StatusUpdate, StoreError};

/// Partitions the dedupe keys of one campaign are spread over: at the
/// reference campaign's ~2,000,000 keys, extraction at 4,000 keys/s puts
/// about 60 writes/s on each.
pub const KEY_SHARDS: u32 = 64;

fn chunk_pk(campaign: &CampaignId, chunk: &ChunkId) -> String {
    format!("CAMPAIGN#{campaign}#R#{chunk}")
}

fn recipient_sk(index: u32) -> String {
    format!("{index:010}")
}

fn key_pk(campaign: &CampaignId, shard: u32) -> String {
    format!("CAMPAIGN#{campaign}#K#{shard:02}")
}

fn chunks_pk(campaign: &CampaignId) -> String {
    format!("CAMPAIGN#{campaign}#CHUNKS")
}

fn practice_prefix(ods: &OdsCode) -> String {
    format!("{ods}-")
}

fn status_tag(status: &RecipientStatus) -> &'static str {
    match status {
        RecipientStatus::Pending => "pending",
        RecipientStatus::Standby => "standby",
        RecipientStatus::Claimed { .. } => "claimed",
        RecipientStatus::Sent { .. } => "sent",
        RecipientStatus::LetterSent { .. } => "letter_sent",
        RecipientStatus::Rejected => "rejected",
        RecipientStatus::Withheld { .. } => "withheld",
    }
}

fn delivery_tag(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::PermanentFailure => "permanent_failure",
        DeliveryStatus::TemporaryFailure => "temporary_failure",
        DeliveryStatus::TechnicalFailure => "technical_failure",
    }
}

fn delivery_from_tag(tag: &str) -> Option<DeliveryStatus> {
    [
        DeliveryStatus::Delivered,
        DeliveryStatus::PermanentFailure,
        DeliveryStatus::TemporaryFailure,
        DeliveryStatus::TechnicalFailure,
    ]
    .into_iter()
    .find(|status| delivery_tag(*status) == tag)
}

/// `PatientDataStore` on DynamoDB. The table name comes from the function's
/// configuration (`PATIENT_DATA_TABLE`).
#[derive(Clone, Debug)]
pub struct DynamoPatientStore {
    table: Table,
    /// The hub table, whose chunk records count delivery receipts in the
    /// same transaction that records them (`record_delivery`).
    hub_table: Option<String>,
}

impl DynamoPatientStore {
    pub fn new(client: Client, table_name: impl Into<String>) -> Self {
        Self {
            table: Table::new(client, table_name.into(), false),
            hub_table: None,
        }
    }

    /// Names the hub table, so a delivery receipt is counted on its chunk
    /// record in the same transaction that records it. Without it
    /// `record_delivery` fails as misconfigured.
    pub fn counting_receipts_in(mut self, hub_table: impl Into<String>) -> Self {
        self.hub_table = Some(hub_table.into());
        self
    }

    /// How many requests a call keeps in flight (default 16).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.table.concurrency = concurrency.max(1);
        self
    }

    pub fn table_name(&self) -> &str {
        &self.table.name
    }

    fn recipient_item(
        campaign: &CampaignId,
        recipient: &Recipient,
        expires_at: DateTime<Utc>,
    ) -> Result<Item, StoreError> {
        let mut item = Item::from([
            ("pk".into(), s(chunk_pk(campaign, &recipient.chunk))),
            ("sk".into(), s(recipient_sk(recipient.index))),
            ("data".into(), to_json(recipient)?),
            ("state".into(), s(status_tag(&recipient.status))),
            ("status".into(), to_json(&recipient.status)?),
            (
                "written_back".into(),
                AttributeValue::Bool(recipient.written_back),
            ),
            ("expires_at".into(), n(expires_at.timestamp())),
        ]);
        if let Some(delivery) = recipient.delivery {
            item.insert("delivery".into(), s(delivery_tag(delivery)));
        }
        Ok(item)
    }

    fn read_recipient(item: &Item) -> Result<Recipient, DecodeError> {
        let mut recipient: Recipient = get_json(item, "data")?;
        recipient.status = get_json(item, "status")?;
        recipient.written_back = get_bool(item, "written_back")?;
        recipient.delivery = match item.get("delivery") {
            None => None,
            Some(_) => Some(
                delivery_from_tag(get_s(item, "delivery")?)
                    .ok_or(DecodeError::Attribute("delivery"))?,
            ),
        };
        Ok(recipient)
    }

    /// Runs a conditional `UpdateItem` on one recipient; returns whether the
    /// condition held.
    /// Sets each recipient's status where `condition` holds (`from`: its
    /// tag values); a recipient failing it is left alone.
    async fn write_statuses(
        &self,
        campaign: &CampaignId,
        updates: &[StatusUpdate],
        condition: &str,
        from: &[(&'static str, &'static str)],
    ) -> Result<(), StoreError> {
        futures::stream::iter(0..updates.len())
            .map(|position| async move {
                let update = &updates[position];
                let mut values = vec![
                    (":status", to_json(&update.status)?),
                    (":state", s(status_tag(&update.status))),
                ];
                values.extend(from.iter().map(|(name, tag)| (*name, s(*tag))));
                self.update_recipient(
                    campaign,
                    &update.chunk,
                    update.index,
                    "SET #status = :status, #state = :state",
                    condition,
                    values,
                )
                .await
                .map(|_| ())
            })
            .buffer_unordered(self.table.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn update_recipient(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        index: u32,
        update: &str,
        condition: &str,
        values: Vec<(&'static str, AttributeValue)>,
    ) -> Result<bool, StoreError> {
        let mut request = self
            .table
            .client
            .update_item()
            .table_name(&self.table.name)
            .set_key(Some(Table::key(
                chunk_pk(campaign, chunk),
                recipient_sk(index),
            )))
            .update_expression(update)
            .condition_expression(condition);
        // `status` and `state` are DynamoDB reserved words.
        for name in ["status", "state"] {
            let placeholder = format!("#{name}");
            if update.contains(&placeholder) || condition.contains(&placeholder) {
                request = request.expression_attribute_names(placeholder, name);
            }
        }
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        match self
            .table
            .call("UpdateItem", || request.clone().send())
            .await
        {
            Ok(_) => Ok(true),
            Err((fault, _)) => {
                if fault.kind == FaultKind::Condition {
                    Ok(false)
                } else {
                    Err(fault.into())
                }
            }
        }
    }

    /// Deletes every item under partition key `pk` whose sort key starts
    /// with `prefix`, page by page (memory does not grow with the campaign).
    /// Returns how many it deleted.
    async fn delete_partition(&self, pk: String, prefix: Option<&str>) -> Result<u64, StoreError> {
        let mut deleted = 0u64;
        let mut start = None;
        loop {
            let (page, next) = self
                .table
                .query_page(
                    &|q| {
                        let q = q
                            .expression_attribute_values(":pk", s(pk.clone()))
                            .projection_expression("pk, sk")
                            .consistent_read(true);
                        match prefix {
                            Some(prefix) => q
                                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                                .expression_attribute_values(":prefix", s(prefix)),
                            None => q.key_condition_expression("pk = :pk"),
                        }
                    },
                    start,
                )
                .await?;
            let requests = page
                .into_iter()
                .map(|key| {
                    let delete = DeleteRequest::builder()
                        .set_key(Some(key))
                        .build()
                        .map_err(build_error)?;
                    Ok(WriteRequest::builder().delete_request(delete).build())
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            deleted += requests.len() as u64;
            self.table.batch_write(requests).await?;
            match next {
                Some(key) => start = Some(key),
                None => return Ok(deleted),
            }
        }
    }

    /// The chunks of `campaign` that hold (or held) recipients, those of
    /// one practice if `ods` is given.
    async fn chunks(
        &self,
        campaign: &CampaignId,
        ods: Option<&OdsCode>,
    ) -> Result<Vec<String>, StoreError> {
        let pk = chunks_pk(campaign);
        let prefix = ods.map(practice_prefix);
        let items = self
            .table
            .query_all(&|q| {
                let q = q
                    .expression_attribute_values(":pk", s(pk.clone()))
                    .projection_expression("sk")
                    .consistent_read(true);
                match &prefix {
                    Some(prefix) => q
                        .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                        .expression_attribute_values(":prefix", s(prefix.clone())),
                    None => q.key_condition_expression("pk = :pk"),
                }
            })
            .await?;
        items
            .iter()
            .enumerate()
            .map(|(position, item)| {
                get_s(item, "sk")
                    .map(str::to_string)
                    .map_err(decode(format!("chunk entry {position} of {campaign}")))
            })
            .collect()
    }

    /// Deletes the recipients of these chunks, then their chunk entries.
    async fn delete_chunks(
        &self,
        campaign: &CampaignId,
        chunks: Vec<String>,
    ) -> Result<u64, StoreError> {
        let partitions: Vec<String> = chunks
            .iter()
            .map(|chunk| format!("CAMPAIGN#{campaign}#R#{chunk}"))
            .collect();
        let counts: Vec<u64> = futures::stream::iter(partitions)
            .map(|pk| self.delete_partition(pk, None))
            .buffer_unordered(self.table.concurrency)
            .try_collect()
            .await?;
        for chunk in &chunks {
            self.delete_partition(chunks_pk(campaign), Some(chunk))
                .await?;
        }
        Ok(counts.iter().sum())
    }
}

#[async_trait]
impl PatientDataStore for DynamoPatientStore {
    async fn place_keys(
        &self,
        campaign: &CampaignId,
        ods: &OdsCode,
        keys: &[DedupeKey],
        expires_at: DateTime<Utc>,
    ) -> Result<Vec<Placement>, StoreError> {
        // Positions, not references, go through the streams in this impl: a
        // closure over borrowed items trips the compiler's `Send` check.
        futures::stream::iter(0..keys.len())
            .map(|position| {
                let key = &keys[position];
                let item = Item::from([
                    ("pk".into(), s(key_pk(campaign, key.shard(KEY_SHARDS)))),
                    ("sk".into(), s(key.storage_key())),
                    ("ods".into(), s(ods.as_str())),
                    ("expires_at".into(), n(expires_at.timestamp())),
                ]);
                async move {
                    let request = self
                        .table
                        .client
                        .put_item()
                        .table_name(&self.table.name)
                        .set_item(Some(item))
                        .condition_expression("attribute_not_exists(pk) OR ods = :ods")
                        .expression_attribute_values(":ods", s(ods.as_str()));
                    match self.table.call("PutItem", || request.clone().send()).await {
                        Ok(_) => Ok(Placement::Placed),
                        Err((fault, _)) => {
                            if fault.kind == FaultKind::Condition {
                                Ok(Placement::HeldElsewhere)
                            } else {
                                Err(StoreError::from(fault))
                            }
                        }
                    }
                }
            })
            .buffered(self.table.concurrency)
            .try_collect()
            .await
    }

    async fn key_holders(
        &self,
        campaign: &CampaignId,
        keys: &[DedupeKey],
    ) -> Result<Vec<Option<OdsCode>>, StoreError> {
        futures::stream::iter(0..keys.len())
            .map(|position| {
                let key = &keys[position];
                let (pk, sk) = (key_pk(campaign, key.shard(KEY_SHARDS)), key.storage_key());
                async move {
                    let Some(item) = self.table.get(&pk, &sk).await? else {
                        return Ok(None);
                    };
                    let ods = get_s(&item, "ods").map_err(decode(format!("key {position}")))?;
                    OdsCode::parse(ods).map(Some).map_err(|_| {
                        StoreError::Unexpected(anyhow::anyhow!(
                            "key {position} is held by an unreadable ODS code"
                        ))
                    })
                }
            })
            .buffered(self.table.concurrency)
            .try_collect()
            .await
    }

    async fn take_over_key(
        &self,
        campaign: &CampaignId,
        key: &DedupeKey,
        from: &OdsCode,
        to: &OdsCode,
    ) -> Result<bool, StoreError> {
        let request = self
            .table
            .client
            .update_item()
            .table_name(&self.table.name)
            .set_key(Some(Table::key(
                key_pk(campaign, key.shard(KEY_SHARDS)),
                key.storage_key(),
            )))
            .update_expression("SET ods = :to")
            // `to` already holding it: a repeated take-over by the winner.
            .condition_expression("ods IN (:from, :to)")
            .expression_attribute_values(":from", s(from.as_str()))
            .expression_attribute_values(":to", s(to.as_str()));
        match self
            .table
            .call("UpdateItem", || request.clone().send())
            .await
        {
            Ok(_) => Ok(true),
            Err((fault, _)) if fault.kind == FaultKind::Condition => Ok(false),
            Err((fault, _)) => Err(fault.into()),
        }
    }

    async fn put_recipients(
        &self,
        campaign: &CampaignId,
        recipients: &[Recipient],
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // A chunk entry per chunk written, so deletion can find them.
        let mut chunks: Vec<&ChunkId> = recipients.iter().map(|r| &r.chunk).collect();
        chunks.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        chunks.dedup();
        let entries = chunks
            .into_iter()
            .map(|chunk| {
                let put = PutRequest::builder()
                    .set_item(Some(Item::from([
                        ("pk".into(), s(chunks_pk(campaign))),
                        ("sk".into(), s(chunk.as_str())),
                        ("expires_at".into(), n(expires_at.timestamp())),
                    ])))
                    .build()
                    .map_err(build_error)?;
                Ok(WriteRequest::builder().put_request(put).build())
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.table.batch_write(entries).await?;
        let requests = recipients
            .iter()
            .map(|recipient| {
                let put = PutRequest::builder()
                    .set_item(Some(Self::recipient_item(campaign, recipient, expires_at)?))
                    .build()
                    .map_err(build_error)?;
                Ok(WriteRequest::builder().put_request(put).build())
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(self.table.batch_write(requests).await?)
    }

    async fn delete_practice_recipients(
        &self,
        campaign: &CampaignId,
        ods: &OdsCode,
    ) -> Result<u64, StoreError> {
        let chunks = self.chunks(campaign, Some(ods)).await?;
        self.delete_chunks(campaign, chunks).await
    }

    async fn load_chunk(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
    ) -> Result<Vec<Recipient>, StoreError> {
        let pk = chunk_pk(campaign, chunk);
        let items = self
            .table
            .query_all(&|q| {
                q.key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(pk.clone()))
                    .consistent_read(true)
            })
            .await?;
        items
            .iter()
            .enumerate()
            .map(|(position, item)| {
                Self::read_recipient(item).map_err(decode(format!(
                    "recipient {position} of chunk {campaign}/{chunk}"
                )))
            })
            .collect()
    }

    async fn claim(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        indexes: &[u32],
        now: DateTime<Utc>,
    ) -> Result<Vec<u32>, StoreError> {
        let claimed = RecipientStatus::Claimed { at: now };
        let status = to_json(&claimed)?;
        let results: Vec<Option<u32>> = futures::stream::iter(indexes.to_vec())
            .map(|index| {
                let status = status.clone();
                async move {
                    let won = self
                        .update_recipient(
                            campaign,
                            chunk,
                            index,
                            "SET #status = :status, #state = :claimed",
                            "#state = :pending",
                            vec![
                                (":status", status),
                                (":claimed", s("claimed")),
                                (":pending", s("pending")),
                            ],
                        )
                        .await?;
                    Ok::<_, StoreError>(won.then_some(index))
                }
            })
            .buffered(self.table.concurrency)
            .try_collect()
            .await?;
        Ok(results.into_iter().flatten().collect())
    }

    async fn release_claim(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        index: u32,
        claimed_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let held = to_json(&RecipientStatus::Claimed { at: claimed_at })?;
        let pending = to_json(&RecipientStatus::Pending)?;
        self.update_recipient(
            campaign,
            chunk,
            index,
            "SET #status = :status, #state = :pending",
            "#status = :held",
            vec![
                (":status", pending),
                (":pending", s("pending")),
                (":held", held),
            ],
        )
        .await
    }

    async fn set_status(
        &self,
        campaign: &CampaignId,
        updates: &[StatusUpdate],
    ) -> Result<(), StoreError> {
        // A deleted item fails `attribute_exists` and is ignored; a final
        // outcome (sent, letter sent, rejected) is never overwritten, so a
        // late or repeated worker changes nothing.
        self.write_statuses(
            campaign,
            updates,
            "attribute_exists(pk) AND #state IN (:pending, :claimed)",
            &[(":pending", "pending"), (":claimed", "claimed")],
        )
        .await
    }

    async fn decide_standby(
        &self,
        campaign: &CampaignId,
        updates: &[StatusUpdate],
    ) -> Result<(), StoreError> {
        self.write_statuses(
            campaign,
            updates,
            "attribute_exists(pk) AND #state = :standby",
            &[(":standby", "standby")],
        )
        .await
    }

    async fn record_delivery(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        index: u32,
        status: DeliveryStatus,
    ) -> Result<bool, StoreError> {
        // Every provider status the hub records is final (GOV.UK Notify's
        // temporary-failure means it has stopped trying), so the first one
        // wins and a repeated or later callback changes nothing. The count
        // is `ADD`ed in the same transaction, conditional on that first
        // status: never lost, never twice (a retry of a transaction that
        // succeeded finds the status set, or is recognised by its token).
        let Some(hub_table) = &self.hub_table else {
            return Err(StoreError::Unexpected(anyhow::anyhow!(
                "delivery receipts need the hub table to be counted in"
            )));
        };
        let record = Update::builder()
            .table_name(&self.table.name)
            .set_key(Some(Table::key(
                chunk_pk(campaign, chunk),
                recipient_sk(index),
            )))
            .update_expression("SET delivery = :delivery")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(delivery)")
            .expression_attribute_values(":delivery", s(delivery_tag(status)))
            .build()
            .map_err(build_error)?;
        let counter = if status.is_delivered() {
            "delivered"
        } else {
            "failed"
        };
        // Counted on the chunk's receipts item, off the campaign's own key
        // (receipts arrive at the rate texts are sent); a chunk created
        // before receipts items existed counts on its own record, which
        // reads add too.
        let places = [
            super::hub::receipts_pk(campaign, chunk),
            super::hub::campaign_pk(campaign),
        ];
        for pk in places {
            let count = Update::builder()
                .table_name(hub_table)
                .set_key(Some(Table::key(pk, super::hub::chunk_sk(chunk))))
                .update_expression(format!("ADD {counter} :one"))
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":one", n(1))
                .build()
                .map_err(build_error)?;
            let actions = vec![
                TransactWriteItem::builder().update(record.clone()).build(),
                TransactWriteItem::builder().update(count).build(),
            ];
            match self.table.transact(actions).await {
                Ok(()) => return Ok(true),
                Err(TxError::Condition(0)) => return Ok(false),
                Err(TxError::Condition(_)) => {}
                Err(TxError::Fault(fault)) => return Err(fault.into()),
            }
        }
        Err(StoreError::NotFound(format!("chunk {campaign}/{chunk}")))
    }

    async fn mark_written_back(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        indexes: &[u32],
    ) -> Result<(), StoreError> {
        futures::stream::iter(indexes.to_vec())
            .map(|index| async move {
                self.update_recipient(
                    campaign,
                    chunk,
                    index,
                    "SET written_back = :true",
                    "attribute_exists(pk)",
                    vec![(":true", AttributeValue::Bool(true))],
                )
                .await
                .map(|_| ())
            })
            .buffer_unordered(self.table.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn purge_campaign(&self, campaign: &CampaignId) -> Result<u64, StoreError> {
        let keys: Vec<u64> = futures::stream::iter(0..KEY_SHARDS)
            .map(|shard| self.delete_partition(key_pk(campaign, shard), None))
            .buffer_unordered(self.table.concurrency)
            .try_collect()
            .await?;
        let chunks = self.chunks(campaign, None).await?;
        Ok(keys.iter().sum::<u64>() + self.delete_chunks(campaign, chunks).await?)
    }

    async fn count_campaign(&self, campaign: &CampaignId) -> Result<u64, StoreError> {
        let mut partitions: Vec<String> = (0..KEY_SHARDS).map(|i| key_pk(campaign, i)).collect();
        partitions.extend(
            self.chunks(campaign, None)
                .await?
                .iter()
                .map(|chunk| format!("CAMPAIGN#{campaign}#R#{chunk}")),
        );
        let counts: Vec<u64> = futures::stream::iter(partitions)
            .map(|pk| async move {
                self.table
                    .query_count(&|q| {
                        q.key_condition_expression("pk = :pk")
                            .expression_attribute_values(":pk", s(pk.clone()))
                            .consistent_read(true)
                    })
                    .await
            })
            .buffer_unordered(self.table.concurrency)
            .try_collect()
            .await?;
        Ok(counts.iter().sum())
    }

    async fn count_all(&self) -> Result<u64, StoreError> {
        // Recipients and dedupe keys; chunk entries hold no patient data.
        Ok(self.table.scan_count(&["data", "ods"]).await?)
    }
}
