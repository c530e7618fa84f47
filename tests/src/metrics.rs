//! Scraping the agent's `/metrics` and reading samples out of the OpenMetrics text.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

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
    let samples = parse(&text).map_err(|e| anyhow::anyhow!("GET /metrics on {addr}: {e}"))?;
    Ok(Scrape { samples, text })
}

/// Parses the exposition, checking what Prometheus would reject: every sample belongs to a
/// family declared by `# TYPE` before it, with a suffix its type allows; no label set appears
/// twice; label values are quoted and escaped; the text ends with `# EOF`.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for line in text.lines() {
        if eof {
            return Err(format!("text after # EOF: {line:?}"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (keyword, name) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            match keyword {
                "TYPE" => {
                    let t = words.next().ok_or(format!("TYPE without a type: {line:?}"))?;
                    if !["counter", "gauge", "histogram", "unknown", "info", "stateset"].contains(&t) {
                        return Err(format!("unknown type {t:?}"));
                    }
                    if types.insert(name.to_owned(), t.to_owned()).is_some() {
                        return Err(format!("family {name} declared twice"));
                    }
                }
                "HELP" | "UNIT" => {}
                _ => return Err(format!("unknown comment {line:?}")),
            }
            continue;
        }
        let sample = parse_sample(line)?;
        let family = types
            .iter()
            .filter(|(family, t)| {
                let suffixes: &[&str] = match t.as_str() {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| sample.name == format!("{family}{s}"))
            })
            .map(|(family, _)| family.clone())
            .next();
        if family.is_none() {
            return Err(format!("sample {} belongs to no declared family", sample.name));
        }
        if !seen.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(format!("duplicate sample {} {:?}", sample.name, sample.labels));
        }
        samples.push(sample);
    }
    if !eof {
        return Err("no # EOF".to_owned());
    }
    Ok(samples)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let bad = |why: &str| format!("{why}: {line:?}");
    let name_end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
    let name = &line[..name_end];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return Err(bad("bad metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next().ok_or_else(|| bad("unclosed labels"))?;
            match c {
                '}' if key.is_empty() => {
                    rest = &body[i + 1..];
                    break;
                }
                ',' if key.is_empty() => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err(bad("unquoted label value"));
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().ok_or_else(|| bad("unterminated label value"))?.1 {
                            '"' => break,
                            '\\' => match chars.next().ok_or_else(|| bad("dangling escape"))?.1 {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                _ => return Err(bad("bad escape")),
                            },
                            '\n' => return Err(bad("raw newline")),
                            c => value.push(c),
                        }
                    }
                    if labels.insert(std::mem::take(&mut key), value).is_some() {
                        return Err(bad("label twice"));
                    }
                }
                c if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                _ => return Err(bad("bad label name")),
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or_else(|| bad("no space before the value"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| bad("bad value"))?,
    };
    Ok(Sample { name: name.to_owned(), labels, value })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_rejects_what_prometheus_would() {
        let ok = "# TYPE a counter\na_total{x=\"1\\\"\\n\"} 3\n# EOF\n";
        assert_eq!(parse(ok).expect("ok")[0].labels["x"], "1\"\n");
        for bad in [
            "# TYPE a counter\na_total 1\n",                       // no EOF
            "a 1\n# EOF\n",                                        // no family
            "# TYPE a counter\na 1\n# EOF\n",                      // counter without _total
            "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n# EOF\n", // duplicate
            "# TYPE a gauge\na{x=1} 1\n# EOF\n",                   // unquoted
            "# TYPE a gauge\na 1\n# EOF\nb 2\n",                   // after EOF
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must not parse");
        }
    }
}
