//! Loading the kernel programs, pinning their maps and links under `--bpffs`, and removing them.
//!
//! Pins make the datapath outlive the agent: the maps keep serving and the programs stay attached
//! while the agent restarts or upgrades. A new agent attaches its programs next to the old ones
//! (multi-attach), then removes the old links: there is no moment without a program.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::DevMapHash,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc,
        xdp::XdpLink,
    },
};
use lb_common::{capacity, map_names};

/// The kernel object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The embedded object, or an error when the build skipped it.
fn object() -> anyhow::Result<&'static [u8]> {
    if EBPF_OBJECT.is_empty() {
        bail!("this lb-agent was built with AYA_BUILD_SKIP=1 and carries no kernel programs");
    }
    Ok(EBPF_OBJECT)
}

/// Logs a loaded program's size (xlated bytes / 8 = instructions after the verifier's rewrites).
fn log_loaded(name: &str, info: Result<aya::programs::ProgramInfo, aya::programs::ProgramError>) {
    if let Ok(info) = info {
        tracing::debug!(
            program = name,
            instructions = info.size_translated().unwrap_or(0) / 8,
            verified_instructions = info.verified_instruction_count().unwrap_or(0),
            "program loaded"
        );
    }
}

/// The cgroup socket programs, by their function names in `lb-ebpf/src/sock.rs`.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "lb_connect4",
    "lb_sendmsg4",
    "lb_recvmsg4",
    "lb_getpeername4",
    "lb_connect6",
    "lb_sendmsg6",
    "lb_recvmsg6",
    "lb_getpeername6",
];

/// The TC programs (`lb-ebpf/src/tc.rs`), attached to every `--interfaces` device.
pub const TC_INGRESS: &str = "lb_tc_ingress";
pub const TC_EGRESS: &str = "lb_tc_egress";

/// The XDP program (`lb-ebpf/src/xdp.rs`), attached to every `--interfaces` device with `--xdp`.
pub const XDP: &str = "lb_xdp";
/// The devices the XDP program may send packets out of (not pinned: filled at attach time).
const XDP_PORTS: &str = "LB_XDP_PORTS";

/// `--xdp`: whether and how the XDP fast path is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpSetting {
    /// TC only.
    #[default]
    Off,
    /// In the driver (veth and most physical NICs); generic where the driver refuses.
    Native,
    /// In the stack, after the skb is made (any device; slower than native, still before TC).
    Generic,
}

const LINKS_DIR: &str = "links";

/// Map sizes chosen at load time (ignored for maps that are already pinned).
#[derive(Clone, Copy, Debug)]
pub struct Capacities {
    pub frontends: u32,
    pub slots: u32,
    pub backends: u32,
    pub revnat: u32,
    pub conntrack: u32,
    pub affinity: u32,
    pub source_ranges: u32,
    pub services: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            frontends: capacity::FRONTENDS,
            slots: capacity::SLOTS,
            backends: capacity::BACKENDS,
            revnat: capacity::REVNAT,
            conntrack: capacity::CONNTRACK,
            affinity: capacity::AFFINITY,
            source_ranges: capacity::SOURCE_RANGES,
            services: capacity::SERVICES,
        }
    }
}

/// Makes `dir` (on a bpf filesystem) ready for pins.
pub fn prepare_bpffs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let on_bpffs = crate::sys::fs::is_bpffs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    if !on_bpffs {
        bail!(
            "{} is not on a bpf filesystem; mount one first (`mount -t bpf bpf /sys/fs/bpf`)",
            dir.display()
        );
    }
    Ok(())
}

