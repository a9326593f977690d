//! The MESH CSV extract: each column's rule, the header rules, and
//! malformed rows counted without their content.

use hub_adapters::mesh::{header_line, parse_extract, ExtractFileError, COLUMNS};
use hub_core::domain::{ContactPreference, GpPatient};

const HEADER: &str = "nhs_number,given_name,family_name,date_of_birth,address_line_1,address_line_2,postcode,mobile,sms_consent,deceased";

fn one(row: &str) -> GpPatient {
    let text = format!("{HEADER}\n{row}\n");
    let mut rows = parse_extract(text.as_bytes()).expect("file readable");
    assert_eq!(rows.len(), 1);
    rows.remove(0).expect("row readable")
}

fn row_error(row: &str) -> String {
    let text = format!("{HEADER}\n{row}\n");
    let rows = parse_extract(text.as_bytes()).expect("file readable");
    rows[0].as_ref().expect_err("row refused").to_string()
}

#[test]
fn a_full_row_maps_to_the_gp_patient() {
    let patient = one(
        "943 476 5919,Amara,Okafor,1984-03-07,12 Lewis Grove,Lewisham,SE13 6BG,07700 900123,Y,N",
    );
    assert_eq!(patient.nhs_number.expose(), "9434765919");
    assert_eq!(patient.given_name.expose(), "Amara");
    assert_eq!(patient.family_name.expose(), "Okafor");
    assert_eq!(
        patient.birth_date.expose().map(|d| d.to_string()),
        Some("1984-03-07".into())
    );
    assert_eq!(
        patient.address_lines.expose(),
        &vec!["12 Lewis Grove".to_string(), "Lewisham".to_string()]
    );
    assert_eq!(patient.postcode.expose(), "SE13 6BG");
    assert_eq!(patient.mobile.expose().as_deref(), Some("07700 900123"));
    assert_eq!(patient.contact_preference, ContactPreference::Sms);
    assert!(!patient.deceased);
}

#[test]
fn sms_dissent_is_no_telephone_contact_and_empty_is_not_recorded() {
    let dissent = one("9434765919,A,B,,1 Road,,SE13 6BG,07700900123,N,");
    assert_eq!(
        dissent.contact_preference,
        ContactPreference::NoTelephoneContact
    );
    let unknown = one("9434765919,A,B,,1 Road,,SE13 6BG,07700900123,,");
    assert_eq!(unknown.contact_preference, ContactPreference::NotRecorded);
    let lower = one("9434765919,A,B,,1 Road,,SE13 6BG,07700900123,y,");
    assert_eq!(lower.contact_preference, ContactPreference::Sms);
    assert!(
        row_error("9434765919,A,B,,1 Road,,SE13 6BG,07700900123,maybe,").contains("sms_consent")
    );
}

#[test]
fn deceased_is_a_flag_or_a_date_of_death() {
    assert!(one("9434765919,A,B,,1 Road,,SE13 6BG,,N,Y").deceased);
    assert!(one("9434765919,A,B,,1 Road,,SE13 6BG,,N,2025-11-02").deceased);
    assert!(one("9434765919,A,B,,1 Road,,SE13 6BG,,N,02/11/2025").deceased);
    assert!(!one("9434765919,A,B,,1 Road,,SE13 6BG,,N,").deceased);
    assert!(!one("9434765919,A,B,,1 Road,,SE13 6BG,,N,N").deceased);
    assert!(row_error("9434765919,A,B,,1 Road,,SE13 6BG,,N,perhaps").contains("deceased"));
}

#[test]
fn dates_of_birth_are_iso_or_british_and_empty_is_none() {
    let british = one("9434765919,A,B,07/03/1984,1 Road,,SE13 6BG,,,");
    assert_eq!(
        british.birth_date.expose().map(|d| d.to_string()),
        Some("1984-03-07".into())
    );
    assert_eq!(
        *one("9434765919,A,B,,1 Road,,SE13 6BG,,,")
            .birth_date
            .expose(),
        None
    );
    let error = row_error("9434765919,A,B,1984-13-45,1 Road,,SE13 6BG,,,");
    assert!(error.contains("date_of_birth"), "{error}");
    assert!(
        !error.contains("1984"),
        "the value stays out of the error: {error}"
    );
}

