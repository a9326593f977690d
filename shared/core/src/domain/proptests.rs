//! Property and example tests for the validated newtypes: NHS number, UK
//! mobile, postcode (and postcode filter) and ODS code.
//!
//! Expected values are computed independently of the code under test (the
//! Modulus 11 check here is written out again) so a shared mistake cannot
//! make both sides agree.

use super::*;
use proptest::prelude::*;

// ---------------------------------------------------------------- helpers

/// Modulus 11 as the NHS Data Dictionary states it, written out separately
/// from `check_digit`: weights 10 down to 2, 11 → 0, 10 → invalid.
fn reference_check_digit(first_nine: &[u8; 9]) -> Option<u8> {
    let mut sum = 0u32;
    for (index, digit) in first_nine.iter().enumerate() {
        sum += u32::from(*digit) * (10 - index as u32);
    }
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        check => Some(check as u8),
    }
}

fn digits_to_string(digits: &[u8]) -> String {
    digits.iter().map(|d| char::from(b'0' + d)).collect()
}

fn digit_string(len: impl Into<proptest::collection::SizeRange>) -> impl Strategy<Value = String> {
    proptest::collection::vec(0u8..10, len).prop_map(|digits| digits_to_string(&digits))
}

/// A valid NHS number as its 10 digits.
fn valid_nhs_digits() -> impl Strategy<Value = [u8; 10]> {
    proptest::array::uniform9(0u8..10).prop_filter_map("check digit would be 10", |nine| {
        reference_check_digit(&nine).map(|check| {
            let mut all = [0u8; 10];
            all[..9].copy_from_slice(&nine);
            all[9] = check;
            all
        })
    })
}

/// Nine digits whose Modulus 11 check value is 10 (no valid check digit):
/// the ninth digit (weight 2) is solved for, since filtering would reject
/// ten in eleven cases.
fn nine_digits_with_check_ten() -> impl Strategy<Value = [u8; 9]> {
    proptest::array::uniform8(0u8..10).prop_filter_map("no ninth digit fits", |eight| {
        let partial: u32 = eight
            .iter()
            .enumerate()
            .map(|(index, digit)| u32::from(*digit) * (10 - index as u32))
            .sum();
        // Need partial + 2·d ≡ 1 (mod 11); 6 is the inverse of 2 mod 11.
        let ninth = ((1 + 11 * 11 - partial % 11) * 6) % 11;
        (ninth < 10).then(|| {
            let mut nine = [0u8; 9];
            nine[..8].copy_from_slice(&eight);
            nine[8] = ninth as u8;
            nine
        })
    })
}

/// Puts `separators[i]` after the i-th character (cycling if short).
fn spread(text: &str, separators: &[&str]) -> String {
    let mut out = String::new();
    for (index, c) in text.chars().enumerate() {
        out.push(c);
        if !separators.is_empty() && index + 1 < text.chars().count() {
            out.push_str(separators[index % separators.len()]);
        }
    }
    out
}

fn separators(choices: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(proptest::sample::select(choices), 0..14)
}

fn select_char(chars: &'static str) -> impl Strategy<Value = char> {
    proptest::sample::select(chars.chars().collect::<Vec<_>>())
}

// ------------------------------------------------------------- NHS number

