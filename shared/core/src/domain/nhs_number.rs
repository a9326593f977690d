//! NHS number: 10 digits, the 10th a Modulus 11 check digit.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    #[error("must be 10 digits (spaces and dashes allowed), found {digits} digits")]
    WrongLength { digits: usize },
    #[error("may contain only digits, spaces and dashes")]
    NotDigits,
    #[error("check digit does not match (Modulus 11)")]
    BadCheckDigit,
}

/// A valid NHS number. `Debug` is redacted; use [`NhsNumber::formatted`] or
/// [`NhsNumber::as_str`] where the number is needed on purpose.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NhsNumber(String);

impl NhsNumber {
    pub fn parse(input: &str) -> Result<Self, NhsNumberError> {
        if !input
            .chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
        {
            return Err(NhsNumberError::NotDigits);
        }
        let digits: Vec<u32> = input.chars().filter_map(|c| c.to_digit(10)).collect();
        if digits.len() != 10 {
            return Err(NhsNumberError::WrongLength {
                digits: digits.len(),
            });
        }
        match check_digit(&digits[..9]) {
            Some(check) if check == digits[9] => {}
            _ => return Err(NhsNumberError::BadCheckDigit),
        }
        Ok(Self(
            digits.iter().map(|d| char::from(b'0' + *d as u8)).collect(),
        ))
    }

    /// The 10 digits with no separators.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Displayed 3-3-4, as on NHS letters: `943 476 5919`.
    pub fn formatted(&self) -> String {
        format!("{} {} {}", &self.0[..3], &self.0[3..6], &self.0[6..])
    }
}

/// The Modulus 11 check digit for the first nine digits, or `None` when the
/// remainder makes the number invalid (check value 10).
pub fn check_digit(first_nine: &[u32]) -> Option<u32> {
    let sum: u32 = first_nine
        .iter()
        .zip((2..=10).rev())
        .map(|(digit, weight)| digit * weight)
        .sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        check => Some(check),
    }
}

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber([redacted])")
    }
}

impl TryFrom<String> for NhsNumber {
    type Error = NhsNumberError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<NhsNumber> for String {
    fn from(value: NhsNumber) -> Self {
        value.0
    }
}
