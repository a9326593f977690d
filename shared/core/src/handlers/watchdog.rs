//! The watchdog: every campaign ends in a recorded state. Run on a
//! schedule (the local stack's timer; see ARCHITECTURE section 10 for
//! AWS), it finds what stalled (a missed deadline, an extraction whose
//! worker died or whose job was lost, progress a failed `after_progress`
//! left unapplied, chunks stuck past `stuck_after`, a cancelled campaign
//! still settling) and retries it, or, when retries have not helped,
//! records it as failed with a reason so the campaign completes, reports
//! and purges. Every action is audited with the actor `watchdog`.

use super::settle::{settle_letters, settle_send, unfinished_chunk_jobs};
use super::{Hub, JobError};
use crate::domain::{Campaign, CampaignState, ExclusionReason, ParticipationState};
use crate::ports::Job;

/// A deadline this late has been missed (EventBridge retries for a day;
/// the watchdog does not wait that long).
const DEADLINE_GRACE: i64 = 5;
/// Re-queues of a campaign's stuck chunks before they are recorded as
/// failed.
const CHUNK_RETRIES: usize = 3;

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchdogRun {
    pub deadlines_fired: u32,
    pub progress_reapplied: u32,
    pub extractions_retried: u32,
    pub extractions_failed: u32,
    pub chunks_retried: u32,
    pub chunks_failed: u32,
    pub purges_queued: u32,
}

pub async fn watchdog(hub: &Hub) -> Result<WatchdogRun, JobError> {
    let mut run = WatchdogRun::default();
    for campaign in hub.store.list_campaigns().await? {
        if let Err(error) = check(hub, &campaign, &mut run).await {
            // One campaign's trouble does not stop the others' checks.
            tracing::warn!(campaign = %campaign.id, error = %super::jobs::error_chain(&error), "watchdog check failed");
        }
    }
    if run != WatchdogRun::default() {
        tracing::warn!(?run, "watchdog acted");
    }
    Ok(run)
}

async fn note(
    hub: &Hub,
    campaign: &Campaign,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), JobError> {
    hub.audit(Some(&campaign.id), "watchdog", action, detail)
        .await?;
    Ok(())
}

