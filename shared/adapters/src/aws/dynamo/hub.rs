//! `HubStore` on the `hub` table (kept; no patient data).
//!
//! | item          | pk              | sk                             | other attributes |
//! |---------------|-----------------|--------------------------------|------------------|
//! | campaign      | `CAMPAIGN#id`   | `META`                         | `data`, `version`, `state`, `practices_pending`, `chunks_outstanding`, `gsi1pk`=`CAMPAIGNS`, `gsi1sk`=`<created_at>#id` |
//! | participation | `CAMPAIGN#id`   | `PRACTICE#ods`                 | `data`, `version`, `state`, `ods` |
//! | chunk         | `CAMPAIGN#id`   | `CHUNK#chunk`                  | `data`, `rev`, `ods`, `send_done`, `letters_done`, `writeback_done`, `counted_final` |
//! | chunk receipts | `CAMPAIGN#id#RECEIPTS#<shard 00–31>` | `CHUNK#chunk`   | `delivered`, `failed` |
//! | audit event   | `CAMPAIGN#id` (or `AUDIT` without a campaign) | `AUDIT#<time, µs>#<uuid>` | `data` |
//! | practice      | `PRACTICE#ods`  | `META`                         | `data`, `ods`, `gsi1pk`=`PRACTICES`, `gsi1sk`=ods |
//!
//! Listing campaigns and practices queries the sparse global secondary
//! index `gsi1` (`gsi1pk`/`gsi1sk`, all attributes projected) on one fixed
//! partition each: no scan. Both lists are small (tens of campaigns, ~200
//! practices); a GSI read is eventually consistent, so an item written a
//! moment ago may be missing from a list (never from a `get`).
//!
//! Counters. `practices_pending` and `chunks_outstanding` live in their own
//! number attributes and change only with `ADD` inside the transactions
//! that cause them (`commit_extraction`, `complete_chunk_stage`), or are set
//! by `create_campaign` and `freeze_participants`. They do not bump the
//! campaign's `version`, so thousands of chunk completions never make a
//! cancel lose its compare-and-set; in return `update_campaign` ignores the
//! `progress` of the record it is given (the stored counters win). A chunk's
//! delivery receipts are `ADD`ed to `delivered`/`failed` of its receipts
//! item in the transaction that records the recipient's delivery status
//! (`DynamoPatientStore::record_delivery`, conditional on it) and summed
//! with the counts in `data` when read. The receipts items are spread over
//! [`RECEIPT_SHARDS`] partition keys by the chunk's hash, off the
//! campaign's own key: one receipt per text sent would otherwise put every
//! receipt of the campaign on `CAMPAIGN#id`, which DynamoDB serves at 1,000
//! writes a second at most.

use super::{
    backoff_for_retry, build_error, counter, decode, get_json, get_n, get_n_or_zero, get_s, n, s,
    to_json, DecodeError, Item, Table, TxError, TRANSACT_MAX,
};
use crate::aws::fault::FaultKind;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use futures::{StreamExt, TryStreamExt};
use hub_core::domain::pacing::PaceBucket;
use hub_core::domain::{
    AuditEvent, Campaign, CampaignId, ChunkId, ChunkRecord, ChunkStage, OdsCode, OutcomeCounts,
    Participation, Progress,
};
use hub_core::ports::{HubStore, Practice, StoreError};
use std::collections::HashMap;

const META: &str = "META";
const LIST_INDEX: &str = "gsi1";
const CAMPAIGNS: &str = "CAMPAIGNS";
const PRACTICES: &str = "PRACTICES";
const GLOBAL_AUDIT: &str = "AUDIT";
/// Attempts of a read-modify-write on a chunk before reporting a conflict.
const CHUNK_ATTEMPTS: u32 = 12;

pub(super) fn campaign_pk(id: &CampaignId) -> String {
    format!("CAMPAIGN#{id}")
}

fn practice_pk(ods: &OdsCode) -> String {
    format!("PRACTICE#{ods}")
}

fn participation_sk(ods: &OdsCode) -> String {
    format!("PRACTICE#{ods}")
}

pub(super) fn chunk_sk(chunk: &ChunkId) -> String {
    format!("CHUNK#{chunk}")
}

