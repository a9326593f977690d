//! `PatientDataStore` on the `patient-data` table (short-lived).
//!
//! | item        | pk            | sk                           | other attributes |
//! |-------------|---------------|------------------------------|------------------|
//! | recipient   | `CAMPAIGN#id` | `R#<chunk>#<index, 10 digits>` | `data` (the recipient as written), `state` (status tag), `status` (status JSON), `delivery`, `written_back`, `expires_at` |
//! | dedupe key  | `CAMPAIGN#id` | `K#<dedupe storage key>`     | `ods` (the practice holding it), `expires_at` |
//!
//! Every item carries `expires_at` (epoch seconds), the table's TTL
//! attribute: the safety net behind `purge_campaign`, never the plan.
//! A chunk id starts with its practice's ODS code, so one practice's
//! recipients are the sort-key prefix `R#<ods>-`.
//!
//! Nothing read from this table reaches an error message: AWS messages are
//! dropped, JSON errors keep only their position, and errors name items by
//! chunk and index, never by dedupe key.

use super::{
    build_error, decode, get_bool, get_json, get_s, n, s, to_json, DecodeError, Item, Table,
};
use crate::aws::fault::FaultKind;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use hub_core::domain::{
    CampaignId, ChunkId, DedupeKey, DeliveryStatus, OdsCode, Recipient, RecipientStatus,
};
use hub_core::ports::{PatientDataStore, Placement, StatusUpdate, StoreError};

fn campaign_pk(id: &CampaignId) -> String {
    format!("CAMPAIGN#{id}")
}

fn recipient_sk(chunk: &ChunkId, index: u32) -> String {
    format!("R#{chunk}#{index:010}")
}

fn chunk_prefix(chunk: &ChunkId) -> String {
    format!("R#{chunk}#")
}

fn practice_prefix(ods: &OdsCode) -> String {
    format!("R#{ods}-")
}

fn key_sk(key: &DedupeKey) -> String {
    format!("K#{}", key.storage_key())
}

fn status_tag(status: &RecipientStatus) -> &'static str {
    match status {
        RecipientStatus::Pending => "pending",
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
}

impl DynamoPatientStore {
    pub fn new(client: Client, table_name: impl Into<String>) -> Self {
        Self {
            table: Table::new(client, table_name.into(), false),
        }
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
            ("pk".into(), s(campaign_pk(campaign))),
            (
                "sk".into(),
                s(recipient_sk(&recipient.chunk, recipient.index)),
            ),
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
                campaign_pk(campaign),
                recipient_sk(chunk, index),
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

    /// Deletes every item of `campaign` whose sort key starts with `prefix`,
    /// page by page (memory does not grow with the campaign). Returns how
    /// many it deleted.
    async fn delete_prefix(
        &self,
        campaign: &CampaignId,
        prefix: Option<&str>,
    ) -> Result<u64, StoreError> {
        let pk = campaign_pk(campaign);
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
        let pk = campaign_pk(campaign);
        // Positions, not references, go through the streams in this impl: a
        // closure over borrowed items trips the compiler's `Send` check.
        futures::stream::iter(0..keys.len())
            .map(|position| {
                let key = &keys[position];
                let item = Item::from([
                    ("pk".into(), s(pk.clone())),
                    ("sk".into(), s(key_sk(key))),
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
        let pk = campaign_pk(campaign);
        futures::stream::iter(0..keys.len())
            .map(|position| {
                let sk = key_sk(&keys[position]);
                let pk = pk.clone();
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

    async fn put_recipients(
        &self,
        campaign: &CampaignId,
        recipients: &[Recipient],
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
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
        self.delete_prefix(campaign, Some(&practice_prefix(ods)))
            .await
    }

    async fn load_chunk(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
    ) -> Result<Vec<Recipient>, StoreError> {
        let pk = campaign_pk(campaign);
        let prefix = chunk_prefix(chunk);
        let items = self
            .table
            .query_all(&|q| {
                q.key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":pk", s(pk.clone()))
                    .expression_attribute_values(":prefix", s(prefix.clone()))
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
        futures::stream::iter(0..updates.len())
            .map(|position| async move {
                let update = &updates[position];
                // A deleted item fails `attribute_exists` and is ignored.
                self.update_recipient(
                    campaign,
                    &update.chunk,
                    update.index,
                    "SET #status = :status, #state = :state",
                    "attribute_exists(pk)",
                    vec![
                        (":status", to_json(&update.status)?),
                        (":state", s(status_tag(&update.status))),
                    ],
                )
                .await
                .map(|_| ())
            })
            .buffer_unordered(self.table.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
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
        // wins and a repeated or later callback changes nothing.
        self.update_recipient(
            campaign,
            chunk,
            index,
            "SET delivery = :delivery",
            "attribute_exists(pk) AND attribute_not_exists(delivery)",
            vec![(":delivery", s(delivery_tag(status)))],
        )
        .await
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
        self.delete_prefix(campaign, None).await
    }

    async fn count_campaign(&self, campaign: &CampaignId) -> Result<u64, StoreError> {
        let pk = campaign_pk(campaign);
        Ok(self
            .table
            .query_count(&|q| {
                q.key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(pk.clone()))
                    .consistent_read(true)
            })
            .await?)
    }

    async fn count_all(&self) -> Result<u64, StoreError> {
        Ok(self.table.scan_count().await?)
    }
}
