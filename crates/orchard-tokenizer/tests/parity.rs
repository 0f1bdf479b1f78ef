//! Token-for-token agreement with llama.cpp on the reference cases in `testdata/parity`, the
//! round trip text -> ids -> text, and loading of every vocabulary we ship.

use std::path::{Path, PathBuf};
use std::time::Instant;

use orchard_gguf::GgufFile;
use orchard_tokenizer::{StreamDecoder, Tokenizer, TokenizerKind};
use serde::Deserialize;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models_dir() -> PathBuf {
    std::env::var_os("ORCHARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models"))
}

fn load(path: &Path) -> Tokenizer {
    let file = GgufFile::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("tokenizer {}: {e}", path.display()))
}

fn smollm() -> Tokenizer {
    load(&models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"))
}

fn gemma() -> Tokenizer {
    load(&models_dir().join("gemma-3-270m-q4_k_m.gguf"))
}

#[derive(Deserialize)]
struct Case {
    text: String,
    add_special: bool,
    parse_special: bool,
    ids: Vec<u32>,
}

fn cases(model_dir: &str) -> Vec<Case> {
    let path = workspace_root()
        .join("testdata/parity")
        .join(model_dir)
        .join("tokens.jsonl");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("tokens.jsonl line"))
        .collect()
}