/// Partition keys a campaign's delivery-receipt counters are spread over.
pub const RECEIPT_SHARDS: u32 = 32;

fn receipts_shard_pk(campaign: &CampaignId, shard: u32) -> String {
    format!("CAMPAIGN#{campaign}#RECEIPTS#{shard:02}")
}

/// Where a chunk's delivery receipts are counted.
pub(super) fn receipts_pk(campaign: &CampaignId, chunk: &ChunkId) -> String {
    receipts_shard_pk(campaign, chunk.shard(RECEIPT_SHARDS))
}

/// The shared send bucket of one provider key (`domain::pacing`).
fn pace_pk(key: &str) -> String {
    format!("PACE#{key}")
}

fn stage_attribute(stage: ChunkStage) -> &'static str {
    match stage {
        ChunkStage::Send => "send_done",
        ChunkStage::Letters => "letters_done",
        ChunkStage::Writeback => "writeback_done",
    }
}

/// `HubStore` on DynamoDB. The table name comes from the function's
/// configuration (`HUB_TABLE`).
#[derive(Clone, Debug)]
pub struct DynamoHubStore {
    table: Table,
}

impl DynamoHubStore {
    pub fn new(client: Client, table_name: impl Into<String>) -> Self {
        Self {
            table: Table::new(client, table_name.into(), true),
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

    // ---- items ----

    fn campaign_item(campaign: &Campaign, version: u64) -> Result<Item, StoreError> {
        let mut record = campaign.clone();
        record.version = version;
        Ok(Item::from([
            ("pk".into(), s(campaign_pk(&campaign.id))),
            ("sk".into(), s(META)),
            ("data".into(), to_json(&record)?),
            ("version".into(), n(version)),
            ("state".into(), s(campaign.state.as_str())),
            (
                "practices_pending".into(),
                n(campaign.progress.practices_pending),
            ),
            (
                "chunks_outstanding".into(),
                n(campaign.progress.chunks_outstanding),
            ),
            ("gsi1pk".into(), s(CAMPAIGNS)),
            (
                "gsi1sk".into(),
                s(format!(
                    "{}#{}",
                    campaign.created_at.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
                    campaign.id
                )),
            ),
        ]))
    }

    fn read_campaign(item: &Item) -> Result<Campaign, DecodeError> {
        let mut campaign: Campaign = get_json(item, "data")?;
        campaign.version = get_n(item, "version")?;
        campaign.progress = Self::read_progress(item)?;
        Ok(campaign)
    }

    fn read_progress(item: &Item) -> Result<Progress, DecodeError> {
        Ok(Progress {
            practices_pending: counter(get_n_or_zero(item, "practices_pending")?),
            chunks_outstanding: counter(get_n_or_zero(item, "chunks_outstanding")?),
        })
    }

    fn participation_item(p: &Participation, version: u64) -> Result<Item, StoreError> {
        let mut record = p.clone();
        record.version = version;
        Ok(Item::from([
            ("pk".into(), s(campaign_pk(&p.campaign))),
            ("sk".into(), s(participation_sk(&p.ods))),
            ("data".into(), to_json(&record)?),
            ("version".into(), n(version)),
            ("state".into(), s(p.state.as_str())),
            ("ods".into(), s(p.ods.as_str())),
        ]))
    }

    fn read_participation(item: &Item) -> Result<Participation, DecodeError> {
        let mut participation: Participation = get_json(item, "data")?;
        participation.version = get_n(item, "version")?;
        Ok(participation)
    }

    /// The chunk as stored in `data` (without receipts) and its revision.
    fn read_chunk_raw(item: &Item) -> Result<(ChunkRecord, u64), DecodeError> {
        Ok((get_json(item, "data")?, get_n(item, "rev")?))
    }

    /// The chunk with its delivery receipts added.
    fn read_chunk(item: &Item) -> Result<ChunkRecord, DecodeError> {
        let (mut chunk, _) = Self::read_chunk_raw(item)?;
        Self::add_receipts(&mut chunk, item)?;
        Ok(chunk)
    }

    fn add_receipts(chunk: &mut ChunkRecord, item: &Item) -> Result<(), DecodeError> {
        chunk.counts.delivered += counter(get_n_or_zero(item, "delivered")?);
        chunk.counts.failed += counter(get_n_or_zero(item, "failed")?);
        Ok(())
    }

    fn chunk_item(chunk: &ChunkRecord, rev: u64) -> Result<Item, StoreError> {
        Ok(Item::from([
            ("pk".into(), s(campaign_pk(&chunk.campaign))),
            ("sk".into(), s(chunk_sk(&chunk.chunk))),
            ("data".into(), to_json(chunk)?),
            ("rev".into(), n(rev)),
            ("ods".into(), s(chunk.ods.as_str())),
            (
                "send_done".into(),
                aws_sdk_dynamodb::types::AttributeValue::Bool(chunk.send_done),
            ),
            (
                "letters_done".into(),
                aws_sdk_dynamodb::types::AttributeValue::Bool(chunk.letters_done),
            ),
            (
                "writeback_done".into(),
                aws_sdk_dynamodb::types::AttributeValue::Bool(chunk.writeback_done),
            ),
            (
                "counted_final".into(),
                aws_sdk_dynamodb::types::AttributeValue::Bool(chunk.counted_final),
            ),
        ]))
    }

    // ---- helpers ----

    async fn progress(&self, campaign: &CampaignId) -> Result<Progress, StoreError> {
        let item = self
            .table
            .get(&campaign_pk(campaign), META)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("campaign {campaign}")))?;
        Self::read_progress(&item).map_err(decode(format!("campaign {campaign}")))
    }

