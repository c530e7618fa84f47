//! `lb-agent cleanup --kube-proxy`: removes what kube-proxy left in the current network namespace
//! once it no longer runs there.
//!
//! - iptables (IPv4 and IPv6, for each backend whose tools are installed: `iptables-nft-*` and
//!   `iptables-legacy-*`, or plain `iptables-*` when neither exists): every chain named `KUBE-*`
//!   in the `nat`, `filter` and `mangle` tables, and every rule of another chain that jumps to
//!   one of them (a chain cannot be deleted while something jumps to it). As kube-proxy's own
//!   `--cleanup` does, this is one `iptables-restore --noflush` per backend and family: the
//!   chains are declared (which flushes them), the jump rules deleted (`-D`), then the chains
//!   deleted (`-X`), atomically per table. Every other chain, rule and table is left untouched.
//! - nftables: the tables `ip kube-proxy` and `ip6 kube-proxy` (kube-proxy's nftables mode),
//!   deleted when present.
//!
//! Two chains with the prefix belong to the kubelet, not to kube-proxy, and are kept:
//! `KUBE-KUBELET-CANARY` (the kubelet re-creates it within a minute and treats its disappearance
//! as a firewall flush) and `KUBE-IPTABLES-HINT` (tells containerised tools which backend the
//! node uses). Removing them would only make the command fight the kubelet and never be idempotent.
//!
//! Idempotent: with nothing left, nothing is run but the `*-save` and `nft list tables` reads.
//! Every tool is looked for before anything is changed, so a missing one fails without a
//! half-done cleanup. The parsing and planning are pure functions (unit-tested below).
use std::{
    collections::BTreeSet,
    ffi::OsStr,
    fmt,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

/// The iptables tables kube-proxy writes to.
pub const TABLES: [&str; 3] = ["nat", "filter", "mangle"];
/// kube-proxy's (and the kubelet's) chain prefix.
pub const CHAIN_PREFIX: &str = "KUBE-";
/// Chains with the prefix that the kubelet owns and re-creates: kept.
pub const KUBELET_CHAINS: [&str; 2] = ["KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"];
/// kube-proxy's nftables tables, as `(family, name)`.
pub const NFT_TABLES: [(&str, &str); 2] = [("ip", "kube-proxy"), ("ip6", "kube-proxy")];
/// How long `iptables-restore` waits for the xtables lock (legacy backend), in seconds.
const XTABLES_WAIT_SECONDS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "missing tools: {}; install the Debian packages iptables and nftables \
         (the image built from deploy/Dockerfile has them)",
        .0.join("; ")
    )]
    ToolsMissing(Vec<String>),
    #[error("cannot start {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed { command: String, status: ExitStatus, stderr: String },
    #[error(
        "{command} failed ({status}): {stderr}\n(each table changes atomically at its COMMIT: a table \
         that failed is unchanged) its input was:\n{input}"
    )]
    RestoreFailed { command: String, status: ExitStatus, stderr: String, input: String },
    #[error("cannot read the output of {command}: {source}")]
    Parse {
        command: String,
        #[source]
        source: ParseError,
    },
    #[error(
        "{tool}: still present after the cleanup: {remaining}; is kube-proxy still running on this node? \
         Stop it (delete its DaemonSet or move it off this node) and run the cleanup again"
    )]
    StillPresent { tool: String, remaining: String },
}

/// What is wrong with a line of `iptables-save` output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {text:?} is outside a table (no `*table` line before it)")]
    OutsideTable { line: usize, text: String },
    #[error("line {line}: table {table} starts before the previous one ({previous}) ends with COMMIT")]
    NestedTable { line: usize, table: String, previous: String },
    #[error("table {table} does not end with COMMIT")]
    Unterminated { table: String },
    #[error("line {line}: cannot read {text:?}")]
    Malformed { line: usize, text: String },
}

/// One table of `iptables-save` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedTable {
    pub name: String,
    pub chains: Vec<SavedChain>,
    pub rules: Vec<SavedRule>,
}

/// A chain declaration (`:NAME POLICY [packets:bytes]`); built-in chains have a policy, user
/// chains `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedChain {
    pub name: String,
    pub builtin: bool,
}

