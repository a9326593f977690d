//! UK mobile numbers, normalised to E.164 (`+447…`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MobileError {
    #[error("is empty")]
    Empty,
    #[error("may contain only digits, spaces, dashes, brackets and a leading +")]
    BadCharacters,
    #[error("is not a UK number (expected 07…, +447… or 00447…)")]
    NotUk,
    #[error("must have 11 digits in national form (07 and 9 more)")]
    WrongLength,
    #[error("is a UK number but not a mobile (landline, 070 personal number or 076 pager)")]
    NotMobile,
}

/// A UK mobile number in E.164 form. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UkMobile(String);

impl UkMobile {
    pub fn parse(input: &str) -> Result<Self, MobileError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(MobileError::Empty);
        }
        let mut digits = String::with_capacity(trimmed.len());
        for (position, c) in trimmed.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '(' | ')' | '.' => {}
                '+' if position == 0 => digits.push_str("00"),
                _ => return Err(MobileError::BadCharacters),
            }
        }
        // National form: strip the international prefix to leave 0 + 10 digits.
        // A bare "44…" is "+44…" with the plus lost (spreadsheets drop it).
        let international = digits
            .strip_prefix("0044")
            .or_else(|| digits.strip_prefix("44"));
        let national = if let Some(rest) = international {
            // "+44 (0)7…" (or "44 (0)7…") writes a redundant trunk zero.
            let rest = rest.strip_prefix('0').unwrap_or(rest);
            format!("0{rest}")
        } else if digits.starts_with("00") {
            return Err(MobileError::NotUk);
        } else if digits.starts_with('0') {
            digits
        } else {
            return Err(MobileError::NotUk);
        };
        if national.len() != 11 {
            return Err(MobileError::WrongLength);
        }
        if !is_mobile_range(&national) {
            return Err(MobileError::NotMobile);
        }
        Ok(Self(format!("+44{}", &national[1..])))
    }

    /// E.164, e.g. `+447700900123`.
    pub fn e164(&self) -> &str {
        &self.0
    }

    /// National form, e.g. `07700900123`.
    pub fn national(&self) -> String {
        format!("0{}", &self.0[3..])
    }

    /// Ofcom's drama range 07700 900000–900999: never a real subscriber.
    pub fn is_drama_range(&self) -> bool {
        self.national().starts_with("07700900")
    }
}

/// 071–075, 077–079 and 07624 (Isle of Man) are mobiles; 070 is personal
/// numbering and the rest of 076 are pagers.
fn is_mobile_range(national: &str) -> bool {
    let bytes = national.as_bytes();
    if bytes[0] != b'0' || bytes[1] != b'7' {
        return false;
    }
    match bytes[2] {
        b'1'..=b'5' | b'7'..=b'9' => true,
        b'6' => national.starts_with("07624"),
        _ => false,
    }
}

impl std::fmt::Debug for UkMobile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UkMobile([redacted])")
    }
}

impl TryFrom<String> for UkMobile {
    type Error = MobileError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<UkMobile> for String {
    fn from(value: UkMobile) -> Self {
        value.0
    }
}