proptest! {
    #[test]
    fn nhs_number_valid_digits_parse_and_round_trip(digits in valid_nhs_digits()) {
        let plain = digits_to_string(&digits);
        let number = NhsNumber::parse(&plain).unwrap();
        prop_assert_eq!(number.as_str(), plain.as_str());

        let formatted = number.formatted();
        prop_assert_eq!(
            formatted.clone(),
            format!("{} {} {}", &plain[..3], &plain[3..6], &plain[6..])
        );
        let groups: Vec<usize> = formatted.split(' ').map(str::len).collect();
        prop_assert_eq!(groups, vec![3, 3, 4]);

        prop_assert_eq!(NhsNumber::parse(&formatted).unwrap(), number.clone());
        let dashed = formatted.replace(' ', "-");
        prop_assert_eq!(NhsNumber::parse(&dashed).unwrap(), number.clone());

        let json = serde_json::to_string(&number).unwrap();
        prop_assert_eq!(json.clone(), format!("\"{plain}\""));
        prop_assert_eq!(serde_json::from_str::<NhsNumber>(&json).unwrap(), number);
    }

    #[test]
    fn nhs_number_check_digit_matches_the_reference(nine in proptest::array::uniform9(0u8..10)) {
        let as_u32: Vec<u32> = nine.iter().map(|d| u32::from(*d)).collect();
        prop_assert_eq!(
            check_digit(&as_u32),
            reference_check_digit(&nine).map(u32::from)
        );
    }

    #[test]
    fn nhs_number_any_single_digit_change_is_invalid(
        digits in valid_nhs_digits(),
        position in 0usize..10,
        bump in 1u8..10,
    ) {
        let mut changed = digits;
        changed[position] = (changed[position] + bump) % 10;
        prop_assert_eq!(
            NhsNumber::parse(&digits_to_string(&changed)),
            Err(NhsNumberError::BadCheckDigit)
        );
    }

    #[test]
    fn nhs_number_with_check_value_ten_never_parses(
        nine in nine_digits_with_check_ten(),
        last in 0u8..10,
    ) {
        prop_assert_eq!(reference_check_digit(&nine), None);
        let mut all = nine.to_vec();
        all.push(last);
        prop_assert_eq!(
            NhsNumber::parse(&digits_to_string(&all)),
            Err(NhsNumberError::BadCheckDigit)
        );
    }

    #[test]
    fn nhs_number_wrong_length_is_reported(
        digits in digit_string(0..25usize).prop_filter("not 10 digits", |d| d.len() != 10),
    ) {
        prop_assert_eq!(
            NhsNumber::parse(&digits),
            Err(NhsNumberError::WrongLength { digits: digits.len() })
        );
    }

    #[test]
    fn nhs_number_letters_are_not_digits(
        digits in valid_nhs_digits(),
        position in 0usize..=10,
        letter in select_char("abcdefghijklmnopqrstuvwxyzOIl+/._"),
    ) {
        let mut text = digits_to_string(&digits);
        text.insert(position, letter);
        prop_assert_eq!(NhsNumber::parse(&text), Err(NhsNumberError::NotDigits));
    }

    #[test]
    fn nhs_number_debug_never_shows_digits(digits in valid_nhs_digits()) {
        let number = NhsNumber::parse(&digits_to_string(&digits)).unwrap();
        let debug = format!("{number:?} {:?}", Some(&number));
        prop_assert!(!debug.chars().any(|c| c.is_ascii_digit()), "{}", debug);
    }

    #[test]
    fn nhs_number_never_panics(input in any::<String>()) {
        let _ = NhsNumber::parse(&input);
    }
}

#[test]
fn nhs_number_facts_examples_parse() {
    for example in [
        "9000000009",
        "9434765919",
        "9912003888",
        "943 476 5919",
        "943-476-5919",
    ] {
        let number = NhsNumber::parse(example).unwrap();
        assert_eq!(number.as_str().len(), 10, "{example}");
    }
    assert_eq!(
        NhsNumber::parse("9434765919").unwrap().formatted(),
        "943 476 5919"
    );
}

#[test]
fn nhs_number_examples_fail_with_the_right_error() {
    assert_eq!(
        NhsNumber::parse("9434765918"),
        Err(NhsNumberError::BadCheckDigit)
    );
    assert_eq!(
        NhsNumber::parse(""),
        Err(NhsNumberError::WrongLength { digits: 0 })
    );
    assert_eq!(
        NhsNumber::parse("943476591"),
        Err(NhsNumberError::WrongLength { digits: 9 })
    );
    assert_eq!(
        NhsNumber::parse("94347659190"),
        Err(NhsNumberError::WrongLength { digits: 11 })
    );
    assert_eq!(
        NhsNumber::parse("94347659l9"),
        Err(NhsNumberError::NotDigits)
    );
    assert_eq!(
        NhsNumber::parse("NHS9434765919"),
        Err(NhsNumberError::NotDigits)
    );
    // 0000000010: weighted sum 0, but the check digit must be 0, not 1.
    assert_eq!(
        NhsNumber::parse("0000000010"),
        Err(NhsNumberError::BadCheckDigit)
    );
    assert!(serde_json::from_str::<NhsNumber>("\"9434765918\"").is_err());
}

