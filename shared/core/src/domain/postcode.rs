//! UK postcodes and the area / district / sector filters built on them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostcodeError {
    #[error("is empty")]
    Empty,
    #[error("is not a UK postcode (expected a form like SE13 6LH)")]
    Malformed,
}

/// A full UK postcode, upper case with one space before the inward code.
/// Part of an address, so `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Postcode {
    normalised: String,
}

impl Postcode {
    pub fn parse(input: &str) -> Result<Self, PostcodeError> {
        let compact: String = input
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if compact.is_empty() {
            return Err(PostcodeError::Empty);
        }
        if compact == "GIR0AA" {
            return Ok(Self {
                normalised: "GIR 0AA".into(),
            });
        }
        if compact.len() < 5 || compact.len() > 7 || !compact.is_ascii() {
            return Err(PostcodeError::Malformed);
        }
        let (outward, inward) = compact.split_at(compact.len() - 3);
        if !is_outward(outward) || !is_inward(inward) {
            return Err(PostcodeError::Malformed);
        }
        Ok(Self {
            normalised: format!("{outward} {inward}"),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.normalised
    }

    /// `SE13 6LH` → `SE13`.
    pub fn district(&self) -> &str {
        self.normalised.split(' ').next().unwrap_or_default()
    }

    /// `SE13 6LH` → `SE`.
    pub fn area(&self) -> &str {
        let district = self.district();
        let letters = district
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(district.len());
        &district[..letters]
    }

    /// `SE13 6LH` → `SE13 6`.
    pub fn sector(&self) -> &str {
        &self.normalised[..self.normalised.len() - 2]
    }
}

/// Outward codes: A9, A99, AA9, AA99, A9A, AA9A.
fn is_outward(outward: &str) -> bool {
    let pattern: String = outward
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { 'A' })
        .collect();
    let letters_ok = outward.chars().all(|c| c.is_ascii_alphanumeric());
    letters_ok
        && matches!(
            pattern.as_str(),
            "A9" | "A99" | "AA9" | "AA99" | "A9A" | "AA9A"
        )
}

/// Inward codes: a digit then two unit letters, never C, I, K, M, O or V.
fn is_inward(inward: &str) -> bool {
    let bytes = inward.as_bytes();
    bytes.len() == 3
        && bytes[0].is_ascii_digit()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_uppercase() && !b"CIKMOV".contains(b))
}

impl std::fmt::Debug for Postcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Postcode([redacted])")
    }
}

impl TryFrom<String> for Postcode {
    type Error = PostcodeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Postcode> for String {
    fn from(value: Postcode) -> Self {
        value.normalised
    }
}

/// A postcode filter in a campaign target: an area (`SE`), a district
/// (`SE13`) or a sector (`SE13 6`). Not personal data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PostcodeFilter {
    Area(String),
    District(String),
    Sector(String),
}

impl PostcodeFilter {
    pub fn parse(input: &str) -> Result<Self, PostcodeError> {
        let upper = input.trim().to_ascii_uppercase();
        if upper.is_empty() {
            return Err(PostcodeError::Empty);
        }
        let parts: Vec<&str> = upper.split_whitespace().collect();
        match parts.as_slice() {
            [single] if single.chars().all(|c| c.is_ascii_uppercase()) && single.len() <= 2 => {
                Ok(Self::Area(single.to_string()))
            }
            [single] if is_outward(single) => Ok(Self::District(single.to_string())),
            [outward, sector]
                if is_outward(outward)
                    && sector.len() == 1
                    && sector.chars().all(|c| c.is_ascii_digit()) =>
            {
                Ok(Self::Sector(format!("{outward} {sector}")))
            }
            _ => Err(PostcodeError::Malformed),
        }
    }

    pub fn matches(&self, postcode: &Postcode) -> bool {
        match self {
            Self::Area(area) => postcode.area() == area,
            Self::District(district) => postcode.district() == district,
            Self::Sector(sector) => postcode.sector() == sector,
        }
    }
}

impl TryFrom<String> for PostcodeFilter {
    type Error = PostcodeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PostcodeFilter> for String {
    fn from(value: PostcodeFilter) -> Self {
        match value {
            PostcodeFilter::Area(s) | PostcodeFilter::District(s) | PostcodeFilter::Sector(s) => s,
        }
    }
}
