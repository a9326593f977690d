//! Placeholder: the helper replaces this file with the full implementation.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRules {
    pub allowed_link_domains: Vec<String>,
    pub max_characters: usize,
}

impl Default for TemplateRules {
    fn default() -> Self {
        Self {
            allowed_link_domains: vec!["nhs.uk".into(), "gov.uk".into()],
            max_characters: 918,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    FirstName,
    LastName,
    PracticeName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsLength {
    pub encoding: Encoding,
    pub units: usize,
    pub fragments: u32,
}

pub fn measure(text: &str) -> SmsLength {
    let units = text.chars().count();
    SmsLength {
        encoding: Encoding::Gsm7,
        units,
        fragments: if units <= 160 {
            1
        } else {
            units.div_ceil(153) as u32
        },
    }
}

pub struct Personalisation<'a> {
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub practice_name: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("is empty")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageTemplate {
    text: String,
}

impl MessageTemplate {
    pub fn parse(text: &str, _rules: &TemplateRules) -> Result<Self, TemplateError> {
        if text.trim().is_empty() {
            return Err(TemplateError::Empty);
        }
        Ok(Self { text: text.into() })
    }
    pub fn text(&self) -> &str {
        &self.text
    }
    pub fn uses(&self, field: Field) -> bool {
        let name = match field {
            Field::FirstName => "((first_name))",
            Field::LastName => "((last_name))",
            Field::PracticeName => "((practice_name))",
        };
        self.text.contains(name)
    }
    pub fn render(&self, values: &Personalisation<'_>) -> String {
        self.text
            .replace("((first_name))", values.first_name)
            .replace("((last_name))", values.last_name)
            .replace("((practice_name))", values.practice_name)
    }
    pub fn example(&self) -> String {
        self.render(&Personalisation {
            first_name: "Alex",
            last_name: "Smith",
            practice_name: "Example Surgery",
        })
    }
    pub fn measure_example(&self) -> SmsLength {
        measure(&self.example())
    }
}

impl MessageTemplate {
    pub fn worst_case_length(&self) -> SmsLength {
        self.measure_example()
    }
}
