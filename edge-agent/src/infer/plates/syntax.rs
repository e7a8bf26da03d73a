//! The syntax of Chinese licence plates (GA 36): a province character, the issuing office's letter,
//! then five letters or digits; six on new-energy plates; four and 挂/学/警 on trailer, coach and
//! police plates. The reader uses it to choose among the recogniser's own readings, never to make
//! one up.

use serde::Serialize;

/// The province (or municipality) characters that open a plate.
pub const PROVINCES: &str = "京津沪渝冀晋辽吉黑苏浙皖闽赣鲁豫鄂湘粤琼川贵云陕甘青蒙桂宁新藏";
/// The office letter: a Latin capital but I. The police series' O is printed like a zero, so a zero
/// reads as that letter.
const OFFICE: &str = "ABCDEFGHJKLMNOPQRSTUVWXYZ0";
/// Serial characters: digits and capitals without I and O, which plates leave out (they would read
/// as 1 and 0).
const SERIAL: &str = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ";
const DIGITS: &str = "0123456789";
/// The letter that marks a new-energy plate's serial: A-E fully electric, F-K otherwise.
const ENERGY: &str = "ABCDEFGHJK";

/// What a plate's text says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlateKind {
    /// Province, office letter, five serial characters (blue and yellow plates).
    Standard,
    /// Six serial characters (green plates).
    NewEnergy,
    /// Four serial characters and 挂.
    Trailer,
    /// Four serial characters and 学.
    Coach,
    /// Four serial characters and 警 (white plates).
    Police,
}

/// Which part of a plate one line of text is: a single-row plate is read whole (a green one as a
/// new-energy plate, any other colour as the other kinds), a double-row plate as its top row
/// (province and office letter) and its bottom row (the serial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Whole,
    WholeGreen,
    Top,
    Bottom,
}

/// One way a line may be written: the characters allowed at each position.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub kind: PlateKind,
    pub positions: Vec<&'static str>,
}

fn pattern(kind: PlateKind, parts: &[(&'static str, usize)]) -> Pattern {
    Pattern { kind, positions: parts.iter().flat_map(|&(set, n)| std::iter::repeat_n(set, n)).collect() }
}

/// Every way `line` may be written.
pub fn patterns(line: Line) -> Vec<Pattern> {
    use PlateKind::*;
    match line {
        Line::Top => vec![pattern(Standard, &[(PROVINCES, 1), (OFFICE, 1)])],
        Line::Bottom => vec![pattern(Standard, &[(SERIAL, 5)]), pattern(Trailer, &[(SERIAL, 4), ("挂", 1)])],
        Line::Whole => vec![
            pattern(Standard, &[(PROVINCES, 1), (OFFICE, 1), (SERIAL, 5)]),
            pattern(Trailer, &[(PROVINCES, 1), (OFFICE, 1), (SERIAL, 4), ("挂", 1)]),
            pattern(Coach, &[(PROVINCES, 1), (OFFICE, 1), (SERIAL, 4), ("学", 1)]),
            pattern(Police, &[(PROVINCES, 1), (OFFICE, 1), (SERIAL, 4), ("警", 1)]),
        ],
        // Six serial characters only on green plates: on others a seventh from a screw or an overlay
        // would often make a valid new-energy serial. A green plate may still be another kind (the
        // colour is a classifier's guess).
        Line::WholeGreen => {
            let mut green = vec![
                // Small new-energy vehicles: the energy letter, a serial character, four digits.
                pattern(NewEnergy, &[(PROVINCES, 1), (OFFICE, 1), (ENERGY, 1), (SERIAL, 1), (DIGITS, 4)]),
                // Large ones: five digits, then the energy letter.
                pattern(NewEnergy, &[(PROVINCES, 1), (OFFICE, 1), (DIGITS, 5), (ENERGY, 1)]),
            ];
            green.extend(patterns(Line::Whole));
            green
        }
    }
}

/// The kind of plate `text` is when it is one line written as the syntax allows, else None.
pub fn check_line(text: &str, line: Line) -> Option<PlateKind> {
    let chars: Vec<char> = text.chars().collect();
    patterns(line).into_iter().find_map(|p| {
        let fits = p.positions.len() == chars.len() && p.positions.iter().zip(&chars).all(|(set, c)| set.contains(*c));
        fits.then_some(p.kind)
    })
}

/// The kind of plate `text` (a whole plate of any colour, double-row plates top row first) is, or
/// None when it is not a plate's text.
pub fn check(text: &str) -> Option<PlateKind> {
    check_line(text, Line::WholeGreen)
}

/// The text as the scoring and the syntax see it: upper case, and only digits, Latin capitals and
/// CJK characters kept (the separator dot, spaces and dashes go).
pub fn normalise(text: &str) -> String {
    text.chars()
        .flat_map(char::to_uppercase)
        .filter(|c| c.is_ascii_digit() || c.is_ascii_uppercase() || ('\u{4e00}'..='\u{9fff}').contains(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plates_of_every_kind_pass() {
        assert_eq!(check("沪B14292"), Some(PlateKind::Standard));
        assert_eq!(check("京AP7901"), Some(PlateKind::Standard), "a double-row plate, top row first");
        assert_eq!(check("皖KD01833"), Some(PlateKind::NewEnergy));
        assert_eq!(check("粤B12345D"), Some(PlateKind::NewEnergy));
        assert_eq!(check("冀A1234挂"), Some(PlateKind::Trailer));
        assert_eq!(check("湘A1234学"), Some(PlateKind::Coach));
        assert_eq!(check("浙FA096警"), Some(PlateKind::Police));
        assert_eq!(check("粤0T9048"), Some(PlateKind::Standard), "the police series' O, printed as a zero");
    }

    #[test]
    fn texts_that_are_not_plates_fail() {
        for text in [
            "",
            "B14292",     // no province
            "沪14292",    // no office letter
            "超B14292",   // not a province
            "沪B1429",    // one character short
            "沪B142920",  // one too many, and not a new-energy serial
            "沪BO4292",   // O is not a serial character
            "沪IB4292",   // I is not an office letter
            "皖浙A197EZ", // two provinces
            "沪B1429挂1", // the suffix ends the plate
            "沪b14292",   // lower case is not normalised here
        ] {
            assert_eq!(check(text), None, "{text:?}");
        }
    }

    #[test]
    fn the_rows_of_a_double_row_plate_have_their_own_syntax() {
        assert_eq!(check_line("粤A", Line::Top), Some(PlateKind::Standard));
        assert_eq!(check_line("P粤A", Line::Top), None);
        assert_eq!(check_line("K9331", Line::Bottom), Some(PlateKind::Standard));
        assert_eq!(check_line("K93312", Line::Bottom), None);
        assert_eq!(check_line("1234挂", Line::Bottom), Some(PlateKind::Trailer));
    }

    #[test]
    fn six_serial_characters_only_on_a_green_plate() {
        assert_eq!(check_line("粤AK93318", Line::Whole), None);
        assert_eq!(check_line("粤AK93318", Line::WholeGreen), Some(PlateKind::NewEnergy));
        assert_eq!(check_line("粤AK9331", Line::WholeGreen), Some(PlateKind::Standard), "the colour is a guess");
    }

    #[test]
    fn normalising_keeps_digits_capitals_and_cjk() {
        assert_eq!(normalise("沪B·14292"), "沪B14292");
        assert_eq!(normalise(" 京a-p7.901 "), "京AP7901");
        assert_eq!(normalise("Ａ＃"), "", "full-width forms are not plate characters");
    }
}
