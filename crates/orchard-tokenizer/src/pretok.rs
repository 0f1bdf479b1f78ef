//! BPE pre-tokenizers: split a text fragment into the words that BPE merges within, the way
//! llama.cpp's `unicode_regex_split` does for each pre-tokenizer it names. llama.cpp runs a list
//! of regexes one after another, each splitting the pieces the previous one produced; most have
//! hand-written matchers there (`unicode_regex_split_custom_*`) and the rest go through
//! `std::regex` on a text where every non-ASCII code point is collapsed to a byte standing for its
//! category. Both are reproduced here by hand, quirks included, because exact token ids depend on
//! exactly where words break.

use crate::unicode::{flags, to_lower_ascii, Flags, NUMBER, PUNCTUATION};

/// Which regex list a pre-tokenizer name selects in llama.cpp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Splitter {
    /// `LLAMA_VOCAB_PRE_TYPE_DEFAULT`: punctuation runs, GPT-2, digit runs, ASCII digit triples.
    Default,
    /// The GPT-2 regex alone.
    Gpt2,
    /// Every digit alone, then GPT-2 (StarCoder, SmolLM, ...).
    DigitsThenGpt2,
    /// Llama 3's regex (digits in groups of up to three).
    Llama3,
    /// Qwen2's regex (each digit alone).
    Qwen2,
}

/// Splits the chunk `ini..end` of the code points, appending piece lengths.
type ChunkSplitter = dyn Fn(&[u32], usize, usize, &mut Vec<usize>);

/// Reusable buffers so that splitting allocates nothing once warm.
#[derive(Default)]
pub(crate) struct Scratch {
    cpts: Vec<u32>,
    offsets: Vec<usize>,
    chunks: Vec<usize>,
    next: Vec<usize>,
}

/// Splits `text` and appends the words as byte ranges of `text` to `words`.
pub(crate) fn split(
    splitter: Splitter,
    text: &str,
    scratch: &mut Scratch,
    words: &mut Vec<(usize, usize)>,
) {
    crate::unicode::cpts_with_offsets(text, &mut scratch.cpts, &mut scratch.offsets);
    let Scratch {
        cpts,
        offsets,
        chunks,
        next,
    } = scratch;
    chunks.clear();
    if cpts.is_empty() {
        return;
    }
    chunks.push(cpts.len());

    let mut stage = |f: &ChunkSplitter| {
        next.clear();
        let mut start = 0;
        for &len in chunks.iter() {
            f(cpts, start, start + len, next);
            start += len;
        }
        std::mem::swap(chunks, next);
    };
    match splitter {
        Splitter::Default => {
            stage(&|c, a, b, o| class_split(c, a, b, o, collapsed_punct_or_listed, true));
            stage(&gpt2);
            stage(&|c, a, b, o| class_split(c, a, b, o, collapsed_number, true));
            stage(&ascii_digit_triples);
        }
        Splitter::Gpt2 => stage(&gpt2),
        Splitter::DigitsThenGpt2 => {
            stage(&|c, a, b, o| class_split(c, a, b, o, collapsed_number, false));
            stage(&gpt2);
        }
        Splitter::Llama3 => stage(&|c, a, b, o| llama3_like(c, a, b, o, 3)),
        Splitter::Qwen2 => stage(&|c, a, b, o| llama3_like(c, a, b, o, 1)),
    }

    let mut start = 0;
    for &len in chunks.iter() {
        words.push((offsets[start], offsets[start + len]));
        start += len;
    }
}

/// `\p{N}` as the collapsed-text regex sees it: ASCII digits, or a non-ASCII, non-whitespace
/// code point whose category is number.
fn collapsed_number(cpt: u32) -> bool {
    if cpt < 128 {
        return (cpt as u8).is_ascii_digit();
    }
    let f = flags(cpt);
    !f.is_whitespace() && f.category() == NUMBER
}

/// `[\p{P}\$\+<=>\^~\|]` on the collapsed text: the ASCII characters llama.cpp lists for `\p{P}`
/// plus the listed symbols (every ASCII punctuation or symbol except the backtick), or a
/// non-ASCII, non-whitespace code point whose category is punctuation.
fn collapsed_punct_or_listed(cpt: u32) -> bool {
    if cpt < 128 {
        let b = cpt as u8;
        return b.is_ascii_punctuation() && b != b'`';
    }
    let f = flags(cpt);
    !f.is_whitespace() && f.category() == PUNCTUATION
}

/// `std::regex_iterator` over a character class (`[..]` when `!runs`, `[..]+` when `runs`):
/// every match becomes a piece and so does every gap between matches.
fn class_split(
    cpts: &[u32],
    ini: usize,
    end: usize,
    out: &mut Vec<usize>,
    class: fn(u32) -> bool,
    runs: bool,
) {
    let mut gap_start = ini;
    let mut pos = ini;
    while pos < end {
        if class(cpts[pos]) {
            if pos > gap_start {
                out.push(pos - gap_start);
            }
            let m = pos;
            pos += 1;
            if runs {
                while pos < end && class(cpts[pos]) {
                    pos += 1;
                }
            }
            out.push(pos - m);
            gap_start = pos;
        } else {
            pos += 1;
        }
    }
    if end > gap_start {
        out.push(end - gap_start);
    }
}

