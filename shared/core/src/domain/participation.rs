//! A practice's part in one campaign, and the only ways it may change.

use super::{CampaignId, OdsCode, OutcomeCounts, StaffId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A practice's part in one campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipationState {
    /// Told about the campaign; may opt out until the deadline.
    Notified,
    OptedOut,
    /// Frozen in at the deadline; extraction queued.
    Participating,
    Extracting,
    Extracted,
    /// The GP system could not be read after every retry.
    ExtractionFailed,
    /// Read, but far fewer records than the registered list size: held
    /// (nothing sent, the campaign not completed) for a staff decision.
    ExtractionSuspect,
}

impl ParticipationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notified => "notified",
            Self::OptedOut => "opted_out",
            Self::Participating => "participating",
            Self::Extracting => "extracting",
            Self::Extracted => "extracted",
            Self::ExtractionFailed => "extraction_failed",
            Self::ExtractionSuspect => "extraction_suspect",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participation {
    pub campaign: CampaignId,
    pub ods: OdsCode,
    pub state: ParticipationState,
    pub notice_sent_at: Option<DateTime<Utc>>,
    /// The opt-out deadline the last notice sent named: brought forward
    /// since, the practice is sent a new notice.
    #[serde(default)]
    pub notice_deadline: Option<DateTime<Utc>>,
    pub opted_out_at: Option<DateTime<Utc>>,
    /// Who recorded the opt-out: `practice-link` or a staff identity.
    pub opted_out_by: Option<String>,
    pub extraction_attempts: u32,
    pub extraction_started_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub chunks: u32,
    /// Records the GP system returned that could not be read.
    #[serde(default)]
    pub malformed_records: u64,
    /// Records the GP system returned, readable or not (checked against
    /// the registered list size).
    #[serde(default)]
    pub records_read: u64,
    /// When the extraction was held as `extraction_suspect` (the region
    /// waits on it since then); cleared by the staff decision.
    #[serde(default)]
    pub held_since: Option<DateTime<Utc>>,
    /// Cohort and exclusions found at extraction.
    pub counts: OutcomeCounts,
    pub sends_queued: bool,
    /// The staff decision on a held extraction, recorded by the api and
    /// carried out by the extract function (kept after proceed or exclude
    /// as the record of who decided).
    #[serde(default)]
    pub decision: Option<RecordedDecision>,
    pub version: u64,
}

/// A staff decision on a held extraction as recorded: what, who, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedDecision {
    pub decision: ExtractionDecision,
    pub by: StaffId,
    pub at: DateTime<Utc>,
}

impl Participation {
    pub fn notified(campaign: CampaignId, ods: OdsCode) -> Self {
        Self {
            campaign,
            ods,
            state: ParticipationState::Notified,
            notice_sent_at: None,
            notice_deadline: None,
            opted_out_at: None,
            opted_out_by: None,
            extraction_attempts: 0,
            extraction_started_at: None,
            last_error: None,
            chunks: 0,
            malformed_records: 0,
            records_read: 0,
            held_since: None,
            counts: Default::default(),
            sends_queued: false,
            decision: None,
            version: 0,
        }
    }
}

/// A participation change that its state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("practice {ods} is {} and can no longer {action}", .state.as_str())]
pub struct ParticipationError {
    pub ods: OdsCode,
    pub state: ParticipationState,
    pub action: &'static str,
}

/// What staff decide about a practice held as `extraction_suspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractionDecision {
    /// Send to the patients read (the list size on record was wrong).
    Proceed,
    /// Read the practice again.
    Retry,
    /// Leave the practice out of this campaign.
    Exclude,
}

impl ExtractionDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proceed => "proceed",
            Self::Retry => "retry",
            Self::Exclude => "exclude",
        }
    }
}

/// What an extract job should do with a participation it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractionStart {
    /// Started (or a dead worker's attempt taken over): extract now.
    Started,
    /// Another worker is extracting it and is not yet presumed dead.
    Busy,
    /// Extracted already: only the send jobs may still need queueing.
    AlreadyExtracted,
    /// Opted out, never frozen in, or failed for good: nothing to do.
    NotTakingPart,
}

