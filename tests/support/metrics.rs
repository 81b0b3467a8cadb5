//! The Prometheus text exposition (format 0.0.4), parsed one way for every
//! test: samples with their labels, and the names the `# TYPE` lines declare.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of `text`; panics naming a line it cannot read, so a
/// malformed exposition fails the test that reads it.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| sample(l).unwrap_or_else(|| panic!("not a Prometheus sample: {l:?}")))
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.trim().to_string(), value);
            rest = &after[end + 1..];
        }
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The value of the sample named `name` whose labels are exactly `labels`.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse(text)
        .into_iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// Whether some sample is named `name` and carries every label key of `keys`.
pub fn has(text: &str, name: &str, keys: &[&str]) -> bool {
    parse(text)
        .iter()
        .any(|s| s.name == name && keys.iter().all(|k| s.labels.contains_key(*k)))
}

/// The sum of every sample named `name`, whatever its labels.
pub fn sum(text: &str, name: &str) -> f64 {
    parse(text)
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// The metric names declared by `# TYPE` lines.
pub fn type_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// `corral_http_requests_total` for one code, method and protocol.
pub fn requests(text: &str, code: &str, method: &str, protocol: &str) -> Option<f64> {
    value(
        text,
        "corral_http_requests_total",
        &[("code", code), ("method", method), ("protocol", protocol)],
    )
}