/// `[0-9][0-9][0-9]` (run through `std::wregex` in llama.cpp): non-overlapping ASCII digit
/// triples, scanning left to right.
fn ascii_digit_triples(cpts: &[u32], ini: usize, end: usize, out: &mut Vec<usize>) {
    let is_d = |p: usize| cpts[p] < 128 && (cpts[p] as u8).is_ascii_digit();
    let mut gap_start = ini;
    let mut pos = ini;
    while pos < end {
        if pos + 3 <= end && is_d(pos) && is_d(pos + 1) && is_d(pos + 2) {
            if pos > gap_start {
                out.push(pos - gap_start);
            }
            out.push(3);
            pos += 3;
            gap_start = pos;
        } else {
            pos += 1;
        }
    }
    if end > gap_start {
        out.push(end - gap_start);
    }
}

const OUT_OF_RANGE: u32 = 0xFFFF_FFFF;

/// View of one chunk: code points outside it read as "nothing" (no flags at all), which the
/// matchers rely on, e.g. for `\s+(?!\S)` at the end of a chunk.
struct Chunk<'a> {
    cpts: &'a [u32],
    ini: usize,
    end: usize,
}

impl Chunk<'_> {
    #[inline]
    fn cpt(&self, pos: usize) -> u32 {
        if self.ini <= pos && pos < self.end {
            self.cpts[pos]
        } else {
            OUT_OF_RANGE
        }
    }
    #[inline]
    fn flags(&self, pos: usize) -> Flags {
        if self.ini <= pos && pos < self.end {
            flags(self.cpts[pos])
        } else {
            Flags::default()
        }
    }
}

/// Emits pieces as the matchers advance; `prev_end` is where the last piece ended.
struct Emitter<'o> {
    prev_end: usize,
    out: &'o mut Vec<usize>,
}

impl Emitter<'_> {
    #[inline]
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push(len);
        }
        self.prev_end = end;
        len
    }
}

#[inline]
fn not_ws_letter_number(f: Flags) -> bool {
    !(f.is_whitespace() || f.is_letter() || f.is_number())
}

/// Length of an English contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`) at `pos`,
/// case-insensitive when `icase`.
#[inline]
fn contraction(ch: &Chunk<'_>, pos: usize, icase: bool) -> Option<usize> {
    if ch.cpt(pos) != '\'' as u32 || pos + 1 >= ch.end {
        return None;
    }
    let low = |c: u32| if icase { to_lower_ascii(c) } else { c };
    let next = low(ch.cpt(pos + 1));
    if [b's', b't', b'm', b'd'].iter().any(|&c| next == c as u32) {
        return Some(2);
    }
    if pos + 2 < ch.end {
        let next2 = low(ch.cpt(pos + 2));
        let pair = |a: u8, b: u8| next == a as u32 && next2 == b as u32;
        if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
            return Some(3);
        }
    }
    None
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
/// (llama.cpp's `unicode_regex_split_custom_gpt2`, whose trailing `\s+` catch-all is implicit).
fn gpt2(cpts: &[u32], ini: usize, end: usize, out: &mut Vec<usize>) {
    let ch = Chunk { cpts, ini, end };
    let mut em = Emitter { prev_end: ini, out };
    let mut pos = ini;
    while pos < end {
        let cpt = ch.cpt(pos);
        let fl = ch.flags(pos);
        if let Some(n) = contraction(&ch, pos, false) {
            pos += em.add(pos + n);
            continue;
        }
        let space = cpt == ' ' as u32;
        let mut f2 = if space { ch.flags(pos + 1) } else { fl };
        if f2.is_letter() {
            pos += space as usize;
            while f2.is_letter() {
                pos += 1;
                f2 = ch.flags(pos);
            }
            em.add(pos);
            continue;
        }
        if f2.is_number() {
            pos += space as usize;
            while f2.is_number() {
                pos += 1;
                f2 = ch.flags(pos);
            }
            em.add(pos);
            continue;
        }
        if not_ws_letter_number(f2) && f2.any() {
            pos += space as usize;
            while not_ws_letter_number(f2) && f2.any() {
                pos += 1;
                f2 = ch.flags(pos);
            }
            em.add(pos);
            continue;
        }
        let mut n_ws = 0;
        while ch.flags(pos + n_ws).is_whitespace() {
            n_ws += 1;
        }
        if n_ws > 1 && ch.cpt(pos + n_ws) != OUT_OF_RANGE {
            pos += n_ws - 1;
            em.add(pos);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            em.add(pos);
            continue;
        }
        pos += 1;
        em.add(pos);
    }
}