impl Capacities {
    /// The capacity each sized map is created with (the others keep the object's).
    pub fn by_map(&self) -> [(&'static str, u32); 11] {
        [
            (map_names::FRONTENDS_V4, self.frontends),
            (map_names::FRONTENDS_V6, self.frontends),
            (map_names::SLOTS, self.slots),
            (map_names::BACKENDS, self.backends),
            (map_names::REVNAT_V4, self.revnat),
            (map_names::REVNAT_V6, self.revnat),
            (map_names::CONNTRACK, self.conntrack),
            (map_names::AFFINITY, self.affinity),
            (map_names::SOURCE_RANGES, self.source_ranges),
            (map_names::SERVICES, self.services),
            (map_names::SERVICE_STATS, self.services),
        ]
    }
}

/// The embedded object, parsed (map definitions, for `kernel::migrate`).
pub fn parsed_object() -> anyhow::Result<aya_obj::Object> {
    aya_obj::Object::parse(object()?).context("parsing the embedded eBPF object")
}

/// Loads the programs; maps are created and pinned under `bpffs`, or adopted if already pinned.
/// A map named in `pin_paths` is pinned (or adopted) at that path instead: an upgrade creates
/// the maps whose shape changes beside the old ones (`kernel::migrate`).
pub fn load(bpffs: &Path, cap: Capacities, pin_paths: &[(&'static str, PathBuf)]) -> anyhow::Result<Ebpf> {
    let object = object()?;
    prepare_bpffs(bpffs)?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(bpffs);
    for (name, max) in cap.by_map() {
        loader.map_max_entries(name, max);
    }
    for (name, path) in pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(object).context("loading the eBPF object")
}

fn link_pin(bpffs: &Path, program: &str) -> PathBuf {
    bpffs.join(LINKS_DIR).join(program)
}

/// Where a new link is pinned before it replaces `link_pin` by rename (bpffs refuses names with
/// a dot, hence no `.new`).
fn staged_pin(bpffs: &Path, program: &str) -> PathBuf {
    bpffs.join(LINKS_DIR).join(format!("{program}_new"))
}

/// Removes `path`; true if it existed.
fn remove_if_present(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Links attached and pinned under their staged names (`links/<name>_new`), running beside the
/// links an earlier agent pinned until `commit` renames them over those. Dropped uncommitted
/// (a failed start), the staged pins are removed: the new programs detach and the earlier ones,
/// never touched, keep serving.
pub struct Staged {
    bpffs: PathBuf,
    names: Vec<String>,
}

impl Staged {
    pub fn new(bpffs: &Path) -> Self {
        Self { bpffs: bpffs.to_owned(), names: Vec::new() }
    }

    fn stage(&mut self, link: FdLink, name: &str) -> anyhow::Result<()> {
        let staged = staged_pin(&self.bpffs, name);
        remove_if_present(&staged)?;
        link.pin(&staged).with_context(|| format!("pinning link {}", staged.display()))?;
        self.names.push(name.to_owned());
        Ok(())
    }

    /// Puts the staged links whose pin name passes `select` in place of the earlier agent's (see
    /// `replace_pin`), in the order they were attached.
    pub fn commit(&mut self, select: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let (now, later): (Vec<String>, Vec<String>) = self.names.drain(..).partition(|n| select(n));
        self.names = later;
        for name in now {
            let (staged, pin) = (staged_pin(&self.bpffs, &name), link_pin(&self.bpffs, &name));
            std::fs::rename(&staged, &pin)
                .with_context(|| format!("renaming {} over {}", staged.display(), pin.display()))?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for name in &self.names {
            if let Err(e) = remove_if_present(&staged_pin(&self.bpffs, name)) {
                tracing::warn!(link = name, error = %e, "cannot remove a staged link");
            }
        }
    }
}

/// Attaches every socket program to `cgroup` and pins the links staged (`Staged::commit` puts
/// them in place of the links an earlier agent pinned, once everything is attached).
pub fn attach(ebpf: &mut Ebpf, cgroup: &Path, staged: &mut Staged) -> anyhow::Result<()> {
    let bpffs = staged.bpffs.clone();
    let bpffs = bpffs.as_path();
    let cgroup_fd = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    std::fs::create_dir_all(bpffs.join(LINKS_DIR)).context("creating the links directory")?;
    for name in SOCK_PROGRAMS {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} is missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a cgroup sock_addr program"))?;
        program.load().with_context(|| format!("verifier rejected {name}"))?;
        log_loaded(name, program.info());
        // A cgroup bpf_link takes no attach flags: links always run side by side (multi-attach),
        // which is what lets a new agent's program start before the old one is detached.
        let id = program
            .attach(&cgroup_fd, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
        let link: FdLink = program.take_link(id)?.try_into().context("cgroup link is not an fd link")?;
        staged.stage(link, name)?;
    }
    Ok(())
}

/// Pins `link` as `links/<name>`, replacing an earlier agent's link of that name. The new program
/// already runs: pin it beside the old one, then rename it over the old pin in one step, so the
/// old link loses its last reference and detaches, and at no moment is the program missing or the
/// pin absent (a crash here leaves at most a `_new` pin, which the next attach or `cleanup`
/// removes).
fn replace_pin(link: FdLink, bpffs: &Path, name: &str) -> anyhow::Result<()> {
    let pin = link_pin(bpffs, name);
    let staged = staged_pin(bpffs, name);
    remove_if_present(&staged)?;
    link.pin(&staged).with_context(|| format!("pinning link {}", staged.display()))?;
    std::fs::rename(&staged, &pin)
        .with_context(|| format!("renaming {} over {}", staged.display(), pin.display()))?;
    Ok(())
}

/// Attaches the TC programs to the ingress and egress of each interface (TCX links on Linux 6.6+,
/// staged as `links/tc-<interface>-<direction>` like the socket links; on older kernels a clsact
/// filter, which stays attached by itself).
pub fn attach_tc(ebpf: &mut Ebpf, interfaces: &[String], staged: &mut Staged) -> anyhow::Result<()> {
    let bpffs = staged.bpffs.clone();
    let bpffs = bpffs.as_path();
    if interfaces.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(bpffs.join(LINKS_DIR)).context("creating the links directory")?;
    for (name, direction, attach_type) in
        [(TC_INGRESS, "ingress", TcAttachType::Ingress), (TC_EGRESS, "egress", TcAttachType::Egress)]
    {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} is missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a TC classifier"))?;
        program.load().with_context(|| format!("verifier rejected {name}"))?;
        log_loaded(name, program.info());
        for interface in interfaces {
            let id = match program.attach(interface, attach_type) {
                Ok(id) => id,
                Err(first) => {
                    // Pre-TCX kernels need the clsact qdisc first.
                    if let Err(e) = tc::qdisc_add_clsact(interface) {
                        tracing::debug!(interface, error = %e, "clsact qdisc not added (it may exist)");
                    }
                    program.attach(interface, attach_type).with_context(|| {
                        format!("attaching {name} to {direction} of {interface} (first try: {first})")
                    })?
                }
            };
            let link = program.take_link(id)?;
            match FdLink::try_from(link) {
                // bpffs refuses dots in names (VLAN devices are called `eth0.100`).
                Ok(link) => staged.stage(link, &tc_pin_name(interface, direction))?,
                Err(_) => tracing::info!(interface, direction, "attached as a clsact filter (no TCX)"),
            }
        }
    }
    Ok(())
}

/// Prefix of the pins of the TC links on `--interfaces`: `links/tc-<interface>-<direction>`.
const TC_PIN_PREFIX: &str = "tc-";

/// The pin of the TC link on `direction` of `--interfaces` member `interface` (bpffs refuses
/// dots in names: VLAN devices are called `eth0.100`).
fn tc_pin_name(interface: &str, direction: &str) -> String {
    format!("{TC_PIN_PREFIX}{interface}-{direction}").replace('.', "_")
}

/// An earlier agent's TC links on interfaces no longer in `--interfaces` are removed: their
/// programs would otherwise run on, over maps this agent may have replaced, writing connection
/// state no gate slot was opened for. Call once this agent's links are committed.
pub fn remove_stale_tc_pins(bpffs: &Path, interfaces: &[String]) -> anyhow::Result<()> {
    let keep: std::collections::BTreeSet<String> = interfaces
        .iter()
        .flat_map(|i| ["ingress", "egress"].map(|direction| tc_pin_name(i, direction)))
        .collect();
    for name in link_pins(bpffs, TC_PIN_PREFIX)? {
        if !keep.contains(&name) && remove_link_pin(bpffs, &name)? {
            tracing::info!(
                link = name,
                "TC link of an earlier agent removed (its interface is not in --interfaces)"
            );
        }
    }
    Ok(())
}

/// Prefix of the pins of the TC links on pod interfaces (`--pod-interfaces`):
/// `links/pod-<interface>-<direction>`.
pub const POD_PIN_PREFIX: &str = "pod-";

/// The pins of the two TC links of pod interface `interface` (bpffs refuses dots in names).
pub fn pod_pin_names(interface: &str) -> [String; 2] {
    ["ingress", "egress"]
        .map(|direction| format!("{POD_PIN_PREFIX}{interface}-{direction}").replace('.', "_"))
}

/// Names of the link pins under `links/` that start with `prefix` (staged `_new` pins included),
/// sorted.
fn link_pins(bpffs: &Path, prefix: &str) -> anyhow::Result<Vec<String>> {
    let links = bpffs.join(LINKS_DIR);
    let entries = match std::fs::read_dir(&links) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", links.display())),
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Names of the pod-interface link pins under `links/` (staged `_new` pins included).
pub fn pod_pins(bpffs: &Path) -> anyhow::Result<Vec<String>> {
    link_pins(bpffs, POD_PIN_PREFIX)
}

/// Without `--pod-interfaces`: an earlier agent's pod-interface links are removed (their programs
/// would otherwise run on, over maps this agent may have replaced).
pub fn remove_pod_pins(bpffs: &Path) -> anyhow::Result<()> {
    for name in pod_pins(bpffs)? {
        if remove_link_pin(bpffs, &name)? {
            tracing::info!(
                link = name,
                "pod-interface link of an earlier agent removed (no --pod-interfaces)"
            );
        }
    }
    Ok(())
}

/// Removes the link pin `links/<name>` (detaching its program if the link still has a device);
/// true if it existed.
pub fn remove_link_pin(bpffs: &Path, name: &str) -> anyhow::Result<bool> {
    remove_if_present(&bpffs.join(LINKS_DIR).join(name))
}

/// Renames the link pin `links/<from>` to `links/<to>` (an interface renamed: its TCX link stays
/// on the device).
pub fn rename_link_pin(bpffs: &Path, from: &str, to: &str) -> anyhow::Result<()> {
    let links = bpffs.join(LINKS_DIR);
    std::fs::rename(links.join(from), links.join(to))
        .with_context(|| format!("renaming link pin {from} to {to}"))
}

/// Attaches the TC programs to the ingress (from the pod) and egress (towards the pod) of one pod
/// interface, pinned as `pod_pin_names`, replacing the links an earlier agent pinned there as
/// `attach_tc` does (the new link runs before the old one goes). Loads the programs if
/// `attach_tc` did not. Returns whether the links were pinned (false: attached as a clsact filter,
/// kernels without TCX).
pub fn attach_pod_tc(ebpf: &mut Ebpf, interface: &str, bpffs: &Path) -> anyhow::Result<bool> {
    std::fs::create_dir_all(bpffs.join(LINKS_DIR)).context("creating the links directory")?;
    let pins = pod_pin_names(interface);
    let mut pinned = true;
    for ((name, attach_type), pin) in
        [(TC_INGRESS, TcAttachType::Ingress), (TC_EGRESS, TcAttachType::Egress)].into_iter().zip(&pins)
    {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} is missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a TC classifier"))?;
        if program.fd().is_err() {
            program.load().with_context(|| format!("verifier rejected {name}"))?;
            log_loaded(name, program.info());
        }
        let id = match program.attach(interface, attach_type) {
            Ok(id) => id,
            Err(first) => {
                if let Err(e) = tc::qdisc_add_clsact(interface) {
                    tracing::debug!(interface, error = %e, "clsact qdisc not added (it may exist)");
                }
                program
                    .attach(interface, attach_type)
                    .with_context(|| format!("attaching {name} to {interface} (first try: {first})"))?
            }
        };
        match FdLink::try_from(program.take_link(id)?) {
            Ok(link) => replace_pin(link, bpffs, pin)?,
            Err(_) => pinned = false,
        }
    }
    Ok(pinned)
}

/// The pin of the XDP link of `interface` in `mode` (`native` or `generic`).
fn xdp_pin_name(interface: &str, mode: &str) -> String {
    format!("xdp-{interface}-{mode}").replace('.', "_")
}

/// Names of the XDP link pins under `links/` (staged `_new` pins included).
fn xdp_pins(bpffs: &Path) -> anyhow::Result<Vec<String>> {
    link_pins(bpffs, "xdp-")
}

/// Indexes of the interfaces the pinned XDP links are on, from the pins' names (for `trace`,
/// which fills its own `LB_XDP_PORTS` like the agent's). A name whose interface is gone, or was
/// renamed, is skipped.
pub fn xdp_interfaces(bpffs: &Path) -> anyhow::Result<Vec<u32>> {
    let mut indexes = Vec::new();
    for name in xdp_pins(bpffs)? {
        let Some(interface) = name
            .strip_prefix("xdp-")
            .and_then(|n| n.strip_suffix("-native").or_else(|| n.strip_suffix("-generic")))
        else {
            continue;
        };
        // The pin name has `_` for `.` (bpffs refuses dots): try the name with dots too.
        if let Some(index) = [interface.to_owned(), interface.replace('_', ".")]
            .iter()
            .find_map(|candidate| interface_index(candidate).ok())
        {
            indexes.push(index);
        }
    }
    Ok(indexes)
}

/// Attaches the XDP program to each interface (`--xdp native|generic`), pinned as
/// `links/xdp-<interface>-<mode>`. A link pinned by an earlier agent in the same mode is updated
/// to the new program in place (atomic); one in another mode, or on an interface no longer
/// listed, is removed (with `--xdp off`, all are). XDP is only a fast path in front of TC, which
/// does the same work, so a moment without it loses nothing. `native` falls back to generic, with
/// a warning, on a driver that refuses it.
///
/// On a veth, XDP cannot trust a frame's checksum state: the peer's stack leaves TCP and UDP
/// checksums for "hardware" to finish (`CHECKSUM_PARTIAL`, tx-checksumming is on by default) and
/// nothing finishes them once XDP has sent the frame on as a bare frame; nor can a veth take an
/// XDP transmit unless its peer has NAPI (GRO or XDP on). So on a veth, unless `on_veth` says the
/// peers are ready for it, XDP is attached to hand every packet to TC (pin `xdp-IF-MODE-tc`, not a
/// port of `LB_XDP_PORTS`, which the program also requires of the device a packet came in on):
/// TC carries those flows as without XDP. Returns the interfaces left to TC that way.
pub fn attach_xdp(
    ebpf: &mut Ebpf,
    interfaces: &[String],
    setting: XdpSetting,
    on_veth: bool,
    bpffs: &Path,
) -> anyhow::Result<Vec<String>> {
    let links = bpffs.join(LINKS_DIR);
    let mut stale = xdp_pins(bpffs)?;
    if setting == XdpSetting::Off || interfaces.is_empty() {
        for name in stale {
            remove_if_present(&links.join(&name))?;
            tracing::info!(link = name, "XDP link removed (--xdp off)");
        }
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(&links).context("creating the links directory")?;
    let indexes = interfaces.iter().map(|i| interface_index(i)).collect::<anyhow::Result<Vec<u32>>>()?;
    let program: &mut Xdp = ebpf
        .program_mut(XDP)
        .with_context(|| format!("program {XDP} is missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {XDP} is not an XDP program"))?;
    program.load().with_context(|| format!("verifier rejected {XDP}"))?;
    log_loaded(XDP, program.info());
    let modes: &[(XdpMode, &str)] = match setting {
        XdpSetting::Native => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
        _ => &[(XdpMode::Skb, "generic")],
    };
    // Devices XDP may redirect into: with `native`, only those in native mode (a driver that
    // refused native XDP usually cannot transmit XDP frames either).
    let mut ports = Vec::new();
    let mut to_tc = Vec::new();
    for (interface, &index) in interfaces.iter().zip(&indexes) {
        let trusted = on_veth || !crate::sys::net::driver(interface).is_ok_and(|d| d == "veth");
        if !trusted {
            tracing::warn!(
                interface,
                "a veth: XDP hands all its packets to TC (its peer may leave checksums unfinished, and a \
                 veth takes XDP transmits only with NAPI on its peer); --xdp-on-veth when the peers \
                 compute checksums (tx off) and have GRO or XDP on"
            );
            to_tc.push(interface.clone());
        }
        let label_of = |mode: &'static str| if trusted { mode.to_owned() } else { format!("{mode}-tc") };
        let mut attached = None;
        // A link an earlier agent pinned in an allowed mode is updated in place (atomic).
        for &(_, mode) in modes {
            let label = label_of(mode);
            let name = xdp_pin_name(interface, &label);
            let pin = links.join(&name);
            if !pin.exists() {
                continue;
            }
            let link: FdLink =
                PinnedLink::from_pin(&pin).with_context(|| format!("opening link pin {name}"))?.into();
            let update = XdpLink::try_from(link)
                .map_err(anyhow::Error::from)
                .and_then(|link| program.attach_to_link(link).map_err(anyhow::Error::from));
            match update {
                Ok(_) => {
                    attached = Some(mode);
                    stale.retain(|n| *n != name);
                    break;
                }
                Err(e) => {
                    tracing::warn!(interface, error = %e, "could not update the pinned XDP link; replacing it");
                    remove_if_present(&pin)?;
                }
            }
        }
        if attached.is_none() {
            // Any other XDP link of ours on this interface (another mode, or a staged `_new` pin
            // left by a crash) would refuse the new one: remove them first.
            for label in ["native", "generic", "native-tc", "generic-tc"] {
                let name = xdp_pin_name(interface, label);
                for pin in [links.join(&name), staged_pin(bpffs, &name)] {
                    if remove_if_present(&pin)? {
                        tracing::info!(interface, link = %pin.display(), "XDP link removed (mode change or crash leftover)");
                    }
                }
            }
            for &(mode, label) in modes {
                match program.attach_to_if_index(index, mode) {
                    Ok(id) => {
                        let name = xdp_pin_name(interface, &label_of(label));
                        let link = FdLink::try_from(program.take_link(id)?)
                            .context("the kernel attached XDP without a link (Linux 5.9+ expected)")?;
                        replace_pin(link, bpffs, &name)?;
                        stale.retain(|n| *n != name);
                        attached = Some(label);
                        break;
                    }
                    Err(e) if mode == XdpMode::Driver => {
                        tracing::warn!(interface, error = %e, "native XDP refused; trying generic");
                    }
                    Err(e) => return Err(e).with_context(|| format!("attaching {XDP} to {interface}")),
                }
            }
        }
        let mode = attached.unwrap_or("none");
        if trusted && (setting == XdpSetting::Generic || mode == "native") {
            ports.push(index);
        }
        tracing::info!(interface, mode, to_tc = !trusted, "XDP attached");
    }
    // Filled after attaching: until then XDP redirects nothing and leaves those flows to TC.
    let mut map: DevMapHash<_> = ebpf
        .map_mut(XDP_PORTS)
        .with_context(|| format!("map {XDP_PORTS} is missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("map {XDP_PORTS} is not a DEVMAP_HASH"))?;
    for index in ports {
        map.insert(index, index, None, 0)
            .with_context(|| format!("adding ifindex {index} to {XDP_PORTS}"))?;
    }
    for name in stale {
        if remove_if_present(&links.join(&name))? {
            tracing::info!(link = name, "XDP link removed (interface no longer listed)");
        }
    }
    Ok(to_tc)
}

/// The index of `interface` in this network namespace.
pub fn interface_index(interface: &str) -> anyhow::Result<u32> {
    crate::sys::net::interface_index(interface)
        .with_context(|| format!("no interface {interface} in this network namespace"))
}

/// Removes everything the agent pinned under `bpffs` (detaching its programs). Returns what it
/// removed. Stop the agent first: a running agent keeps its own links alive.
pub fn cleanup(bpffs: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let links = bpffs.join(LINKS_DIR);
    // Every pin under links/ is one of ours (socket links, TC links, staged `_new` pins).
    let mut link_pins: Vec<PathBuf> = match std::fs::read_dir(&links) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", links.display())),
    };
    link_pins.sort();
    let names = link_pins.into_iter().chain(map_names::ALL.iter().map(|m| bpffs.join(m)));
    for path in names {
        if remove_if_present(&path)? {
            removed.push(path);
        }
    }
    for dir in [&links, &bpffs.to_path_buf()] {
        match std::fs::remove_dir(dir) {
            Ok(()) => removed.push(dir.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "left the directory in place"),
        }
    }
    Ok(removed)
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 filesystem is mounted")
}

/// Loads the object against the maps an agent pinned under `bpffs`, for `lb-agent trace`: every
/// pinned map is adopted, none is created (a missing pin is an error, not a new empty map pinned
/// beside the agent's). Only the kernel-internal unpinned maps are new. Nothing is attached.
pub fn load_pinned(bpffs: &Path) -> anyhow::Result<Ebpf> {
    let object = object()?;
    if !bpffs.is_dir() {
        bail!("{} is not a directory: pass the --bpffs the agent pins its maps under", bpffs.display());
    }
    let missing: Vec<&str> = map_names::ALL.iter().copied().filter(|m| !bpffs.join(m).exists()).collect();
    if !missing.is_empty() {
        bail!(
            "{} holds no pinned {} (not the --bpffs of an agent of this version?)",
            bpffs.display(),
            missing.join(", ")
        );
    }
    EbpfLoader::new().default_map_pin_directory(bpffs).load(object).context("loading the eBPF object")
}
