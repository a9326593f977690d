//! The CSV extract a practice (or its supplier) sends over MESH, read into
//! the same [`GpPatient`] the FHIR route produces; the domain's rules
//! (NHS number check, mobile, cohort, exclusions) then apply unchanged.
//!
//! The columns, by header name (case and surrounding spaces ignored, in
//! any order; other columns are ignored):
//!
//! | column | required | value |
//! |---|---|---|
//! | `nhs_number` | yes | 10 digits (spaces allowed); checked by the domain |
//! | `given_name` | yes | may be empty |
//! | `family_name` | yes | may be empty |
//! | `date_of_birth` | yes | `YYYY-MM-DD` or `DD/MM/YYYY`, or empty |
//! | `address_line_1` | yes | may be empty |
//! | `address_line_2` … `address_line_5` | no | |
//! | `postcode` | yes | may be empty |
//! | `mobile` | yes | as recorded, or empty; checked by the domain |
//! | `sms_consent` | yes | `Y` consents to texts, `N` dissents (no SMS), empty not recorded |
//! | `deceased` | yes | `Y`, `N`, empty (not deceased) or a date of death |
//!
//! A header without a required column refuses the whole file (nothing is
//! guessed). A row that cannot be read (wrong number of fields, not UTF-8,
//! an unreadable date or flag) is a malformed record: counted, named by its
//! row number and column, never by its content.

use chrono::NaiveDate;
use hub_core::domain::{ContactPreference, DatePrecision, GpPatient, Personal};

/// Every column the hub reads, in the order it asks for them.
pub const COLUMNS: [&str; 13] = [
    "nhs_number",
    "given_name",
    "family_name",
    "date_of_birth",
    "address_line_1",
    "address_line_2",
    "address_line_3",
    "address_line_4",
    "address_line_5",
    "postcode",
    "mobile",
    "sms_consent",
    "deceased",
];
const OPTIONAL_ADDRESS_LINES: [&str; 4] = [
    "address_line_2",
    "address_line_3",
    "address_line_4",
    "address_line_5",
];

/// Why the file as a whole cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractFileError {
    #[error("the extract is empty (no header row)")]
    Empty,
    #[error("the header row is unreadable")]
    Header,
    #[error("the header has no column {0}")]
    MissingColumn(&'static str),
    #[error("the header has column {0} twice")]
    DuplicateColumn(String),
}

/// Why one row cannot be read. Never holds a value from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row {row}: {problem}")]
pub struct RowError {
    /// 1-based data row (the header is row 0).
    pub row: u64,
    pub problem: String,
}

struct Columns {
    nhs_number: usize,
    given_name: usize,
    family_name: usize,
    date_of_birth: usize,
    address_lines: Vec<usize>,
    postcode: usize,
    mobile: usize,
    sms_consent: usize,
    deceased: usize,
}

impl Columns {
    fn from_header(header: &csv::ByteRecord) -> Result<Self, ExtractFileError> {
        let mut names = Vec::with_capacity(header.len());
        for (i, raw) in header.iter().enumerate() {
            let text = std::str::from_utf8(raw).map_err(|_| ExtractFileError::Header)?;
            let text = if i == 0 {
                text.trim_start_matches('\u{feff}')
            } else {
                text
            };
            let name = text.trim().to_ascii_lowercase();
            if !name.is_empty() && names.contains(&name) {
                return Err(ExtractFileError::DuplicateColumn(name));
            }
            names.push(name);
        }
        let find = |column: &'static str| names.iter().position(|n| n == column);
        let required =
            |column: &'static str| find(column).ok_or(ExtractFileError::MissingColumn(column));
        // Checked in the table's order, so the first missing one is named.
        Ok(Self {
            nhs_number: required("nhs_number")?,
            given_name: required("given_name")?,
            family_name: required("family_name")?,
            date_of_birth: required("date_of_birth")?,
            address_lines: std::iter::once(required("address_line_1")?)
                .chain(OPTIONAL_ADDRESS_LINES.iter().filter_map(|c| find(c)))
                .collect(),
            postcode: required("postcode")?,
            mobile: required("mobile")?,
            sms_consent: required("sms_consent")?,
            deceased: required("deceased")?,
        })
    }
}

/// Reads a whole extract: one result per data row, in order.
pub fn parse_extract(bytes: &[u8]) -> Result<Vec<Result<GpPatient, RowError>>, ExtractFileError> {
    Ok(ExtractRows::new(bytes.to_vec())?.collect())
}