// ------------------------------------------------------------- UK mobile

/// National mobile numbers: 07[1-5,7-9] + 8 digits, and 07624 + 6 digits.
fn uk_mobile_national() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (select_char("12345789"), digit_string(8))
            .prop_map(|(third, rest)| format!("07{third}{rest}")),
        1 => digit_string(6).prop_map(|rest| format!("07624{rest}")),
    ]
}

/// Every accepted way of writing `national` (07… form).
fn written_forms(national: &str, seps: &[&str]) -> Vec<String> {
    let subscriber = &national[1..]; // 7…, 10 digits
    let spaced = spread(subscriber, seps);
    vec![
        national.to_string(),
        spread(national, seps),
        format!("+44{subscriber}"),
        format!("+44 {spaced}"),
        format!("0044{subscriber}"),
        format!("00 44 {spaced}"),
        format!("+44 (0){spaced}"),
        format!("+44 (0) {spaced}"),
        format!("+44(0){subscriber}"),
        format!("0044 (0) {spaced}"),
        format!("({}) {}", &national[..5], &national[5..]),
        format!("{}-{}-{}", &national[..5], &national[5..8], &national[8..]),
        format!("44{subscriber}"),
        format!("44 (0){spaced}"),
        format!("  {national}\t"),
    ]
}

proptest! {
    #[test]
    fn uk_mobile_every_format_gives_the_same_e164(
        national in uk_mobile_national(),
        seps in separators(&["", " ", "-", ".", "  "]),
    ) {
        let expected = format!("+44{}", &national[1..]);
        for written in written_forms(&national, &seps) {
            let mobile = UkMobile::parse(&written);
            prop_assert!(mobile.is_ok(), "{:?} → {:?}", written, mobile);
            let mobile = mobile.unwrap();
            prop_assert_eq!(mobile.e164(), expected.as_str(), "{:?}", written);
            prop_assert_eq!(mobile.national(), national.clone());
        }
        let mobile = UkMobile::parse(&national).unwrap();
        let json = serde_json::to_string(&mobile).unwrap();
        prop_assert_eq!(serde_json::from_str::<UkMobile>(&json).unwrap(), mobile.clone());
        prop_assert_eq!(UkMobile::parse(mobile.e164()).unwrap(), mobile);
    }

    #[test]
    fn uk_landlines_are_not_mobile(
        range in select_char("123"),
        rest in digit_string(9),
        international in any::<bool>(),
    ) {
        let national = format!("0{range}{rest}");
        let written = if international {
            format!("+44 {}", &national[1..])
        } else {
            national
        };
        prop_assert_eq!(UkMobile::parse(&written), Err(MobileError::NotMobile));
    }

    #[test]
    fn personal_numbers_and_pagers_are_not_mobile(
        third in select_char("06"),
        rest in digit_string(8).prop_filter("07624 is Isle of Man mobile", |r| !r.starts_with("24")),
        international in any::<bool>(),
    ) {
        let national = format!("07{third}{rest}");
        let written = if international {
            format!("+44{}", &national[1..])
        } else {
            national
        };
        prop_assert_eq!(UkMobile::parse(&written), Err(MobileError::NotMobile));
    }

    #[test]
    fn non_uk_numbers_are_not_uk(
        (country, rest) in prop_oneof![
            digit_string(10).prop_map(|rest| ("1", rest)),
            digit_string(9).prop_map(|rest| ("33", rest)),
            digit_string(9).prop_map(|rest| ("353", rest)),
            digit_string(10).prop_map(|rest| ("49", rest)),
        ],
        plus in any::<bool>(),
    ) {
        let written = if plus {
            format!("+{country} {rest}")
        } else {
            format!("00{country}{rest}")
        };
        prop_assert_eq!(UkMobile::parse(&written), Err(MobileError::NotUk));
    }

    #[test]
    fn uk_mobile_wrong_length_fails(
        third in select_char("12345789"),
        rest in digit_string(0..16usize).prop_filter("right length", |r| r.len() != 8),
        international in any::<bool>(),
    ) {
        let written = if international {
            format!("+447{third}{rest}")
        } else {
            format!("07{third}{rest}")
        };
        prop_assert_eq!(UkMobile::parse(&written), Err(MobileError::WrongLength));
    }

    #[test]
    fn uk_mobile_debug_never_shows_digits(national in uk_mobile_national()) {
        let mobile = UkMobile::parse(&national).unwrap();
        let debug = format!("{mobile:?} {:?}", vec![&mobile]);
        prop_assert!(!debug.chars().any(|c| c.is_ascii_digit()), "{}", debug);
    }

    #[test]
    fn uk_mobile_never_panics(input in any::<String>()) {
        let _ = UkMobile::parse(&input);
    }
}

