//! One module per command; each is a thin function over the library modules.
pub mod inspect;
pub mod plan;
pub mod run;

use std::path::Path;

use crate::datapath::loader;

pub fn cleanup(bpffs: &Path) -> anyhow::Result<()> {
    let removed = loader::cleanup(bpffs)?;
    if removed.is_empty() {
        println!("nothing to remove under {}", bpffs.display());
    }
    for path in removed {
        println!("removed {}", path.display());
    }
    Ok(())
}

/// A table in the style every command prints.
pub fn new_table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(header.iter().copied());
    table
}
