//! Why a patient in the cohort was not sent a text, and what happened to
//! each one who was.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExclusionReason {
    /// Deceased flag or date of death in the GP record.
    Deceased,
    /// The GP record says no SMS / no telephone contact.
    SmsOptOut,
    /// The record's NHS number is missing or fails its check digit.
    InvalidNhsNumber,
    /// No mobile number and postal fallback is off.
    NoMobile,
    /// A number that is not a UK mobile, and postal fallback is off.
    InvalidMobile,
    /// Same NHS number seen earlier (in this practice or another).
    DuplicatePatient,
    /// Household option: another patient already gets a text at this number.
    DuplicateMobile,
    /// The provider refused the number (HTTP 400) and postal fallback is off.
    ProviderRejected,
    /// No usable mobile, and the letter could not be addressed.
    NoPostalAddress,
    /// `Patient.active` is false: a record no longer in use.
    InactiveRecord,
    /// Not sent: the campaign was cancelled first.
    Cancelled,
    /// Not sent: its chunk stayed stuck through the watchdog's retries and
    /// was recorded as failed (the audit says why).
    NotSent,
}

impl ExclusionReason {
    pub const ALL: [ExclusionReason; 12] = [
        Self::Deceased,
        Self::SmsOptOut,
        Self::InvalidNhsNumber,
        Self::NoMobile,
        Self::InvalidMobile,
        Self::DuplicatePatient,
        Self::DuplicateMobile,
        Self::ProviderRejected,
        Self::NoPostalAddress,
        Self::InactiveRecord,
        Self::Cancelled,
        Self::NotSent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deceased => "deceased",
            Self::SmsOptOut => "sms_opt_out",
            Self::InvalidNhsNumber => "invalid_nhs_number",
            Self::NoMobile => "no_mobile",
            Self::InvalidMobile => "invalid_mobile",
            Self::DuplicatePatient => "duplicate_patient",
            Self::DuplicateMobile => "duplicate_mobile",
            Self::ProviderRejected => "provider_rejected",
            Self::NoPostalAddress => "no_postal_address",
            Self::InactiveRecord => "inactive_record",
            Self::Cancelled => "cancelled",
            Self::NotSent => "not_sent",
        }
    }
}

/// Counts that add up per practice and per campaign, never patient data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    pub cohort: u64,
    pub sent: u64,
    pub letters: u64,
    pub excluded: BTreeMap<ExclusionReason, u64>,
    pub delivered: u64,
    pub failed: u64,
    pub written_back: u64,
    pub writeback_failed: u64,
}

impl OutcomeCounts {
    pub fn exclude(&mut self, reason: ExclusionReason) {
        *self.excluded.entry(reason).or_default() += 1;
    }

    pub fn excluded_total(&self) -> u64 {
        self.excluded.values().sum()
    }

    pub fn add(&mut self, other: &OutcomeCounts) {
        self.cohort += other.cohort;
        self.sent += other.sent;
        self.letters += other.letters;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.written_back += other.written_back;
        self.writeback_failed += other.writeback_failed;
        for (reason, count) in &other.excluded {
            *self.excluded.entry(*reason).or_default() += count;
        }
    }

    /// Every patient in the cohort has exactly one outcome.
    pub fn adds_up(&self) -> bool {
        self.cohort == self.sent + self.letters + self.excluded_total()
    }
}