    /// A conditional `Put` of a whole item inside a transaction.
    fn put_action(
        &self,
        item: Item,
        condition: &str,
        values: &[(&str, aws_sdk_dynamodb::types::AttributeValue)],
    ) -> Result<TransactWriteItem, StoreError> {
        let mut put = Put::builder()
            .table_name(&self.table.name)
            .set_item(Some(item))
            .condition_expression(condition);
        for (name, value) in values {
            put = put.expression_attribute_values(*name, value.clone());
        }
        Ok(TransactWriteItem::builder()
            .put(put.build().map_err(build_error)?)
            .build())
    }

    /// The campaign counter update of a transaction (`ADD`, campaign must exist).
    fn counters_action(
        &self,
        campaign: &CampaignId,
        practices_pending: i64,
        chunks_outstanding: i64,
    ) -> Result<TransactWriteItem, StoreError> {
        let update = Update::builder()
            .table_name(&self.table.name)
            .set_key(Some(Table::key(campaign_pk(campaign), META)))
            .update_expression("ADD practices_pending :p, chunks_outstanding :c")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":p", n(practices_pending))
            .expression_attribute_values(":c", n(chunks_outstanding))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// `PutItem` as a compare-and-set on the stored `version`: `Conflict` if
    /// it moved, `NotFound` if there is no item.
    async fn put_if_version(
        &self,
        item: Item,
        expected: u64,
        what: String,
    ) -> Result<(), StoreError> {
        let request = self
            .table
            .client
            .put_item()
            .table_name(&self.table.name)
            .set_item(Some(item))
            .condition_expression("version = :v")
            .expression_attribute_values(":v", n(expected))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        match self.table.call("PutItem", || request.clone().send()).await {
            Ok(_) => Ok(()),
            Err((fault, err)) => {
                if fault.kind != FaultKind::Condition {
                    return Err(fault.into());
                }
                let exists = err
                    .as_service_error()
                    .and_then(|e| match e {
                        aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                            Some(c.item().is_some())
                        }
                        _ => None,
                    })
                    .unwrap_or(true);
                if exists {
                    Err(StoreError::Conflict(format!(
                        "{what} changed since version {expected}"
                    )))
                } else {
                    Err(StoreError::NotFound(what))
                }
            }
        }
    }

    /// A chunk's receipts item, counting nothing yet.
    fn receipts_item(chunk: &ChunkRecord) -> Item {
        Item::from([
            ("pk".into(), s(receipts_pk(&chunk.campaign, &chunk.chunk))),
            ("sk".into(), s(chunk_sk(&chunk.chunk))),
            ("delivered".into(), n(0)),
            ("failed".into(), n(0)),
        ])
    }

    /// Adds the receipts counted on the chunk's receipts item.
    async fn add_counted_receipts(&self, chunk: &mut ChunkRecord) -> Result<(), StoreError> {
        let pk = receipts_pk(&chunk.campaign, &chunk.chunk);
        if let Some(item) = self.table.get(&pk, &chunk_sk(&chunk.chunk)).await? {
            Self::add_receipts(chunk, &item)
                .map_err(decode(format!("receipts of chunk {}", chunk.chunk)))?;
        }
        Ok(())
    }

    /// Every chunk's counted receipts (delivered, failed) by chunk id: one
    /// query per receipts partition, a few at a time.
    async fn campaign_receipts(
        &self,
        campaign: &CampaignId,
    ) -> Result<HashMap<String, (u64, u64)>, StoreError> {
        let shards: Vec<Vec<Item>> = futures::stream::iter(0..RECEIPT_SHARDS)
            .map(|shard| async move {
                let pk = receipts_shard_pk(campaign, shard);
                self.table
                    .query_all(&|q| {
                        q.key_condition_expression("pk = :pk")
                            .expression_attribute_values(":pk", s(pk.clone()))
                            .consistent_read(true)
                    })
                    .await
            })
            .buffer_unordered(self.table.concurrency.min(8))
            .try_collect()
            .await?;
        let mut receipts = HashMap::new();
        for item in shards.iter().flatten() {
            let what = || format!("receipts of a chunk of {campaign}");
            let chunk = get_s(item, "sk")
                .map_err(decode(what()))?
                .trim_start_matches("CHUNK#")
                .to_string();
            let delivered = counter(get_n_or_zero(item, "delivered").map_err(decode(what()))?);
            let failed = counter(get_n_or_zero(item, "failed").map_err(decode(what()))?);
            receipts.insert(chunk, (delivered, failed));
        }
        Ok(receipts)
    }

    /// `PutItem` only if the key is new; returns whether it was written.
    async fn put_if_absent(&self, item: Item) -> Result<bool, StoreError> {
        let request = self
            .table
            .client
            .put_item()
            .table_name(&self.table.name)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)");
        match self.table.call("PutItem", || request.clone().send()).await {
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

    async fn list_index(&self, partition: &'static str) -> Result<Vec<Item>, StoreError> {
        Ok(self
            .table
            .query_all(&|q| {
                q.index_name(LIST_INDEX)
                    .key_condition_expression("gsi1pk = :p")
                    .expression_attribute_values(":p", s(partition))
            })
            .await?)
    }

    async fn list_prefix(
        &self,
        campaign: &CampaignId,
        prefix: &'static str,
    ) -> Result<Vec<Item>, StoreError> {
        let pk = campaign_pk(campaign);
        Ok(self
            .table
            .query_all(&|q| {
                q.key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":pk", s(pk.clone()))
                    .expression_attribute_values(":prefix", s(prefix))
                    .consistent_read(true)
            })
            .await?)
    }

    /// Freezes in several transactions when one cannot hold every action:
    /// participations first, the campaign (the commit point) in the last.
    /// If a later transaction fails, the participations already written are
    /// put back as they were (with a newer version, so a copy read in
    /// between cannot be written over them).
    async fn freeze_in_parts(
        &self,
        campaign: &Campaign,
        participations: &[Participation],
        campaign_action: TransactWriteItem,
    ) -> Result<(), StoreError> {
        let originals: std::collections::HashMap<OdsCode, Participation> = self
            .list_participations(&campaign.id)
            .await?
            .into_iter()
            .map(|p| (p.ods.clone(), p))
            .collect();
        let groups: Vec<&[Participation]> = participations.chunks(TRANSACT_MAX - 1).collect();
        let mut committed: Vec<&Participation> = Vec::new();
        for (position, group) in groups.iter().enumerate() {
            let last = position + 1 == groups.len();
            let mut actions = group
                .iter()
                .map(|p| self.participation_cas_action(p))
                .collect::<Result<Vec<_>, _>>()?;
            if last {
                actions.push(campaign_action.clone());
            }
            match self.table.transact(actions).await {
                Ok(()) => committed.extend(group.iter()),
                Err(err) => {
                    self.restore(&committed, &originals).await;
                    return Err(match err {
                        TxError::Condition(index) if index < group.len() => StoreError::Conflict(
                            format!("participation {} changed", group[index].ods),
                        ),
                        TxError::Condition(_) => {
                            StoreError::Conflict(format!("campaign {} changed", campaign.id))
                        }
                        TxError::Fault(fault) => fault.into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Best effort: puts participations back as they were before a failed
    /// multi-part freeze.
    async fn restore(
        &self,
        committed: &[&Participation],
        originals: &std::collections::HashMap<OdsCode, Participation>,
    ) {
        for p in committed {
            let Some(original) = originals.get(&p.ods) else {
                continue;
            };
            let result = match Self::participation_item(original, p.version + 2) {
                Ok(item) => {
                    self.put_if_version(item, p.version + 1, format!("participation {}", p.ods))
                        .await
                }
                Err(err) => Err(err),
            };
            if let Err(err) = result {
                tracing::error!(
                    campaign = %p.campaign,
                    ods = %p.ods,
                    error = %err,
                    "could not restore a participation after a failed freeze"
                );
            }
        }
    }

    fn participation_cas_action(&self, p: &Participation) -> Result<TransactWriteItem, StoreError> {
        let item = Self::participation_item(p, p.version + 1)?;
        self.put_action(item, "version = :v", &[(":v", n(p.version))])
    }

    /// Applies `stage` to a stored chunk; `None` when it was already done.
    fn apply_stage(
        mut chunk: ChunkRecord,
        stage: ChunkStage,
        counts: &OutcomeCounts,
    ) -> Option<(ChunkRecord, bool)> {
        let flag = match stage {
            ChunkStage::Send => &mut chunk.send_done,
            ChunkStage::Letters => &mut chunk.letters_done,
            ChunkStage::Writeback => &mut chunk.writeback_done,
        };
        if *flag {
            return None;
        }
        *flag = true;
        chunk.counts.add(counts);
        let becomes_final = chunk.is_final() && !chunk.counted_final;
        if becomes_final {
            chunk.counted_final = true;
        }
        Some((chunk, becomes_final))
    }
}

#[async_trait]
impl HubStore for DynamoHubStore {
    async fn put_practice(&self, practice: &Practice) -> Result<(), StoreError> {
        let item = Item::from([
            ("pk".into(), s(practice_pk(&practice.ods))),
            ("sk".into(), s(META)),
            ("data".into(), to_json(practice)?),
            ("ods".into(), s(practice.ods.as_str())),
            ("gsi1pk".into(), s(PRACTICES)),
            ("gsi1sk".into(), s(practice.ods.as_str())),
        ]);
        let request = self
            .table
            .client
            .put_item()
            .table_name(&self.table.name)
            .set_item(Some(item));
        self.table
            .call("PutItem", || request.clone().send())
            .await
            .map_err(|(fault, _)| fault)?;
        Ok(())
    }

    async fn get_practice(&self, ods: &OdsCode) -> Result<Option<Practice>, StoreError> {
        match self.table.get(&practice_pk(ods), META).await? {
            None => Ok(None),
            Some(item) => Ok(Some(
                get_json(&item, "data").map_err(decode(format!("practice {ods}")))?,
            )),
        }
    }

    async fn list_practices(&self) -> Result<Vec<Practice>, StoreError> {
        self.list_index(PRACTICES)
            .await?
            .iter()
            .map(|item| get_json(item, "data").map_err(decode("a practice".into())))
            .collect()
    }

    async fn create_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        let item = Self::campaign_item(campaign, campaign.version)?;
        if self.put_if_absent(item).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "campaign {} already exists",
                campaign.id
            )))
        }
    }

    async fn get_campaign(&self, id: &CampaignId) -> Result<Option<Campaign>, StoreError> {
        match self.table.get(&campaign_pk(id), META).await? {
            None => Ok(None),
            Some(item) => Ok(Some(
                Self::read_campaign(&item).map_err(decode(format!("campaign {id}")))?,
            )),
        }
    }

    async fn list_campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        self.list_index(CAMPAIGNS)
            .await?
            .iter()
            .map(|item| Self::read_campaign(item).map_err(decode("a campaign".into())))
            .collect()
    }

    async fn update_campaign(&self, campaign: &Campaign) -> Result<Campaign, StoreError> {
        let next = campaign.version + 1;
        let mut record = campaign.clone();
        record.version = next;
        let request = self
            .table
            .client
            .update_item()
            .table_name(&self.table.name)
            .set_key(Some(Table::key(campaign_pk(&campaign.id), META)))
            .update_expression("SET #data = :data, version = :next, #state = :state")
            .condition_expression("version = :v")
            .expression_attribute_names("#data", "data")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":data", to_json(&record)?)
            .expression_attribute_values(":next", n(next))
            .expression_attribute_values(":state", s(campaign.state.as_str()))
            .expression_attribute_values(":v", n(campaign.version))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        match self
            .table
            .call("UpdateItem", || request.clone().send())
            .await
        {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                Self::read_campaign(&item).map_err(decode(format!("campaign {}", campaign.id)))
            }
            Err((fault, err)) => {
                if fault.kind != FaultKind::Condition {
                    return Err(fault.into());
                }
                let exists = matches!(
                    err.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(c)) if c.item().is_some()
                );
                if exists {
                    Err(StoreError::Conflict(format!(
                        "campaign {} changed since version {}",
                        campaign.id, campaign.version
                    )))
                } else {
                    Err(StoreError::NotFound(format!("campaign {}", campaign.id)))
                }
            }
        }
    }

    async fn create_participations(&self, items: &[Participation]) -> Result<(), StoreError> {
        // Positions, not references, go through the stream: a closure over
        // borrowed items trips the compiler's `Send` check here.
        futures::stream::iter(0..items.len())
            .map(|position| async move {
                let p = &items[position];
                let item = Self::participation_item(p, p.version)?;
                self.put_if_absent(item).await.map(|_| ())
            })
            .buffer_unordered(self.table.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn get_participation(
        &self,
        campaign: &CampaignId,
        ods: &OdsCode,
    ) -> Result<Option<Participation>, StoreError> {
        match self
            .table
            .get(&campaign_pk(campaign), &participation_sk(ods))
            .await?
        {
            None => Ok(None),
            Some(item) => Ok(Some(
                Self::read_participation(&item)
                    .map_err(decode(format!("participation {campaign}/{ods}")))?,
            )),
        }
    }

    async fn list_participations(
        &self,
        campaign: &CampaignId,
    ) -> Result<Vec<Participation>, StoreError> {
        self.list_prefix(campaign, "PRACTICE#")
            .await?
            .iter()
            .map(|item| {
                Self::read_participation(item)
                    .map_err(decode(format!("a participation of {campaign}")))
            })
            .collect()
    }

    async fn update_participation(
        &self,
        participation: &Participation,
    ) -> Result<Participation, StoreError> {
        let next = participation.version + 1;
        let item = Self::participation_item(participation, next)?;
        self.put_if_version(
            item,
            participation.version,
            format!(
                "participation {}/{}",
                participation.campaign, participation.ods
            ),
        )
        .await?;
        let mut stored = participation.clone();
        stored.version = next;
        Ok(stored)
    }

    async fn freeze_participants(
        &self,
        campaign: &Campaign,
        participations: &[Participation],
    ) -> Result<Campaign, StoreError> {
        let next = campaign.version + 1;
        let campaign_action = self.put_action(
            Self::campaign_item(campaign, next)?,
            "version = :v",
            &[(":v", n(campaign.version))],
        )?;
        if participations.len() < TRANSACT_MAX {
            let mut actions = participations
                .iter()
                .map(|p| self.participation_cas_action(p))
                .collect::<Result<Vec<_>, _>>()?;
            actions.push(campaign_action);
            match self.table.transact(actions).await {
                Ok(()) => {}
                Err(TxError::Condition(index)) => {
                    return Err(StoreError::Conflict(match participations.get(index) {
                        Some(p) => format!("participation {} changed", p.ods),
                        None => format!("campaign {} changed", campaign.id),
                    }))
                }
                Err(TxError::Fault(fault)) => return Err(fault.into()),
            }
        } else {
            self.freeze_in_parts(campaign, participations, campaign_action)
                .await?;
        }
        let mut stored = campaign.clone();
        stored.version = next;
        Ok(stored)
    }

    async fn put_chunks(&self, chunks: &[ChunkRecord]) -> Result<(), StoreError> {
        futures::stream::iter(0..chunks.len())
            .map(|position| async move {
                let chunk = &chunks[position];
                // The receipts item first: a chunk record is never without
                // somewhere to count its receipts.
                self.put_if_absent(Self::receipts_item(chunk)).await?;
                let item = Self::chunk_item(chunk, 0)?;
                self.put_if_absent(item).await.map(|_| ())
            })
            .buffer_unordered(self.table.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn get_chunk(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
    ) -> Result<Option<ChunkRecord>, StoreError> {
        match self
            .table
            .get(&campaign_pk(campaign), &chunk_sk(chunk))
            .await?
        {
            None => Ok(None),
            Some(item) => {
                let mut record =
                    Self::read_chunk(&item).map_err(decode(format!("chunk {campaign}/{chunk}")))?;
                self.add_counted_receipts(&mut record).await?;
                Ok(Some(record))
            }
        }
    }

    async fn list_chunks(&self, campaign: &CampaignId) -> Result<Vec<ChunkRecord>, StoreError> {
        let mut chunks = self
            .list_prefix(campaign, "CHUNK#")
            .await?
            .iter()
            .map(|item| Self::read_chunk(item).map_err(decode(format!("a chunk of {campaign}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let receipts = self.campaign_receipts(campaign).await?;
        for chunk in &mut chunks {
            if let Some((delivered, failed)) = receipts.get(chunk.chunk.as_str()) {
                chunk.counts.delivered += delivered;
                chunk.counts.failed += failed;
            }
        }
        Ok(chunks)
    }

    async fn commit_extraction(
        &self,
        participation: &Participation,
        chunks: u64,
    ) -> Result<Progress, StoreError> {
        let chunks = i64::try_from(chunks)
            .map_err(|_| anyhow::anyhow!("chunk count {chunks} is out of range"))?;
        let actions = vec![
            self.participation_cas_action(participation)?,
            self.counters_action(&participation.campaign, -1, chunks)?,
        ];
        match self.table.transact(actions).await {
            Ok(()) => {}
            Err(TxError::Condition(0)) => {
                return Err(StoreError::Conflict(format!(
                    "participation {}/{} changed since version {}",
                    participation.campaign, participation.ods, participation.version
                )))
            }
            Err(TxError::Condition(_)) => {
                return Err(StoreError::NotFound(format!(
                    "campaign {}",
                    participation.campaign
                )))
            }
            Err(TxError::Fault(fault)) => return Err(fault.into()),
        }
        self.progress(&participation.campaign).await
    }

    async fn complete_chunk_stage(
        &self,
        campaign: &CampaignId,
        chunk: &ChunkId,
        stage: ChunkStage,
        counts: &OutcomeCounts,
    ) -> Result<Option<(ChunkRecord, Progress)>, StoreError> {
        let what = format!("chunk {campaign}/{chunk}");
        let pk = campaign_pk(campaign);
        let sk = chunk_sk(chunk);
        for attempt in 0..CHUNK_ATTEMPTS {
            let item = self
                .table
                .get(&pk, &sk)
                .await?
                .ok_or_else(|| StoreError::NotFound(what.clone()))?;
            let (stored, rev) = Self::read_chunk_raw(&item).map_err(decode(what.clone()))?;
            let Some((updated, becomes_final)) = Self::apply_stage(stored, stage, counts) else {
                return Ok(None);
            };
            let flag = stage_attribute(stage);
            let update = Update::builder()
                .table_name(&self.table.name)
                .set_key(Some(Table::key(pk.clone(), sk.clone())))
                .update_expression(format!(
                    "SET #data = :data, rev = :next, {flag} = :true, counted_final = :final"
                ))
                .condition_expression("rev = :rev")
                .expression_attribute_names("#data", "data")
                .expression_attribute_values(":data", to_json(&updated)?)
                .expression_attribute_values(":next", n(rev + 1))
                .expression_attribute_values(":rev", n(rev))
                .expression_attribute_values(
                    ":true",
                    aws_sdk_dynamodb::types::AttributeValue::Bool(true),
                )
                .expression_attribute_values(
                    ":final",
                    aws_sdk_dynamodb::types::AttributeValue::Bool(updated.counted_final),
                )
                .build()
                .map_err(build_error)?;
            let mut actions = vec![TransactWriteItem::builder().update(update).build()];
            if becomes_final {
                actions.push(self.counters_action(campaign, 0, -1)?);
            }
            match self.table.transact(actions).await {
                Ok(()) => {
                    let mut record = updated;
                    Self::add_receipts(&mut record, &item).map_err(decode(what.clone()))?;
                    self.add_counted_receipts(&mut record).await?;
                    let progress = self.progress(campaign).await?;
                    return Ok(Some((record, progress)));
                }
                Err(TxError::Condition(0)) => {}
                Err(TxError::Condition(_)) => {
                    return Err(StoreError::NotFound(format!("campaign {campaign}")))
                }
                Err(TxError::Fault(fault)) if fault.is_transient() => {}
                Err(TxError::Fault(fault)) => return Err(fault.into()),
            }
            tokio::time::sleep(backoff_for_retry(attempt)).await;
        }
        Err(StoreError::Conflict(format!(
            "{what} kept changing; gave up after {CHUNK_ATTEMPTS} attempts"
        )))
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let pk = match &event.campaign {
            Some(campaign) => campaign_pk(campaign),
            None => GLOBAL_AUDIT.to_string(),
        };
        let sk = format!(
            "AUDIT#{}#{}",
            event.at.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            uuid::Uuid::new_v4().simple()
        );
        let item = Item::from([
            ("pk".into(), s(pk)),
            ("sk".into(), s(sk)),
            ("data".into(), to_json(event)?),
        ]);
        if self.put_if_absent(item).await? {
            Ok(())
        } else {
            Err(StoreError::Unexpected(anyhow::anyhow!(
                "audit event key collision"
            )))
        }
    }

    async fn list_audit(&self, campaign: &CampaignId) -> Result<Vec<AuditEvent>, StoreError> {
        self.list_prefix(campaign, "AUDIT#")
            .await?
            .iter()
            .map(|item| {
                get_json(item, "data").map_err(decode(format!("an audit event of {campaign}")))
            })
            .collect()
    }

    async fn list_hub_audit(&self) -> Result<Vec<AuditEvent>, StoreError> {
        self.table
            .query_all(&|q| {
                q.key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":pk", s(GLOBAL_AUDIT))
                    .expression_attribute_values(":prefix", s("AUDIT#"))
                    .consistent_read(true)
            })
            .await?
            .iter()
            .map(|item| get_json(item, "data").map_err(decode("a hub audit event".to_string())))
            .collect()
    }

    async fn get_pace_bucket(&self, key: &str) -> Result<PaceBucket, StoreError> {
        match self.table.get(&pace_pk(key), META).await? {
            None => Ok(PaceBucket::default()),
            Some(item) => get_json(&item, "data").map_err(decode(format!("pace bucket {key}"))),
        }
    }

    async fn put_pace_bucket(&self, key: &str, bucket: &PaceBucket) -> Result<(), StoreError> {
        let previous = bucket.version.saturating_sub(1);
        let item = Item::from([
            ("pk".into(), s(pace_pk(key))),
            ("sk".into(), s(META)),
            ("data".into(), to_json(bucket)?),
            ("version".into(), n(bucket.version)),
        ]);
        let request = self
            .table
            .client
            .put_item()
            .table_name(&self.table.name)
            .set_item(Some(item));
        let request = if previous == 0 {
            request.condition_expression("attribute_not_exists(pk)")
        } else {
            request
                .condition_expression("version = :v")
                .expression_attribute_values(":v", n(previous))
        };
        match self.table.call("PutItem", || request.clone().send()).await {
            Ok(_) => Ok(()),
            Err((fault, _)) if fault.kind == FaultKind::Condition => Err(StoreError::Conflict(
                format!("pace bucket {key} is no longer at version {previous}"),
            )),
            Err((fault, _)) => Err(fault.into()),
        }
    }
}
