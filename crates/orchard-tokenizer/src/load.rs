//! Turning `tokenizer.ggml.*` metadata into a [`Tokenizer`], step for step as llama.cpp's
//! `llama_vocab::impl::load`: the defaults per model type, the per-pre-tokenizer flags, the
//! special ids, the special tokens it recognises by their text (EOT, FIM, end-of-generation),
//! the attribute fix-ups, and the caches built at the end.

use std::collections::HashSet;

use orchard_gguf::{Metadata, Value};

use crate::attr::*;
use crate::bpe::BpeModel;
use crate::pretok::Splitter;
use crate::spm::SpmModel;
use crate::{Model, SpecialIds, Strings, TokenId, Tokenizer, TokenizerError};

const K_MODEL: &str = "tokenizer.ggml.model";
const K_PRE: &str = "tokenizer.ggml.pre";
const K_TOKENS: &str = "tokenizer.ggml.tokens";
const K_SCORES: &str = "tokenizer.ggml.scores";
const K_TYPES: &str = "tokenizer.ggml.token_type";
const K_MERGES: &str = "tokenizer.ggml.merges";
const K_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const K_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const K_ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// llama.cpp's per-pre-tokenizer settings (starting from the BPE defaults).
struct PreConfig {
    splitter: Splitter,
    clean_spaces: bool,
    ignore_merges: bool,
    add_bos: bool,
}

/// The pre-tokenizer names llama.cpp accepts whose regexes we implement, with the flags its
/// loader sets for each. `None`: not supported here.
fn pre_config(pre: &str) -> Option<PreConfig> {
    use Splitter::*;
    let cfg = |splitter, clean_spaces, ignore_merges, add_bos| PreConfig {
        splitter,
        clean_spaces,
        ignore_merges,
        add_bos,
    };
    Some(match pre {
        // An absent pre-tokenizer is "default" in llama.cpp (with a loud warning).
        "" | "default" => cfg(Default, true, false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => cfg(Llama3, true, true, true),
        "dbrx" | "smaug-bpe" => cfg(Llama3, true, false, false),
        // "gpt2" is not a name llama.cpp knows; accepted as an obvious alias of "gpt-2".
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
        | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "jina-v1-en"
        | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" => cfg(Gpt2, true, false, false),
        "trillion" | "granite-docling" => cfg(Gpt2, false, false, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open"
        | "grok-2" => cfg(Qwen2, false, false, false),
        "megrez" | "stablelm2" => cfg(Qwen2, true, false, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            cfg(DigitsThenGpt2, true, false, false)
        }
        "smollm" | "command-r" => cfg(DigitsThenGpt2, false, false, false),
        _ => return None,
    })
}

/// Token texts llama.cpp takes for a special id it was not given (`load`, "auto-detect").
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Every token with one of these texts ends generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

fn wrong_type(key: &str, expected: &'static str) -> TokenizerError {
    TokenizerError::WrongType {
        key: key.to_string(),
        expected,
    }
}

fn missing(key: &str) -> TokenizerError {
    TokenizerError::MissingKey {
        key: key.to_string(),
    }
}

/// An optional per-token array, at least `n` long.
fn per_token_array<'a>(
    md: &'a Metadata,
    key: &str,
    n: usize,
) -> Result<Option<&'a [Value]>, TokenizerError> {
    let Some(items) = md.get_array(key)? else {
        return Ok(None);
    };
    if items.len() < n {
        return Err(TokenizerError::TooShort {
            key: key.to_string(),
            found: items.len(),
            needed: n,
        });
    }
    Ok(Some(items))
}