async fn check(hub: &Hub, campaign: &Campaign, run: &mut WatchdogRun) -> Result<(), JobError> {
    let now = hub.now();
    let id = &campaign.id;
    let since = now - campaign.state_changed_at;
    match campaign.state {
        CampaignState::OptOutWindow
            if now - campaign.optout_deadline > chrono::Duration::minutes(DEADLINE_GRACE) =>
        {
            let outcome = super::deadline::fire_deadline(hub, id).await?;
            run.deadlines_fired += 1;
            note(
                hub,
                campaign,
                "watchdog_deadline_fired",
                serde_json::json!({ "outcome": format!("{outcome:?}") }),
            )
            .await?;
        }
        CampaignState::Extracting | CampaignState::Sending => {
            if campaign.state == CampaignState::Extracting
                && !campaign.extraction_jobs_queued
                && since >= hub.config.stale_after
            {
                super::deadline::fire_deadline(hub, id).await?;
                run.deadlines_fired += 1;
                note(
                    hub,
                    campaign,
                    "watchdog_deadline_fired",
                    serde_json::json!({ "outcome": "extraction jobs queued" }),
                )
                .await?;
            }
            extractions(hub, campaign, run).await?;
            let progress = hub.campaign(id).await?.progress;
            let stalled = progress.practices_pending == 0
                && (campaign.state == CampaignState::Extracting
                    || progress.chunks_outstanding == 0);
            if stalled {
                hub.after_progress(id, progress).await?;
                run.progress_reapplied += 1;
                note(
                    hub,
                    campaign,
                    "watchdog_progress_reapplied",
                    serde_json::json!({ "progress": progress }),
                )
                .await?;
            } else if campaign.state == CampaignState::Sending && since >= hub.config.stuck_after {
                // Only released chunks: while any practice is still being
                // read, its records' restrictions are not all in.
                chunks(hub, campaign, run).await?;
            }
        }
        CampaignState::AwaitingReceipts
            if campaign.purged_at.is_none()
                && since >= hub.config.receipt_window + hub.config.stale_after =>
        {
            queue_purge(hub, campaign, run).await?;
        }
        CampaignState::Cancelled
            if campaign.purged_at.is_none() && since >= hub.config.stale_after =>
        {
            if campaign.progress.chunks_outstanding == 0 {
                queue_purge(hub, campaign, run).await?;
            } else {
                chunks(hub, campaign, run).await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Queues the purge of a campaign that should have been purged by now.
async fn queue_purge(
    hub: &Hub,
    campaign: &Campaign,
    run: &mut WatchdogRun,
) -> Result<(), JobError> {
    hub.queue
        .send(&[Job::Purge {
            campaign: campaign.id.clone(),
        }])
        .await?;
    run.purges_queued += 1;
    note(
        hub,
        campaign,
        "watchdog_purge_queued",
        serde_json::json!({}),
    )
    .await
}

/// Extractions whose worker died (started longer than `stale_after` ago)
/// or whose job was lost (not started `stuck_after` into extraction) are
/// queued again; after `max_extract_attempts` they are recorded as failed.
async fn extractions(
    hub: &Hub,
    campaign: &Campaign,
    run: &mut WatchdogRun,
) -> Result<(), JobError> {
    let now = hub.now();
    for mut participation in hub.store.list_participations(&campaign.id).await? {
        let stuck = match participation.state {
            ParticipationState::Extracting => participation
                .extraction_started_at
                .is_none_or(|at| now - at >= hub.config.stale_after),
            ParticipationState::Participating => {
                now - campaign.state_changed_at >= hub.config.stuck_after
            }
            // A staff decision recorded but not carried out: its job lost.
            ParticipationState::ExtractionSuspect => participation
                .decision
                .as_ref()
                .is_some_and(|d| now - d.at >= hub.config.stale_after),
            _ => false,
        };
        if !stuck {
            continue;
        }
        let ods = participation.ods.clone();
        // A decision, not the attempts, ends a held practice's part.
        let decided = participation.state == ParticipationState::ExtractionSuspect;
        if decided || participation.extraction_attempts < hub.config.max_extract_attempts {
            hub.queue
                .send(&[Job::Extract {
                    campaign: campaign.id.clone(),
                    ods: ods.clone(),
                }])
                .await?;
            run.extractions_retried += 1;
            note(
                hub,
                campaign,
                "watchdog_extraction_retried",
                serde_json::json!({ "ods": ods, "attempts": participation.extraction_attempts }),
            )
            .await?;
            continue;
        }
        let reason = format!(
            "stalled after {} attempts (the worker died or its job was lost)",
            participation.extraction_attempts
        );
        participation.extraction_failed(reason.clone(), true);
        let progress = hub.store.commit_extraction(&participation, 0).await?;
        hub.patients
            .delete_practice_recipients(&campaign.id, &ods)
            .await?;
        run.extractions_failed += 1;
        hub.audit(
            Some(&campaign.id),
            "watchdog",
            "practice_extraction_failed",
            serde_json::json!({ "ods": ods, "attempts": participation.extraction_attempts, "error": reason }),
        )
        .await?;
        // The last practice out: the others' chunks go, as when an
        // extraction fails for good in the extract function.
        if progress.practices_pending == 0 {
            super::extract::release(hub, &campaign.id).await?;
        }
        hub.after_progress(&campaign.id, progress).await?;
    }
    Ok(())
}

/// Chunks not final `stuck_after` into sending: their jobs are queued
/// again, up to `CHUNK_RETRIES` runs; then each is settled from what was
/// sent, the rest recorded as `not_sent`.
async fn chunks(hub: &Hub, campaign: &Campaign, run: &mut WatchdogRun) -> Result<(), JobError> {
    let retried = hub
        .store
        .list_audit(&campaign.id)
        .await?
        .iter()
        .filter(|e| e.action == "watchdog_chunks_retried")
        .count();
    if retried < CHUNK_RETRIES {
        let jobs = unfinished_chunk_jobs(hub, &campaign.id).await?;
        if jobs.is_empty() {
            return Ok(());
        }
        hub.queue.send(&jobs).await?;
        run.chunks_retried += jobs.len() as u32;
        note(
            hub,
            campaign,
            "watchdog_chunks_retried",
            serde_json::json!({ "jobs": jobs.len(), "run": retried + 1 }),
        )
        .await?;
        return Ok(());
    }
    let unsent = match campaign.state {
        CampaignState::Cancelled => ExclusionReason::Cancelled,
        _ => ExclusionReason::NotSent,
    };
    for chunk in hub.store.list_chunks(&campaign.id).await? {
        if chunk.is_final() {
            continue;
        }
        if !chunk.send_done {
            settle_send(hub, &campaign.id, &chunk.chunk, unsent).await?;
        }
        if !chunk.letters_done {
            settle_letters(hub, &campaign.id, &chunk.chunk, unsent).await?;
        }
        run.chunks_failed += 1;
        note(
            hub,
            campaign,
            "watchdog_chunk_failed",
            serde_json::json!({ "chunk": chunk.chunk, "reason": format!("not final after {CHUNK_RETRIES} retries") }),
        )
        .await?;
    }
    Ok(())
}
