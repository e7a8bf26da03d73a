//! CTC decoding of the recogniser's per-frame class probabilities: the greedy reading (best class per
//! frame, repeats merged, blanks dropped) and the best reading the plate syntax allows (a Viterbi
//! search over the CTC lattice restricted to each position's characters). The reader keeps the
//! greedy reading when it is a plate, else the syntax's one when every character of it had at least
//! `min_char_probability` at its frames: a choice among the model's readings, not a made-up text.

use super::syntax::{self, Line, Pattern, PlateKind};

/// Characters a reading may have between a plate's characters that are not part of its text (the
/// separator dot and what the recogniser writes for it): the syntax search treats them as blanks.
const SEPARATORS: &[&str] = &["·", ".", "-", "•", " ", ":"];

/// The recogniser's dictionary: class 0 is the CTC blank, then the model's `character` metadata
/// lines, then a space.
#[derive(Debug, Clone)]
pub struct Dictionary {
    entries: Vec<String>,
    /// Classes that stand for a separator (see [`SEPARATORS`]).
    separators: Vec<usize>,
    /// Per line kind, the syntax patterns as class lists.
    whole: Vec<ClassPattern>,
    whole_green: Vec<ClassPattern>,
    top: Vec<ClassPattern>,
    bottom: Vec<ClassPattern>,
}

#[derive(Debug, Clone)]
struct ClassPattern {
    kind: PlateKind,
    positions: Vec<Vec<usize>>,
}

impl Dictionary {
    /// From the `character` metadata's text: one entry per line.
    pub fn from_metadata(text: &str) -> Self {
        let mut entries = vec![String::new()];
        entries.extend(text.lines().map(str::to_string));
        entries.push(" ".into());
        let index =
            |wanted: &str| entries.iter().enumerate().skip(1).find(|(_, e)| e.as_str() == wanted).map(|(i, _)| i);
        let separators = SEPARATORS.iter().filter_map(|s| index(s)).collect();
        let compile = |line: Line| -> Vec<ClassPattern> {
            let mut by_char = std::collections::HashMap::new();
            for (i, e) in entries.iter().enumerate().skip(1) {
                by_char.entry(e.as_str()).or_insert(i);
            }
            syntax::patterns(line)
                .into_iter()
                .map(|Pattern { kind, positions }| ClassPattern {
                    kind,
                    positions: positions
                        .iter()
                        .map(|set| set.chars().filter_map(|c| by_char.get(c.to_string().as_str()).copied()).collect())
                        .collect(),
                })
                // A pattern with a position the dictionary cannot write can never be read.
                .filter(|p| p.positions.iter().all(|set: &Vec<usize>| !set.is_empty()))
                .collect()
        };
        let (whole, whole_green) = (compile(Line::Whole), compile(Line::WholeGreen));
        let (top, bottom) = (compile(Line::Top), compile(Line::Bottom));
        Self { entries, separators, whole, whole_green, top, bottom }
    }

    /// Number of classes the recogniser's output must have.
    pub fn classes(&self) -> usize {
        self.entries.len()
    }

    fn patterns(&self, line: Line) -> &[ClassPattern] {
        match line {
            Line::Whole => &self.whole,
            Line::WholeGreen => &self.whole_green,
            Line::Top => &self.top,
            Line::Bottom => &self.bottom,
        }
    }
}

/// One line of text read from a plate.
#[derive(Debug, Clone, PartialEq)]
pub struct LineReading {
    /// Normalised ([`syntax::normalise`]).
    pub text: String,
    /// Per character of `text`, the highest probability it had at its frames.
    pub probabilities: Vec<f32>,
    /// What the syntax says the line is; None when it is not a plate's line.
    pub kind: Option<PlateKind>,
}

impl LineReading {
    /// The mean of the characters' probabilities, 0 for an empty line.
    pub fn score(&self) -> f32 {
        if self.probabilities.is_empty() {
            return 0.0;
        }
        self.probabilities.iter().sum::<f32>() / self.probabilities.len() as f32
    }
}