impl Participation {
    /// The practice opts out. `Ok(false)` if it already had.
    pub fn opt_out(&mut self, by: &str, now: DateTime<Utc>) -> Result<bool, ParticipationError> {
        match self.state {
            ParticipationState::OptedOut => Ok(false),
            ParticipationState::Notified => {
                self.state = ParticipationState::OptedOut;
                self.opted_out_at = Some(now);
                self.opted_out_by = Some(by.to_string());
                Ok(true)
            }
            state => Err(ParticipationError {
                ods: self.ods.clone(),
                state,
                action: "opt out",
            }),
        }
    }

    /// Freezes a practice in at the deadline. `true` if it takes part:
    /// newly frozen, or frozen by an earlier attempt at the same deadline.
    pub fn freeze(&mut self) -> bool {
        match self.state {
            ParticipationState::Notified => {
                self.state = ParticipationState::Participating;
                true
            }
            ParticipationState::Participating => true,
            _ => false,
        }
    }

    /// An extract job takes the participation. An attempt older than
    /// `stale_after` is presumed dead and taken over.
    pub fn start_extraction(
        &mut self,
        now: DateTime<Utc>,
        stale_after: chrono::Duration,
    ) -> ExtractionStart {
        match self.state {
            ParticipationState::Participating => {}
            ParticipationState::Extracting => {
                let started = self.extraction_started_at.unwrap_or(now);
                if now - started < stale_after {
                    return ExtractionStart::Busy;
                }
            }
            ParticipationState::Extracted => return ExtractionStart::AlreadyExtracted,
            ParticipationState::Notified
            | ParticipationState::OptedOut
            | ParticipationState::ExtractionFailed
            | ParticipationState::ExtractionSuspect => return ExtractionStart::NotTakingPart,
        }
        self.state = ParticipationState::Extracting;
        self.extraction_attempts += 1;
        self.extraction_started_at = Some(now);
        ExtractionStart::Started
    }

    /// The extraction finished: its chunks and counts are recorded.
    pub fn finish_extraction(&mut self, chunks: u32, counts: OutcomeCounts, malformed: u64) {
        self.state = ParticipationState::Extracted;
        self.chunks = chunks;
        self.counts = counts;
        self.malformed_records = malformed;
        self.last_error = None;
    }

    /// The extraction read far fewer records than the list size: its
    /// chunks are stored but not counted until staff decide.
    pub fn hold_as_suspect(
        &mut self,
        chunks: u32,
        counts: OutcomeCounts,
        malformed: u64,
        records_read: u64,
    ) {
        self.finish_extraction(chunks, counts, malformed);
        self.records_read = records_read;
        self.state = ParticipationState::ExtractionSuspect;
        self.decision = None;
    }

    /// Whether the practice is to be sent a notice for the deadline in
    /// force: it has none yet, or its last one named a later deadline (the
    /// deadline was brought forward since). Derived from the stored state,
    /// so a redelivered or re-queued notice is not sent twice.
    pub fn needs_notice(&self, deadline: DateTime<Utc>) -> bool {
        self.state == ParticipationState::Notified
            && (self.notice_sent_at.is_none()
                || self.notice_deadline.is_some_and(|told| told > deadline))
    }

    /// Staff record a decision on a held extraction, for the extract
    /// function to carry out. One decision per hold: the same one again is
    /// a replay (`Ok(false)`), another is refused.
    pub fn record_decision(
        &mut self,
        decision: ExtractionDecision,
        by: &StaffId,
        at: DateTime<Utc>,
    ) -> Result<bool, ParticipationError> {
        let refused = |state| ParticipationError {
            ods: self.ods.clone(),
            state,
            action: "take an extraction decision (only a held extraction without one can)",
        };
        match &self.decision {
            Some(recorded) if recorded.decision == decision => Ok(false),
            Some(_) => Err(refused(self.state)),
            None if self.state != ParticipationState::ExtractionSuspect => Err(refused(self.state)),
            None => {
                self.decision = Some(RecordedDecision {
                    decision,
                    by: by.clone(),
                    at,
                });
                Ok(true)
            }
        }
    }

