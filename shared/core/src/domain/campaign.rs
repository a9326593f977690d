//! A campaign and its lifecycle state machine.

use super::{MessageTemplate, OdsCode, Target};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CampaignId(String);

impl CampaignId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string()[..12].to_string())
    }

    /// Ids are short lowercase hex; anything else is refused so an id can
    /// safely appear in keys, references and URLs.
    pub fn parse(input: &str) -> Option<Self> {
        let ok = (8..=36).contains(&input.len())
            && input
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase() || c == '-');
        ok.then(|| Self(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for CampaignId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The authenticated caller (an IAM principal ARN on AWS, a local identity
/// in the embedded stack). Staff identities are not patient data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StaffId(String);

impl StaffId {
    /// The identity as its authenticator gives it (e.g. a caller ARN).
    pub fn new(identity: impl Into<String>) -> Self {
        Self(identity.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StaffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    PendingApproval,
    OptOutWindow,
    Extracting,
    Sending,
    AwaitingReceipts,
    Completed,
    Cancelled,
}

impl CampaignState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }

    /// Chunks may be sent while other practices are still extracting.
    pub fn allows_sending(self) -> bool {
        matches!(self, Self::Extracting | Self::Sending)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingApproval => "pending_approval",
            Self::OptOutWindow => "opt_out_window",
            Self::Extracting => "extracting",
            Self::Sending => "sending",
            Self::AwaitingReceipts => "awaiting_receipts",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for CampaignState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("campaign is {from}; cannot {action}")]
    IllegalTransition {
        from: CampaignState,
        action: &'static str,
    },
    #[error("the approver must be a different person from the creator")]
    SelfApproval,
    #[error("the opt-out deadline has passed")]
    DeadlinePassed,
    #[error("the opt-out deadline must be in the future")]
    DeadlineInPast,
    #[error("no deadline change is waiting for approval")]
    NoDeadlineChange,
    #[error(
        "the deadline change waiting for approval is to {pending}, not {seen}; review it again"
    )]
    DeadlineChangeDiffers {
        pending: DateTime<Utc>,
        seen: DateTime<Utc>,
    },
    #[error("a deadline change must be approved by a different person from the one who asked")]
    SelfApprovedDeadline,
    #[error("{0}")]
    WindowTooShort(String),
}

/// Bringing the deadline forward, asked for by one person and waiting for
/// a second (`approve_deadline_change`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineChange {
    pub to: DateTime<Utc>,
    pub reason: String,
    pub requested_by: StaffId,
    pub requested_at: DateTime<Utc>,
}

/// What asking for a deadline change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineRequested {
    /// Applied at once: later than before, or before anyone was notified.
    Applied,
    /// Earlier, with practices notified: a second person must approve.
    AwaitingApproval,
}

/// When the earliest shortened deadline may be, from the practices'
/// notices: `None` while any notice is unsent.
pub fn earliest_deadline(
    notices_sent: &[Option<DateTime<Utc>>],
    minimum_window: chrono::Duration,
    approved_at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let mut last = approved_at;
    for sent in notices_sent {
        last = last.max((*sent)?);
    }
    Some(last + minimum_window)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CampaignOptions {
    /// Patients with no usable mobile get a letter instead.
    #[serde(default)]
    pub postal_fallback: bool,
    /// Households sharing a mobile number get one text.
    #[serde(default)]
    pub one_message_per_mobile: bool,
}

/// Progress counters kept on the campaign record; updated atomically with
/// the participation and chunk transitions that cause them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Progress {
    /// Participating practices whose extraction has not finished or failed.
    pub practices_pending: u64,
    /// Chunks stored whose send, letters or write-back is not final.
    pub chunks_outstanding: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub id: CampaignId,
    pub name: String,
    pub template: MessageTemplate,
    pub target: Target,
    pub options: CampaignOptions,
    pub optout_deadline: DateTime<Utc>,
    pub justification: String,
    pub created_by: StaffId,
    pub created_at: DateTime<Utc>,
    pub approved_by: Option<StaffId>,
    pub approved_at: Option<DateTime<Utc>>,
    pub state: CampaignState,
    pub state_changed_at: DateTime<Utc>,
    pub cancelled_by: Option<StaffId>,
    pub cancel_reason: Option<String>,
    pub extraction_jobs_queued: bool,
    pub progress: Progress,
    pub purged_at: Option<DateTime<Utc>>,
    pub purged_items: Option<u64>,
    /// A shortened deadline waiting for a second person.
    #[serde(default)]
    pub deadline_change: Option<DeadlineChange>,
    /// Sending is paused until then: every SMS provider key has reached
    /// its daily limit. Cleared when a text goes again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<DateTime<Utc>>,
    /// Optimistic concurrency: every write checks and bumps it.
    pub version: u64,
}

