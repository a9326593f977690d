//! Patient data as the GP system gives it, and the minimum the hub keeps
//! of it for the steps after extraction. Everything here is personal.

use super::{ChunkId, NhsNumber, Personal, Postcode, UkMobile};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// A patient's contact preference at their GP (UK Core ContactPreference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ContactPreference {
    #[default]
    NotRecorded,
    Sms,
    Letter,
    /// Code 8: no telephone contact, so no SMS.
    NoTelephoneContact,
}

/// One registered patient as read from a GP system: raw, unvalidated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpPatient {
    pub nhs_number: Personal<String>,
    pub given_name: Personal<String>,
    pub family_name: Personal<String>,
    pub address_lines: Personal<Vec<String>>,
    pub postcode: Personal<String>,
    /// The first day the recorded birth date can mean (1 January for a
    /// year alone); `birth_date_precision` says how much of it is known.
    pub birth_date: Personal<Option<NaiveDate>>,
    #[serde(default)]
    pub birth_date_precision: DatePrecision,
    /// The best current mobile, as recorded (unvalidated).
    pub mobile: Personal<Option<String>>,
    pub deceased: bool,
    pub contact_preference: ContactPreference,
    /// `Patient.active`: `false` marks a record no longer in use.
    #[serde(default = "record_active")]
    pub active: bool,
}

fn record_active() -> bool {
    true
}

/// How much of a date is known (FHIR allows `1980` and `1980-05`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DatePrecision {
    #[default]
    Day,
    Month,
    Year,
}

impl DatePrecision {
    /// The last day a date known to this precision can mean, from its first.
    pub fn last_day(self, first: NaiveDate) -> NaiveDate {
        use chrono::Datelike;
        let next = match self {
            Self::Day => return first,
            Self::Month if first.month() == 12 => NaiveDate::from_ymd_opt(first.year() + 1, 1, 1),
            Self::Month => NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1),
            Self::Year => NaiveDate::from_ymd_opt(first.year() + 1, 1, 1),
        };
        next.and_then(|d| d.pred_opt()).unwrap_or(first)
    }
}

/// How the hub will reach a recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "snake_case")]
pub enum Contact {
    Sms { mobile: UkMobile },
    Letter { address: PostalAddress },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostalAddress {
    pub name: Personal<String>,
    pub lines: Personal<Vec<String>>,
    pub postcode: Postcode,
}

/// Where a recipient is in the send pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecipientStatus {
    Pending,
    /// Another practice already held this patient's key when this record
    /// was extracted: kept in reserve, never sent as is. At the release it
    /// becomes `Pending` if that practice's extraction failed or was
    /// excluded (this practice takes the key over), else `Withheld` as a
    /// duplicate (`handlers/standby.rs`).
    Standby,
    /// Claimed by a worker before the provider call; a claim found on
    /// redelivery is reconciled with the provider, never blindly re-sent.
    Claimed {
        at: DateTime<Utc>,
    },
    Sent {
        provider: String,
        provider_id: String,
        at: DateTime<Utc>,
    },
    LetterSent {
        provider_id: String,
        at: DateTime<Utc>,
    },
    /// Refused by the provider (a bad number) with no fallback.
    Rejected,
    /// Not contacted, because of what another record of the same patient
    /// says (found when every practice's extraction had finished).
    Withheld {
        reason: super::ExclusionReason,
    },
}

impl RecipientStatus {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Sent { .. } | Self::LetterSent { .. } | Self::Rejected | Self::Withheld { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Delivered,
    PermanentFailure,
    TemporaryFailure,
    TechnicalFailure,
}

impl DeliveryStatus {
    pub fn is_delivered(self) -> bool {
        self == Self::Delivered
    }
}

/// A recipient as stored in the patient-data table: only what later steps
/// need. Date of birth is never stored; names only for personalisation or
/// a letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub chunk: ChunkId,
    pub index: u32,
    pub nhs_number: NhsNumber,
    pub contact: Contact,
    pub first_name: Personal<String>,
    pub last_name: Personal<String>,
    pub status: RecipientStatus,
    pub delivery: Option<DeliveryStatus>,
    pub written_back: bool,
}