/// Llama 3 (`max_digits` 3) and Qwen2 (`max_digits` 1):
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// (llama.cpp's `unicode_regex_split_custom_llama3` / `_qwen2`).
fn llama3_like(cpts: &[u32], ini: usize, end: usize, out: &mut Vec<usize>, max_digits: usize) {
    let ch = Chunk { cpts, ini, end };
    let mut em = Emitter { prev_end: ini, out };
    let is_cr_lf = |c: u32| c == '\r' as u32 || c == '\n' as u32;
    let mut pos = ini;
    while pos < end {
        let cpt = ch.cpt(pos);
        let fl = ch.flags(pos);
        if let Some(n) = contraction(&ch, pos, true) {
            pos += em.add(pos + n);
            continue;
        }
        if !(is_cr_lf(cpt) || fl.is_number()) && (fl.is_letter() || ch.flags(pos + 1).is_letter()) {
            pos += 1;
            while ch.flags(pos).is_letter() {
                pos += 1;
            }
            em.add(pos);
            continue;
        }
        if fl.is_number() {
            let mut group = pos;
            while ch.flags(pos).is_number() {
                pos += 1;
                if pos - group >= max_digits {
                    em.add(pos);
                    group = pos;
                }
            }
            em.add(pos);
            continue;
        }
        let space = cpt == ' ' as u32;
        let mut f2 = if space { ch.flags(pos + 1) } else { fl };
        // llama.cpp tests the first code point's own flags for "anything at all" here.
        if not_ws_letter_number(f2) && fl.any() {
            pos += space as usize;
            while not_ws_letter_number(f2) && f2.any() {
                pos += 1;
                f2 = ch.flags(pos);
            }
            while is_cr_lf(ch.cpt(pos)) {
                pos += 1;
            }
            em.add(pos);
            continue;
        }
        let mut n_ws = 0;
        let mut last_cr_lf_end = 0;
        while ch.flags(pos + n_ws).is_whitespace() {
            if is_cr_lf(ch.cpt(pos + n_ws)) {
                last_cr_lf_end = pos + n_ws + 1;
            }
            n_ws += 1;
        }
        if last_cr_lf_end > 0 {
            pos = last_cr_lf_end;
            em.add(pos);
            continue;
        }
        if n_ws > 1 && ch.cpt(pos + n_ws) != OUT_OF_RANGE {
            pos += n_ws - 1;
            em.add(pos);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            em.add(pos);
            continue;
        }
        pos += 1;
        em.add(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(splitter: Splitter, text: &str) -> Vec<&str> {
        let mut scratch = Scratch::default();
        let mut out = Vec::new();
        split(splitter, text, &mut scratch, &mut out);
        out.iter().map(|&(a, b)| &text[a..b]).collect()
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words(Splitter::Gpt2, "Hello world's  end 123!!\n"),
            vec!["Hello", " world", "'s", " ", " end", " 123", "!!", "\n"]
        );
    }

    #[test]
    fn digits_split_before_gpt2() {
        assert_eq!(
            words(Splitter::DigitsThenGpt2, "numbers 1234 x"),
            vec!["numbers", " ", "1", "2", "3", "4", " x"]
        );
    }

    #[test]
    fn llama3_words() {
        assert_eq!(
            words(Splitter::Llama3, "I'M 1234567 ab\n\n  x  "),
            vec!["I", "'M", " ", "123", "456", "7", " ab", "\n\n", " ", " x", "  "]
        );
        assert_eq!(words(Splitter::Qwen2, "a12"), vec!["a", "1", "2"]);
        assert_eq!(words(Splitter::Llama3, "..\r\nx"), vec!["..\r\n", "x"]);
    }

    #[test]
    fn default_words() {
        assert_eq!(
            words(Splitter::Default, "a+b 12345 x..y"),
            vec!["a", "+", "b", " ", "123", "45", " x", "..", "y"]
        );
    }

    #[test]
    fn empty_text_has_no_words() {
        assert!(words(Splitter::Gpt2, "").is_empty());
    }

    /// Splits of ~480 texts (reference cases, edge cases, random mixes of scripts, digits,
    /// whitespace kinds and punctuation) as printed by llama.cpp's own `unicode_regex_split`;
    /// see `scripts/gen_pretok_fixture.py`.
    #[test]
    fn splits_match_llama_cpp_fixture() {
        #[derive(serde::Deserialize)]
        struct Row {
            pre: String,
            text: String,
            words: Vec<String>,
        }
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/pretok_splits.jsonl"
        );
        let data = std::fs::read_to_string(path).expect("fixture");
        let mut n = 0;
        let mut bad = Vec::new();
        for line in data.lines() {
            let row: Row = serde_json::from_str(line).expect("fixture line");
            let splitter = match row.pre.as_str() {
                "default" => Splitter::Default,
                "gpt2" => Splitter::Gpt2,
                "smollm" => Splitter::DigitsThenGpt2,
                "llama3" => Splitter::Llama3,
                "qwen2" => Splitter::Qwen2,
                other => panic!("unknown pre {other}"),
            };
            let got = words(splitter, &row.text);
            if got != row.words {
                bad.push(format!(
                    "{} {:?}\n  want {:?}\n  got  {:?}",
                    row.pre, row.text, row.words, got
                ));
            }
            n += 1;
        }
        assert!(n > 2000, "fixture has only {n} rows");
        assert!(
            bad.is_empty(),
            "{} of {n} differ:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
}