    /// Staff decide on a held extraction. `Proceed` keeps what was read;
    /// `Retry` puts the practice back in line (attempts start again);
    /// `Exclude` ends its part with nothing sent.
    pub fn decide(&mut self, decision: ExtractionDecision) -> Result<(), ParticipationError> {
        if self.state != ParticipationState::ExtractionSuspect {
            return Err(ParticipationError {
                ods: self.ods.clone(),
                state: self.state,
                action: "take an extraction decision (only a held extraction can)",
            });
        }
        self.held_since = None;
        match decision {
            ExtractionDecision::Proceed => self.state = ParticipationState::Extracted,
            ExtractionDecision::Retry => {
                self.state = ParticipationState::Participating;
                // Read again; a new hold waits for a new decision.
                self.decision = None;
                self.extraction_attempts = 0;
                self.chunks = 0;
                self.counts = OutcomeCounts::default();
            }
            ExtractionDecision::Exclude => {
                self.state = ParticipationState::ExtractionFailed;
                self.chunks = 0;
                self.counts = OutcomeCounts::default();
                self.last_error = Some("excluded by staff after a suspect extraction".into());
            }
        }
        Ok(())
    }

    /// The GP system could not be read: back in line for another attempt,
    /// or failed for good after the last one. `error` names the system,
    /// never a patient.
    pub fn extraction_failed(&mut self, error: String, last_attempt: bool) {
        self.last_error = Some(error);
        self.state = if last_attempt {
            ParticipationState::ExtractionFailed
        } else {
            ParticipationState::Participating
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notified() -> Participation {
        Participation::notified(CampaignId::new(), OdsCode::parse("G85001").unwrap())
    }

    #[test]
    fn a_practice_opts_out_only_before_it_is_frozen() {
        let now = Utc::now();
        let mut p = notified();
        assert_eq!(p.opt_out("practice-link", now), Ok(true));
        assert_eq!(p.opted_out_by.as_deref(), Some("practice-link"));
        assert_eq!(
            p.opt_out("staff", now),
            Ok(false),
            "a second opt-out changes nothing"
        );
        assert_eq!(p.opted_out_by.as_deref(), Some("practice-link"));
        assert!(!p.freeze(), "an opted-out practice is not frozen in");

        let mut frozen = notified();
        assert!(frozen.freeze());
        assert!(frozen.freeze(), "a retried freeze keeps it");
        let error = frozen.opt_out("staff", now).unwrap_err();
        assert_eq!(error.state, ParticipationState::Participating);
        assert_eq!(
            error.to_string(),
            "practice G85001 is participating and can no longer opt out"
        );
    }

    #[test]
    fn extraction_is_taken_once_until_its_worker_is_presumed_dead() {
        let now = Utc::now();
        let stale = chrono::Duration::minutes(20);
        let mut p = notified();
        assert_eq!(
            p.start_extraction(now, stale),
            ExtractionStart::NotTakingPart
        );
        p.freeze();
        assert_eq!(p.start_extraction(now, stale), ExtractionStart::Started);
        assert_eq!(p.extraction_attempts, 1);
        let later = now + chrono::Duration::minutes(5);
        assert_eq!(p.start_extraction(later, stale), ExtractionStart::Busy);
        let much_later = now + chrono::Duration::minutes(21);
        assert_eq!(
            p.start_extraction(much_later, stale),
            ExtractionStart::Started
        );
        assert_eq!(p.extraction_attempts, 2);

        p.extraction_failed("GP system unavailable".into(), false);
        assert_eq!(p.state, ParticipationState::Participating);
        assert_eq!(
            p.start_extraction(much_later, stale),
            ExtractionStart::Started
        );
        p.finish_extraction(3, OutcomeCounts::default(), 1);
        assert_eq!(p.last_error, None);
        assert_eq!(
            p.start_extraction(much_later, stale),
            ExtractionStart::AlreadyExtracted
        );

        let mut held = notified();
        held.freeze();
        held.start_extraction(now, stale);
        held.hold_as_suspect(1, OutcomeCounts::default(), 0, 12);
        assert_eq!(held.state, ParticipationState::ExtractionSuspect);
        assert_eq!(held.records_read, 12);
        assert_eq!(
            held.start_extraction(now, stale),
            ExtractionStart::NotTakingPart,
            "a held practice waits for staff"
        );
        for (decision, state) in [
            (ExtractionDecision::Proceed, ParticipationState::Extracted),
            (ExtractionDecision::Retry, ParticipationState::Participating),
            (
                ExtractionDecision::Exclude,
                ParticipationState::ExtractionFailed,
            ),
        ] {
            let mut p = held.clone();
            p.decide(decision).unwrap();
            assert_eq!(p.state, state);
            assert!(p.decide(decision).is_err(), "decided once");
        }
        assert!(notified().decide(ExtractionDecision::Proceed).is_err());

        let mut failed = notified();
        failed.freeze();
        failed.start_extraction(now, stale);
        failed.extraction_failed("GP system unavailable".into(), true);
        assert_eq!(failed.state, ParticipationState::ExtractionFailed);
        assert_eq!(
            failed.start_extraction(now, stale),
            ExtractionStart::NotTakingPart
        );
    }

    #[test]
    fn one_decision_per_hold_and_a_retry_waits_for_a_new_one() {
        let now = Utc::now();
        let bob = StaffId::new("arn:aws:iam::1:user/bob");
        let mut p = notified();
        assert!(
            p.record_decision(ExtractionDecision::Proceed, &bob, now)
                .is_err(),
            "only a held practice is decided on"
        );
        p.hold_as_suspect(1, OutcomeCounts::default(), 0, 3);
        assert_eq!(
            p.record_decision(ExtractionDecision::Retry, &bob, now),
            Ok(true)
        );
        assert_eq!(
            p.record_decision(ExtractionDecision::Retry, &bob, now),
            Ok(false),
            "the same decision again is a replay"
        );
        assert!(p
            .record_decision(ExtractionDecision::Exclude, &bob, now)
            .is_err());
        p.decide(ExtractionDecision::Retry).unwrap();
        assert_eq!(p.state, ParticipationState::Participating);
        assert!(p.decision.is_none(), "a retry clears the decision");
        p.hold_as_suspect(1, OutcomeCounts::default(), 0, 3);
        assert_eq!(
            p.record_decision(ExtractionDecision::Exclude, &bob, now),
            Ok(true),
            "a new hold takes a new decision"
        );
        p.decide(ExtractionDecision::Exclude).unwrap();
        assert_eq!(
            p.decision.as_ref().map(|d| (d.decision, d.by.clone())),
            Some((ExtractionDecision::Exclude, bob.clone())),
            "kept as the record of who decided"
        );
        assert_eq!(
            p.record_decision(ExtractionDecision::Exclude, &bob, now),
            Ok(false),
            "a replay after it was carried out is still a replay"
        );
    }

    #[test]
    fn a_notice_is_due_when_none_was_sent_or_it_named_a_later_deadline() {
        let deadline = Utc::now();
        let mut p = notified();
        assert!(p.needs_notice(deadline));
        p.notice_sent_at = Some(deadline);
        p.notice_deadline = Some(deadline);
        assert!(!p.needs_notice(deadline), "told this deadline");
        assert!(
            !p.needs_notice(deadline + chrono::Duration::hours(1)),
            "a later deadline needs no new notice"
        );
        assert!(
            p.needs_notice(deadline - chrono::Duration::hours(1)),
            "an earlier one does"
        );
        p.opt_out("practice-link", deadline).unwrap();
        assert!(!p.needs_notice(deadline - chrono::Duration::hours(1)));
    }
}