/// A rule (`-A CHAIN SPEC...`) as saved, quoting included, so it can be deleted with
/// `-D CHAIN SPEC...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRule {
    pub chain: String,
    /// Everything after `-A `: the chain name and the rule specification.
    pub spec: String,
    /// The chain or target of `-j`/`-g`, if any.
    pub target: Option<String>,
}

impl fmt::Display for SavedRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {}", self.spec)
    }
}

/// Parses the output of `iptables-save` / `ip6tables-save` (any backend).
pub fn parse_save(text: &str) -> Result<Vec<SavedTable>, ParseError> {
    let mut tables = Vec::new();
    let mut current: Option<SavedTable> = None;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed = || ParseError::Malformed { line: line_no, text: raw.to_owned() };
        if let Some(name) = line.strip_prefix('*') {
            if let Some(previous) = &current {
                return Err(ParseError::NestedTable {
                    line: line_no,
                    table: name.to_owned(),
                    previous: previous.name.clone(),
                });
            }
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(malformed());
            }
            current = Some(SavedTable { name: name.to_owned(), chains: Vec::new(), rules: Vec::new() });
            continue;
        }
        let Some(table) = current.as_mut() else {
            return Err(ParseError::OutsideTable { line: line_no, text: raw.to_owned() });
        };
        if line == "COMMIT" {
            tables.extend(current.take());
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let mut fields = decl.split_whitespace();
            let (Some(name), Some(policy)) = (fields.next(), fields.next()) else { return Err(malformed()) };
            table.chains.push(SavedChain { name: name.to_owned(), builtin: policy != "-" });
            continue;
        }
        // `iptables-save -c` puts `[packets:bytes]` before the rule.
        let rule = match line.strip_prefix('[') {
            Some(rest) => rest.split_once(']').map(|(_, r)| r.trim_start()).ok_or_else(malformed)?,
            None => line,
        };
        let Some(spec) = rule.strip_prefix("-A ") else { return Err(malformed()) };
        let words = split_words(spec).ok_or_else(malformed)?;
        let Some(chain) = words.first() else { return Err(malformed()) };
        let target = words
            .windows(2)
            .find(|w| matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto"))
            .map(|w| w[1].clone());
        table.rules.push(SavedRule { chain: chain.clone(), spec: spec.trim().to_owned(), target });
    }
    if let Some(table) = current {
        return Err(ParseError::Unterminated { table: table.name });
    }
    Ok(tables)
}

/// Splits a rule into words as iptables-restore does: double quotes group, a backslash escapes
/// the next character. `None` when a quote is not closed.
fn split_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                word.push(chars.next().unwrap_or('\\'));
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return None;
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// Whether a chain is kube-proxy's (and so removed).
pub fn is_kube_proxy_chain(name: &str) -> bool {
    name.starts_with(CHAIN_PREFIX) && !KUBELET_CHAINS.contains(&name)
}

/// What to remove from one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    pub table: String,
    /// Rules of kept chains that jump to a removed chain.
    pub unlink: Vec<SavedRule>,
    /// kube-proxy's chains in this table.
    pub chains: Vec<String>,
}

/// What to remove from saved tables: only `nat`, `filter` and `mangle`, only tables with
/// something to remove.
pub fn plan(tables: &[SavedTable]) -> Vec<TablePlan> {
    tables
        .iter()
        .filter(|t| TABLES.contains(&t.name.as_str()))
        .filter_map(|t| {
            let chains: Vec<String> = t
                .chains
                .iter()
                .filter(|c| !c.builtin && is_kube_proxy_chain(&c.name))
                .map(|c| c.name.clone())
                .collect();
            let removed: BTreeSet<&str> = chains.iter().map(String::as_str).collect();
            let unlink: Vec<SavedRule> = t
                .rules
                .iter()
                .filter(|r| !removed.contains(r.chain.as_str()))
                .filter(|r| r.target.as_deref().is_some_and(|target| removed.contains(target)))
                .cloned()
                .collect();
            (!chains.is_empty() || !unlink.is_empty()).then(|| TablePlan {
                table: t.name.clone(),
                unlink,
                chains,
            })
        })
        .collect()
}