impl Campaign {
    fn illegal(&self, action: &'static str) -> LifecycleError {
        LifecycleError::IllegalTransition {
            from: self.state,
            action,
        }
    }

    fn enter(&mut self, state: CampaignState, now: DateTime<Utc>) {
        self.state = state;
        self.state_changed_at = now;
    }

    pub fn approve(&mut self, by: &StaffId, now: DateTime<Utc>) -> Result<(), LifecycleError> {
        if self.state != CampaignState::PendingApproval {
            return Err(self.illegal("approve"));
        }
        if by == &self.created_by {
            return Err(LifecycleError::SelfApproval);
        }
        if self.optout_deadline <= now {
            return Err(LifecycleError::DeadlinePassed);
        }
        self.approved_by = Some(by.clone());
        self.approved_at = Some(now);
        self.enter(CampaignState::OptOutWindow, now);
        Ok(())
    }

    /// Staff move the deadline (e.g. bring it forward when the emergency
    /// cannot wait). Only before the deadline has fired.
    pub fn reschedule_deadline(
        &mut self,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), LifecycleError> {
        if !matches!(
            self.state,
            CampaignState::PendingApproval | CampaignState::OptOutWindow
        ) {
            return Err(self.illegal("change the deadline"));
        }
        if deadline < now {
            return Err(LifecycleError::DeadlineInPast);
        }
        self.optout_deadline = deadline;
        Ok(())
    }

    /// Someone asks to move the deadline. Later (or before approval, when
    /// no practice has been told) applies at once; earlier, once practices
    /// hold a notice, waits for a second person.
    pub fn request_deadline_change(
        &mut self,
        change: DeadlineChange,
        now: DateTime<Utc>,
    ) -> Result<DeadlineRequested, LifecycleError> {
        if self.state == CampaignState::OptOutWindow && change.to < self.optout_deadline {
            if change.to < now {
                return Err(LifecycleError::DeadlineInPast);
            }
            self.deadline_change = Some(change);
            return Ok(DeadlineRequested::AwaitingApproval);
        }
        self.reschedule_deadline(change.to, now)?;
        self.deadline_change = None;
        Ok(DeadlineRequested::Applied)
    }