#[test]
fn uk_mobile_examples() {
    let notify = UkMobile::parse("07700 900111").unwrap();
    assert_eq!(notify.e164(), "+447700900111");
    assert!(notify.is_drama_range());
    assert!(!UkMobile::parse("07712 345678").unwrap().is_drama_range());
    assert_eq!(
        UkMobile::parse("+44 (0)7624 123456").unwrap().e164(),
        "+447624123456"
    );
    // Plus lost and trunk zero kept: accepted since the 44 (0) fix.
    assert_eq!(
        UkMobile::parse("44 (0)7700 900123").unwrap().e164(),
        "+447700900123"
    );
    assert_eq!(UkMobile::parse(""), Err(MobileError::Empty));
    assert_eq!(UkMobile::parse("   "), Err(MobileError::Empty));
    assert_eq!(
        UkMobile::parse("07700 9OO123"),
        Err(MobileError::BadCharacters)
    );
    assert_eq!(
        UkMobile::parse("07700+900123"),
        Err(MobileError::BadCharacters)
    );
    assert_eq!(
        UkMobile::parse("020 7946 0000"),
        Err(MobileError::NotMobile)
    );
    assert_eq!(UkMobile::parse("07623 123456"), Err(MobileError::NotMobile));
    assert_eq!(UkMobile::parse("+1 202 555 0100"), Err(MobileError::NotUk));
    assert_eq!(
        UkMobile::parse("+33 6 12 34 56 78"),
        Err(MobileError::NotUk)
    );
    assert_eq!(UkMobile::parse("0770090012"), Err(MobileError::WrongLength));
    assert!(serde_json::from_str::<UkMobile>("\"01632 960000\"").is_err());
}

// --------------------------------------------------------------- postcode

const UNIT_LETTERS: &str = "ABDEFGHJLNPQRSTUWXYZ"; // A–Z without C I K M O V

fn upper() -> impl Strategy<Value = char> {
    select_char("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
}

fn digit() -> impl Strategy<Value = char> {
    select_char("0123456789")
}

/// Outward codes in all six formats, with their expected area.
fn outward() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        // A9
        (upper(), digit()).prop_map(|(a, d)| (format!("{a}{d}"), a.to_string())),
        // A99
        (upper(), digit(), digit()).prop_map(|(a, d, e)| (format!("{a}{d}{e}"), a.to_string())),
        // AA9
        (upper(), upper(), digit()).prop_map(|(a, b, d)| (format!("{a}{b}{d}"), format!("{a}{b}"))),
        // AA99
        (upper(), upper(), digit(), digit())
            .prop_map(|(a, b, d, e)| (format!("{a}{b}{d}{e}"), format!("{a}{b}"))),
        // A9A
        (upper(), digit(), upper()).prop_map(|(a, d, c)| (format!("{a}{d}{c}"), a.to_string())),
        // AA9A
        (upper(), upper(), digit(), upper())
            .prop_map(|(a, b, d, c)| (format!("{a}{b}{d}{c}"), format!("{a}{b}"))),
    ]
}

