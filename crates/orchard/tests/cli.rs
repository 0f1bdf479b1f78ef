//! The `orchard` binary as a user runs it: real models, real files, exit codes and messages.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn model(name: &str) -> PathBuf {
    let dir = std::env::var_os("ORCHARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

fn orchard(args: &[&str]) -> Output {
    orchard_env(args, &[])
}

fn orchard_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orchard"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("running orchard")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn inspect_lists_every_tensor_with_type_shape_and_offset() {
    let o = orchard(&["inspect", model(SMOL).to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("272 tensors"), "{out}");
    assert!(
        out.contains("token_embd.weight") && out.contains("q8_0") && out.contains("[576, 49152]")
    );
    let rows = out
        .lines()
        .filter(|l| l.contains("blk.") || l.contains("token_embd") || l.contains("output_norm"))
        .count();
    assert_eq!(rows, 272);
}

#[test]
fn tokenize_jsonl_matches_llama_cpp_for_both_models() {
    for (m, dir) in [(SMOL, "smollm2-135m-q4_1"), (GEMMA, "gemma3-270m-q4_k_m")] {
        let cases = std::fs::read_to_string(
            root()
                .join("testdata/parity")
                .join(dir)
                .join("tokens.jsonl"),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_orchard"))
            .args(["tokenize", "-m", model(m).to_str().unwrap(), "--jsonl"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(cases.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success());
        let got: Vec<serde_json::Value> = stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want: Vec<serde_json::Value> = cases
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g["ids"], w["ids"], "{m}: {:?}", w["text"]);
        }
    }
}

#[test]
fn run_greedy_prints_sensible_english_and_its_speed() {
    let o = orchard(&[
        "run",
        "-m",
        model(SMOL).to_str().unwrap(),
        "-p",
        "The capital of France is",
        "-n",
        "12",
        "--temp",
        "0",
        "-t",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("prompt:") && err.contains("generation:") && err.contains("t/s"),
        "{err}"
    );
}

#[test]
fn run_json_is_deterministic_at_temperature_zero() {
    let m = model(SMOL);
    let args = [
        "run",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "Once upon a time",
        "-n",
        "16",
        "--temp",
        "0",
        "--json",
    ];
    let a: serde_json::Value = serde_json::from_str(&stdout(&orchard(&args))).unwrap();
    let b: serde_json::Value = serde_json::from_str(&stdout(&orchard(&args))).unwrap();
    assert_eq!(a["completion_ids"], b["completion_ids"]);
    assert_eq!(a["completion_ids"].as_array().unwrap().len(), 16);
    assert!(a["prompt_ids"].as_array().unwrap().len() >= 4);
    assert!(a["timings"]["gen_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn chat_answers_a_question_with_the_instruct_model() {
    let o = orchard(&[
        "run",
        "-m",
        model(SMOL).to_str().unwrap(),
        "--chat",
        "-p",
        "What is the capital of Germany?",
        "-n",
        "16",
        "--temp",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Berlin"), "{}", stdout(&o));
}

/// The Gemma 3 270M file carries no chat template: `--chat` falls back to the built-in Gemma
/// format (`<start_of_turn>user ... <end_of_turn>\n<start_of_turn>model\n`, BOS added once).
/// That checkpoint is the pretrained (not instruction-tuned) model, so its answer is not asserted.
#[test]
fn gemma_chat_uses_the_builtin_gemma_template() {
    let o = orchard(&[
        "run",
        "-m",
        model(GEMMA).to_str().unwrap(),
        "--chat",
        "-p",
        "Hi",
        "-n",
        "2",
        "--temp",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ids: Vec<u64> = v["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    // <bos> <start_of_turn> "user" "\n" ... <end_of_turn> "\n" <start_of_turn> "model" "\n"
    assert_eq!(&ids[..4], &[2, 105, 2364, 107]);
    assert_eq!(&ids[ids.len() - 5..], &[106, 107, 105, 4368, 107]);
    assert_eq!(
        ids.iter().filter(|&&t| t == 2).count(),
        1,
        "exactly one BOS"
    );
}

#[test]
fn logits_prints_the_parity_format() {
    let o = orchard(&[
        "logits",
        "-m",
        model(SMOL).to_str().unwrap(),
        "--ids",
        "1,2,3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ids"], serde_json::json!([1, 2, 3]));
    assert_eq!(v["top5"].as_array().unwrap().len(), 3);
    assert_eq!(v["top5"][0].as_array().unwrap().len(), 5);
}

/// `orchard perplexity` on the reference corpus agrees with llama-perplexity within 1%.
#[test]
fn perplexity_matches_llama_cpp_within_one_percent() {
    for (m, reference) in [(SMOL, 21.0815f64), (GEMMA, 23.1931)] {
        let corpus = root().join("testdata/parity/corpus.txt");
        let o = orchard(&[
            "perplexity",
            "-m",
            model(m).to_str().unwrap(),
            "-f",
            corpus.to_str().unwrap(),
            "-c",
            "512",
            "--chunks",
            "20",
            "-t",
            "2",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        let ppl: f64 = out
            .split("PPL = ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no estimate in {out}"));
        eprintln!("{m}: PPL {ppl} (llama.cpp {reference})");
        assert!(
            (ppl / reference - 1.0).abs() < 0.01,
            "{m}: PPL {ppl} vs llama.cpp {reference}"
        );
    }
}

/// The PPL estimate `orchard perplexity` prints.
fn ppl_of(o: &Output) -> f64 {
    let out = stdout(o);
    out.split("PPL = ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no estimate in {out}"))
}

/// Quantized KV caches on the reference corpus (issue 7), through the whole CLI path (flags,
/// context, quantized attention). With K smoothing off (`ORCHARD_KV_SMOOTH_K=0`) every cache
/// type gives llama-perplexity's figure: `llama-perplexity -m MODEL -f corpus.txt -c 512
/// --chunks 2 -t 2 -fa on -ctk T -ctv T` (llama.cpp 0.25.3, the build of testdata/parity, or on
/// AVX2-only CPUs its AVX2 build: testdata/parity-avx2/README.md); llama.cpp's q4_0 misses the
/// issue's 3 % (+4.1 % SmolLM2, +9.6 % Gemma). With smoothing (the default) q8_0 costs under
/// 0.5 % over the f16 cache and q4_0 under 3 %.
#[test]
fn quantized_kv_cache_perplexity_matches_llama_cpp_and_smoothed_k_stays_close_to_f16() {
    let corpus = root().join("testdata/parity/corpus.txt");
    let cases = if avx2_build_arithmetic() {
        [
            (
                SMOL,
                [("f16", 17.9956), ("q8_0", 18.0317), ("q4_0", 19.0682)],
            ),
            (
                GEMMA,
                [("f16", 18.3332), ("q8_0", 18.3400), ("q4_0", 20.0823)],
            ),
        ]
    } else {
        [
            (
                SMOL,
                [("f16", 18.0898), ("q8_0", 18.0226), ("q4_0", 18.8332)],
            ),
            (
                GEMMA,
                [("f16", 18.3191), ("q8_0", 18.3400), ("q4_0", 20.0823)],
            ),
        ]
    };
    let ppl = |m: &str, t: &str, smooth: &str| {
        let o = orchard_env(
            &[
                "perplexity",
                "-m",
                model(m).to_str().unwrap(),
                "-f",
                corpus.to_str().unwrap(),
                "-c",
                "512",
                "--chunks",
                "2",
                "-t",
                "2",
                "-ctk",
                t,
                "-ctv",
                t,
            ],
            &[("ORCHARD_KV_SMOOTH_K", smooth)],
        );
        assert!(o.status.success(), "{m} -ctk {t}: {}", stderr(&o));
        ppl_of(&o)
    };
    for (m, refs) in cases {
        let mut plain_f16 = 0.0;
        for (t, reference) in refs {
            let p = ppl(m, t, "0");
            if t == "f16" {
                plain_f16 = p;
            }
            eprintln!("{m} -ctk/-ctv {t}, no smoothing: PPL {p:.4} (llama.cpp {reference})");
            assert!(
                (p / reference - 1.0).abs() < 5e-4,
                "{m} -ctk/-ctv {t}: PPL {p} vs llama.cpp {reference}"
            );
        }
        let f16 = ppl(m, "f16", "1");
        assert!(
            (f16 / plain_f16 - 1.0).abs() < 5e-4,
            "smoothing touched f16"
        );
        for (t, bound) in [("q8_0", 0.005), ("q4_0", 0.03)] {
            let p = ppl(m, t, "1");
            let change = p / f16 - 1.0;
            eprintln!(
                "{m} -ctk/-ctv {t}, smoothed K: PPL {p:.4} ({:+.2} % of f16)",
                100.0 * change
            );
            // A bound on the loss: over two chunks the smoothed q8_0 cache even comes out
            // below f16 (-0.65 % SmolLM2), which is noise, not a defect.
            assert!(
                change < bound && change > -0.02,
                "{m}: {t} KV changes PPL by {change:+.4}"
            );
        }
    }
}

#[test]
fn an_unknown_cache_type_is_refused_with_the_allowed_ones() {
    let o = orchard(&[
        "run",
        "-m",
        model(SMOL).to_str().unwrap(),
        "-p",
        "hi",
        "-ctk",
        "q4_K",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("q4_K") && err.contains("q8_0"), "{err}");
}

#[test]
fn missing_and_corrupt_files_give_one_clear_line() {
    let o = orchard(&["run", "-m", "/nonexistent/model.gguf", "-p", "hi"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.starts_with("error:") && err.contains("/nonexistent/model.gguf"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let o = orchard(&["inspect", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).starts_with("error:"), "{}", stderr(&o));
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    let mut w = orchard_gguf::GgufWriter::new();
    w.add_metadata(
        "general.architecture",
        orchard_gguf::Value::String("mamba".into()),
    );
    w.add_tensor(
        "token_embd.weight",
        vec![4, 4],
        orchard_core::DType::F32,
        vec![0u8; 64],
    )
    .unwrap();
    w.write_to_path(&path).unwrap();
    for cmd in [
        vec!["inspect", path.to_str().unwrap()],
        vec!["run", "-m", path.to_str().unwrap(), "-p", "hi"],
    ] {
        let o = orchard(&cmd);
        assert!(!o.status.success(), "{cmd:?} should fail");
        let err = stderr(&o);
        assert!(
            err.contains("mamba") && err.contains("not supported")
                || err.contains("unsupported architecture 'mamba'"),
            "{cmd:?}: {err}"
        );
    }
}

#[test]
fn bad_arguments_exit_non_zero() {
    let o = orchard(&["run", "-m", model(SMOL).to_str().unwrap()]);
    assert!(!o.status.success());
    let o = orchard(&[
        "run",
        "-m",
        model(SMOL).to_str().unwrap(),
        "-p",
        "x",
        "--top-p",
        "nan",
    ]);
    assert!(!o.status.success(), "NaN top-p must be refused");
}

/// Runs `orchard` with the SIMD kernels (default) and with `ORCHARD_FORCE_SCALAR=1`.
fn orchard_both(args: &[&str]) -> (Output, Output) {
    let simd = orchard(args);
    let scalar = Command::new(env!("CARGO_BIN_EXE_orchard"))
        .args(args)
        .env("ORCHARD_FORCE_SCALAR", "1")
        .output()
        .expect("running orchard");
    (simd, scalar)
}

/// Whether this CPU's SIMD path reproduces ggml's AVX2 build, whose `expf` polynomial and
/// reduction orders differ from the AVX-512 build that the scalar path and testdata/parity
/// follow (orchard-backend's `vec_math`): SiLU and softmax then differ in the last ulp (layer 0
/// of SmolLM2: 4.8e-7 after the GLU, 1.2e-7 after attention, every product equal), and the
/// activation quantization of the next layer turns that into logit changes of up to ~0.5
/// (llama.cpp's two builds differ as much: testdata/parity-avx2/README.md).
fn avx2_build_arithmetic() -> bool {
    orchard_quant::Tier::best() == orchard_quant::Tier::Avx2
}

#[test]
fn simd_kernels_give_the_scalar_paths_greedy_tokens_and_logits() {
    if avx2_build_arithmetic() {
        // The two paths compute two different ggml builds here; each kernel is still held to
        // its own scalar twin by orchard-quant's and orchard-backend's property tests.
        eprintln!("AVX2-only CPU: SIMD reproduces ggml's AVX2 build, scalar the AVX-512 build; not compared");
        return;
    }
    // 70+ tokens: the prompt takes the tiled attention and the 4-token matmul kernels.
    let prompt = "The history of the city begins with a small fishing village on the river. \
                  Over the centuries merchants arrived, a bridge was built, markets grew, and \
                  the town became a center of trade for the whole region, known for its wool, \
                  its bells and its long winter festival. Today the old harbour is a museum, \
                  the bridge carries trams, and visitors come every December to hear the bells.";
    for name in [SMOL, GEMMA] {
        let m = model(name);
        let m = m.to_str().unwrap();
        let (a, b) = orchard_both(&["run", "-m", m, "-p", prompt, "-n", "24", "--temp", "0"]);
        assert!(a.status.success() && b.status.success(), "{}", stderr(&b));
        assert_eq!(
            stdout(&a),
            stdout(&b),
            "{name}: greedy text differs SIMD vs scalar"
        );
        let (a, b) = orchard_both(&["logits", "-m", m, "-p", prompt, "--top-k", "3"]);
        assert!(a.status.success() && b.status.success(), "{}", stderr(&b));
        let top = |o: &Output| -> Vec<(u64, f64)> {
            let v: serde_json::Value = serde_json::from_str(stdout(o).trim()).unwrap();
            v["top5"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|pos| pos.as_array().unwrap().clone())
                .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
                .collect()
        };
        let (ta, tb) = (top(&a), top(&b));
        assert_eq!(ta.len(), tb.len());
        assert!(ta.len() >= 3 * 64, "{name}: {} logits", ta.len());
        for ((ia, va), (ib, vb)) in ta.iter().zip(&tb) {
            assert_eq!(ia, ib, "{name}: top tokens differ");
            assert!(
                (va - vb).abs() <= 1e-3 * va.abs().max(1.0),
                "{name}: logit {va} vs {vb}"
            );
        }
    }
}
