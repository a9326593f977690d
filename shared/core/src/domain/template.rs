//! SMS message templates: Notify-style `((name))` placeholders, GSM-7 / UCS-2
//! length measurement, the 918-character cap and the link allow-list.
//!
//! Positions in errors are 1-based character (Unicode scalar) positions, the
//! number a person counting characters in an editor would arrive at.
//!
//! Link checking covers `http:` / `https:` links (with any run of `/` or `\`
//! after the colon, as browsers accept both), `www.` links and bare domains
//! (`bit.ly/abc`, `evil.example`), which phones also make links of: any word
//! of two or more dot-separated labels whose last is two or more letters
//! counts as one (so `e.g.`, `3.5` and `10.30am` do not, and a sentence
//! written without a space after its full stop must get one).

use serde::{Deserialize, Serialize};
use std::fmt;
use unicode_normalization::UnicodeNormalization;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRules {
    /// A link's host must equal one of these or end in `.` + one of these.
    pub allowed_link_domains: Vec<String>,
    /// Cap on the worst-case rendered length, in characters (Notify: 918).
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

/// A personalisation field a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    FirstName,
    LastName,
    PracticeName,
}

impl Field {
    pub const ALL: [Field; 3] = [Field::FirstName, Field::LastName, Field::PracticeName];

    /// The name written between `((` and `))`.
    pub fn name(self) -> &'static str {
        match self {
            Field::FirstName => "first_name",
            Field::LastName => "last_name",
            Field::PracticeName => "practice_name",
        }
    }

    /// The longest value the hub plans for (PDS name parts are capped at 35
    /// characters; ODS organisation names at 100).
    pub fn max_length(self) -> usize {
        match self {
            Field::FirstName | Field::LastName => 35,
            Field::PracticeName => 100,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|field| field.name() == name)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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
    /// GSM-7 septets, or UTF-16 code units for UCS-2.
    pub units: usize,
    pub fragments: u32,
}

/// GSM 03.38 basic character set (ESC excluded: it is not a character).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// GSM 03.38 extension table: each costs an escape plus the character.
const GSM7_EXTENSION: &str = "\u{000C}^{}\\[~]|€";

fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// How a text would be sent: encoding, units and the number of fragments.
pub fn measure(text: &str) -> SmsLength {
    let gsm: Option<usize> = text.chars().map(gsm7_septets).sum();
    let (encoding, units, single, per_part) = match gsm {
        Some(septets) => (Encoding::Gsm7, septets, 160, 153),
        None => (Encoding::Ucs2, text.encode_utf16().count(), 70, 67),
    };
    let fragments = if units <= single {
        1
    } else {
        units.div_ceil(per_part)
    };
    SmsLength {
        encoding,
        units,
        // Texts are capped far below u32::MAX fragments; saturate rather than wrap.
        fragments: u32::try_from(fragments).unwrap_or(u32::MAX),
    }
}

pub struct Personalisation<'a> {
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub practice_name: &'a str,
}

impl Personalisation<'_> {
    fn get(&self, field: Field) -> &str {
        match field {
            Field::FirstName => self.first_name,
            Field::LastName => self.last_name,
            Field::PracticeName => self.practice_name,
        }
    }
}

/// Why a template was refused. Each message reads after "message ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("is empty")]
    Empty,
    #[error(
        "has an unknown placeholder (({name})) at character {position}; allowed: first_name, last_name, practice_name"
    )]
    UnknownPlaceholder { name: String, position: usize },
    #[error("has an empty placeholder (()) at character {position}; allowed: first_name, last_name, practice_name")]
    EmptyPlaceholder { position: usize },
    #[error("has a placeholder opened with (( at character {position} but not closed with )) on the same line")]
    UnclosedPlaceholder { position: usize },
    #[error("has a placeholder at character {position} with an empty fallback after |; write one, e.g. ((first_name|there)), or leave out the |")]
    EmptyFallback { position: usize },
    #[error("has a placeholder at character {position} whose fallback is over {max} characters")]
    LongFallback { position: usize, max: usize },
    #[error("has a fallback at character {position} for practice_name, which always has a value")]
    FallbackNotAllowed { position: usize },
    #[error("has a link at character {position} with no domain")]
    LinkWithoutDomain { position: usize },
    #[error("has a link to {domain} at character {position}; links may only go to {allowed}")]
    DisallowedLink {
        domain: String,
        position: usize,
        allowed: String,
    },
    #[error("{}", too_long(*length, *max, *personalised))]
    TooLong {
        /// Characters, with placeholders at their longest when `personalised`.
        length: usize,
        max: usize,
        personalised: bool,
    },
}

