//! The information-governance pack (`docs/governance/`) checked against the
//! code, so the documents stay true as the code changes:
//!
//! - the data register names every field of every personal type, and
//!   nothing that no longer exists;
//! - every test the hazard log names as a control exists and is a test.
//!
//! Personal types are found in the source, not listed by hand: a type is
//! personal when one of its fields holds a personal value (`Personal<…>`,
//! `NhsNumber`, `UkMobile`, `Postcode`) or another personal type, or is
//! named like patient data (`mobile`, `address`, `birth_date`, …) and is
//! not a flag.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// Where the hub's types live: the domain, the ports (what reaches the
/// providers and GP systems) and the FHIR adapter's reading of a Patient.
const SOURCES: &[&str] = &[
    "shared/core/src/domain",
    "shared/core/src/ports",
    "shared/adapters/src/fhir/patient.rs",
];

/// Types that are personal values themselves.
const PERSONAL_VALUES: &[&str] = &["Personal", "NhsNumber", "UkMobile", "Postcode"];

/// Words that make a field personal whatever its type (`birth_date`,
/// `address_lines`, `postal_code`, ...).
const PERSONAL_WORDS: &[&str] = &[
    "nhs", "mobile", "postcode", "postal", "address", "birth", "dob", "phone", "telecom", "family",
    "given", "surname", "forename",
];
const PERSONAL_NAMES: &[&str] = &["first_name", "last_name"];

const REGISTER: &str = "docs/governance/data-register.md";
const HAZARD_LOG: &str = "docs/governance/hazard-log.md";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The `.rs` files under `SOURCES`, as (path, text); tests excluded.
fn source_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for source in SOURCES {
        let path = root().join(source);
        let mut paths = if path.is_dir() {
            std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()))
                .map(|entry| entry.expect("directory entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                .filter(|p| p.file_name().is_some_and(|n| n != "proptests.rs"))
                .collect()
        } else {
            vec![path]
        };
        paths.sort();
        for path in paths {
            let name = path
                .strip_prefix(root())
                .unwrap_or(&path)
                .display()
                .to_string();
            files.push((name, read(&path)));
        }
    }
    files
}

/// One field of a struct or enum variant: its register key
/// (`Type.field`, `Type.0`, `Type::Variant.field`) and the type names it mentions.
struct Field {
    key: String,
    name: String,
    types: BTreeSet<String>,
}

/// Collects every identifier in a type (`Option<Personal<String>>` gives
/// `Option`, `Personal`, `String`).
#[derive(Default)]
struct TypeNames(BTreeSet<String>);

