//! `orchard plan`: clap arguments with llama.cpp's flag names and the command's entry point, so
//! the `orchard` binary wires it with one line.

use crate::{
    available_memory, plan_with, refusal_message, AvailableMemory, PlanRequest, CACHE_TYPES,
};
use orchard_core::DType;
use std::path::PathBuf;

/// Arguments of `orchard plan`. llama.cpp spells some flags with one dash and several letters
/// (`-ngl`, `-np`, `-ub`, `-ctk`, `-ctv`); clap cannot, so pass the command line through
/// [`normalize_llama_flags`] first (the long forms and `--ngl`-style aliases work as is).
#[derive(clap::Args, Debug, Clone)]
pub struct PlanArgs {
    /// The GGUF model file.
    #[arg(short = 'm', long)]
    pub model: PathBuf,
    /// Context size in tokens (0: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub ctx_size: usize,
    /// Tokens per decode call.
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    pub batch_size: usize,
    /// Tokens per forward pass (rows of the activation buffers).
    #[arg(long = "ubatch-size", alias = "ub", default_value_t = 512)]
    pub ubatch_size: usize,
    /// Sequences decoded in parallel.
    #[arg(long = "parallel", alias = "np", default_value_t = 1)]
    pub parallel: usize,
    /// Layers on the GPU: the last N repeating layers, and the output layer when N > n_layer.
    #[arg(long = "n-gpu-layers", aliases = ["ngl", "gpu-layers"], default_value_t = 0)]
    pub n_gpu_layers: usize,
    /// KV cache type of K: f16, q8_0, q4_0 (also f32, bf16, q4_1, q5_0, q5_1, iq4_nl).
    #[arg(long = "cache-type-k", alias = "ctk", default_value = "f16", value_parser = parse_cache_type)]
    pub cache_type_k: DType,
    /// KV cache type of V.
    #[arg(long = "cache-type-v", alias = "ctv", default_value = "f16", value_parser = parse_cache_type)]
    pub cache_type_v: DType,
    /// GPU memory to plan against (e.g. 24GiB); without it the GPU column is not checked.
    #[arg(long = "gpu-memory", value_parser = parse_bytes)]
    pub gpu_memory: Option<u64>,
    /// Plan against this much CPU memory instead of measuring it (planning for another machine).
    #[arg(long = "memory", value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Find the largest context (and with a GPU the most layers) that fits, and plan that.
    #[arg(long)]
    pub fit: bool,
}

impl PlanArgs {
    pub fn to_request(&self) -> PlanRequest {
        PlanRequest {
            n_ctx: self.ctx_size,
            n_batch: self.batch_size,
            n_ubatch: self.ubatch_size,
            n_parallel: self.parallel,
            n_gpu_layers: self.n_gpu_layers,
            cache_type_k: self.cache_type_k,
            cache_type_v: self.cache_type_v,
            gpu_memory_bytes: self.gpu_memory,
            ..PlanRequest::default()
        }
    }
}

/// Parses a KV cache type name (`f16`, `q8_0`, ...).
pub fn parse_cache_type(s: &str) -> Result<DType, String> {
    DType::from_name(s)
        .filter(|t| CACHE_TYPES.contains(t))
        .ok_or_else(|| {
            format!(
                "unknown KV cache type '{s}' (allowed: {})",
                CACHE_TYPES.map(|t| t.name()).join(", ")
            )
        })
}

/// Parses a byte count: a plain number, or one with a K/M/G/T suffix (powers of 1024; `GiB`,
/// `GB` and `G` all mean 2^30).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a byte count"))?;
    let shift = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches(['b', 'i'])
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("'{s}': unknown unit (use K, M, G or T)")),
    };
    let bytes = v * (1u64 << shift) as f64;
    if !(0.0..1.8e19).contains(&bytes) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(bytes as u64)
}

