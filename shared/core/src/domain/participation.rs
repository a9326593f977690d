//! A practice's part in one campaign, and the only ways it may change.

use super::{CampaignId, OdsCode, OutcomeCounts};
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participation {
    pub campaign: CampaignId,
    pub ods: OdsCode,
    pub state: ParticipationState,
    pub notice_sent_at: Option<DateTime<Utc>>,
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
    /// Cohort and exclusions found at extraction.
    pub counts: OutcomeCounts,
    pub sends_queued: bool,
    pub version: u64,
}

impl Participation {
    pub fn notified(campaign: CampaignId, ods: OdsCode) -> Self {
        Self {
            campaign,
            ods,
            state: ParticipationState::Notified,
            notice_sent_at: None,
            opted_out_at: None,
            opted_out_by: None,
            extraction_attempts: 0,
            extraction_started_at: None,
            last_error: None,
            chunks: 0,
            malformed_records: 0,
            counts: Default::default(),
            sends_queued: false,
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
            | ParticipationState::ExtractionFailed => return ExtractionStart::NotTakingPart,
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
}