/// The input for `iptables-restore --noflush` that carries out `plans`: per table, declaring a
/// user chain flushes it, `-D` deletes the jumps to it, `-X` deletes it; COMMIT applies the table
/// atomically.
pub fn restore_input(plans: &[TablePlan]) -> String {
    let mut out = String::new();
    for plan in plans {
        out.push_str(&format!("*{}\n", plan.table));
        for chain in &plan.chains {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for rule in &plan.unlink {
            out.push_str(&format!("-D {}\n", rule.spec));
        }
        for chain in &plan.chains {
            out.push_str(&format!("-X {chain}\n"));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The tables listed by `nft list tables`, as `(family, name)`.
pub fn parse_nft_tables(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "table").then_some(())?;
            let (family, name) = (words.next()?, words.next()?);
            Some((family.to_owned(), name.to_owned()))
        })
        .collect()
}

/// kube-proxy's tables among those `nft list tables` printed.
pub fn kube_proxy_nft_tables(text: &str) -> Vec<(String, String)> {
    parse_nft_tables(text)
        .into_iter()
        .filter(|(family, name)| NFT_TABLES.iter().any(|(f, n)| f == family && n == name))
        .collect()
}

/// One thing the cleanup removed; printed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    Rule { tool: String, table: String, rule: SavedRule },
    Chain { tool: String, table: String, chain: String },
    NftTable { family: String, name: String },
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule { tool, table, rule } => write!(f, "{tool} {table} rule: {rule}"),
            Self::Chain { tool, table, chain } => write!(f, "{tool} {table} chain {chain}"),
            Self::NftTable { family, name } => write!(f, "nftables table {family} {name}"),
        }
    }
}

/// One iptables backend for one family: `iptables-nft`, `ip6tables-legacy`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesTool {
    /// The command prefix, e.g. `ip6tables-legacy`.
    pub name: String,
    pub save: PathBuf,
    pub restore: PathBuf,
}

/// The tools the cleanup runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub iptables: Vec<IptablesTool>,
    pub nft: PathBuf,
}

/// Picks the iptables backends for `family` (`iptables` or `ip6tables`): the `-nft` and
/// `-legacy` variants whose save and restore tools both exist, or the plain tools when neither
/// does (older distributions). `Err` describes what is missing.
pub fn choose_iptables(
    family: &str,
    find: impl Fn(&str) -> Option<PathBuf>,
) -> Result<Vec<IptablesTool>, String> {
    let pair = |name: String| {
        let save = find(&format!("{name}-save"))?;
        let restore = find(&format!("{name}-restore"))?;
        Some(IptablesTool { name, save, restore })
    };
    let variants: Vec<IptablesTool> =
        ["-nft", "-legacy"].iter().filter_map(|v| pair(format!("{family}{v}"))).collect();
    if !variants.is_empty() {
        return Ok(variants);
    }
    pair(family.to_owned()).map(|t| vec![t]).ok_or_else(|| {
        format!("{family}-save and {family}-restore (or their -nft / -legacy variants) are not in PATH")
    })
}