    /// A second person approves the waiting deadline change they saw
    /// (`seen`), no sooner than `earliest` unless they record an emergency.
    /// Returns the deadline now in force (never in the past).
    pub fn approve_deadline_change(
        &mut self,
        by: &StaffId,
        seen: DateTime<Utc>,
        earliest: Option<DateTime<Utc>>,
        emergency: bool,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, LifecycleError> {
        if self.state != CampaignState::OptOutWindow {
            return Err(self.illegal("approve a deadline change"));
        }
        let change = self
            .deadline_change
            .as_ref()
            .ok_or(LifecycleError::NoDeadlineChange)?;
        if change.to != seen {
            return Err(LifecycleError::DeadlineChangeDiffers {
                pending: change.to,
                seen,
            });
        }
        if &change.requested_by == by {
            return Err(LifecycleError::SelfApprovedDeadline);
        }
        let deadline = change.to.max(now);
        if !emergency {
            match earliest {
                None => {
                    return Err(LifecycleError::WindowTooShort(
                        "not every practice has been sent its notice yet; wait, or record an \
                         emergency override"
                            .into(),
                    ))
                }
                Some(earliest) if deadline < earliest => {
                    return Err(LifecycleError::WindowTooShort(format!(
                        "practices must have until at least {} to opt out; approve a later \
                         deadline, or record an emergency override",
                        earliest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )))
                }
                Some(_) => {}
            }
        }
        self.optout_deadline = deadline;
        self.deadline_change = None;
        Ok(deadline)
    }

    /// A practice may opt out while the window is open.
    pub fn check_opt_out_allowed(&self, now: DateTime<Utc>) -> Result<(), LifecycleError> {
        if !matches!(
            self.state,
            CampaignState::PendingApproval | CampaignState::OptOutWindow
        ) {
            return Err(self.illegal("record a practice opt-out"));
        }
        if now >= self.optout_deadline {
            return Err(LifecycleError::DeadlinePassed);
        }
        Ok(())
    }

    /// The deadline fires: participants are frozen.
    pub fn begin_extraction(
        &mut self,
        practices: u64,
        now: DateTime<Utc>,
    ) -> Result<(), LifecycleError> {
        if self.state != CampaignState::OptOutWindow {
            return Err(self.illegal("begin extraction"));
        }
        self.progress.practices_pending = practices;
        self.enter(CampaignState::Extracting, now);
        Ok(())
    }

    /// Moves forward as far as the progress counters allow; returns whether
    /// the state changed.
    pub fn advance(&mut self, now: DateTime<Utc>) -> bool {
        let before = self.state;
        if self.state == CampaignState::Extracting && self.progress.practices_pending == 0 {
            self.enter(CampaignState::Sending, now);
        }
        if self.state == CampaignState::Sending && self.progress.chunks_outstanding == 0 {
            self.enter(CampaignState::AwaitingReceipts, now);
        }
        self.state != before
    }

    /// All patient data is gone: the campaign is complete (or stays
    /// cancelled, with the purge recorded).
    pub fn record_purge(&mut self, items: u64, now: DateTime<Utc>) -> Result<(), LifecycleError> {
        match self.state {
            CampaignState::AwaitingReceipts => self.enter(CampaignState::Completed, now),
            CampaignState::Cancelled | CampaignState::Completed => {}
            _ => return Err(self.illegal("purge patient data")),
        }
        self.purged_at = Some(now);
        self.purged_items = Some(self.purged_items.unwrap_or(0) + items);
        Ok(())
    }

    pub fn cancel(
        &mut self,
        by: &StaffId,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<(), LifecycleError> {
        if self.state.is_final() {
            return Err(self.illegal("cancel"));
        }
        self.cancelled_by = Some(by.clone());
        self.cancel_reason = Some(reason);
        self.enter(CampaignState::Cancelled, now);
        Ok(())
    }
}

/// The hub's record of one chunk (no patient data): which steps are final
/// and what they counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub campaign: CampaignId,
    pub chunk: ChunkId,
    pub ods: OdsCode,
    pub sms_recipients: u32,
    pub letter_recipients: u32,
    pub send_done: bool,
    pub letters_done: bool,
    pub writeback_done: bool,
    /// The campaign's outstanding counter has been decremented for it.
    pub counted_final: bool,
    pub counts: super::OutcomeCounts,
}

impl ChunkRecord {
    pub fn is_final(&self) -> bool {
        self.send_done && self.letters_done && self.writeback_done
    }
}

/// `G85001-0007`: the practice and a sequence number. Not patient data.
/// Read back only in that shape (from a queue message, a provider
/// reference or a stored key): anything else is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChunkId(String);

impl ChunkId {
    pub fn new(ods: &OdsCode, sequence: u32) -> Self {
        Self(format!("{}-{:04}", ods.as_str(), sequence))
    }

    /// `G85001-0007`: an ODS code, a dash and a sequence number.
    pub fn parse(input: &str) -> Option<Self> {
        let (ods, sequence) = input.split_once('-')?;
        let valid = OdsCode::parse(ods).is_ok_and(|code| code.as_str() == ods)
            && !sequence.is_empty()
            && sequence.len() <= 10
            && sequence.bytes().all(|b| b.is_ascii_digit());
        valid.then(|| Self(input.to_string()))
    }

    /// The practice the chunk belongs to.
    pub fn ods(&self) -> Option<OdsCode> {
        OdsCode::parse(self.0.split('-').next()?).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Which of `shards` partitions this chunk's delivery-receipt counters
    /// live in (FNV-1a of the id, as [`super::DedupeKey::shard`]), so a
    /// campaign's receipts are counted off any one key.
    pub fn shard(&self, shards: u32) -> u32 {
        super::recipient::fnv1a_shard(&self.0, shards)
    }
}

impl TryFrom<String> for ChunkId {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value).ok_or_else(|| "not a chunk id (ODS code-sequence)".to_string())
    }
}