#[test]
fn empty_names_address_lines_and_mobile_stay_empty() {
    let patient = one("9434765919,,,,,,,,,");
    assert_eq!(patient.given_name.expose(), "");
    assert_eq!(patient.family_name.expose(), "");
    assert!(patient.address_lines.expose().is_empty());
    assert_eq!(patient.postcode.expose(), "");
    assert_eq!(*patient.mobile.expose(), None);
}

#[test]
fn the_nhs_number_is_left_for_the_domain_to_check() {
    // Spaces go; a wrong check digit is the domain's exclusion, not a
    // malformed row, exactly as on the FHIR route.
    assert_eq!(
        one("943 476 5910,A,B,,,,,,,").nhs_number.expose(),
        "9434765910"
    );
}

#[test]
fn columns_are_found_by_name_in_any_order_and_extra_columns_are_ignored() {
    let text = "\u{feff}Deceased, SMS_Consent ,mobile,postcode,address_line_1,date_of_birth,family_name,given_name,NHS_Number,practice_code,address_line_3\n\
                N,Y,07700900123,SE13 6BG,1 Road,1984-03-07,Okafor,Amara,9434765919,G85001,Flat 2\n";
    let rows = parse_extract(text.as_bytes()).expect("file readable");
    let patient = rows[0].as_ref().expect("row readable");
    assert_eq!(patient.nhs_number.expose(), "9434765919");
    assert_eq!(patient.given_name.expose(), "Amara");
    assert_eq!(
        patient.address_lines.expose(),
        &vec!["1 Road".to_string(), "Flat 2".to_string()]
    );
    assert_eq!(patient.contact_preference, ContactPreference::Sms);
}

#[test]
fn a_header_without_a_required_column_refuses_the_file() {
    for missing in [
        "nhs_number",
        "given_name",
        "family_name",
        "date_of_birth",
        "address_line_1",
        "postcode",
        "mobile",
        "sms_consent",
        "deceased",
    ] {
        let header: Vec<&str> = HEADER.split(',').filter(|c| *c != missing).collect();
        let text = format!("{}\n", header.join(","));
        assert_eq!(
            parse_extract(text.as_bytes()).unwrap_err(),
            ExtractFileError::MissingColumn(missing)
        );
    }
    assert_eq!(parse_extract(b"").unwrap_err(), ExtractFileError::Empty);
    let twice = format!("{HEADER},mobile\n");
    assert_eq!(
        parse_extract(twice.as_bytes()).unwrap_err(),
        ExtractFileError::DuplicateColumn("mobile".into())
    );
}

#[test]
fn malformed_rows_are_counted_by_position_without_their_content() {
    let text = format!(
        "{HEADER}\n\
         9434765919,Amara,Okafor,,1 Road,,SE13 6BG,,,\n\
         9434765919,Zebedee,Short\n\
         \n\
         9434765919,\"Quoted, Name\",Okafor,,1 Road,,SE13 6BG,,,\n"
    );
    let mut bytes = text.into_bytes();
    // A row that is not UTF-8 in its family name.
    bytes.extend_from_slice(b"9434765919,A,\xff\xfe,,1 Road,,SE13 6BG,,,\n");
    let rows = parse_extract(&bytes).expect("file readable");
    assert_eq!(rows.len(), 4, "the blank line is skipped");
    assert!(rows[0].is_ok());
    let short = rows[1].as_ref().unwrap_err();
    assert_eq!(short.row, 2);
    assert!(!short.to_string().contains("Zebedee"));
    assert_eq!(
        rows[2].as_ref().unwrap().given_name.expose(),
        "Quoted, Name"
    );
    let not_utf8 = rows[3].as_ref().unwrap_err();
    assert!(not_utf8.problem.contains("family_name"), "{not_utf8}");
}

#[test]
fn the_requested_header_names_every_column() {
    let header = header_line();
    let text = format!("{header}\n");
    assert!(parse_extract(text.as_bytes()).unwrap().is_empty());
    assert_eq!(header.split(',').count(), COLUMNS.len());
}
