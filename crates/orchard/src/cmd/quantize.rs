//! `orchard quantize IN OUT TYPE`: rewrites a GGUF with its weight matrices requantized, choosing
//! per-tensor types the way llama.cpp's `llama-quantize` does for dense llama-family models
//! (K-quant mixes such as Q4_K_M give attn_v/ffn_down more bits on some layers; rows that are
//! not a whole number of K-quant blocks fall back to a legacy type). Metadata is copied as is.

use anyhow::{Context, Result};
use orchard_core::DType;
use orchard_gguf::{GgufFile, GgufWriter, Value};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    input: PathBuf,
    output: PathBuf,
    /// F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q4_K_M, Q5_K_M, Q4_K_S.
    ftype: String,
    #[arg(short = 't', long, default_value_t = 0)]
    threads: usize,
}

/// llama.cpp's `LLAMA_FTYPE_*` numbers for `general.file_type`.
fn file_type_id(ftype: &str) -> Option<u32> {
    Some(match ftype {
        "F32" => 0,
        "F16" => 1,
        "Q4_0" => 2,
        "Q4_1" => 3,
        "Q8_0" => 7,
        "Q5_0" => 8,
        "Q5_1" => 9,
        "Q2_K" => 10,
        "Q3_K" => 12,
        "Q4_K_S" => 14,
        "Q4_K" | "Q4_K_M" => 15,
        "Q5_K" | "Q5_K_M" => 17,
        "Q6_K" => 18,
        "BF16" => 32,
        _ => return None,
    })
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third between.
fn use_more_bits(il: usize, n_layer: usize) -> bool {
    il < n_layer / 8
        || il >= 7 * n_layer / 8
        || (il as isize - (n_layer / 8) as isize).rem_euclid(3) == 2
}

/// The type for one tensor, or `None` to keep it as it is (norms, biases, 1-D tensors).
fn choose(ftype: &str, name: &str, dims: &[u64], n_layer: usize) -> Option<DType> {
    if dims.len() < 2
        || !name.ends_with(".weight")
        || name.contains("_norm")
        || name.starts_with("rope_")
    {
        return None;
    }
    let il = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next()?.parse::<usize>().ok());
    let mixed = matches!(ftype, "Q4_K_M" | "Q5_K_M" | "Q4_K_S");
    let base = match ftype {
        "Q4_K_M" | "Q4_K_S" => DType::Q4_K,
        "Q5_K_M" => DType::Q5_K,
        other => DType::from_name(other)?,
    };
    let mut t = base;
    // Small quant types get a Q6_K output layer, as llama-quantize gives them.
    let low_bits = matches!(
        base,
        DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q2_K
            | DType::Q3_K
            | DType::Q4_K
            | DType::Q5_K
    );
    if (mixed || low_bits) && name == "output.weight" {
        t = DType::Q6_K;
    }
    if let (true, Some(il)) = (ftype != "Q4_K_S" && mixed, il) {
        if (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
            && use_more_bits(il, n_layer)
        {
            t = DType::Q6_K;
        }
    }
    // Rows that are not whole K-quant blocks fall back as llama-quantize does.
    let row = dims[0] as usize;
    if !row.is_multiple_of(t.block_size()) {
        t = match t {
            DType::Q2_K | DType::Q3_K | DType::Q4_K => DType::Q5_0,
            DType::Q5_K => DType::Q5_1,
            DType::Q6_K => DType::Q8_0,
            _ => DType::F16,
        };
    }
    if !row.is_multiple_of(t.block_size()) {
        t = DType::F16;
    }
    Some(t)
}

pub fn main(a: Args) -> Result<()> {
    orchard_backend::init_threads(a.threads);
    let ftype = a.ftype.to_ascii_uppercase();
    let ftype_id =
        file_type_id(&ftype).with_context(|| format!("unknown quantization type '{}'", a.ftype))?;
    let f = GgufFile::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?;
    let arch = f.architecture()?.to_string();
    let n_layer = f
        .metadata()
        .get_u32(&format!("{arch}.block_count"))?
        .unwrap_or(0) as usize;
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata().iter() {
        if k != "general.file_type" && k != "general.alignment" {
            w.add_metadata(k, v.clone());
        }
    }
    w.add_metadata("general.file_type", Value::U32(ftype_id));
    let (mut in_bytes, mut out_bytes) = (0u64, 0u64);
    for t in f.tensors() {
        let data = f.tensor_data(t);
        in_bytes += data.len() as u64;
        let target = choose(&ftype, &t.name, &t.dims, n_layer).filter(|&d| d != t.dtype);
        let bytes = match target {
            None => data.to_vec(),
            Some(to) => requantize(t.dtype, to, t.row_len() as usize, t.rows() as usize, data)
                .with_context(|| format!("tensor {}", t.name))?,
        };
        out_bytes += bytes.len() as u64;
        w.add_tensor(
            t.name.clone(),
            t.dims.clone(),
            target.unwrap_or(t.dtype),
            bytes,
        )?;
    }
    w.write_to_path(&a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!(
        "{} -> {} ({}): {:.1} MiB -> {:.1} MiB",
        a.input.display(),
        a.output.display(),
        ftype,
        in_bytes as f64 / (1 << 20) as f64,
        out_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Dequantizes each row to f32 and quantizes it to `to` (rows in parallel).
fn requantize(from: DType, to: DType, row_len: usize, rows: usize, data: &[u8]) -> Result<Vec<u8>> {
    use rayon::prelude::*;
    let in_row = from.row_bytes(row_len as u64).context("ragged input row")? as usize;
    let out_row = to.row_bytes(row_len as u64).context("ragged output row")? as usize;
    let mut out = vec![0u8; out_row * rows];
    out.par_chunks_mut(out_row)
        .zip(data.par_chunks(in_row))
        .try_for_each(|(o, i)| -> Result<()> {
            let mut tmp = vec![0f32; row_len];
            orchard_quant::dequantize_row(from, i, &mut tmp)?;
            orchard_quant::quantize_row(to, &tmp, o)?;
            Ok(())
        })?;
    Ok(out)
}