pub(crate) fn load(md: &Metadata) -> Result<Tokenizer, TokenizerError> {
    let model_name = md.get_str(K_MODEL)?.ok_or_else(|| missing(K_MODEL))?;
    let pre_name = md.get_str(K_PRE)?;
    let is_bpe = match model_name {
        "gpt2" => true,
        "llama" => false,
        other => {
            return Err(TokenizerError::UnsupportedModel {
                model: other.to_string(),
            })
        }
    };

    let mut special = SpecialIds::default();
    let mut add_space_prefix;
    let clean_spaces;
    let mut add_bos;
    let mut add_eos = false;
    let mut pre_cfg = None;
    if is_bpe {
        special.bos = Some(11);
        special.eos = Some(11);
        let pre = pre_name.unwrap_or("");
        let cfg = pre_config(pre).ok_or_else(|| TokenizerError::UnsupportedPre {
            pre: pre.to_string(),
        })?;
        add_space_prefix = false;
        clean_spaces = cfg.clean_spaces;
        add_bos = cfg.add_bos;
        pre_cfg = Some(cfg);
    } else {
        special.bos = Some(1);
        special.eos = Some(2);
        special.unk = Some(0);
        add_space_prefix = true;
        clean_spaces = false;
        add_bos = true;
    }
    if let Some(v) = md.get_bool(K_ADD_PREFIX)? {
        add_space_prefix = v;
    }

    // Tokens, scores, types.
    let tokens = md.get_array(K_TOKENS)?.ok_or_else(|| missing(K_TOKENS))?;
    let n = tokens.len();
    if n >= u32::MAX as usize / 2 {
        return Err(TokenizerError::TooManyTokens { n });
    }
    let scores_v = per_token_array(md, K_SCORES, n)?;
    let types_v = per_token_array(md, K_TYPES, n)?;

    let mut texts: Vec<&str> = Vec::with_capacity(n);
    let mut total = 0;
    for t in tokens {
        let s = t
            .as_str()
            .ok_or_else(|| wrong_type(K_TOKENS, "array of strings"))?;
        total += s.len();
        texts.push(s);
    }
    let mut strings = Strings::with_capacity(n, total + 16);
    // Ids whose text an earlier id already had: llama.cpp's map got no new entry for them.
    let mut repeated = Vec::new();
    for (i, s) in texts.iter().enumerate() {
        let prev = if s.is_empty() {
            strings.push(&format!("[EMPTY_{i}]"))
        } else {
            strings.push(s)
        };
        if prev.is_some() {
            repeated.push(i as u32);
        }
    }

    let mut scores = vec![0.0f32; n];
    if let Some(v) = scores_v {
        for (dst, item) in scores.iter_mut().zip(v) {
            *dst = match item {
                Value::F32(x) => *x,
                Value::F64(x) => *x as f32,
                Value::I32(x) => *x as f32,
                _ => return Err(wrong_type(K_SCORES, "array of f32 or i32")),
            };
        }
    }
    let mut attrs = vec![NORMAL; n];
    if let Some(v) = types_v {
        for (dst, item) in attrs.iter_mut().zip(v) {
            let ty = item
                .as_i32()
                .ok_or_else(|| wrong_type(K_TYPES, "array of i32"))?;
            // LLAMA_TOKEN_TYPE_* -> LLAMA_TOKEN_ATTR_*; undefined and unknown types get no bits.
            *dst = match ty {
                1 => NORMAL,
                2 => UNKNOWN,
                3 => CONTROL,
                4 => USER_DEFINED,
                5 => UNUSED,
                6 => BYTE,
                _ => 0,
            };
        }
    }

    // Special ids: defaults out of range are dropped, metadata overrides when in range.
    {
        type Slot = fn(&mut SpecialIds) -> &mut Option<TokenId>;
        let slots: [(&str, Slot); 17] = [
            ("tokenizer.ggml.bos_token_id", |s| &mut s.bos),
            ("tokenizer.ggml.eos_token_id", |s| &mut s.eos),
            ("tokenizer.ggml.eot_token_id", |s| &mut s.eot),
            ("tokenizer.ggml.eom_token_id", |s| &mut s.eom),
            ("tokenizer.ggml.unknown_token_id", |s| &mut s.unk),
            ("tokenizer.ggml.seperator_token_id", |s| &mut s.sep),
            ("tokenizer.ggml.padding_token_id", |s| &mut s.pad),
            ("tokenizer.ggml.mask_token_id", |s| &mut s.mask),
            ("tokenizer.ggml.fim_pre_token_id", |s| &mut s.fim_pre),
            ("tokenizer.ggml.fim_suf_token_id", |s| &mut s.fim_suf),
            ("tokenizer.ggml.fim_mid_token_id", |s| &mut s.fim_mid),
            ("tokenizer.ggml.fim_pad_token_id", |s| &mut s.fim_pad),
            ("tokenizer.ggml.fim_rep_token_id", |s| &mut s.fim_rep),
            ("tokenizer.ggml.fim_sep_token_id", |s| &mut s.fim_sep),
            ("tokenizer.ggml.prefix_token_id", |s| &mut s.fim_pre),
            ("tokenizer.ggml.suffix_token_id", |s| &mut s.fim_suf),
            ("tokenizer.ggml.middle_token_id", |s| &mut s.fim_mid),
        ];
        for (key, slot) in slots {
            let slot = slot(&mut special);
            if slot.is_some_and(|id| id as usize >= n) {
                *slot = None;
            }
            if let Some(id) = md.get_u32(key)? {
                if (id as usize) < n {
                    *slot = Some(id);
                }
            }
        }
    }
    if let Some(v) = md.get_bool(K_ADD_BOS)? {
        add_bos = v;
    }
    if let Some(v) = md.get_bool(K_ADD_EOS)? {
        add_eos = v;
    }

    // Tokens only: BPE later appends merge halves that are not tokens after id n.
    let find =
        |strings: &Strings, s: &str| strings.find(s.as_bytes()).filter(|&id| (id as usize) < n);

    // Special ids found by text. llama.cpp walks its hash map and takes the first candidate it
    // meets; when a group has several candidates, replay that map's order.
    {
        let mut order: Option<Vec<u32>> = None;
        let groups: [(&mut Option<TokenId>, &[&str]); 8] = [
            (&mut special.eot, EOT_TEXTS),
            (&mut special.eom, EOM_TEXTS),
            (&mut special.fim_pre, FIM_PRE_TEXTS),
            (&mut special.fim_suf, FIM_SUF_TEXTS),
            (&mut special.fim_mid, FIM_MID_TEXTS),
            (&mut special.fim_pad, FIM_PAD_TEXTS),
            (&mut special.fim_rep, FIM_REP_TEXTS),
            (&mut special.fim_sep, FIM_SEP_TEXTS),
        ];
        for (slot, candidates) in groups {
            if slot.is_some() {
                continue;
            }
            let found: Vec<TokenId> = candidates
                .iter()
                .filter_map(|t| find(&strings, t))
                .collect();
            let chosen = match found.len() {
                0 => continue,
                1 => found[0],
                _ => {
                    let pos = order.get_or_insert_with(|| map_positions(&strings, n, &repeated));
                    *found
                        .iter()
                        .min_by_key(|&&id| pos[first_with_text(&strings, id) as usize])
                        .unwrap_or(&found[0])
                }
            };
            *slot = Some(chosen);
            attrs[chosen as usize] |= CONTROL;
        }
    }

    // Control tokens named "unused..." are unused.
    for (i, a) in attrs.iter_mut().enumerate() {
        if *a & CONTROL != 0 && strings.get(i as u32).contains("unused") {
            *a |= UNUSED;
        }
    }

    // End-of-generation set.
    let mut eog: HashSet<TokenId> = HashSet::new();
    eog.extend(special.fim_pad);
    eog.extend(special.fim_rep);
    eog.extend(special.fim_sep);
    for t in EOG_TEXTS {
        if let Some(id) = find(&strings, t) {
            eog.insert(id);
            attrs[id as usize] |= CONTROL;
        }
    }
    // gpt-oss: always rendered.
    for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
        if let Some(id) = find(&strings, t) {
            attrs[id as usize] = USER_DEFINED;
        }
    }
    eog.extend(special.eos);
    eog.extend(special.eot);
    eog.extend(special.eom);
    {
        // o200k_harmony / solar-open: "<|end|>" is not an end of generation there.
        let has = |t: &str| find(&strings, t).is_some_and(|id| eog.contains(&id));
        let call = has("<|call|>") || has("<|calls|>");
        let end_not_eog = call && (has("<|return|>") || has("<|flush|>"));
        let s_not_eog = has("<|tool_response>") || has("<|plamo:eos|>");
        let end = find(&strings, "<|end|>").filter(|id| eog.contains(id));
        if let Some(end) = end {
            if end_not_eog {
                eog.remove(&end);
                attrs[end as usize] = USER_DEFINED;
            }
        }
        // Gemma 4 / PLaMo: "</s>" is a normal token there.
        let s = find(&strings, "</s>").filter(|id| eog.contains(id));
        if let Some(s) = s {
            if s_not_eog {
                eog.remove(&s);
                attrs[s as usize] = NORMAL;
            }
        }
    }

    // Special tokens, longest text first (partition order).
    let mut specials: Vec<TokenId> = (0..n as u32)
        .filter(|&id| attrs[id as usize] & (CONTROL | USER_DEFINED | UNKNOWN) != 0)
        .collect();
    specials.sort_by_key(|&id| std::cmp::Reverse(strings.get(id).len()));

    let model = match pre_cfg {
        Some(cfg) => {
            let merges = md.get_array(K_MERGES)?.ok_or_else(|| missing(K_MERGES))?;
            let mut merge_strs = Vec::with_capacity(merges.len());
            for m in merges {
                merge_strs.push(
                    m.as_str()
                        .ok_or_else(|| wrong_type(K_MERGES, "array of strings"))?,
                );
            }
            Model::Bpe(Box::new(BpeModel::new(
                &mut strings,
                n,
                &merge_strs,
                cfg.splitter,
                cfg.ignore_merges,
            )))
        }
        None => Model::Spm(Box::new(SpmModel::new(&strings))),
    };

    let (pieces, piece_ends) = build_pieces(&strings, n, &attrs, is_bpe);

    // Attributes some models get by name.
    {
        let name = md
            .get_str("general.name")?
            .unwrap_or("")
            .to_ascii_lowercase();
        let arch = md.get_str("general.architecture")?.unwrap_or("");
        let pre = pre_name.unwrap_or("");
        let mut set = |text: &str, bit: u16, on: bool| {
            if let Some(id) = find(&strings, text) {
                let a = &mut attrs[id as usize];
                *a = if on { *a | bit } else { *a & !bit };
            }
        };
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"]
            .iter()
            .any(|p| pre.contains(p))
            || ["nomic-bert-moe", "jina-bert-v3"]
                .iter()
                .any(|a| arch.contains(a))
        {
            set("<mask>", LSTRIP, true);
        } else if name.contains("phi-3") || name.contains("phi3") {
            for &id in &specials {
                attrs[id as usize] |= RSTRIP;
            }
            let mut set = |text: &str, on: bool| {
                if let Some(id) = find(&strings, text) {
                    let a = &mut attrs[id as usize];
                    *a = if on { *a | RSTRIP } else { *a & !RSTRIP };
                }
            };
            set("</s>", true);
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                set(t, false);
            }
        } else if name.contains("modern-bert") {
            set("[MASK]", LSTRIP, true);
        }
    }

    let matcher = crate::partition::SpecialMatcher::new(&strings, specials);

    Ok(Tokenizer {
        strings,
        n_vocab: n,
        scores,
        attrs,
        model,
        pre: pre_name.unwrap_or("default").to_string(),
        special,
        add_bos,
        add_eos,
        add_space_prefix,
        clean_spaces,
        eog,
        matcher,
        pieces,
        piece_ends,
    })
}