#[derive(Debug, Clone)]
struct GeneratedPostcode {
    outward: String,
    area: String,
    sector_digit: char,
    units: String,
}

impl GeneratedPostcode {
    fn normalised(&self) -> String {
        format!("{} {}{}", self.outward, self.sector_digit, self.units)
    }
    fn sector(&self) -> String {
        format!("{} {}", self.outward, self.sector_digit)
    }
}

fn postcode() -> impl Strategy<Value = GeneratedPostcode> {
    (
        outward(),
        digit(),
        select_char(UNIT_LETTERS),
        select_char(UNIT_LETTERS),
    )
        .prop_map(
            |((outward, area), sector_digit, u1, u2)| GeneratedPostcode {
                outward,
                area,
                sector_digit,
                units: format!("{u1}{u2}"),
            },
        )
}

/// Rewrites `text` with random casing per character and random whitespace
/// between characters and at the ends.
fn messy(text: &str, lower: &[bool], gaps: &[&str]) -> String {
    let mut out = String::from(gaps.last().copied().unwrap_or(""));
    for (index, c) in text.chars().filter(|c| *c != ' ').enumerate() {
        if lower.get(index).copied().unwrap_or(false) {
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
        out.push_str(gaps.get(index).copied().unwrap_or(""));
    }
    out
}

proptest! {
    #[test]
    fn postcode_any_casing_and_spacing_normalises(
        generated in postcode(),
        lower in proptest::collection::vec(any::<bool>(), 7),
        gaps in proptest::collection::vec(proptest::sample::select(&["", "", " ", "  ", "\t"][..]), 8),
    ) {
        let expected = generated.normalised();
        for written in [
            expected.clone(),
            expected.replace(' ', ""),
            expected.to_ascii_lowercase(),
            messy(&expected, &lower, &gaps),
        ] {
            let parsed = Postcode::parse(&written);
            prop_assert!(parsed.is_ok(), "{:?} → {:?}", written, parsed);
            let parsed = parsed.unwrap();
            prop_assert_eq!(parsed.as_str(), expected.as_str(), "{:?}", written);
            prop_assert_eq!(parsed.area(), generated.area.as_str());
            prop_assert_eq!(parsed.district(), generated.outward.as_str());
            prop_assert_eq!(parsed.sector(), generated.sector());
        }
        let parsed = Postcode::parse(&expected).unwrap();
        let json = serde_json::to_string(&parsed).unwrap();
        prop_assert_eq!(serde_json::from_str::<Postcode>(&json).unwrap(), parsed);
    }

    #[test]
    fn postcode_forbidden_unit_letters_fail(
        generated in postcode(),
        bad in select_char("CIKMOV"),
        which in 0usize..3,
    ) {
        let good: Vec<char> = generated.units.chars().collect();
        let units = match which {
            0 => format!("{bad}{}", good[1]),
            1 => format!("{}{bad}", good[0]),
            _ => format!("{bad}{bad}"),
        };
        let written = format!("{} {}{}", generated.outward, generated.sector_digit, units);
        prop_assert_eq!(Postcode::parse(&written), Err(PostcodeError::Malformed));
        prop_assert_eq!(
            Postcode::parse(&written.to_ascii_lowercase()),
            Err(PostcodeError::Malformed)
        );
    }

    #[test]
    fn postcode_too_short_or_too_long_fails(
        short in "[A-Z0-9]{1,4}",
        long in "[A-Z0-9]{8,12}",
    ) {
        prop_assert_eq!(Postcode::parse(&short), Err(PostcodeError::Malformed));
        prop_assert_eq!(Postcode::parse(&long), Err(PostcodeError::Malformed));
    }

    #[test]
    fn postcode_missing_or_extra_characters_fail(generated in postcode(), extra in digit()) {
        // Missing a unit letter, or a digit for a unit letter. (Dropping the
        // sector digit is not tested: "AA00 AA" reads validly as "AA0 0AA".)
        let short_unit = format!(
            "{} {}{}",
            generated.outward,
            generated.sector_digit,
            &generated.units[..1]
        );
        prop_assert!(Postcode::parse(&short_unit).is_err(), "{}", short_unit);
        let digit_unit = format!(
            "{} {}{}{extra}",
            generated.outward,
            generated.sector_digit,
            &generated.units[..1]
        );
        prop_assert!(Postcode::parse(&digit_unit).is_err(), "{}", digit_unit);
    }

    #[test]
    fn postcode_parse_is_idempotent(input in "[ A-Za-z0-9]{0,10}") {
        if let Ok(parsed) = Postcode::parse(&input) {
            prop_assert_eq!(Postcode::parse(parsed.as_str()).unwrap(), parsed.clone());
            prop_assert!(parsed.as_str().len() <= 8);
        }
    }

    #[test]
    fn postcode_debug_never_shows_the_value(generated in postcode()) {
        let parsed = Postcode::parse(&generated.normalised()).unwrap();
        let debug = format!("{parsed:?} {:?}", Some(&parsed));
        prop_assert!(!debug.contains(parsed.as_str()));
        prop_assert!(!debug.contains(parsed.district()));
        prop_assert!(!debug.chars().any(|c| c.is_ascii_digit()), "{}", debug);
    }

    #[test]
    fn postcode_never_panics(input in any::<String>()) {
        let _ = Postcode::parse(&input);
        let _ = PostcodeFilter::parse(&input);
    }

    #[test]
    fn postcode_filters_parse_and_match(
        generated in postcode(),
        other in postcode(),
        lower in any::<bool>(),
    ) {
        let case = |text: String| if lower { text.to_ascii_lowercase() } else { text };
        let postcode = Postcode::parse(&generated.normalised()).unwrap();
        let other_postcode = Postcode::parse(&other.normalised()).unwrap();

        let area = PostcodeFilter::parse(&case(generated.area.clone())).unwrap();
        prop_assert_eq!(area.clone(), PostcodeFilter::Area(generated.area.clone()));
        prop_assert!(area.matches(&postcode));
        prop_assert_eq!(area.matches(&other_postcode), other.area == generated.area);

        let district = PostcodeFilter::parse(&case(generated.outward.clone())).unwrap();
        prop_assert_eq!(district.clone(), PostcodeFilter::District(generated.outward.clone()));
        prop_assert!(district.matches(&postcode));
        prop_assert_eq!(
            district.matches(&other_postcode),
            other.outward == generated.outward
        );

        let sector_text = format!(" {}  {} ", generated.outward, generated.sector_digit);
        let sector = PostcodeFilter::parse(&case(sector_text)).unwrap();
        prop_assert_eq!(sector.clone(), PostcodeFilter::Sector(generated.sector()));
        prop_assert!(sector.matches(&postcode));
        prop_assert_eq!(
            sector.matches(&other_postcode),
            other.sector() == generated.sector()
        );

        for filter in [area, district, sector] {
            let json = serde_json::to_string(&filter).unwrap();
            prop_assert_eq!(serde_json::from_str::<PostcodeFilter>(&json).unwrap(), filter);
        }
    }
}

#[test]
fn postcode_examples() {
    let postcode = Postcode::parse("se13 6lh").unwrap();
    assert_eq!(postcode.as_str(), "SE13 6LH");
    assert_eq!(postcode.area(), "SE");
    assert_eq!(postcode.district(), "SE13");
    assert_eq!(postcode.sector(), "SE13 6");
    for (written, normalised, area) in [
        ("M1 1AE", "M1 1AE", "M"),
        ("B33 8TH", "B33 8TH", "B"),
        ("CR2 6XH", "CR2 6XH", "CR"),
        ("DN55 1PT", "DN55 1PT", "DN"),
        ("w1a1aa", "W1A 1AA", "W"),
        ("EC1A 1BB", "EC1A 1BB", "EC"),
        ("gir 0aa", "GIR 0AA", "GIR"),
    ] {
        let parsed = Postcode::parse(written).unwrap();
        assert_eq!(parsed.as_str(), normalised, "{written}");
        assert_eq!(parsed.area(), area, "{written}");
    }
    assert_eq!(Postcode::parse(""), Err(PostcodeError::Empty));
    assert_eq!(Postcode::parse(" \t "), Err(PostcodeError::Empty));
    assert_eq!(Postcode::parse("SE13 6LC"), Err(PostcodeError::Malformed));
    assert_eq!(Postcode::parse("SE1"), Err(PostcodeError::Malformed));
    assert_eq!(Postcode::parse("SE133 6LH"), Err(PostcodeError::Malformed));
    assert_eq!(Postcode::parse("9E13 6LH"), Err(PostcodeError::Malformed));
    assert_eq!(Postcode::parse("SÉ13 6LH"), Err(PostcodeError::Malformed));
}

#[test]
fn postcode_filter_examples() {
    assert_eq!(
        PostcodeFilter::parse("se"),
        Ok(PostcodeFilter::Area("SE".into()))
    );
    assert_eq!(
        PostcodeFilter::parse("SE13"),
        Ok(PostcodeFilter::District("SE13".into()))
    );
    assert_eq!(
        PostcodeFilter::parse("SE13 6"),
        Ok(PostcodeFilter::Sector("SE13 6".into()))
    );
    assert_eq!(PostcodeFilter::parse(""), Err(PostcodeError::Empty));
    assert_eq!(
        PostcodeFilter::parse("SE13 6LH"),
        Err(PostcodeError::Malformed)
    );
    assert_eq!(PostcodeFilter::parse("SEX"), Err(PostcodeError::Malformed));
    let lewisham = Postcode::parse("SE13 6LH").unwrap();
    assert!(PostcodeFilter::parse("SE").unwrap().matches(&lewisham));
    assert!(!PostcodeFilter::parse("SE1").unwrap().matches(&lewisham));
    assert!(!PostcodeFilter::parse("SE13 5").unwrap().matches(&lewisham));
    // Area "S" (Sheffield) is not a prefix match on "SE".
    assert!(!PostcodeFilter::parse("S").unwrap().matches(&lewisham));
}

// --------------------------------------------------------------- ODS code

proptest! {
    #[test]
    fn ods_code_letter_and_five_digits_parses_upper_case(
        letter in upper(),
        digits in digit_string(5),
        lower in any::<bool>(),
    ) {
        let code = format!("{letter}{digits}");
        let written = if lower { format!(" {} ", code.to_ascii_lowercase()) } else { code.clone() };
        let parsed = OdsCode::parse(&written).unwrap();
        prop_assert_eq!(parsed.as_str(), code.as_str());
        prop_assert_eq!(parsed.to_string(), code);
    }

    #[test]
    fn ods_code_other_shapes_fail(input in "[A-Z0-9]{0,9}".prop_filter(
        "valid shape",
        |s| !(s.len() == 6 && s.as_bytes()[0].is_ascii_uppercase()
            && s.as_bytes()[1..].iter().all(u8::is_ascii_digit)),
    )) {
        prop_assert_eq!(OdsCode::parse(&input), Err(OdsCodeError));
    }
}

#[test]
fn ods_code_examples() {
    assert_eq!(OdsCode::parse("G85001").unwrap().as_str(), "G85001");
    assert_eq!(OdsCode::parse(" g85001 ").unwrap().as_str(), "G85001");
    assert!(OdsCode::parse("G8500").is_err());
    assert!(OdsCode::parse("GG5001").is_err());
    assert!(OdsCode::parse("G850012").is_err());
    assert!(OdsCode::parse("").is_err());
}