/// The rows of an extract, read one at a time as they are asked for, so
/// only the file is held, not every patient read from it. The header is
/// checked when it is made.
pub struct ExtractRows {
    reader: csv::Reader<std::io::Cursor<Vec<u8>>>,
    columns: Columns,
    width: usize,
    row: u64,
    record: csv::ByteRecord,
}

impl ExtractRows {
    pub fn new(bytes: Vec<u8>) -> Result<Self, ExtractFileError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(std::io::Cursor::new(bytes));
        let mut header = csv::ByteRecord::new();
        match reader.read_byte_record(&mut header) {
            Ok(true) => {}
            Ok(false) => return Err(ExtractFileError::Empty),
            Err(_) => return Err(ExtractFileError::Header),
        }
        Ok(Self {
            columns: Columns::from_header(&header)?,
            width: header.len(),
            reader,
            row: 0,
            record: csv::ByteRecord::new(),
        })
    }
}

impl Iterator for ExtractRows {
    type Item = Result<GpPatient, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.row += 1;
            let row = self.row;
            let read = self.reader.read_byte_record(&mut self.record);
            let record = &self.record;
            return Some(match read {
                Ok(false) => return None,
                // The csv crate's error can quote the row; only its
                // position is kept.
                Err(_) => Err(RowError {
                    row,
                    problem: "not readable as CSV".into(),
                }),
                Ok(true) if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) => {
                    continue;
                }
                Ok(true) if record.len() != self.width => Err(RowError {
                    row,
                    problem: format!(
                        "{} fields where the header has {}",
                        record.len(),
                        self.width
                    ),
                }),
                Ok(true) => {
                    patient(&self.columns, record).map_err(|problem| RowError { row, problem })
                }
            });
        }
    }
}

fn patient(columns: &Columns, record: &csv::ByteRecord) -> Result<GpPatient, String> {
    let field = |index: usize, name: &str| -> Result<String, String> {
        let raw = record.get(index).unwrap_or_default();
        std::str::from_utf8(raw)
            .map(|text| text.trim().to_string())
            .map_err(|_| format!("column {name}: not UTF-8"))
    };
    let birth_date = date(&field(columns.date_of_birth, "date_of_birth")?)
        .map_err(|()| "column date_of_birth: not YYYY-MM-DD or DD/MM/YYYY".to_string())?;
    let contact_preference = match flag(&field(columns.sms_consent, "sms_consent")?) {
        Ok(Some(true)) => ContactPreference::Sms,
        Ok(Some(false)) => ContactPreference::NoTelephoneContact,
        Ok(None) => ContactPreference::NotRecorded,
        Err(()) => return Err("column sms_consent: not Y, N or empty".into()),
    };
    let deceased_text = field(columns.deceased, "deceased")?;
    let deceased = match flag(&deceased_text) {
        Ok(flag) => flag == Some(true),
        // A date of death is as good as a Y.
        Err(()) => match date(&deceased_text) {
            Ok(Some(_)) => true,
            _ => return Err("column deceased: not Y, N, empty or a date".into()),
        },
    };
    let mut address_lines = Vec::new();
    for (i, &index) in columns.address_lines.iter().enumerate() {
        let line = field(index, &format!("address_line_{}", i + 1))?;
        if !line.is_empty() {
            address_lines.push(line);
        }
    }
    let mobile = field(columns.mobile, "mobile")?;
    Ok(GpPatient {
        nhs_number: Personal::new(field(columns.nhs_number, "nhs_number")?.replace(' ', "")),
        given_name: Personal::new(field(columns.given_name, "given_name")?),
        family_name: Personal::new(field(columns.family_name, "family_name")?),
        address_lines: Personal::new(address_lines),
        postcode: Personal::new(field(columns.postcode, "postcode")?),
        birth_date: Personal::new(birth_date),
        // The columns take whole dates only.
        birth_date_precision: DatePrecision::Day,
        mobile: Personal::new((!mobile.is_empty()).then_some(mobile)),
        deceased,
        contact_preference,
        // An extract lists the practice's registered patients: every row is
        // a record in use.
        active: true,
    })
}

fn flag(text: &str) -> Result<Option<bool>, ()> {
    match text.to_ascii_uppercase().as_str() {
        "" => Ok(None),
        "Y" | "YES" | "TRUE" | "1" => Ok(Some(true)),
        "N" | "NO" | "FALSE" | "0" => Ok(Some(false)),
        _ => Err(()),
    }
}

fn date(text: &str) -> Result<Option<NaiveDate>, ()> {
    if text.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(text, "%d/%m/%Y"))
        .map(Some)
        .map_err(|_| ())
}

/// The header the hub asks for (the extract request carries it).
pub fn header_line() -> String {
    COLUMNS.join(",")
}