/// The first id carrying the same text as `id` (where llama.cpp's map node was created).
fn first_with_text(strings: &Strings, id: TokenId) -> TokenId {
    let text = strings.get(id);
    (0..id).find(|&j| strings.get(j) == text).unwrap_or(id)
}

/// Position of each token in llama.cpp's `token_to_id` iteration order, indexed by the id
/// that created the map node.
fn map_positions(strings: &Strings, n: usize, repeated: &[u32]) -> Vec<u32> {
    let mut is_repeat = vec![false; n];
    for &r in repeated {
        is_repeat[r as usize] = true;
    }
    let nodes: Vec<u32> = (0..n as u32).filter(|&i| !is_repeat[i as usize]).collect();
    let node_pos =
        crate::stl_order::iteration_positions(nodes.iter().map(|&i| strings.get(i).as_bytes()));
    let mut pos = vec![u32::MAX; n];
    for (k, &i) in nodes.iter().enumerate() {
        pos[i as usize] = node_pos[k];
    }
    pos
}

/// `<0xXX>` -> the byte, as llama.cpp's `token_to_byte` (`strtol` on the two hex digits).
pub(crate) fn byte_of_token(text: &str) -> u8 {
    let digits = text.get(3..text.len().min(5)).unwrap_or("");
    let mut v: u32 = 0;
    for c in digits.chars() {
        match c.to_digit(16) {
            Some(d) => v = v * 16 + d,
            None => break,
        }
    }
    v as u8
}

