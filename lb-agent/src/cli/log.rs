//! `lb-agent log on|off|show`: switches the kernel programs' own log (aya-log) on for one
//! frontend's backend group, or off, at run time, through the pinned `LB_LOG` map. The running
//! agent prints the messages in its log (target `lb_ebpf`). Off by default. Logging stops by
//! itself when the group goes away: the Service port is removed, or its frontends change so that
//! it gets a new group id (the agent clears `LB_LOG`, so a recycled id never logs another
//! Service).
use std::path::Path;

use anyhow::{Context as _, bail};
use aya::maps::{Array, Map, MapData};
use clap::Subcommand;
use lb_common::map_names;

use crate::{
    kernel::maps::{LbMaps as _, PinnedMaps},
    layout::{names::ServiceLabel, state::FrontendKey},
    readback::explain::Target,
};

#[derive(Subcommand)]
pub enum Switch {
    /// Log every new connection or flow of this frontend's Service port (all its frontends of
    /// the same family and traffic scope), with its verdict.
    On {
        /// `ADDR:PORT/PROTO`, e.g. `10.96.0.10:80/TCP` or `[fd00::10]:53/UDP`.
        #[arg(long)]
        frontend: String,
    },
    /// Stop logging.
    Off,
    /// Which group is logged now.
    Show,
}

fn open(bpffs: &Path) -> anyhow::Result<Array<MapData, u32>> {
    let path = bpffs.join(map_names::LOG);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening {} (is the agent installed with this --bpffs?)", path.display()))?;
    Array::try_from(Map::Array(data)).context("LB_LOG is not an array")
}

pub fn log(switch: Switch, bpffs: &Path) -> anyhow::Result<()> {
    let mut map = open(bpffs)?;
    let state =
        PinnedMaps::open(bpffs).context("opening the pinned maps")?.read().context("reading the maps")?;
    let name = |group: u32| {
        state.services.get(&group).map_or_else(
            || format!("group {group}"),
            |n| format!("{} (group {group})", ServiceLabel::decode(n)),
        )
    };
    match switch {
        Switch::On { frontend } => {
            let target: Target = frontend.parse()?;
            let key = FrontendKey::new(target.addr.ip(), target.addr.port(), target.protocol);
            let Some(value) = state.frontends.get(&key) else {
                bail!("{frontend} is not a frontend (see `lb-agent inspect services`)");
            };
            map.set(0, value.group, 0).context("writing LB_LOG")?;
            println!(
                "logging new connections of {}: the agent prints them (target lb_ebpf)",
                name(value.group)
            );
        }
        Switch::Off => {
            map.set(0, 0, 0).context("writing LB_LOG")?;
            println!("kernel logging off");
        }
        Switch::Show => match map.get(&0, 0).context("reading LB_LOG")? {
            0 => println!("kernel logging off"),
            group => println!("logging new connections of {}", name(group)),
        },
    }
    Ok(())
}