/// Probabilities of `frames` frames × `classes` classes, row-major (the recogniser's `[1, T, C]`).
#[derive(Debug, Clone, Copy)]
pub struct Frames<'a> {
    pub data: &'a [f32],
    pub classes: usize,
}

impl Frames<'_> {
    fn count(&self) -> usize {
        self.data.len() / self.classes.max(1)
    }
    fn at(&self, t: usize, class: usize) -> f32 {
        self.data[t * self.classes + class]
    }
    fn row(&self, t: usize) -> &[f32] {
        &self.data[t * self.classes..(t + 1) * self.classes]
    }
}

/// The greedy reading: the best class per frame, repeats merged, blanks dropped, then normalised.
pub fn greedy(frames: Frames<'_>, dictionary: &Dictionary) -> (String, Vec<f32>) {
    let mut text = String::new();
    let mut probabilities = Vec::new();
    let mut previous = 0;
    for t in 0..frames.count() {
        let (class, p) = frames
            .row(t)
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |best, (i, &p)| if p > best.1 { (i, p) } else { best });
        if class != 0 && class == previous {
            // The same character over several frames: keep its best frame.
            if let Some(last) = probabilities.last_mut() {
                *last = f32::max(*last, p);
            }
        } else if class != 0 {
            let entry = dictionary.entries.get(class).map(String::as_str).unwrap_or("");
            let kept = syntax::normalise(entry);
            text.push_str(&kept);
            probabilities.extend(std::iter::repeat_n(p, kept.chars().count()));
        }
        // A separator (dropped by normalising) still ends a run of frames, as a blank would.
        previous = class;
    }
    (text, probabilities)
}

/// Reads one line: the greedy reading if it fits the syntax of `line`, else the best reading the
/// syntax allows if each of its characters had at least `min_char_probability`, else the greedy
/// reading marked as no plate.
pub fn read_line(frames: Frames<'_>, dictionary: &Dictionary, line: Line, min_char_probability: f32) -> LineReading {
    let (text, probabilities) = greedy(frames, dictionary);
    if let Some(kind) = syntax::check_line(&text, line) {
        return LineReading { text, probabilities, kind: Some(kind) };
    }
    if let Some((classes, probabilities, kind)) = best_by_syntax(frames, dictionary, line) {
        if probabilities.iter().all(|&p| p >= min_char_probability) {
            let text = classes.iter().map(|&c| dictionary.entries[c].as_str()).collect();
            return LineReading { text, probabilities, kind: Some(kind) };
        }
    }
    LineReading { text, probabilities, kind: None }
}

const NEG: f32 = -1.0e30;

fn ln(p: f32) -> f32 {
    p.max(1.0e-30).ln()
}

/// The most probable CTC path (max over alignments) whose text one of `line`'s patterns allows:
/// its classes, each character's best probability on the path, and the pattern's kind.
fn best_by_syntax(
    frames: Frames<'_>,
    dictionary: &Dictionary,
    line: Line,
) -> Option<(Vec<usize>, Vec<f32>, PlateKind)> {
    let count = frames.count();
    // A blank frame is a blank or a separator, whichever the model thought likelier.
    let blank: Vec<f32> = (0..count)
        .map(|t| ln(dictionary.separators.iter().map(|&s| frames.at(t, s)).fold(frames.at(t, 0), f32::max)))
        .collect();
    let mut best: Option<(Path, PlateKind)> = None;
    for pattern in dictionary.patterns(line) {
        if let Some(path) = viterbi(frames, &blank, &pattern.positions) {
            if best.as_ref().is_none_or(|(b, _)| path.0 > b.0) {
                best = Some((path, pattern.kind));
            }
        }
    }
    let ((_, classes, probabilities), kind) = best?;
    Some((classes, probabilities, kind))
}