/// llama.cpp's `token_to_piece` cache: every token's piece with `special = true`.
fn build_pieces(strings: &Strings, n: usize, attrs: &[u16], is_bpe: bool) -> (Vec<u8>, Vec<usize>) {
    let mut pieces = Vec::with_capacity(n * 6);
    let mut ends = Vec::with_capacity(n);
    for id in 0..n as u32 {
        let text = strings.get(id);
        let a = attrs[id as usize];
        if a & (UNKNOWN | CONTROL | USER_DEFINED) != 0 {
            pieces.extend_from_slice(text.as_bytes());
        } else if a & NORMAL != 0 {
            if is_bpe {
                decode_byte_level(text, &mut pieces);
            } else {
                let mut rest = text;
                while let Some(i) = rest.find('\u{2581}') {
                    pieces.extend_from_slice(&rest.as_bytes()[..i]);
                    pieces.push(b' ');
                    rest = &rest[i + '\u{2581}'.len_utf8()..];
                }
                pieces.extend_from_slice(rest.as_bytes());
            }
        } else if a & BYTE != 0 {
            pieces.push(byte_of_token(text));
        }
        ends.push(pieces.len());
    }
    (pieces, ends)
}

/// `llama_decode_text`: byte-level alphabet back to bytes; a character outside the alphabet
/// becomes llama.cpp's `[UNK_BYTE_0x..<token text>]` marker.
fn decode_byte_level(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match crate::unicode::cpt_to_byte(c as u32) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens_parse_like_strtol() {
        assert_eq!(byte_of_token("<0x0A>"), 0x0A);
        assert_eq!(byte_of_token("<0xFF>"), 0xFF);
        assert_eq!(byte_of_token("<0xg>"), 0);
        assert_eq!(byte_of_token("ab"), 0);
    }

    #[test]
    fn byte_level_decoding_with_unknown_marker() {
        let mut out = Vec::new();
        decode_byte_level("ĠhiĊ", &mut out);
        assert_eq!(out, b" hi\n");
        out.clear();
        decode_byte_level("a€", &mut out);
        assert_eq!(out, b"a[UNK_BYTE_0xe282aca\xe2\x82\xac]");
    }

    #[test]
    fn pre_names() {
        assert!(pre_config("smollm").is_some());
        assert!(pre_config("llama-bpe").is_some_and(|c| c.ignore_merges && c.add_bos));
        assert!(pre_config("qwen2").is_some_and(|c| !c.clean_spaces));
        assert!(pre_config("tekken").is_none());
    }
}