impl From<ChunkId> for String {
    fn from(chunk: ChunkId) -> Self {
        chunk.0
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The steps of a chunk after extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkStage {
    Send,
    Letters,
    Writeback,
}

/// One audited action. `detail` holds counts and identifiers, never patient data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub campaign: Option<CampaignId>,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub detail: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageTemplate, TemplateRules};
    use chrono::Duration;

    #[test]
    fn chunk_shards_are_fixed_and_spread() {
        // FNV-1a, so every process and build puts a chunk's receipts in the
        // same partition.
        assert_eq!(ChunkId::parse("G85001-0007").unwrap().shard(32), 18);
        let ods = OdsCode::parse("G85001").unwrap();
        let shards: std::collections::HashSet<u32> =
            (0..200).map(|n| ChunkId::new(&ods, n).shard(32)).collect();
        assert!(shards.iter().all(|shard| *shard < 32));
        assert!(shards.len() >= 28, "{} of 32 used", shards.len());
    }

    #[test]
    fn chunk_ids_are_read_back_only_in_their_shape() {
        let ods = OdsCode::parse("G85001").unwrap();
        let chunk = ChunkId::new(&ods, 7);
        assert_eq!(chunk.as_str(), "G85001-0007");
        assert_eq!(ChunkId::parse("G85001-0007"), Some(chunk.clone()));
        assert_eq!(chunk.ods(), Some(ods));
        for bad in [
            "",
            "G85001",
            "G85001-",
            "G85001-x1",
            "g85001-0001",
            "G85001-0001-2",
            "../x",
        ] {
            assert_eq!(ChunkId::parse(bad), None, "{bad:?}");
        }
        // A queue message with a malformed chunk id does not deserialise.
        let json = serde_json::to_string(&chunk).unwrap();
        assert_eq!(json, "\"G85001-0007\"");
        assert!(serde_json::from_str::<ChunkId>("\"G85001-0007\"").is_ok());
        assert!(serde_json::from_str::<ChunkId>("\"drop table\"").is_err());
    }

    fn staff(name: &str) -> StaffId {
        StaffId::new(name)
    }

    fn campaign(now: DateTime<Utc>) -> Campaign {
        Campaign {
            id: CampaignId::new(),
            name: "Heatwave".into(),
            template: MessageTemplate::parse("Stay cool", &TemplateRules::default()).unwrap(),
            target: Target::default(),
            options: CampaignOptions::default(),
            optout_deadline: now + Duration::hours(2),
            justification: "Red heat health alert".into(),
            created_by: staff("alice"),
            created_at: now,
            approved_by: None,
            approved_at: None,
            state: CampaignState::PendingApproval,
            state_changed_at: now,
            cancelled_by: None,
            cancel_reason: None,
            extraction_jobs_queued: false,
            progress: Progress::default(),
            purged_at: None,
            purged_items: None,
            deadline_change: None,
            paused_until: None,
            version: 0,
        }
    }

    /// Drives a campaign to `state` through legal transitions.
    fn in_state(state: CampaignState) -> Campaign {
        let now = Utc::now();
        let mut c = campaign(now);
        let steps = [
            CampaignState::PendingApproval,
            CampaignState::OptOutWindow,
            CampaignState::Extracting,
            CampaignState::Sending,
            CampaignState::AwaitingReceipts,
            CampaignState::Completed,
        ];
        if state == CampaignState::Cancelled {
            c.cancel(&staff("carol"), "test".into(), now).unwrap();
            return c;
        }
        for step in steps {
            if c.state == state {
                break;
            }
            match step {
                CampaignState::PendingApproval => c.approve(&staff("bob"), now).unwrap(),
                CampaignState::OptOutWindow => c.begin_extraction(1, now).unwrap(),
                CampaignState::Extracting => {
                    c.progress.practices_pending = 0;
                    c.progress.chunks_outstanding = 1;
                    assert!(c.advance(now));
                }
                CampaignState::Sending => {
                    c.progress.chunks_outstanding = 0;
                    assert!(c.advance(now));
                }
                CampaignState::AwaitingReceipts => c.record_purge(10, now).unwrap(),
                _ => unreachable!(),
            }
        }
        assert_eq!(c.state, state);
        c
    }

    const ALL: [CampaignState; 7] = [
        CampaignState::PendingApproval,
        CampaignState::OptOutWindow,
        CampaignState::Extracting,
        CampaignState::Sending,
        CampaignState::AwaitingReceipts,
        CampaignState::Completed,
        CampaignState::Cancelled,
    ];

    #[test]
    fn approve_only_from_pending_approval() {
        for state in ALL {
            let mut c = in_state(state);
            let result = c.approve(&staff("bob"), Utc::now());
            if state == CampaignState::PendingApproval {
                assert_eq!(result, Ok(()));
                assert_eq!(c.state, CampaignState::OptOutWindow);
            } else {
                assert!(matches!(
                    result,
                    Err(LifecycleError::IllegalTransition { .. })
                ));
                assert_eq!(c.state, state, "a refused transition changes nothing");
            }
        }
    }

    #[test]
    fn creator_cannot_approve_their_own_campaign() {
        let mut c = in_state(CampaignState::PendingApproval);
        assert_eq!(
            c.approve(&staff("alice"), Utc::now()),
            Err(LifecycleError::SelfApproval)
        );
        assert_eq!(c.state, CampaignState::PendingApproval);
        assert_eq!(c.approved_by, None);
    }

    #[test]
    fn approval_after_the_deadline_is_refused() {
        let mut c = in_state(CampaignState::PendingApproval);
        let later = c.optout_deadline + Duration::seconds(1);
        assert_eq!(
            c.approve(&staff("bob"), later),
            Err(LifecycleError::DeadlinePassed)
        );
    }

    #[test]
    fn extraction_begins_only_from_the_opt_out_window() {
        for state in ALL {
            let mut c = in_state(state);
            let result = c.begin_extraction(3, Utc::now());
            assert_eq!(
                result.is_ok(),
                state == CampaignState::OptOutWindow,
                "{state}"
            );
        }
    }

    #[test]
    fn cancel_works_from_every_non_final_state() {
        for state in ALL {
            let mut c = in_state(state);
            let result = c.cancel(&staff("carol"), "false alarm".into(), Utc::now());
            let allowed = !state.is_final();
            assert_eq!(result.is_ok(), allowed, "{state}");
            if allowed {
                assert_eq!(c.state, CampaignState::Cancelled);
                assert_eq!(c.cancelled_by, Some(staff("carol")));
            } else {
                assert_eq!(c.state, state);
            }
        }
    }

    #[test]
    fn advance_follows_the_counters() {
        let mut c = in_state(CampaignState::OptOutWindow);
        c.begin_extraction(2, Utc::now()).unwrap();
        c.progress.chunks_outstanding = 5;
        assert!(!c.advance(Utc::now()), "practices still pending");
        c.progress.practices_pending = 0;
        assert!(c.advance(Utc::now()));
        assert_eq!(c.state, CampaignState::Sending);
        c.progress.chunks_outstanding = 0;
        assert!(c.advance(Utc::now()));
        assert_eq!(c.state, CampaignState::AwaitingReceipts);
        assert!(!c.advance(Utc::now()));
    }

    #[test]
    fn purge_completes_only_after_receipts_or_cancel() {
        for state in ALL {
            let mut c = in_state(state);
            let result = c.record_purge(7, Utc::now());
            let allowed = matches!(
                state,
                CampaignState::AwaitingReceipts
                    | CampaignState::Completed
                    | CampaignState::Cancelled
            );
            assert_eq!(result.is_ok(), allowed, "{state}");
            if state == CampaignState::AwaitingReceipts {
                assert_eq!(c.state, CampaignState::Completed);
            }
        }
    }

    #[test]
    fn opt_out_allowed_only_in_window_and_before_deadline() {
        let c = in_state(CampaignState::OptOutWindow);
        assert!(c.check_opt_out_allowed(Utc::now()).is_ok());
        assert_eq!(
            c.check_opt_out_allowed(c.optout_deadline),
            Err(LifecycleError::DeadlinePassed)
        );
        let c = in_state(CampaignState::Extracting);
        assert!(c.check_opt_out_allowed(Utc::now()).is_err());
    }

    #[test]
    fn deadline_can_move_only_before_it_fires() {
        let mut c = in_state(CampaignState::OptOutWindow);
        let now = Utc::now();
        assert!(c.reschedule_deadline(now, now).is_ok());
        assert_eq!(
            c.reschedule_deadline(now - Duration::seconds(5), now),
            Err(LifecycleError::DeadlineInPast)
        );
        let mut c = in_state(CampaignState::Sending);
        assert!(c.reschedule_deadline(now, now).is_err());
    }

    #[test]
    fn campaign_ids_are_safe_for_keys() {
        let id = CampaignId::new();
        assert_eq!(CampaignId::parse(id.as_str()), Some(id));
        assert_eq!(CampaignId::parse("../etc"), None);
        assert_eq!(CampaignId::parse("ABCDEF123456"), None);
    }
}