/// Where a state's best path came from, for the trace back.
#[derive(Debug, Clone, Copy)]
enum From {
    /// The start, before the first frame.
    Start,
    /// The same state one frame earlier.
    Stay,
    /// The blank after the characters before this one.
    Blank,
    /// Character `index` of the previous position's set.
    Char(u16),
}

/// The best path of one pattern: its log probability, classes and each character's best probability.
type Path = (f32, Vec<usize>, Vec<f32>);

/// Viterbi over the CTC lattice of a text with `positions.len()` characters, position k drawn from
/// `positions[k]`.
fn viterbi(frames: Frames<'_>, blank: &[f32], positions: &[Vec<usize>]) -> Option<Path> {
    let count = frames.count();
    let k_max = positions.len();
    if count < k_max || k_max == 0 {
        return None;
    }
    // blanks[k]: k characters read, now in a blank; chars[k][i]: reading character k as positions[k][i].
    // Before the first frame only "nothing read" is possible.
    let mut blanks = vec![NEG; k_max + 1];
    blanks[0] = 0.0;
    let mut chars: Vec<Vec<f32>> = positions.iter().map(|set| vec![NEG; set.len()]).collect();
    let mut blank_from = vec![vec![From::Start; k_max + 1]; count];
    let mut char_from: Vec<Vec<Vec<From>>> =
        (0..count).map(|_| positions.iter().map(|set| vec![From::Start; set.len()]).collect()).collect();
    for t in 0..count {
        let mut next_blanks = vec![NEG; k_max + 1];
        for k in 0..=k_max {
            let (from_char, index) = if k > 0 { arg_max(&chars[k - 1]) } else { (NEG, 0) };
            let (score, from) = match (t, k) {
                (0, 0) => (0.0, From::Start),
                _ if blanks[k] >= from_char => (blanks[k], From::Stay),
                _ => (from_char, From::Char(index as u16)),
            };
            next_blanks[k] = score + blank[t];
            blank_from[t][k] = from;
        }
        let mut next_chars: Vec<Vec<f32>> = Vec::with_capacity(k_max);
        for (k, set) in positions.iter().enumerate() {
            // The best and second best of the previous position, for a class that must differ from it.
            let (first, second) = if k > 0 { two_best(&chars[k - 1]) } else { ((NEG, 0), (NEG, 0)) };
            let row: Vec<f32> = set
                .iter()
                .enumerate()
                .map(|(i, &class)| {
                    let mut best = (chars[k][i], From::Stay);
                    if blanks[k] > best.0 {
                        best = (blanks[k], if t == 0 { From::Start } else { From::Blank });
                    }
                    if k > 0 {
                        // Two equal characters in a row need a blank between them.
                        let previous = if positions[k - 1][first.1] == class { second } else { first };
                        if previous.0 > best.0 {
                            best = (previous.0, From::Char(previous.1 as u16));
                        }
                    }
                    char_from[t][k][i] = best.1;
                    best.0 + ln(frames.at(t, class))
                })
                .collect();
            next_chars.push(row);
        }
        blanks = next_blanks;
        chars = next_chars;
    }
    let (end_char, end_index) = arg_max(&chars[k_max - 1]);
    let score = blanks[k_max].max(end_char);
    if score <= NEG / 2.0 {
        return None;
    }
    // Trace back from the better end state: (in a blank, position, index in the position's set).
    let mut classes = vec![0usize; k_max];
    let mut probabilities = vec![0.0f32; k_max];
    let mut state = if blanks[k_max] >= end_char { (true, k_max, 0) } else { (false, k_max - 1, end_index) };
    for t in (0..count).rev() {
        let (in_blank, k, i) = state;
        let from = if in_blank { blank_from[t][k] } else { char_from[t][k][i] };
        if !in_blank {
            classes[k] = positions[k][i];
            probabilities[k] = probabilities[k].max(frames.at(t, classes[k]));
        }
        state = match from {
            From::Start => break,
            From::Stay => state,
            From::Blank => (true, k, 0),
            // A blank after k characters, or character k, came from character k − 1.
            From::Char(j) => (false, k - 1, j as usize),
        };
    }
    Some((score, classes, probabilities))
}