/// Rewrites llama.cpp's one-dash multi-letter flags (`-ngl 99`, `-np=4`) to their long forms so
/// that clap can parse them. Arguments after `--` are left alone.
pub fn normalize_llama_flags<I, S>(args: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    const MAP: [(&str, &str); 9] = [
        ("-ngl", "--n-gpu-layers"),
        ("-np", "--parallel"),
        ("-ub", "--ubatch-size"),
        ("-ctk", "--cache-type-k"),
        ("-ctv", "--cache-type-v"),
        ("-fa", "--flash-attn"),
        ("-ngld", "--n-gpu-layers-draft"),
        ("-nkvo", "--no-kv-offload"),
        ("-cnv", "--conversation"),
    ];
    let mut rest = false;
    args.into_iter()
        .map(Into::into)
        .map(|a: String| {
            if rest {
                return a;
            }
            if a == "--" {
                rest = true;
                return a;
            }
            let (flag, value) = match a.split_once('=') {
                Some((f, v)) => (f, Some(v)),
                None => (a.as_str(), None),
            };
            match MAP.iter().find(|(short, _)| *short == flag) {
                Some((_, long)) => match value {
                    Some(v) => format!("{long}={v}"),
                    None => long.to_string(),
                },
                None => a,
            }
        })
        .collect()
}

/// `orchard plan`: prints the plan table (with `--fit`, of the fitted flags). Fails, after
/// printing, when the plan does not fit, so `orchard plan ... && orchard serve ...` works.
pub fn cli_main(args: PlanArgs) -> anyhow::Result<()> {
    let req = args.to_request();
    let avail = match args.memory {
        Some(bytes) => {
            let mut a = AvailableMemory::fixed(bytes, req.gpu_memory_bytes);
            a.cpu_source = "--memory".into();
            a.sources[0].name = "--memory".into();
            a
        }
        None => available_memory(req.gpu_memory_bytes),
    };
    let p = plan_with(&args.model, &req, &avail)?;
    if args.fit {
        let choice = p.fit_context()?;
        println!(
            "fit: -c {} -ngl {} (largest context that fits{})",
            choice.n_ctx,
            choice.n_gpu_layers,
            if p.available_gpu_bytes.is_some() {
                ", after the most layers on the GPU"
            } else {
                ""
            }
        );
        print!("{}", choice.plan.render_table());
        return Ok(());
    }
    print!("{}", p.render_table());
    if !p.fits().fits {
        anyhow::bail!("{}", refusal_message(&p));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("24GiB"), Ok(24 << 30));
        assert_eq!(parse_bytes("24G"), Ok(24 << 30));
        assert_eq!(parse_bytes("1.5 MB"), Ok(3 << 19));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("-3G").is_err());
    }

    #[test]
    fn cache_types() {
        assert_eq!(parse_cache_type("q8_0"), Ok(DType::Q8_0));
        assert_eq!(parse_cache_type("F16"), Ok(DType::F16));
        assert!(parse_cache_type("q4_K").unwrap_err().contains("q8_0"));
    }

    #[test]
    fn llama_flags_become_long_flags() {
        let out = normalize_llama_flags([
            "plan", "-m", "x.gguf", "-ngl", "99", "-np=4", "-ctk", "q8_0", "-c", "8", "--", "-ngl",
        ]);
        assert_eq!(
            out,
            [
                "plan",
                "-m",
                "x.gguf",
                "--n-gpu-layers",
                "99",
                "--parallel=4",
                "--cache-type-k",
                "q8_0",
                "-c",
                "8",
                "--",
                "-ngl"
            ]
        );
    }

    #[test]
    fn plan_args_parse_with_clap() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            plan: PlanArgs,
        }
        let argv = normalize_llama_flags([
            "orchard",
            "-m",
            "m.gguf",
            "-c",
            "32768",
            "-ngl",
            "20",
            "-ctk",
            "q8_0",
            "--ctv",
            "q4_0",
            "-np",
            "2",
            "--gpu-memory",
            "24GiB",
            "--fit",
        ]);
        let a = Cli::try_parse_from(argv).unwrap().plan;
        let r = a.to_request();
        assert_eq!((r.n_ctx, r.n_gpu_layers, r.n_parallel), (32768, 20, 2));
        assert_eq!((r.cache_type_k, r.cache_type_v), (DType::Q8_0, DType::Q4_0));
        assert_eq!(r.gpu_memory_bytes, Some(24 << 30));
        assert!(a.fit);
        assert!(Cli::try_parse_from(["orchard", "-m", "m", "--ctk", "q4_K"]).is_err());
    }
}