impl<'ast> Visit<'ast> for TypeNames {
    fn visit_path_segment(&mut self, segment: &'ast syn::PathSegment) {
        self.0.insert(segment.ident.to_string());
        syn::visit::visit_path_segment(self, segment);
    }
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

fn fields_of(prefix: &str, fields: &syn::Fields, out: &mut Vec<Field>) {
    for (n, field) in fields.iter().enumerate() {
        let name = field
            .ident
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_else(|| n.to_string());
        let mut types = TypeNames::default();
        types.visit_type(&field.ty);
        out.push(Field {
            key: format!("{prefix}.{name}"),
            name,
            types: types.0,
        });
    }
}

/// Every struct and enum in the files, with its fields (test modules skipped).
fn shapes(files: &[(String, String)]) -> Result<BTreeMap<String, Vec<Field>>, String> {
    fn walk(items: &[syn::Item], out: &mut BTreeMap<String, Vec<Field>>) {
        for item in items {
            match item {
                syn::Item::Struct(s) if !is_test_only(&s.attrs) => {
                    let name = s.ident.to_string();
                    let fields = out.entry(name.clone()).or_default();
                    fields_of(&name, &s.fields, fields);
                }
                syn::Item::Enum(e) if !is_test_only(&e.attrs) => {
                    let name = e.ident.to_string();
                    let fields = out.entry(name.clone()).or_default();
                    for variant in &e.variants {
                        fields_of(
                            &format!("{name}::{}", variant.ident),
                            &variant.fields,
                            fields,
                        );
                    }
                }
                syn::Item::Mod(m) if !is_test_only(&m.attrs) => {
                    if let Some((_, items)) = &m.content {
                        walk(items, out);
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = BTreeMap::new();
    for (path, text) in files {
        let file = syn::parse_file(text).map_err(|e| format!("{path} does not parse: {e}"))?;
        walk(&file.items, &mut out);
    }
    Ok(out)
}

fn named_personal(field: &str) -> bool {
    PERSONAL_NAMES.contains(&field) || field.split('_').any(|word| PERSONAL_WORDS.contains(&word))
}

/// The register keys the code calls for: every field of every personal type.
fn personal_fields(files: &[(String, String)]) -> Result<BTreeSet<String>, String> {
    let shapes = shapes(files)?;
    let mut personal: BTreeSet<String> = PERSONAL_VALUES.iter().map(|s| s.to_string()).collect();
    loop {
        let before = personal.len();
        for (name, fields) in &shapes {
            let holds_personal = |f: &Field| {
                // A flag (`postal_fallback: bool`) is a setting, not data.
                let flag = f.types.len() == 1 && f.types.contains("bool");
                (named_personal(&f.name) && !flag) || f.types.iter().any(|t| personal.contains(t))
            };
            if fields.iter().any(holds_personal) {
                personal.insert(name.clone());
            }
        }
        if personal.len() == before {
            break;
        }
    }
    Ok(shapes
        .iter()
        .filter(|(name, _)| personal.contains(*name) && !PERSONAL_VALUES.contains(&name.as_str()))
        .flat_map(|(_, fields)| fields.iter().map(|f| f.key.clone()))
        .collect())
}

fn looks_like_key(text: &str) -> bool {
    let Some((owner, field)) = text.split_once('.') else {
        return false;
    };
    let owner_ok = owner.split("::").all(|part| {
        part.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && part.chars().all(|c| c.is_ascii_alphanumeric())
    });
    let field_ok = !field.is_empty()
        && field
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    owner_ok && field_ok
}

/// The keys in the first column of the register's tables: every
/// `` `Type.field` `` there (a row may name several).
fn register_keys(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|line| line.trim_start().starts_with('|'))
        .filter_map(|line| line.trim_start().trim_start_matches('|').split('|').next())
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_string))
        .filter(|text| looks_like_key(text))
        .collect()
}

/// Both directions: a personal field without a register line, and a
/// register line whose field no longer exists.
fn check_register(code: &BTreeSet<String>, register: &BTreeSet<String>) -> Result<(), String> {
    let missing: Vec<_> = code.difference(register).collect();
    let stale: Vec<_> = register.difference(code).collect();
    if missing.is_empty() && stale.is_empty() {
        return Ok(());
    }
    let mut message = String::new();
    if !missing.is_empty() {
        message.push_str(&format!(
            "personal fields with no line in {REGISTER} (add one: purpose, lawful basis, where it lives, first and last step, deletion): {missing:?}\n"
        ));
    }
    if !stale.is_empty() {
        message.push_str(&format!(
            "lines in {REGISTER} naming a field that is not in the code (or not personal): {stale:?}\n"
        ));
    }
    Err(message)
}

#[test]
fn the_data_register_names_every_personal_field_and_nothing_else() {
    let code = personal_fields(&source_files()).expect("sources parse");
    assert!(
        code.contains("GpPatient.nhs_number") && code.contains("Recipient.contact"),
        "the checker finds the patient types: {code:?}"
    );
    let register = register_keys(&read(&root().join(REGISTER)));
    if let Err(message) = check_register(&code, &register) {
        panic!("{message}");
    }
}

/// Self-check: the checker really fails when a field is added without a
/// register line, when one is removed, and finds personal fields by name.
#[test]
fn the_register_check_fails_on_an_unregistered_or_removed_field() {
    let register = register_keys(&read(&root().join(REGISTER)));
    let files = source_files();
    let with = |from: &str, to: &str| -> Vec<(String, String)> {
        let mut changed = files.clone();
        let recipient = changed
            .iter_mut()
            .find(|(path, _)| path.ends_with("domain/recipient.rs"))
            .expect("recipient.rs");
        assert!(recipient.1.contains(from), "{from} is in recipient.rs");
        recipient.1 = recipient.1.replacen(from, to, 1);
        changed
    };

    // GIVEN an email address added to the GP patient
    let added = with(
        "pub struct GpPatient {",
        "pub struct GpPatient {\n    pub email: Personal<Option<String>>,",
    );
    let error = check_register(&personal_fields(&added).unwrap(), &register).unwrap_err();
    assert!(error.contains("GpPatient.email"), "{error}");

    // GIVEN a new type holding a mobile as a plain string
    let plain = with(
        "/// How the hub will reach a recipient.",
        "pub struct Carer { pub mobile_number: String, pub relation: String }\n\
         /// How the hub will reach a recipient.",
    );
    let error = check_register(&personal_fields(&plain).unwrap(), &register).unwrap_err();
    assert!(
        error.contains("Carer.mobile_number") && error.contains("Carer.relation"),
        "{error}"
    );

    // GIVEN a field removed from the stored recipient
    let removed = with(
        "    pub last_name: Personal<String>,\n    pub status",
        "    pub status",
    );
    let error = check_register(&personal_fields(&removed).unwrap(), &register).unwrap_err();
    assert!(error.contains("Recipient.last_name"), "{error}");
    assert!(error.contains("not in the code"), "{error}");
}

/// `path/to/file.rs::test_name` as the hazard log writes a control's test.
fn named_tests(markdown: &str) -> BTreeSet<(String, String)> {
    markdown
        .split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|text| {
            let (path, name) = text.split_once(".rs::")?;
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            valid.then(|| (format!("{path}.rs"), name.to_string()))
        })
        .collect()
}

/// The test exists: the file holds `fn name` with a test attribute
/// (`#[test]`, `#[tokio::test(...)]`) among the lines just above it.
fn check_test(path: &str, name: &str) -> Result<(), String> {
    let file = root().join(path);
    let text = std::fs::read_to_string(&file)
        .map_err(|_| format!("{path}::{name}: no such file {path}"))?;
    let found = [format!("fn {name}("), format!("fn {name}<")]
        .iter()
        .find_map(|needle| text.find(needle.as_str()));
    let Some(at) = found else {
        return Err(format!("{path}::{name}: no fn {name} in {path}"));
    };
    if is_contract_case(path, name) {
        return Ok(());
    }
    let is_test = text[..at]
        .lines()
        .rev()
        .skip(1)
        .take_while(|line| {
            let line = line.trim();
            line.starts_with("#[") || line.starts_with("///") || line.starts_with("//")
        })
        .chain(text[..at].lines().last())
        .any(|line| line.contains("#[test]") || line.contains("#[tokio::test"));
    if !is_test {
        return Err(format!("{path}::{name}: fn {name} is not a test"));
    }
    Ok(())
}

/// A case of the store or queue contract suite (`shared/testkit/src/`) is
/// a test on every backend: `store_contract!` and `queue_contract!` in the
/// testkit's `lib.rs` expand each case they list into a `#[tokio::test]`.
fn is_contract_case(path: &str, name: &str) -> bool {
    let Some(suite) = path
        .strip_prefix("shared/testkit/src/")
        .and_then(|file| file.strip_suffix(".rs"))
    else {
        return false;
    };
    let lib = read(&root().join("shared/testkit/src/lib.rs"));
    let Some(start) = lib.find(&format!("macro_rules! {suite}_contract")) else {
        return false;
    };
    let listed = &lib[start..];
    let listed = &listed[..listed.find("\n}").unwrap_or(listed.len())];
    listed.lines().any(|line| line.trim() == format!("{name},"))
}

fn check_hazard_log(markdown: &str) -> Result<usize, String> {
    let tests = named_tests(markdown);
    let errors: Vec<String> = tests
        .iter()
        .filter_map(|(path, name)| check_test(path, name).err())
        .collect();
    if errors.is_empty() {
        Ok(tests.len())
    } else {
        Err(format!(
            "{HAZARD_LOG} names tests that do not exist:\n{}",
            errors.join("\n")
        ))
    }
}

/// The hazards the issue asks the log to cover, at least.
const HAZARDS: &[&str] = &[
    "Wrong person messaged",
    "Deceased patient messaged",
    "Objector messaged",
    "Message missed",
    "Duplicate message",
    "Message sent outside the opt-out window",
    "Wrong content approved",
    "Data retained too long",
    "Data exposed in logs",
    "Provider outage during an emergency",
    "GP system returning a partial list",
];

#[test]
fn every_control_in_the_hazard_log_names_a_test_that_exists() {
    let log = read(&root().join(HAZARD_LOG));
    for hazard in HAZARDS {
        assert!(log.contains(hazard), "{HAZARD_LOG} covers {hazard:?}");
    }
    match check_hazard_log(&log) {
        Ok(count) => assert!(count >= 11, "the log names its tests ({count} found)"),
        Err(message) => panic!("{message}"),
    }
}

/// Self-check: a made-up test, a made-up file and a helper that is not a
/// test are all refused.
#[test]
fn the_hazard_log_check_fails_on_a_made_up_test() {
    let real = "`tests/tests/lifecycle.rs::faults_do_not_lose_or_duplicate_anyone`";
    assert_eq!(check_hazard_log(real), Ok(1));
    let contract = "`shared/testkit/src/store.rs::purge_deletes_a_campaign_to_zero`";
    assert_eq!(
        check_hazard_log(contract),
        Ok(1),
        "a contract case is a test"
    );
    for (log, wanted) in [
        (
            "`tests/tests/lifecycle.rs::a_test_nobody_wrote`",
            "no fn a_test_nobody_wrote",
        ),
        ("`tests/tests/nowhere.rs::faults`", "no such file"),
        (
            "`tests/tests/lifecycle.rs::futures_diagnosis`",
            "not a test",
        ),
        // A testkit fixture is not a case of the contract suite.
        ("`shared/testkit/src/fixtures.rs::campaign`", "not a test"),
    ] {
        let error = check_hazard_log(&format!("{real} and {log}")).unwrap_err();
        assert!(error.contains(wanted), "{log}: {error}");
    }
}