fn arg_max(values: &[f32]) -> (f32, usize) {
    values.iter().enumerate().fold((NEG, 0), |best, (i, &v)| if v > best.0 { (v, i) } else { best })
}

fn two_best(values: &[f32]) -> ((f32, usize), (f32, usize)) {
    let mut first = (NEG, 0);
    let mut second = (NEG, 0);
    for (i, &v) in values.iter().enumerate() {
        if v > first.0 {
            second = first;
            first = (v, i);
        } else if v > second.0 {
            second = (v, i);
        }
    }
    (first, second)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dictionary of the characters these tests use, in the recogniser's layout.
    fn dictionary() -> Dictionary {
        Dictionary::from_metadata("沪\n浙\nB\nA\n1\n4\n2\n9\n·\nO\n0\n3\n5\n6\n7\n8\nC\nD\nE\nF\nK\n粤")
    }

    fn class(d: &Dictionary, entry: &str) -> usize {
        d.entries.iter().position(|e| e == entry).unwrap()
    }

    /// Frames whose probabilities put `main` (an entry, or "" for blank) first with `p` and
    /// optionally a second entry with the rest.
    fn frames(d: &Dictionary, spec: &[(&str, f32, Option<&str>)]) -> Vec<f32> {
        let classes = d.classes();
        let mut data = vec![0.0f32; spec.len() * classes];
        for (t, &(main, p, second)) in spec.iter().enumerate() {
            let main = if main.is_empty() { 0 } else { class(d, main) };
            data[t * classes + main] = p;
            let rest = 1.0 - p;
            let other = match second {
                Some("") => 0,
                Some(e) => class(d, e),
                None if main == 0 => 1,
                None => 0,
            };
            data[t * classes + other] += rest;
        }
        data
    }

    fn text_frames(d: &Dictionary, text: &[&str]) -> Vec<f32> {
        // Each character over two frames, blanks between: "沪", "沪", blank, "B", "B", blank, …
        let spec: Vec<(&str, f32, Option<&str>)> =
            text.iter().flat_map(|c| [(*c, 0.98, None), (*c, 0.99, None), ("", 0.97, None)]).collect();
        frames(d, &spec)
    }

    #[test]
    fn greedy_merges_repeats_drops_blanks_and_separators() {
        let d = dictionary();
        let data = text_frames(&d, &["沪", "B", "·", "1", "4", "2", "9", "2"]);
        let (text, probabilities) = greedy(Frames { data: &data, classes: d.classes() }, &d);
        assert_eq!(text, "沪B14292");
        assert_eq!(probabilities.len(), 7);
        assert!(probabilities.iter().all(|&p| (p - 0.99).abs() < 1e-6), "{probabilities:?}");
    }

    #[test]
    fn a_repeated_character_needs_a_blank_between() {
        let d = dictionary();
        let data = frames(&d, &[("2", 0.9, None), ("2", 0.9, None), ("", 0.9, None), ("2", 0.9, None)]);
        assert_eq!(greedy(Frames { data: &data, classes: d.classes() }, &d).0, "22");
    }

    #[test]
    fn a_plate_read_greedily_is_kept_as_read() {
        let d = dictionary();
        let data = text_frames(&d, &["沪", "B", "1", "4", "2", "9", "2"]);
        let reading = read_line(Frames { data: &data, classes: d.classes() }, &d, Line::Whole, 0.2);
        assert_eq!(reading.text, "沪B14292");
        assert_eq!(reading.kind, Some(PlateKind::Standard));
        assert!((reading.score() - 0.99).abs() < 1e-6);
    }

    #[test]
    fn a_junk_character_beside_the_plate_is_dropped_by_the_syntax() {
        let d = dictionary();
        // A confident "8" from an overlay after the last character: eight characters, not a plate.
        let mut spec: Vec<(&str, f32, Option<&str>)> = Vec::new();
        for c in ["粤", "A", "K", "9", "3", "3", "1"] {
            spec.extend([(c, 0.99, None), ("", 0.99, None)]);
        }
        spec.extend([("8", 0.9, None), ("", 0.99, None)]);
        let data = frames(&d, &spec);
        let frames = Frames { data: &data, classes: d.classes() };
        assert_eq!(greedy(frames, &d).0, "粤AK93318");
        let reading = read_line(frames, &d, Line::Whole, 0.2);
        assert_eq!((reading.text.as_str(), reading.kind), ("粤AK9331", Some(PlateKind::Standard)));
        assert!(reading.probabilities.iter().all(|&p| (p - 0.99).abs() < 1e-6), "{:?}", reading.probabilities);
        // On a green plate the same eight characters are a new-energy plate, kept as read.
        let green = read_line(frames, &d, Line::WholeGreen, 0.2);
        assert_eq!((green.text.as_str(), green.kind), ("粤AK93318", Some(PlateKind::NewEnergy)));
    }

    #[test]
    fn a_second_choice_the_model_gave_enough_probability_is_taken_where_the_syntax_needs_it() {
        let d = dictionary();
        // Office letter read as a digit "0" is allowed (police series); "8" is not: its second choice "B" is.
        let mut spec: Vec<(&str, f32, Option<&str>)> = vec![("沪", 0.99, None), ("", 0.99, None)];
        spec.extend([("8", 0.6, Some("B")), ("8", 0.6, Some("B")), ("", 0.99, None)]);
        for c in ["1", "4", "2", "9", "2"] {
            spec.extend([(c, 0.99, None), ("", 0.99, None)]);
        }
        let data = frames(&d, &spec);
        let frames = Frames { data: &data, classes: d.classes() };
        assert_eq!(greedy(frames, &d).0, "沪814292");
        let reading = read_line(frames, &d, Line::Whole, 0.2);
        assert_eq!(reading.text, "沪B14292");
        assert!((reading.probabilities[1] - 0.4).abs() < 1e-6, "{:?}", reading.probabilities);
        // The same with "B" at 10 %: below the floor, so the reading stays as read and is no plate.
        let mut weak = spec.clone();
        weak[2] = ("8", 0.9, Some("B"));
        weak[3] = ("8", 0.9, Some("B"));
        let data = self::frames(&d, &weak);
        let reading = read_line(Frames { data: &data, classes: d.classes() }, &d, Line::Whole, 0.2);
        assert_eq!((reading.text.as_str(), reading.kind), ("沪814292", None));
    }

    #[test]
    fn nothing_is_made_up_from_frames_without_characters() {
        let d = dictionary();
        let data = frames(&d, &[("", 0.99, Some("1")); 40]);
        let reading = read_line(Frames { data: &data, classes: d.classes() }, &d, Line::Whole, 0.2);
        assert_eq!((reading.text.as_str(), reading.kind), ("", None));
        assert_eq!(reading.score(), 0.0);
    }

    #[test]
    fn too_few_frames_for_a_plate_give_no_syntax_reading() {
        let d = dictionary();
        let data = text_frames(&d, &["沪", "B"]);
        let frames = Frames { data: &data[..3 * d.classes()], classes: d.classes() };
        let reading = read_line(frames, &d, Line::Whole, 0.0);
        assert_eq!(reading.kind, None);
    }

    #[test]
    fn the_top_row_of_a_double_row_plate_drops_junk_before_the_province() {
        let d = dictionary();
        let data = text_frames(&d, &["D", "粤", "A"]);
        let reading = read_line(Frames { data: &data, classes: d.classes() }, &d, Line::Top, 0.2);
        assert_eq!((reading.text.as_str(), reading.kind), ("粤A", Some(PlateKind::Standard)));
    }
}