fn too_long(length: usize, max: usize, personalised: bool) -> String {
    if personalised {
        format!("could be {length} characters long with the longest names and practice name, over the limit of {max}")
    } else {
        format!("is {length} characters long, over the limit of {max}")
    }
}

/// A validated template. Deserialising does not re-validate (the rules are
/// configuration); stored templates were validated when first parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageTemplate {
    text: String,
}

impl MessageTemplate {
    pub fn parse(text: &str, rules: &TemplateRules) -> Result<Self, TemplateError> {
        if text.trim().is_empty() {
            return Err(TemplateError::Empty);
        }
        for token in tokenize(text) {
            if let Token::Bad {
                problem, position, ..
            } = token
            {
                return Err(match problem {
                    Problem::Unknown(name) => TemplateError::UnknownPlaceholder {
                        name: truncate(name, 40),
                        position,
                    },
                    Problem::Empty => TemplateError::EmptyPlaceholder { position },
                    Problem::Unclosed => TemplateError::UnclosedPlaceholder { position },
                    Problem::EmptyFallback => TemplateError::EmptyFallback { position },
                    Problem::LongFallback(max) => TemplateError::LongFallback { position, max },
                    Problem::NoFallbackHere => TemplateError::FallbackNotAllowed { position },
                });
            }
        }
        check_links(text, &rules.allowed_link_domains)?;
        let template = Self { text: text.into() };
        let length = template.worst_case_text().chars().count();
        if length > rules.max_characters {
            return Err(TemplateError::TooLong {
                length,
                max: rules.max_characters,
                personalised: !template.fields().is_empty(),
            });
        }
        Ok(template)
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn uses(&self, field: Field) -> bool {
        tokenize(&self.text)
            .iter()
            .any(|token| matches!(token, Token::Field(f, _) if *f == field))
    }

    /// Distinct fields, in order of first use.
    pub fn fields(&self) -> Vec<Field> {
        let mut fields = Vec::new();
        for token in tokenize(&self.text) {
            if let Token::Field(field, _) = token {
                if !fields.contains(&field) {
                    fields.push(field);
                }
            }
        }
        fields
    }

    /// Fills the placeholders. Anything that is not a valid placeholder (only
    /// possible in an unvalidated, deserialised template) is kept as written.
    ///
    /// Values are normalised to NFC first (a name stored decomposed, `e` +
    /// combining acute, reads and counts as the one character `é`), then cut
    /// to their field's [`Field::max_length`], so a rendered text is never
    /// longer than the worst case the template was checked against (918
    /// characters). An empty value takes the placeholder's fallback
    /// (`((first_name|there))`); with none, the placeholder is left out along
    /// with the comma or space that would dangle after it, so a text never
    /// reads "Hello , ...".
    pub fn render(&self, values: &Personalisation<'_>) -> String {
        let mut out = String::with_capacity(self.text.len() + 64);
        let mut dropped = false;
        for token in tokenize(&self.text) {
            let mut text = match token {
                Token::Text(text) | Token::Bad { raw: text, .. } => text,
                Token::Field(field, fallback) => {
                    let value = values.get(field).trim();
                    match (value, fallback) {
                        ("", Some(fallback)) => fallback,
                        ("", None) => {
                            dropped = true;
                            continue;
                        }
                        (value, _) => {
                            let value: String = value.nfc().collect();
                            match value.char_indices().nth(field.max_length()) {
                                Some((cut, _)) => out.push_str(value[..cut].trim_end()),
                                None => out.push_str(&value),
                            }
                            continue;
                        }
                    }
                }
            };
            if std::mem::take(&mut dropped) {
                // "Dear ((first_name)), see" -> "Dear see" rather than "Dear , see";
                // "NHS SEL: ((first_name)), an" -> "NHS SEL: an".
                text = text.strip_prefix(',').unwrap_or(text);
                if out.ends_with(char::is_whitespace) || out.is_empty() {
                    text = text.trim_start_matches([' ', '\t']);
                }
                if text.starts_with(['.', '!', '?', ',', ';', ':']) {
                    let kept = out
                        .trim_end_matches([' ', '\t'])
                        .trim_end_matches(',')
                        .len();
                    out.truncate(kept);
                }
            }
            out.push_str(text);
        }
        if dropped {
            let kept = out.trim_end_matches([' ', '\t']).len();
            out.truncate(kept);
        }
        out
    }

    /// The message as a patient with no recorded name sees it.
    pub fn example_without_names(&self) -> String {
        self.render(&Personalisation {
            first_name: "",
            last_name: "",
            practice_name: "Example Surgery",
        })
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

    /// Length with every placeholder at its maximum length, for planning
    /// fragment counts. The filler is a GSM-7 character, so the encoding is
    /// the template's own: a name outside GSM-7 would still switch a real
    /// message to UCS-2.
    pub fn worst_case_length(&self) -> SmsLength {
        measure(&self.worst_case_text())
    }

    fn worst_case_text(&self) -> String {
        let first = "x".repeat(Field::FirstName.max_length());
        let last = "x".repeat(Field::LastName.max_length());
        let practice = "x".repeat(Field::PracticeName.max_length());
        self.render(&Personalisation {
            first_name: &first,
            last_name: &last,
            practice_name: &practice,
        })
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(max_chars).collect();
        short.push('…');
        short
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem<'a> {
    Unknown(&'a str),
    Empty,
    Unclosed,
    EmptyFallback,
    LongFallback(usize),
    NoFallbackHere,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Text(&'a str),
    /// `((first_name|there))`: the field, and what stands in for an empty
    /// value.
    Field(Field, Option<&'a str>),
    /// `raw` is the exact source text, so rendering can keep it unchanged.
    Bad {
        raw: &'a str,
        problem: Problem<'a>,
        position: usize,
    },
}

/// Splits text into literal runs and `((name))` placeholders. A placeholder
/// name may not contain brackets or line breaks (as in Notify), so a stray
/// `((` is reported where it opens rather than swallowing later text.
fn tokenize(text: &str) -> Vec<Token<'_>> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |index: usize| chars.get(index).map_or(text.len(), |(byte, _)| *byte);
    let is = |index: usize, c: char| chars.get(index).is_some_and(|(_, found)| *found == c);

    let mut tokens = Vec::new();
    let mut literal_start = 0;
    let mut i = 0;
    while i < chars.len() {
        if !(is(i, '(') && is(i + 1, '(')) {
            i += 1;
            continue;
        }
        // In a run like "(((", the placeholder opens at the last two brackets.
        let mut open = i;
        while is(open + 2, '(') {
            open += 1;
        }
        let name_start = open + 2;
        let mut end = name_start;
        while chars
            .get(end)
            .is_some_and(|(_, c)| !matches!(c, '(' | ')' | '\n' | '\r'))
        {
            end += 1;
        }
        let open_byte = byte_at(open);
        if literal_start < open_byte {
            tokens.push(Token::Text(&text[literal_start..open_byte]));
        }
        let position = open + 1;
        if is(end, ')') && is(end + 1, ')') {
            let inside = &text[byte_at(name_start)..byte_at(end)];
            let (name, fallback) = match inside.split_once('|') {
                Some((name, fallback)) => (name, Some(fallback)),
                None => (inside, None),
            };
            let raw = &text[open_byte..byte_at(end + 2)];
            tokens.push(match Field::from_name(name) {
                Some(field) => match fallback {
                    Some(fallback) if fallback.trim().is_empty() => Token::Bad {
                        raw,
                        problem: Problem::EmptyFallback,
                        position,
                    },
                    Some(fallback) if fallback.chars().count() > field.max_length() => Token::Bad {
                        raw,
                        problem: Problem::LongFallback(field.max_length()),
                        position,
                    },
                    Some(_) if field == Field::PracticeName => Token::Bad {
                        raw,
                        problem: Problem::NoFallbackHere,
                        position,
                    },
                    fallback => Token::Field(field, fallback),
                },
                None if name.trim().is_empty() => Token::Bad {
                    raw,
                    problem: Problem::Empty,
                    position,
                },
                None => Token::Bad {
                    raw,
                    problem: Problem::Unknown(name),
                    position,
                },
            });
            i = end + 2;
        } else {
            tokens.push(Token::Bad {
                raw: &text[open_byte..byte_at(name_start)],
                problem: Problem::Unclosed,
                position,
            });
            i = name_start;
        }
        literal_start = byte_at(i);
    }
    if literal_start < text.len() {
        tokens.push(Token::Text(&text[literal_start..]));
    }
    tokens
}

/// Characters that end a link's authority (host, port, userinfo). `\` is
/// included because browsers read it as `/` in http(s) links.
fn ends_authority(c: char) -> bool {
    c.is_whitespace() || matches!(c, '/' | '?' | '#' | '\\' | '<' | '>' | '"')
}

/// Characters that may continue a host name before a `www.` found mid-word.
fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Sentence punctuation often written straight after a link.
const TRAILING_PUNCTUATION: &[char] = &[
    '.', ',', ';', ':', '!', '?', ')', ']', '}', '\'', '"', '’', '”', '»',
];

fn starts_with_ignore_case(chars: &[char], at: usize, prefix: &str) -> bool {
    let mut index = at;
    for expected in prefix.chars() {
        match chars.get(index) {
            Some(c) if c.eq_ignore_ascii_case(&expected) => index += 1,
            _ => return false,
        }
    }
    true
}

fn check_links(text: &str, allowed: &[String]) -> Result<(), TemplateError> {
    let allowed: Vec<String> = allowed
        .iter()
        .map(|domain| domain.trim().trim_matches('.').to_ascii_lowercase())
        .filter(|domain| !domain.is_empty())
        .collect();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        // (where the link starts, where its authority starts)
        let found = if starts_with_ignore_case(&chars, i, "https:")
            || starts_with_ignore_case(&chars, i, "http:")
        {
            let mut start = i + if chars[i + 4] == ':' { 5 } else { 6 };
            while chars.get(start).is_some_and(|c| matches!(c, '/' | '\\')) {
                start += 1;
            }
            Some((i, start))
        } else if starts_with_ignore_case(&chars, i, "www.") {
            // "evil.www.x": the host began before "www.", so check all of it.
            let mut start = i;
            while start > 0 && is_host_char(chars[start - 1]) {
                start -= 1;
            }
            Some((start, start))
        } else if looks_like_bare_domain(&chars, i) {
            Some((i, i))
        } else {
            None
        };
        let Some((link_start, authority_start)) = found else {
            i += 1;
            continue;
        };
        let mut end = authority_start;
        while chars.get(end).is_some_and(|c| !ends_authority(*c)) {
            end += 1;
        }
        let authority: String = chars[authority_start..end].iter().collect();
        check_host(&authority, link_start + 1, &allowed)?;
        // Skip the rest of the link: a phone makes one link of it, so a
        // "www." in its path or query is not a second link.
        while chars.get(end).is_some_and(|c| !c.is_whitespace()) {
            end += 1;
        }
        i = end.max(i + 1);
    }
    Ok(())
}

/// A word starting at `at` that a phone would make a link of without a
/// scheme: `label.label…` whose last label is two or more ASCII letters.
fn looks_like_bare_domain(chars: &[char], at: usize) -> bool {
    let word_start = at == 0
        || chars[at - 1].is_whitespace()
        || matches!(
            chars[at - 1],
            '(' | '[' | '{' | '<' | '"' | '\'' | '‘' | '“' | '«'
        );
    if !word_start || !chars[at].is_ascii_alphanumeric() {
        return false;
    }
    let mut end = at;
    while chars.get(end).is_some_and(|c| is_host_char(*c)) {
        end += 1;
    }
    let host: String = chars[at..end].iter().collect();
    let host = host.trim_end_matches('.');
    let labels: Vec<&str> = host.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty())
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()))
}

fn check_host(authority: &str, position: usize, allowed: &[String]) -> Result<(), TemplateError> {
    let authority = authority.trim_end_matches(TRAILING_PUNCTUATION);
    // Userinfo ("https://nhs.uk@evil.com") is not the host: the host follows the last '@'.
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let host = host_port.split(':').next().unwrap_or(host_port);
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty() {
        return Err(TemplateError::LinkWithoutDomain { position });
    }
    // Only plain ASCII labels: encoded, IDN or bracketed hosts are refused
    // rather than interpreted.
    let well_formed = host.split('.').all(|label| {
        !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    let permitted = well_formed
        && allowed.iter().any(|domain| {
            host == *domain
                || host
                    .strip_suffix(domain.as_str())
                    .is_some_and(|prefix| prefix.ends_with('.'))
        });
    if permitted {
        Ok(())
    } else {
        Err(TemplateError::DisallowedLink {
            domain: truncate(&host, 64),
            position,
            allowed: allowed.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MessageTemplate, TemplateError> {
        MessageTemplate::parse(text, &TemplateRules::default())
    }

    #[test]
    fn plain_gsm_text_counts_one_unit_per_character() {
        let length = measure("Hello @ £5 é Ø ¿?");
        assert_eq!(length.encoding, Encoding::Gsm7);
        assert_eq!(length.units, 17);
        assert_eq!(length.fragments, 1);
    }

    #[test]
    fn extension_characters_count_double() {
        for c in ['^', '{', '}', '\\', '[', '~', ']', '|', '€', '\u{000C}'] {
            let length = measure(&c.to_string());
            assert_eq!(length.encoding, Encoding::Gsm7, "{c:?}");
            assert_eq!(length.units, 2, "{c:?}");
        }
        assert_eq!(measure("a[b]c").units, 7);
        // 80 euro signs are 160 septets: one fragment; one more tips it over.
        assert_eq!(measure(&"€".repeat(80)).fragments, 1);
        assert_eq!(measure(&"€".repeat(81)).fragments, 2);
    }

    #[test]
    fn emoji_forces_ucs2_and_counts_two_units() {
        let length = measure("Hi 👋");
        assert_eq!(length.encoding, Encoding::Ucs2);
        assert_eq!(length.units, 5);
        assert_eq!(length.fragments, 1);
    }

    #[test]
    fn non_gsm_letter_forces_ucs2() {
        // ë and the curly apostrophe are not in GSM 03.38.
        assert_eq!(measure("Zoë").encoding, Encoding::Ucs2);
        assert_eq!(measure("It’s").encoding, Encoding::Ucs2);
        assert_eq!(measure("Zoë").units, 3);
    }

    #[test]
    fn empty_text_is_zero_units_one_fragment() {
        let length = measure("");
        assert_eq!((length.units, length.fragments), (0, 1));
    }

    #[test]
    fn gsm_fragment_boundaries() {
        let fragments = |n: usize| measure(&"a".repeat(n)).fragments;
        assert_eq!(fragments(160), 1);
        assert_eq!(fragments(161), 2);
        assert_eq!(fragments(306), 2);
        assert_eq!(fragments(307), 3);
        assert_eq!(fragments(918), 6);
    }

    #[test]
    fn ucs2_fragment_boundaries() {
        let fragments = |n: usize| measure(&"ж".repeat(n)).fragments;
        assert_eq!(fragments(70), 1);
        assert_eq!(fragments(71), 2);
        assert_eq!(fragments(134), 2);
        assert_eq!(fragments(135), 3);
        assert_eq!(measure(&"ж".repeat(71)).encoding, Encoding::Ucs2);
    }

    #[test]
    fn fields_are_found_in_order_of_first_use() {
        let template =
            parse("((practice_name)): hello ((first_name)) ((last_name)), ((first_name))").unwrap();
        assert_eq!(
            template.fields(),
            vec![Field::PracticeName, Field::FirstName, Field::LastName]
        );
        assert!(template.uses(Field::LastName));
        let plain = parse("Hello").unwrap();
        assert!(plain.fields().is_empty());
        assert!(!plain.uses(Field::FirstName));
    }

    #[test]
    fn render_fills_placeholders() {
        let template = parse("Dear ((first_name)) ((last_name)), from ((practice_name)).").unwrap();
        let rendered = template.render(&Personalisation {
            first_name: "Ada",
            last_name: "Lovelace",
            practice_name: "Marsh Surgery",
        });
        assert_eq!(rendered, "Dear Ada Lovelace, from Marsh Surgery.");
        assert_eq!(template.example(), "Dear Alex Smith, from Example Surgery.");
        assert_eq!(
            template.measure_example().units,
            "Dear Alex Smith, from Example Surgery.".len()
        );
    }

    #[test]
    fn values_are_inserted_verbatim_not_reparsed() {
        let template = parse("Hi ((first_name))").unwrap();
        let rendered = template.render(&Personalisation {
            first_name: "((last_name))",
            last_name: "X",
            practice_name: "Y",
        });
        assert_eq!(rendered, "Hi ((last_name))");
    }

    #[test]
    fn extra_brackets_around_a_placeholder_stay_literal() {
        let template = parse("Hi (((first_name)))").unwrap();
        assert_eq!(template.example(), "Hi (Alex)");
    }

    #[test]
    fn unknown_placeholder_names_the_placeholder_and_position() {
        let error = parse("Your NHS ((nhs_number)) is ready").unwrap_err();
        assert_eq!(
            error,
            TemplateError::UnknownPlaceholder {
                name: "nhs_number".into(),
                position: 10
            }
        );
        assert_eq!(
            format!("message {error}"),
            "message has an unknown placeholder ((nhs_number)) at character 10; \
             allowed: first_name, last_name, practice_name"
        );
    }

    #[test]
    fn placeholder_names_are_exact() {
        assert!(matches!(
            parse("Hi ((First_Name))"),
            Err(TemplateError::UnknownPlaceholder { .. })
        ));
        assert!(matches!(
            parse("Hi (( first_name ))"),
            Err(TemplateError::UnknownPlaceholder { .. })
        ));
    }

    #[test]
    fn empty_placeholder_is_refused() {
        assert_eq!(
            parse("Hi (()) there"),
            Err(TemplateError::EmptyPlaceholder { position: 4 })
        );
        assert_eq!(
            parse("Hi ((  ))"),
            Err(TemplateError::EmptyPlaceholder { position: 4 })
        );
    }

    #[test]
    fn unclosed_placeholder_is_refused_where_it_opens() {
        assert_eq!(
            parse("Hi ((first_name, see you"),
            Err(TemplateError::UnclosedPlaceholder { position: 4 })
        );
        assert_eq!(
            parse("Hi ((first_name) and ((last_name))"),
            Err(TemplateError::UnclosedPlaceholder { position: 4 })
        );
        assert_eq!(
            parse("Hi ((first_name\n))"),
            Err(TemplateError::UnclosedPlaceholder { position: 4 })
        );
        assert_eq!(
            parse("ends with (("),
            Err(TemplateError::UnclosedPlaceholder { position: 11 })
        );
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        assert_eq!(
            parse("££ ((x))"),
            Err(TemplateError::UnknownPlaceholder {
                name: "x".into(),
                position: 4
            })
        );
    }

    #[test]
    fn long_bad_placeholder_names_are_truncated_in_errors() {
        let text = format!("((x{}))", "y".repeat(500));
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.len() < 200, "{error}");
    }

    #[test]
    fn empty_or_blank_text_is_refused() {
        assert_eq!(parse(""), Err(TemplateError::Empty));
        assert_eq!(parse(" \n\t "), Err(TemplateError::Empty));
    }

    #[test]
    fn disallowed_link_names_the_domain_and_position() {
        let error = parse("See https://evil.example.com/x now").unwrap_err();
        assert_eq!(
            error,
            TemplateError::DisallowedLink {
                domain: "evil.example.com".into(),
                position: 5,
                allowed: "nhs.uk, gov.uk".into()
            }
        );
        assert_eq!(
            error.to_string(),
            "has a link to evil.example.com at character 5; links may only go to nhs.uk, gov.uk"
        );
    }

    #[test]
    fn bare_domains_are_links_too() {
        for (text, domain) in [
            ("Book at bit.ly/abc now", "bit.ly"),
            ("Log in: evil.example/login", "evil.example"),
            ("See (evil.com) today", "evil.com"),
            ("nhs.uk.evil.com/x", "nhs.uk.evil.com"),
        ] {
            match parse(text) {
                Err(TemplateError::DisallowedLink { domain: found, .. }) => {
                    assert_eq!(found, domain, "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        for fine in [
            "See nhs.uk/heatwave or call 111.",
            "Take 2.5 litres, e.g. water, i.e. not alcohol, by 10.30am. U.K. wide.",
            "Dear ((first_name)), visit gov.uk.",
        ] {
            assert!(parse(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn allowed_links_and_subdomains_pass() {
        for text in [
            "Visit www.nhs.uk.",
            "Visit https://111.nhs.uk/path?x=1",
            "Visit HTTPS://WWW.NHS.UK/Conditions",
            "Visit http://nhs.uk",
            "See (www.gov.uk/heatwave) today",
            "Visit https://www.nhs.uk:443/",
            "Go to https://www.nhs.uk/((first_name))",
            "Go to https://www.nhs.uk/www.thing/",
        ] {
            assert!(parse(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn lookalike_and_trick_links_are_refused() {
        for (text, domain) in [
            ("https://nhs.uk@evil.com", "evil.com"),
            ("https://nhs.uk:pw@evil.com/x", "evil.com"),
            ("www.nhs.uk@evil.com", "evil.com"),
            ("https://evilnhs.uk", "evilnhs.uk"),
            ("https://nhs.uk.evil.com", "nhs.uk.evil.com"),
            ("https:\\\\evil.com", "evil.com"),
            ("https:evil.com", "evil.com"),
            ("https://evil.com\\.nhs.uk", "evil.com"),
            ("https://evil.com?.nhs.uk", "evil.com"),
            ("nhs.uk.www.evil.com/x", "nhs.uk.www.evil.com"),
            ("https://1.2.3.4/", "1.2.3.4"),
            ("https://evil%2ecom.nhs.uk", "evil%2ecom.nhs.uk"),
            ("https://a..nhs.uk", "a..nhs.uk"),
        ] {
            match parse(text) {
                Err(TemplateError::DisallowedLink { domain: found, .. }) => {
                    assert_eq!(found, domain, "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn link_without_domain_is_refused() {
        assert_eq!(
            parse("Go to https:// now"),
            Err(TemplateError::LinkWithoutDomain { position: 7 })
        );
    }

    #[test]
    fn a_bare_domain_after_a_sentence_is_checked() {
        assert!(parse("Reply STOP. example.com/path").is_err());
    }

    #[test]
    fn custom_allowed_domains_apply() {
        let rules = TemplateRules {
            allowed_link_domains: vec!["Example.ORG".into()],
            ..TemplateRules::default()
        };
        assert!(MessageTemplate::parse("https://a.example.org", &rules).is_ok());
        assert!(MessageTemplate::parse("https://www.nhs.uk", &rules).is_err());
    }

    #[test]
    fn cap_without_placeholders() {
        assert!(parse(&"a".repeat(918)).is_ok());
        assert_eq!(
            parse(&"a".repeat(919)),
            Err(TemplateError::TooLong {
                length: 919,
                max: 918,
                personalised: false
            })
        );
        assert_eq!(
            parse(&"a".repeat(919)).unwrap_err().to_string(),
            "is 919 characters long, over the limit of 918"
        );
    }

    #[test]
    fn cap_counts_placeholders_at_their_longest() {
        // 818 + 100 (practice name) = 918: fits.
        let fits = format!("{}((practice_name))", "a".repeat(818));
        assert!(parse(&fits).is_ok());
        // Only 836 characters as written, but 919 with the longest practice name.
        let over = format!("{}((practice_name))", "a".repeat(819));
        assert!(over.chars().count() < 918);
        let error = parse(&over).unwrap_err();
        assert_eq!(
            error,
            TemplateError::TooLong {
                length: 919,
                max: 918,
                personalised: true
            }
        );
        assert!(error.to_string().contains("919"));
        assert!(error.to_string().contains("918"));
        // Names count 35 each.
        let names = format!("{}((first_name))((last_name))", "a".repeat(848));
        assert!(parse(&names).is_ok());
        let names = format!("{}((first_name))((last_name))", "a".repeat(849));
        assert!(parse(&names).is_err());
    }

    #[test]
    fn render_cuts_names_so_no_text_passes_the_cap() {
        // A template exactly at 918 characters in its worst case.
        let template = parse(&format!(
            "{}((first_name)) ((last_name)) ((practice_name))",
            "a".repeat(918 - 35 - 35 - 100 - 2)
        ))
        .unwrap();
        assert_eq!(template.worst_case_length().units, 918);
        // Names far past the planned maxima (PDS may hold several given
        // names; a non-GSM letter makes it count in characters, not units).
        let first = "Élodie-Marie-Anne-Josephine-Charlotte-Victoria";
        let last = "x".repeat(200);
        let practice = "P".repeat(300);
        let rendered = template.render(&Personalisation {
            first_name: first,
            last_name: &last,
            practice_name: &practice,
        });
        assert!(
            rendered.chars().count() <= 918,
            "{}",
            rendered.chars().count()
        );
        assert!(rendered.contains("Élodie-Marie-Anne-Josephine-Charlot "));
        assert!(rendered.ends_with(&"P".repeat(100)));
        // Short names are untouched.
        let short = template.render(&Personalisation {
            first_name: "Ada",
            last_name: "Lovelace",
            practice_name: "Marsh Surgery",
        });
        assert!(short.ends_with("Ada Lovelace Marsh Surgery"));
    }

    #[test]
    fn worst_case_length_uses_maximum_field_lengths() {
        let template = parse("((first_name)) ((last_name)) ((practice_name))").unwrap();
        let worst = template.worst_case_length();
        assert_eq!(worst.units, 35 + 1 + 35 + 1 + 100);
        assert_eq!(worst.encoding, Encoding::Gsm7);
        assert_eq!(worst.fragments, 2);
        let ucs2 = parse("👋 ((first_name))").unwrap().worst_case_length();
        assert_eq!((ucs2.encoding, ucs2.units), (Encoding::Ucs2, 2 + 1 + 35));
    }

    #[test]
    fn serde_shape_is_a_plain_string() {
        let template = parse("Hi ((first_name))").unwrap();
        let json = serde_json::to_string(&template).unwrap();
        assert_eq!(json, "\"Hi ((first_name))\"");
        let back: MessageTemplate = serde_json::from_str(&json).unwrap();
        assert_eq!(back, template);
        assert_eq!(
            serde_json::to_string(&Field::PracticeName).unwrap(),
            "\"practice_name\""
        );
    }

    #[test]
    fn render_keeps_invalid_placeholders_of_unvalidated_text() {
        let template: MessageTemplate =
            serde_json::from_str("\"((x)) ((first_name)) ((\"").unwrap();
        assert_eq!(template.example(), "((x)) Alex ((");
    }

    fn named<'a>(first: &'a str, last: &'a str) -> Personalisation<'a> {
        Personalisation {
            first_name: first,
            last_name: last,
            practice_name: "Hilly Fields Surgery",
        }
    }

    #[test]
    fn a_name_placeholder_falls_back_when_there_is_no_name() {
        let template = parse("Hello ((first_name|there)), please see www.nhs.uk").unwrap();
        assert!(template.uses(Field::FirstName));
        assert_eq!(
            template.render(&named("Ada", "")),
            "Hello Ada, please see www.nhs.uk"
        );
        assert_eq!(
            template.render(&named("", "")),
            "Hello there, please see www.nhs.uk"
        );
        assert_eq!(
            template.render(&named("  ", "")),
            "Hello there, please see www.nhs.uk"
        );
        assert_eq!(
            template.example_without_names(),
            "Hello there, please see www.nhs.uk"
        );
    }

    #[test]
    fn without_a_fallback_an_empty_name_leaves_no_dangling_comma() {
        let cases = [
            (
                "NHS South East London: ((first_name)), an urgent message.",
                "NHS South East London: an urgent message.",
            ),
            (
                "Dear ((first_name)) ((last_name)), call us.",
                "Dear call us.",
            ),
            ("((first_name)), call us.", "call us."),
            ("Call us, ((first_name)).", "Call us."),
            ("Call us ((first_name))", "Call us"),
        ];
        for (text, expected) in cases {
            let rendered = parse(text).unwrap().render(&named("", ""));
            assert_eq!(rendered, expected, "{text}");
            assert!(
                !rendered.contains(" ,") && !rendered.contains(": ,"),
                "{rendered}"
            );
        }
        // With a name nothing is taken away.
        assert_eq!(
            parse("Dear ((first_name)) ((last_name)), call us.")
                .unwrap()
                .render(&named("Ada", "Okafor")),
            "Dear Ada Okafor, call us."
        );
    }

    #[test]
    fn names_are_normalised_to_nfc_before_rendering() {
        // "Zoë" and "José" as a system may store them, decomposed.
        let template = parse("Hi ((first_name)) ((last_name))").unwrap();
        let rendered = template.render(&named("Zoe\u{308}", "Jose\u{301}"));
        assert_eq!(rendered, "Hi Zo\u{eb} Jos\u{e9}");
        assert_eq!(rendered.chars().count(), 11);
        // é is GSM-7 once composed; decomposed, its combining accent is not.
        let rendered = template.render(&named("Rene\u{301}e", "Jose\u{301}"));
        assert_eq!(rendered, "Hi Ren\u{e9}e Jos\u{e9}");
        assert_eq!(measure(&rendered).encoding, Encoding::Gsm7);
        assert_eq!(measure("Hi Rene\u{301}e").encoding, Encoding::Ucs2);
    }

    #[test]
    fn fallbacks_are_checked() {
        assert_eq!(
            parse("Hi ((first_name|)) x").unwrap_err(),
            TemplateError::EmptyFallback { position: 4 }
        );
        let long = format!("Hi ((first_name|{})) x", "y".repeat(36));
        assert_eq!(
            parse(&long).unwrap_err(),
            TemplateError::LongFallback {
                position: 4,
                max: 35
            }
        );
        assert_eq!(
            parse("From ((practice_name|us))").unwrap_err(),
            TemplateError::FallbackNotAllowed { position: 6 }
        );
        assert!(matches!(
            parse("Hi ((nickname|there))").unwrap_err(),
            TemplateError::UnknownPlaceholder { .. }
        ));
        // A link in a fallback is checked like any other.
        assert!(matches!(
            parse("Hi ((first_name|www.evil.example))").unwrap_err(),
            TemplateError::DisallowedLink { .. }
        ));
    }
}
