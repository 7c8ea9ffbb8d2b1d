//! Inputs for the property tests of the parsers of outside input (config, camera state, model
//! manifests, projections, token files): valid files with one value replaced by an arbitrary
//! one, so that the cases reach the checks after parsing, not only the TOML syntax errors.

use proptest::prelude::*;

/// A TOML value of any type, including the awkward ones: huge, negative, NaN, empty, long.
pub fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| if v.is_nan() {
            "nan".into()
        } else if v.is_infinite() {
            if v > 0.0 { "inf".into() } else { "-inf".into() }
        } else {
            format!("{v:?}")
        }),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("true".to_string()),
        ".{0,40}".prop_map(|s| format!("{s:?}")),
        "[a-z/:._-]{0,3000}".prop_map(|s| format!("{s:?}")),
        prop::collection::vec(any::<i32>(), 0..5).prop_map(|v| format!("{v:?}")),
        Just("{}".to_string()),
        Just("[]".to_string()),
    ]
}

/// `text` with the value of its `index`-th `key = value` line (modulo their number) replaced.
pub fn with_value_replaced(text: &str, index: usize, value: &str) -> String {
    let assignments: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            !l.starts_with('#') && !l.starts_with('[') && l.contains(" = ")
        })
        .map(|(i, _)| i)
        .collect();
    if assignments.is_empty() {
        return text.to_string();
    }
    let target = assignments[index % assignments.len()];
    text.lines()
        .enumerate()
        .map(|(i, line)| match line.split_once(" = ") {
            Some((key, _)) if i == target => format!("{key} = {value}"),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` cut at `at` (modulo its length, on a character boundary) or with a line dropped.
pub fn damaged(text: &str, at: usize, drop_line: bool) -> String {
    if drop_line {
        let lines: Vec<&str> = text.lines().collect();
        let skip = at % lines.len().max(1);
        return lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| *l)
            .collect::<Vec<_>>()
            .join("\n");
    }
    let mut cut = at % (text.len() + 1);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_string()
}