fn check_parity(tok: &Tokenizer, model_dir: &str) {
    let cases = cases(model_dir);
    assert_eq!(cases.len(), 162, "expected the full reference set");
    let mut failures = Vec::new();
    for c in &cases {
        let got = tok.encode(&c.text, c.add_special, c.parse_special);
        if got != c.ids {
            failures.push(format!(
                "{:?} (add_special {}, parse_special {}):\n  want {:?}\n  got  {:?}",
                c.text, c.add_special, c.parse_special, c.ids, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// detokenize(tokenize(s)) == s for every case without special-token parsing. With
/// `skip_special` the BOS Gemma adds is dropped (and is a control token that renders as nothing
/// anyway); neither vocabulary cleans up spaces or prefixes a space, so the text must come
/// back byte for byte.
fn check_round_trip(tok: &Tokenizer, model_dir: &str) {
    let mut n = 0;
    for c in cases(model_dir).iter().filter(|c| !c.parse_special) {
        let ids = tok.encode(&c.text, c.add_special, false);
        assert_eq!(tok.decode(&ids, true), c.text, "round trip of {:?}", c.text);
        // Rendering special tokens too only adds the BOS text in front.
        let with_special = tok.decode(&ids, false);
        let bos_text = match (c.add_special && tok.add_bos(), tok.bos()) {
            (true, Some(bos)) => tok.token_text(bos).unwrap_or("").to_string(),
            _ => String::new(),
        };
        assert_eq!(with_special, format!("{bos_text}{}", c.text));
        n += 1;
    }
    assert!(n >= 160, "only {n} plain cases");
}

#[test]
fn smollm2_token_ids_match_llama_cpp() {
    check_parity(&smollm(), "smollm2-135m-q4_1");
}

#[test]
fn gemma3_token_ids_match_llama_cpp() {
    check_parity(&gemma(), "gemma3-270m-q4_k_m");
}

#[test]
fn smollm2_round_trip() {
    check_round_trip(&smollm(), "smollm2-135m-q4_1");
}

#[test]
fn gemma3_round_trip() {
    check_round_trip(&gemma(), "gemma3-270m-q4_k_m");
}

#[test]
fn smollm2_vocab_facts() {
    let tok = smollm();
    assert_eq!(
        tok.kind(),
        TokenizerKind::Bpe {
            pre: "smollm".into()
        }
    );
    assert_eq!(tok.n_vocab(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    // llama.cpp's hash-map walk meets <|endoftext|> before <|im_end|> in this vocabulary.
    assert_eq!(tok.eot(), Some(0));
    assert!(!tok.add_bos());
    assert!(!tok.add_eos());
    // EOS, the auto-detected EOT, <|endoftext|>/<|im_end|> by text, and <reponame> as FIM_REP.
    assert_eq!(tok.eog_ids(), vec![0, 2, 4]);
    assert!(tok.is_control(1));
    assert!(!tok.is_control(905));
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_text(905), Some("Ġworld"));
    assert_eq!(tok.token_to_piece(905, false), b" world");
    assert_eq!(tok.token_to_piece(2, false), b"");
    assert_eq!(tok.token_to_piece(2, true), b"<|im_end|>");
    assert_eq!(tok.token_to_piece(u32::MAX, true), b"");
}

#[test]
fn gemma3_vocab_facts() {
    let tok = gemma();
    assert_eq!(tok.kind(), TokenizerKind::Spm);
    assert_eq!(tok.n_vocab(), 262144);
    assert_eq!(tok.bos(), Some(2));
    assert_eq!(tok.eos(), Some(1));
    assert_eq!(tok.eot(), Some(106));
    assert!(tok.add_bos());
    assert!(!tok.add_eos());
    assert!(tok.is_eog(1) && tok.is_eog(106));
    // "</s>" is on llama.cpp's end-of-generation list by text, which also makes it control.
    assert_eq!(tok.token_id("</s>"), Some(212));
    assert!(tok.is_eog(212) && tok.is_control(212));
    assert_eq!(tok.eog_ids(), vec![1, 106, 212]);
    // Byte tokens and the ▁ spelling.
    assert_eq!(tok.token_to_piece(248, false), b"\n");
    let hello = tok.encode(" Hello", false, false);
    assert_eq!(tok.token_to_piece(hello[0], false), b" Hello");
    // Control-token text is plain text unless parsed.
    assert_eq!(tok.encode("<start_of_turn>", false, true), vec![105]);
    assert_ne!(tok.encode("<start_of_turn>", false, false), vec![105]);
}

#[test]
fn tiny_model_vocabularies_load() {
    let dir = workspace_root().join("testdata/parity/tiny");
    let smol = smollm();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("tiny dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
            continue;
        }
        let tok = load(&path);
        assert_eq!(tok.n_vocab(), 8192, "{}", path.display());
        assert_eq!(
            tok.kind(),
            TokenizerKind::Bpe {
                pre: "smollm".into()
            }
        );
        for id in [0u32, 1, 2, 100, 905, 8191] {
            assert_eq!(tok.token_text(id), smol.token_text(id));
        }
        // In the cut vocabulary the hash-map walk meets <|im_end|> first.
        assert_eq!(tok.eot(), Some(2), "{}", path.display());
        let ids = tok.encode("Hello world, it's 2024!", false, false);
        assert!(ids.iter().all(|&i| i < 8192));
        assert_eq!(tok.decode(&ids, true), "Hello world, it's 2024!");
        n += 1;
    }
    assert_eq!(n, 4);
}

/// The ids of `text`, pushed one at a time, must come back as `text`, and no chunk may ever
/// contain U+FFFD (a split character held back, not mangled).
fn stream(tok: &Tokenizer, text: &str) -> (Vec<String>, usize) {
    let ids = tok.encode(text, false, false);
    let mut dec = StreamDecoder::new(true);
    let mut chunks = Vec::new();
    let mut held_back = 0;
    for &id in &ids {
        let piece = tok.token_to_piece(id, false);
        let chunk = dec.push(tok, id);
        if std::str::from_utf8(&piece).is_err() {
            held_back += 1;
        }
        assert!(!chunk.contains('\u{FFFD}'), "{chunk:?}");
        chunks.push(chunk);
    }
    assert_eq!(dec.flush(), "");
    assert_eq!(chunks.concat(), text);
    (chunks, held_back)
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let text = "emoji 😀🎉👍🏽 family 👨\u{200d}👩\u{200d}👧 你好，世界 こんにちは";
    // SmolLM2 spells these with byte-level tokens that cut characters apart.
    let (_, held) = stream(&smollm(), text);
    assert!(
        held > 0,
        "no piece was a partial character, test would be vacuous"
    );
    // Gemma has whole-character tokens for most of it and <0xXX> bytes for the rest.
    stream(&gemma(), text);
    let (_, held) = stream(&gemma(), "\u{1F9A0}\u{1FAE8}\u{10348}");
    assert!(held > 0, "expected byte-fallback pieces");
}

#[test]
fn stream_decoder_flush_returns_incomplete_tail() {
    let tok = gemma();
    let b0 = tok.token_id("<0xF0>").expect("byte token");
    let b1 = tok.token_id("<0x9F>").expect("byte token");
    let mut dec = StreamDecoder::new(true);
    assert_eq!(dec.push(&tok, b0), "");
    assert_eq!(dec.push(&tok, b1), "");
    assert_eq!(dec.flush(), "\u{FFFD}");
    // A byte that can never start a character is replaced right away.
    let bad = tok.token_id("<0x80>").expect("byte token");
    let a = tok.token_id("a").expect("a");
    assert_eq!(dec.push(&tok, bad), "\u{FFFD}");
    assert_eq!(dec.push(&tok, a), "a");
}

/// Loading cost: not asserted (machines vary), printed for the report.
#[test]
fn load_time_is_reported() {
    for name in [
        "gemma-3-270m-q4_k_m.gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ] {
        let t = Instant::now();
        let file = GgufFile::open(models_dir().join(name)).expect("open");
        let t_open = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
        eprintln!(
            "{name}: GgufFile::open {:.1} ms, Tokenizer::from_gguf {:.1} ms ({} tokens)",
            t_open * 1e3,
            t.elapsed().as_secs_f64() * 1e3,
            tok.n_vocab()
        );
    }
}

/// Encode throughput on the whole reference corpus (run with `--release --ignored
/// --nocapture`); printed, not asserted.
#[test]
#[ignore]
fn encode_speed_on_corpus() {
    let corpus = std::fs::read_to_string(workspace_root().join("testdata/parity/corpus.txt"))
        .expect("corpus");
    for (name, tok) in [("SmolLM2", smollm()), ("Gemma 3", gemma())] {
        let t = Instant::now();
        let ids = tok.encode(&corpus, true, false);
        let dt = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let text = tok.decode(&ids, true);
        let dt_dec = t.elapsed().as_secs_f64();
        assert_eq!(text, corpus);
        eprintln!(
            "{name}: {} bytes -> {} tokens in {:.1} ms ({:.2} M tokens/s, {:.1} MB/s); decode {:.1} ms",
            corpus.len(),
            ids.len(),
            dt * 1e3,
            ids.len() as f64 / dt / 1e6,
            corpus.len() as f64 / dt / 1e6,
            dt_dec * 1e3
        );
    }
}