impl Recipient {
    /// The provider reference: identifies the recipient within the campaign
    /// without personal data.
    pub fn reference(&self, campaign: &super::CampaignId) -> String {
        RecipientRef {
            campaign: campaign.clone(),
            chunk: self.chunk.clone(),
            index: self.index,
        }
        .to_string()
    }

    pub fn is_sms(&self) -> bool {
        matches!(self.contact, Contact::Sms { .. })
    }
}

/// Parsed form of a provider reference `campaign.chunk.index`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecipientRef {
    pub campaign: super::CampaignId,
    pub chunk: ChunkId,
    pub index: u32,
}

impl std::fmt::Display for RecipientRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.campaign, self.chunk, self.index)
    }
}

impl RecipientRef {
    pub fn parse(reference: &str) -> Option<Self> {
        let mut parts = reference.split('.');
        let campaign = super::CampaignId::parse(parts.next()?)?;
        let chunk = parts.next()?;
        let index = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        let chunk = ChunkId::parse(chunk)?;
        Some(Self {
            campaign,
            chunk,
            index,
        })
    }
}

/// Keys that make sure a patient (or, with the household option, a mobile
/// number) is placed in at most one chunk of a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DedupeKey {
    /// The patient is texted (held by the practice whose record texts them).
    Patient(NhsNumber),
    Mobile(UkMobile),
    /// The patient is sent a letter (held by the practice whose record
    /// addresses it); a letter is not sent when a `Patient` key exists.
    Letter(NhsNumber),
    /// Some record of this NHS number is restricted: whichever practice
    /// holds the key, the restriction applies to every record.
    Restricted(NhsNumber, Restriction),
}

/// What one record says that binds every record of the same NHS number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Restriction {
    /// Deceased: nobody is contacted.
    Deceased,
    /// "No telephone contact" (code 8): no text.
    NoTelephoneContact,
}

impl DedupeKey {
    /// Stored key; lives only in the patient-data table.
    pub fn storage_key(&self) -> String {
        match self {
            Self::Patient(nhs) => format!("P#{}", nhs.as_str()),
            Self::Mobile(mobile) => format!("M#{}", mobile.e164()),
            Self::Letter(nhs) => format!("L#{}", nhs.as_str()),
            Self::Restricted(nhs, Restriction::Deceased) => format!("D#{}", nhs.as_str()),
            Self::Restricted(nhs, Restriction::NoTelephoneContact) => {
                format!("N#{}", nhs.as_str())
            }
        }
    }

    /// Which of `shards` partitions the key lives in: FNV-1a of the stored
    /// key, written out so every process and every build agrees.
    pub fn shard(&self, shards: u32) -> u32 {
        fnv1a_shard(&self.storage_key(), shards)
    }
}

/// Which of `shards` partitions `text` lives in: FNV-1a, written out so
/// every process and every build agrees.
pub(crate) fn fnv1a_shard(text: &str, shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CampaignId, OdsCode};

    #[test]
    fn references_round_trip_and_carry_no_personal_data() {
        let campaign = CampaignId::new();
        let chunk = ChunkId::new(&OdsCode::parse("G85001").unwrap(), 7);
        let reference = RecipientRef {
            campaign: campaign.clone(),
            chunk: chunk.clone(),
            index: 42,
        };
        let text = reference.to_string();
        assert_eq!(text, format!("{campaign}.G85001-0007.42"));
        assert_eq!(RecipientRef::parse(&text), Some(reference));
        assert_eq!(RecipientRef::parse("nonsense"), None);
        assert_eq!(
            RecipientRef::parse(&format!("{campaign}.G85001-0007.x")),
            None
        );
    }
}
