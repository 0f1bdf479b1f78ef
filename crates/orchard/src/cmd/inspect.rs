//! `orchard inspect MODEL`: metadata and tensor table, in the manner of gguf-dump.

use anyhow::{Context, Result};
use orchard_gguf::{describe_value, GgufFile};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file.
    model: PathBuf,
    /// How many items of each array to show.
    #[arg(long, default_value_t = 8)]
    array_items: usize,
}

pub fn main(a: Args) -> Result<()> {
    let f = GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    println!(
        "GGUF v{}  alignment {}  data offset {}  file {} bytes",
        f.version(),
        f.alignment(),
        f.data_offset(),
        f.file_len()
    );
    println!("\n{} metadata entries:", f.metadata().len());
    for (k, v) in f.metadata().iter() {
        println!("  {k:<48} {}", describe_value(v, a.array_items));
    }
    println!("\n{} tensors:", f.tensors().len());
    println!(
        "  {:>4}  {:<40} {:<6} {:<24} {:>12} {:>12}",
        "#", "name", "type", "shape", "offset", "bytes"
    );
    for (i, t) in f.tensors().iter().enumerate() {
        let shape = format!("{:?}", t.dims);
        println!(
            "  {i:>4}  {:<40} {:<6} {:<24} {:>12} {:>12}",
            t.name,
            t.dtype.name(),
            shape,
            t.offset,
            t.n_bytes
        );
    }
    let total: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    println!(
        "\n{} bytes of tensor data ({:.1} MiB)",
        total,
        total as f64 / (1 << 20) as f64
    );
    match f.architecture() {
        Ok(arch) => match orchard_models::ARCHITECTURES
            .iter()
            .find(|(n, _)| *n == arch)
        {
            Some(_) => println!("architecture '{arch}': supported"),
            None => anyhow::bail!(
                "architecture '{arch}' is not supported by this build (supported: {})",
                orchard_models::ARCHITECTURES
                    .iter()
                    .map(|a| a.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        Err(e) => println!("no architecture: {e}"),
    }
    Ok(())
}
