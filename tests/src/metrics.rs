//! Scraping the agent's `/metrics` and reading samples out of the OpenMetrics text.
use std::{collections::BTreeMap, net::SocketAddr};

/// One sample: metric name (with its `_total`/`_bucket`… suffix), labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of one scrape.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub text: String,
}

/// `GET /metrics` on `addr`, parsed; fails on a status other than 200 or text that does not parse.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let (status, text) = crate::agent::http_get(addr, "/metrics");
    anyhow::ensure!(status == 200, "GET /metrics on {addr}: status {status}");
    Ok(Scrape { samples: parse(&text)?, text })
}

/// Parses OpenMetrics text: `# HELP/TYPE/UNIT` lines, samples `name{k="v",…} value`, and the
/// final `# EOF`, which a complete scrape must have. Every sample must follow a `# TYPE` of its
/// family.
pub fn parse(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    let mut families: Vec<String> = Vec::new();
    let mut eof = false;
    for line in text.lines() {
        anyhow::ensure!(!eof, "text after # EOF: {line:?}");
        if line == "# EOF" {
            eof = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.push(rest.split(' ').next().unwrap_or_default().to_owned());
        } else if !line.starts_with("# ") {
            let sample = parse_sample(line).ok_or_else(|| anyhow::anyhow!("bad sample line {line:?}"))?;
            anyhow::ensure!(
                families.iter().any(|f| sample.name.starts_with(f.as_str())),
                "sample {} before its # TYPE",
                sample.name
            );
            samples.push(sample);
        }
    }
    anyhow::ensure!(eof, "no # EOF: the scrape is incomplete");
    Ok(samples)
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `k="v",k2="v2"` with `\\`, `\"` and `\n` escapes.
fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        s = &rest[end + 1..];
    }
    Some(labels)
}

impl Scrape {
    /// Samples named `name` whose labels include every `labels` pair.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample `name` with `labels`; an error when there is none or several.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        match self.matching(name, labels).as_slice() {
            [one] => Ok(one.value),
            found => anyhow::bail!("{} samples {name} {labels:?} (want 1):\n{}", found.len(), self.text),
        }
    }
}
