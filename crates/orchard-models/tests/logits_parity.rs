//! Teacher-forced logits against llama.cpp's (`*logits.jsonl` in [`reference_dir`]) for the real
//! models and every tiny architecture model.

mod common;
use common::*;

fn check(model_path: std::path::PathBuf, logits_file: std::path::PathBuf) {
    let model = load(model_path.clone());
    for (i, case) in read_logit_cases(logits_file).iter().enumerate() {
        let ours = all_logits(&model, &case.ids);
        let (max, mean, top1_bad) = compare_logits(case, &ours);
        eprintln!("{} case {i}: {} tokens, max diff {max:.4}, mean {mean:.4}, top-1 mismatches {top1_bad}", model_path.display(), case.ids.len());
        assert_eq!(
            top1_bad, 0,
            "top-1 differs where the reference margin exceeds 0.1"
        );
        assert!(max < 0.1, "max top-5 logit difference {max} >= 0.1");
        assert!(mean < 0.02, "mean top-5 logit difference {mean} >= 0.02");
    }
}

#[test]
fn smollm2_q4_1_logits_match_llama_cpp() {
    check(
        models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        reference_dir().join("smollm2-135m-q4_1/logits.jsonl"),
    );
}

#[test]
fn gemma3_270m_logits_match_llama_cpp() {
    check(
        models_dir().join("gemma-3-270m-q4_k_m.gguf"),
        reference_dir().join("gemma3-270m-q4_k_m/logits.jsonl"),
    );
}

#[test]
fn tiny_llama3_logits_match_llama_cpp() {
    check(
        parity_dir().join("tiny/tiny-llama3.Q4_K_M.gguf"),
        reference_dir().join("tiny/tiny-llama3.logits.jsonl"),
    );
}

#[test]
fn tiny_qwen2_logits_match_llama_cpp() {
    check(
        parity_dir().join("tiny/tiny-qwen2.Q8_0.gguf"),
        reference_dir().join("tiny/tiny-qwen2.logits.jsonl"),
    );
}

#[test]
fn tiny_qwen3_logits_match_llama_cpp() {
    check(
        parity_dir().join("tiny/tiny-qwen3.Q4_K_M.gguf"),
        reference_dir().join("tiny/tiny-qwen3.logits.jsonl"),
    );
}

#[test]
fn tiny_gemma3_logits_match_llama_cpp() {
    check(
        parity_dir().join("tiny/tiny-gemma3.Q4_K_M.gguf"),
        reference_dir().join("tiny/tiny-gemma3.logits.jsonl"),
    );
}
