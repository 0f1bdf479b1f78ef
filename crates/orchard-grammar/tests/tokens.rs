//! The constraints driven over SmolLM2's real vocabulary with random logits: every step must
//! leave at least one candidate, and the finished text must be what the constraint promises.

use std::path::PathBuf;

use orchard_grammar::{GrammarConstraint, JsonConstraint, Schema, TextConstraint};
use orchard_sampler::Candidate;
use orchard_tokenizer::Tokenizer;

fn tokenizer() -> Tokenizer {
    let dir = std::env::var_os("ORCHARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let f = orchard_gguf::GgufFile::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Tokenizer::from_gguf(&f).expect("tokenizer")
}

/// Runs "sampling" with pseudo-random logits and a greedy pick of the best allowed token.
fn drive<M: orchard_grammar::CharMatcher>(
    tok: &Tokenizer,
    mut c: TextConstraint<M>,
    seed: u64,
) -> String {
    let mut state = seed;
    let mut text = String::new();
    for _ in 0..400 {
        let mut cands: Vec<Candidate> = (0..tok.n_vocab() as u32)
            .map(|id| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                Candidate {
                    id,
                    logit: (state >> 40) as f32,
                    p: 0.0,
                }
            })
            .collect();
        c.allowed(tok, &mut cands);
        assert!(!cands.is_empty(), "no candidate left after {text:?}");
        let id = cands[0].id;
        if tok.is_eog(id) {
            assert!(c.is_complete(), "EOG allowed before completion: {text:?}");
            break;
        }
        c.accept(tok, id);
        text.push_str(&String::from_utf8(tok.token_to_piece(id, false)).unwrap());
        if c.is_finished() {
            break;
        }
    }
    assert!(c.is_complete(), "incomplete after 400 tokens: {text:?}");
    text
}

#[test]
fn schema_constrained_random_walks_produce_valid_json() {
    let tok = tokenizer();
    let schema = Schema::Object {
        properties: vec![
            ("a".into(), Schema::Integer),
            (
                "b".into(),
                Schema::Literal(vec!["\"x\"".into(), "\"y\"".into()]),
            ),
            (
                "c".into(),
                Schema::String {
                    min_len: 0,
                    max_len: Some(8),
                },
            ),
        ],
        required: vec!["a".into(), "b".into()],
        additional: None,
    };
    for seed in 1..6 {
        let c = JsonConstraint::new(&schema).unwrap().with_keep(1);
        let text = drive(&tok, c, seed);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(v["a"].is_i64(), "{text}");
        assert!(v["b"] == "x" || v["b"] == "y", "{text}");
        assert!(
            v.get("c")
                .is_none_or(|c| c.as_str().is_some_and(|s| s.chars().count() <= 8)),
            "{text}"
        );
        assert_eq!(
            v.as_object().unwrap().len(),
            v.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["a", "b", "c"].contains(&k.as_str()))
                .count()
        );
    }
}

#[test]
fn gbnf_constrained_random_walks_match_the_grammar() {
    let tok = tokenizer();
    for seed in 1..4 {
        let c = GrammarConstraint::from_gbnf(r#"root ::= "a"{5,5}"#)
            .unwrap()
            .with_keep(1);
        assert_eq!(drive(&tok, c, seed), "aaaaa");
        let c = GrammarConstraint::from_gbnf(r#"root ::= ("yes" | "no") " " [0-9]{1,3}"#)
            .unwrap()
            .with_keep(3);
        let t = drive(&tok, c, seed);
        let (w, n) = t.split_once(' ').unwrap();
        assert!(w == "yes" || w == "no", "{t}");
        assert!(
            (1..=3).contains(&n.len()) && n.chars().all(|c| c.is_ascii_digit()),
            "{t}"
        );
    }
}