/// An executable named `name` in the directories of `path` (a `PATH` value).
pub fn find_in_path(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(path?).map(|dir| dir.join(name)).find(|candidate| {
        std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

impl Tools {
    /// Finds every tool in `path`, or names all that are missing.
    pub fn discover(path: Option<&OsStr>) -> Result<Self, Error> {
        let find = |name: &str| find_in_path(name, path);
        let mut missing = Vec::new();
        let mut iptables = Vec::new();
        for family in ["iptables", "ip6tables"] {
            match choose_iptables(family, find) {
                Ok(tools) => iptables.extend(tools),
                Err(what) => missing.push(what),
            }
        }
        let nft = find("nft");
        if nft.is_none() {
            missing.push("nft is not in PATH".to_owned());
        }
        match nft {
            Some(nft) if missing.is_empty() => Ok(Self { iptables, nft }),
            _ => Err(Error::ToolsMissing(missing)),
        }
    }
}

fn describe(program: &Path, args: &[&str]) -> String {
    let name = program.file_name().unwrap_or(program.as_os_str()).to_string_lossy();
    std::iter::once(name.as_ref()).chain(args.iter().copied()).collect::<Vec<_>>().join(" ")
}

/// Runs a tool (feeding `stdin` if given) and returns its standard output.
fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let command = describe(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn { command: command.clone(), source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe; its exit status says why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn saved_plan(tool: &IptablesTool) -> Result<Vec<TablePlan>, Error> {
    let text = run(&tool.save, &[], None)?;
    let tables =
        parse_save(&text).map_err(|source| Error::Parse { command: describe(&tool.save, &[]), source })?;
    Ok(plan(&tables))
}

/// Removes kube-proxy's iptables chains and jumps for one backend and family.
fn cleanup_iptables(tool: &IptablesTool) -> Result<Vec<Removed>, Error> {
    let plans = saved_plan(tool)?;
    if plans.is_empty() {
        return Ok(Vec::new());
    }
    let wait = format!("--wait={XTABLES_WAIT_SECONDS}");
    let input = restore_input(&plans);
    run(&tool.restore, &["--noflush", &wait], Some(&input)).map_err(|e| match e {
        Error::Failed { command, status, stderr } => Error::RestoreFailed { command, status, stderr, input },
        other => other,
    })?;
    let left = saved_plan(tool)?;
    if !left.is_empty() {
        let remaining: Vec<String> = left
            .iter()
            .flat_map(|p| {
                let chains = p.chains.iter().map(move |c| format!("{} chain {c}", p.table));
                chains.chain(p.unlink.iter().map(move |r| format!("{} rule {r}", p.table)))
            })
            .collect();
        return Err(Error::StillPresent { tool: tool.name.clone(), remaining: remaining.join(", ") });
    }
    let mut removed = Vec::new();
    for p in plans {
        removed.extend(p.unlink.into_iter().map(|rule| Removed::Rule {
            tool: tool.name.clone(),
            table: p.table.clone(),
            rule,
        }));
        removed.extend(p.chains.into_iter().map(|chain| Removed::Chain {
            tool: tool.name.clone(),
            table: p.table.clone(),
            chain,
        }));
    }
    Ok(removed)
}

/// Removes kube-proxy's nftables tables.
fn cleanup_nft(nft: &Path) -> Result<Vec<Removed>, Error> {
    let listed = run(nft, &["list", "tables"], None)?;
    let mut removed = Vec::new();
    for (family, name) in kube_proxy_nft_tables(&listed) {
        run(nft, &["delete", "table", &family, &name], None)?;
        removed.push(Removed::NftTable { family, name });
    }
    Ok(removed)
}

/// Removes what kube-proxy left in this network namespace; returns what was removed (empty when
/// there was nothing: a second run changes nothing).
pub fn cleanup() -> Result<Vec<Removed>, Error> {
    let tools = Tools::discover(std::env::var_os("PATH").as_deref())?;
    let mut removed = Vec::new();
    for tool in &tools.iptables {
        removed.extend(cleanup_iptables(tool)?);
    }
    removed.extend(cleanup_nft(&tools.nft)?);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `iptables-nft-save` prints for a node kube-proxy (iptables mode) ran on, with the
    /// kubelet's chains and some rules of the operator's own.
    const SAVED: &str = include_str!("kube_proxy_cleanup/iptables-nft-save.txt");

    fn rule(spec: &str, target: Option<&str>) -> SavedRule {
        let chain = spec.split_whitespace().next().unwrap_or_default().to_owned();
        SavedRule { chain, spec: spec.to_owned(), target: target.map(str::to_owned) }
    }

    #[test]
    fn kube_proxy_parse_save_reads_tables_chains_rules_and_targets() {
        let tables = parse_save(SAVED).expect("parses");
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["mangle", "raw", "filter", "nat"]);
        let filter = &tables[2];
        assert_eq!(
            filter.chains[1],
            SavedChain { name: "FORWARD".into(), builtin: true },
            "a built-in chain has a policy"
        );
        assert_eq!(filter.chains[4], SavedChain { name: "KUBE-FORWARD".into(), builtin: false });
        assert_eq!(
            filter.rules[0],
            rule(
                r#"INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS"#,
                Some("KUBE-NODEPORTS")
            )
        );
        // A `-j` inside a quoted comment is not the target.
        assert_eq!(filter.rules[4].target.as_deref(), Some("ACCEPT"));
        assert_eq!(filter.rules[8].target.as_deref(), Some("KUBE-SERVICES"), "goto counts as a jump");
        // Counters are dropped; the rule text is kept as saved.
        let nat = &tables[3];
        assert_eq!(
            nat.rules[0].spec,
            r#"PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#
        );
        assert_eq!(nat.rules[0].to_string(), format!("-A {}", nat.rules[0].spec));
    }

    #[test]
    fn kube_proxy_plan_removes_only_kube_chains_and_their_jumps_in_three_tables() {
        let plans = plan(&parse_save(SAVED).expect("parses"));
        assert_eq!(
            plans,
            [
                TablePlan {
                    table: "mangle".into(),
                    unlink: vec![],
                    chains: vec!["KUBE-PROXY-CANARY".into()],
                },
                TablePlan {
                    table: "filter".into(),
                    unlink: vec![
                        rule(
                            r#"INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS"#,
                            Some("KUBE-NODEPORTS")
                        ),
                        rule("INPUT -j KUBE-FIREWALL", Some("KUBE-FIREWALL")),
                        rule(
                            r#"FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD"#,
                            Some("KUBE-FORWARD")
                        ),
                        rule("MY-CHAIN -g KUBE-SERVICES", Some("KUBE-SERVICES")),
                    ],
                    chains: vec![
                        "KUBE-FIREWALL".into(),
                        "KUBE-FORWARD".into(),
                        "KUBE-NODEPORTS".into(),
                        "KUBE-SERVICES".into()
                    ],
                },
                TablePlan {
                    table: "nat".into(),
                    unlink: vec![rule(
                        r#"PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#,
                        Some("KUBE-SERVICES")
                    )],
                    chains: vec![
                        "KUBE-MARK-MASQ".into(),
                        "KUBE-SEP-ABC".into(),
                        "KUBE-SERVICES".into(),
                        "KUBE-SVC-XYZ".into()
                    ],
                },
            ],
            "raw is not touched, the kubelet's chains stay, rules inside removed chains go with them"
        );
    }

    #[test]
    fn kube_proxy_restore_input_flushes_unlinks_then_deletes_per_table() {
        let plans = plan(&parse_save(SAVED).expect("parses"));
        let input = restore_input(&plans[1..]);
        assert_eq!(
            input,
            r#"*filter
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
-D INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-D INPUT -j KUBE-FIREWALL
-D FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-D MY-CHAIN -g KUBE-SERVICES
-X KUBE-FIREWALL
-X KUBE-FORWARD
-X KUBE-NODEPORTS
-X KUBE-SERVICES
COMMIT
*nat
:KUBE-MARK-MASQ - [0:0]
:KUBE-SEP-ABC - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XYZ - [0:0]
-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-X KUBE-MARK-MASQ
-X KUBE-SEP-ABC
-X KUBE-SERVICES
-X KUBE-SVC-XYZ
COMMIT
"#
        );
        assert_eq!(restore_input(&[]), "");
    }

    #[test]
    fn kube_proxy_plan_of_a_clean_node_is_empty() {
        let clean = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\n:MY-CHAIN - [0:0]\n\
                     -A INPUT -j MY-CHAIN\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(plan(&parse_save(clean).expect("parses")), []);
        assert_eq!(plan(&parse_save("").expect("empty output parses")), []);
    }

    #[test]
    fn kube_proxy_parse_save_rejects_what_it_cannot_read() {
        assert_eq!(
            parse_save("-A INPUT -j ACCEPT\n"),
            Err(ParseError::OutsideTable { line: 1, text: "-A INPUT -j ACCEPT".into() })
        );
        assert_eq!(
            parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n"),
            Err(ParseError::Unterminated { table: "nat".into() })
        );
        assert_eq!(
            parse_save("*nat\n*filter\nCOMMIT\n"),
            Err(ParseError::NestedTable { line: 2, table: "filter".into(), previous: "nat".into() })
        );
        assert_eq!(
            parse_save("*nat\n-I INPUT -j ACCEPT\nCOMMIT\n"),
            Err(ParseError::Malformed { line: 2, text: "-I INPUT -j ACCEPT".into() })
        );
        assert_eq!(
            parse_save("*nat\n-A INPUT -m comment --comment \"open -j ACCEPT\nCOMMIT\n"),
            Err(ParseError::Malformed {
                line: 2,
                text: "-A INPUT -m comment --comment \"open -j ACCEPT".into()
            })
        );
        assert_eq!(
            parse_save("*nat\n:KUBE-X\nCOMMIT\n"),
            Err(ParseError::Malformed { line: 2, text: ":KUBE-X".into() })
        );
    }

    #[test]
    fn kube_proxy_split_words_follows_iptables_quoting() {
        assert_eq!(
            split_words(r#"A -m comment --comment "a \"b\" c" -j X"#),
            Some(
                vec!["A", "-m", "comment", "--comment", r#"a "b" c"#, "-j", "X"]
                    .into_iter()
                    .map(String::from)
                    .collect()
            )
        );
        assert_eq!(
            split_words(r#"A --comment """#),
            Some(vec!["A".into(), "--comment".into(), String::new()])
        );
        assert_eq!(split_words(r#"A "x"#), None);
    }

    #[test]
    fn kube_proxy_nft_tables_are_picked_by_family_and_name() {
        let listed = "table ip nat\ntable inet keep-me\ntable ip kube-proxy\ntable ip6 kube-proxy\n\
                      table inet kube-proxy\ntable ip6 filter\n";
        assert_eq!(parse_nft_tables(listed).len(), 6);
        assert_eq!(
            kube_proxy_nft_tables(listed),
            [("ip".to_owned(), "kube-proxy".to_owned()), ("ip6".to_owned(), "kube-proxy".to_owned())]
        );
        assert_eq!(kube_proxy_nft_tables(""), []);
    }

    #[test]
    fn kube_proxy_tools_prefer_both_backends_then_plain_and_name_what_is_missing() {
        let with = |names: &'static [&'static str]| {
            move |n: &str| names.contains(&n).then(|| PathBuf::from(format!("/usr/sbin/{n}")))
        };
        let both = with(&[
            "iptables-nft-save",
            "iptables-nft-restore",
            "iptables-legacy-save",
            "iptables-legacy-restore",
            "iptables-save",
            "iptables-restore",
        ]);
        let names: Vec<String> =
            choose_iptables("iptables", both).expect("found").into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["iptables-nft", "iptables-legacy"]);
        let plain = with(&["ip6tables-save", "ip6tables-restore"]);
        let tools = choose_iptables("ip6tables", plain).expect("found");
        assert_eq!(
            tools,
            [IptablesTool {
                name: "ip6tables".into(),
                save: "/usr/sbin/ip6tables-save".into(),
                restore: "/usr/sbin/ip6tables-restore".into()
            }]
        );
        // A save tool without its restore tool is of no use.
        let half = with(&["iptables-nft-save", "iptables-save"]);
        let err = choose_iptables("iptables", half).expect_err("missing");
        assert!(err.contains("iptables-save and iptables-restore"), "{err}");

        let empty = std::env::temp_dir().join(format!("lb-kube-proxy-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).expect("temp dir");
        let missing = Tools::discover(Some(empty.as_os_str())).expect_err("nothing in PATH");
        let message = missing.to_string();
        let _ = std::fs::remove_dir(&empty);
        for expected in ["iptables-save", "ip6tables-save", "nft is not in PATH", "iptables and nftables"] {
            assert!(message.contains(expected), "{message}");
        }
        assert!(matches!(Tools::discover(None), Err(Error::ToolsMissing(m)) if m.len() == 3));
    }

    #[test]
    fn kube_proxy_removed_lines_say_what_went() {
        let lines = [
            Removed::Rule {
                tool: "iptables-nft".into(),
                table: "nat".into(),
                rule: rule("OUTPUT -j KUBE-SERVICES", Some("KUBE-SERVICES")),
            },
            Removed::Chain {
                tool: "ip6tables-legacy".into(),
                table: "filter".into(),
                chain: "KUBE-FORWARD".into(),
            },
            Removed::NftTable { family: "ip6".into(), name: "kube-proxy".into() },
        ]
        .map(|r| r.to_string());
        assert_eq!(
            lines,
            [
                "iptables-nft nat rule: -A OUTPUT -j KUBE-SERVICES",
                "ip6tables-legacy filter chain KUBE-FORWARD",
                "nftables table ip6 kube-proxy",
            ]
        );
    }
}
