//! Parity evidence for `cargo xtask parity`: a test that shows kube-proxy behaviours (rule ids of
//! `xtask/src/parity/rules.rs`) calls [`shown`] after its last assertion. With `LB_PARITY_DIR`
//! set, that writes a record named after the test binary and the test (libtest names each test's
//! thread after the test), so only a test that passed up to there leaves one.
use std::io::Write as _;

/// Records that the running test showed `rules`. Without `LB_PARITY_DIR`, does nothing.
pub fn shown(rules: &[&str]) {
    let Some(dir) = std::env::var_os("LB_PARITY_DIR") else { return };
    let test = std::thread::current().name().unwrap_or("unnamed").to_owned();
    // `socket_lb-1a2b3c…` → `socket_lb`.
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .map(|n| n.rsplit_once('-').map_or(n.clone(), |(stem, _)| stem.to_owned()))
        .unwrap_or_default();
    let path = std::path::Path::new(&dir).join(format!("{binary}::{test}"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("parity record {}: {e}", path.display()));
    for rule in rules {
        writeln!(file, "{rule}").unwrap_or_else(|e| panic!("parity record {}: {e}", path.display()));
    }
}

/// The rule ids a table case names in its description: `… (rule 39)`, `… (rules 7, 9)`.
pub fn rules_in(description: &str) -> Vec<String> {
    let Some(start) = description.rfind("(rule") else { return Vec::new() };
    let inner = &description[start + 1..];
    let Some(end) = inner.find(')') else { return Vec::new() };
    inner[..end]
        .trim_start_matches("rules")
        .trim_start_matches("rule")
        .split([',', ' '])
        .filter(|s| !s.is_empty() && *s != "and")
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::rules_in;

    #[test]
    fn rule_ids_are_read_from_case_descriptions() {
        assert_eq!(rules_in("NodePort iff nodePort is set (rule 7)"), ["7"]);
        assert_eq!(rules_in("several (rules 4, 7, 8 and 13a)"), ["4", "7", "8", "13a"]);
        assert!(rules_in("basic ClusterIP TCP").is_empty());
        assert!(rules_in("unterminated (rule 3").is_empty());
    }
}
