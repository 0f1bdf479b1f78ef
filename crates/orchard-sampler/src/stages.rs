//! The individual sampler stages over a candidate list, kept separate from the chain so each can be
//! tested against hand-computed distributions. Formulas follow llama.cpp's src/llama-sampler.cpp.

use std::cmp::Ordering;
use std::collections::HashMap;

use orchard_core::TokenId;

/// One entry of the candidate list a sampler chain works on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: TokenId,
    pub logit: f32,
    /// Probability; only meaningful right after a stage that computed a softmax.
    pub p: f32,
}

/// The candidate list plus whether it is currently sorted by descending logit (stages use this to skip
/// work, as llama.cpp's `sorted` flag does).
pub(crate) struct Cands<'a> {
    pub(crate) v: &'a mut Vec<Candidate>,
    pub(crate) sorted: bool,
}

/// Descending logit, then ascending id, so that results never depend on the unstable sort's whims.
pub(crate) fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Moves the `n` best candidates to the front, sorted, without sorting the rest.
pub(crate) fn sort_prefix(v: &mut [Candidate], n: usize) {
    let n = n.min(v.len());
    if n == 0 {
        return;
    }
    if n < v.len() {
        v.select_nth_unstable_by(n - 1, by_logit_desc);
    }
    v[..n].sort_unstable_by(by_logit_desc);
}

/// Index of the highest logit, lowest index (id) on ties; NaN never wins.
pub(crate) fn argmax_f32(xs: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in xs.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if x <= b => {}
            _ => best = Some((i, x)),
        }
    }
    best.map(|(i, _)| i)
        .or(if xs.is_empty() { None } else { Some(0) })
}

/// The best candidate (highest logit, lowest id on ties).
pub(crate) fn best_candidate(v: &[Candidate]) -> Option<Candidate> {
    v.iter().copied().min_by(by_logit_desc)
}

/// Softmax into `p` with f32 arithmetic, as llama.cpp does. A list whose logits are all -inf gets a
/// uniform distribution instead of NaNs.
pub(crate) fn softmax(v: &mut [Candidate]) {
    if v.is_empty() {
        return;
    }
    let max_l = v.iter().map(|c| c.logit).fold(f32::NEG_INFINITY, f32::max);
    if max_l == f32::NEG_INFINITY {
        let u = 1.0 / v.len() as f32;
        v.iter_mut().for_each(|c| c.p = u);
        return;
    }
    let mut sum = 0.0f32;
    for c in v.iter_mut() {
        c.p = (c.logit - max_l).exp();
        sum += c.p;
    }
    for c in v.iter_mut() {
        c.p /= sum;
    }
}

/// Repetition, frequency and presence penalties over the tokens in the window, applied to a logit
/// row indexed by token id (ids outside the row are ignored).
pub(crate) fn apply_penalties_row(
    row: &mut [f32],
    counts: &HashMap<TokenId, u32>,
    repeat: f32,
    freq: f32,
    presence: f32,
) {
    for (&tok, &count) in counts {
        if let Some(l) = row.get_mut(tok as usize) {
            *l = penalize(*l, count, repeat, freq, presence);
        }
    }
}

/// One token's penalty. Dividing a negative logit would make it *more* likely, hence the multiply for
/// logits <= 0 (llama.cpp's convention).
pub(crate) fn penalize(logit: f32, count: u32, repeat: f32, freq: f32, presence: f32) -> f32 {
    if count == 0 {
        return logit;
    }
    let l = if logit <= 0.0 {
        logit * repeat
    } else {
        logit / repeat
    };
    l - count as f32 * freq - presence
}

pub(crate) fn top_k(c: &mut Cands<'_>, k: i32) {
    if k <= 0 {
        return;
    }
    let k = (k as usize).min(c.v.len());
    if !c.sorted {
        sort_prefix(c.v, k);
    }
    c.v.truncate(k);
    c.sorted = true;
}

/// Locally typical sampling: keep the tokens whose surprisal is closest to the entropy until their
/// mass exceeds `p`. Leaves the list unsorted (ordered by typicality).
pub(crate) fn typical(c: &mut Cands<'_>, p: f32) {
    if p >= 1.0 || c.v.is_empty() {
        return;
    }
    if !c.sorted {
        c.v.sort_unstable_by(by_logit_desc);
    }
    softmax(c.v);
    let entropy: f32 =
        c.v.iter()
            .filter(|x| x.p > 0.0)
            .map(|x| -x.p * x.p.ln())
            .sum();
    let mut scored: Vec<(f32, Candidate)> =
        c.v.iter()
            .map(|x| ((-x.p.ln() - entropy).abs(), *x))
            .collect();
    // Stable, so equal scores keep the logit order.
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut cum = 0.0f32;
    let mut last = scored.len();
    for (i, (_, x)) in scored.iter().enumerate() {
        cum += x.p;
        if cum > p {
            last = i + 1;
            break;
        }
    }
    c.v.clear();
    c.v.extend(scored[..last].iter().map(|s| s.1));
    c.sorted = false;
}

/// Nucleus sampling: the smallest prefix (by probability) whose mass reaches `p`.
pub(crate) fn top_p(c: &mut Cands<'_>, p: f32) {
    if p >= 1.0 || c.v.is_empty() {
        return;
    }
    softmax(c.v);
    // For a big unsorted list, guess that the nucleus lies within the best 256 and only sort the
    // whole list when it does not.
    let mut sorted_upto = c.v.len();
    if !c.sorted {
        if c.v.len() > 1024 {
            sorted_upto = 256;
            sort_prefix(c.v, sorted_upto);
        } else {
            c.v.sort_unstable_by(by_logit_desc);
        }
    }
    let mut cum = 0.0f32;
    let mut last = c.v.len();
    let mut i = 0;
    while i < c.v.len() {
        if i == sorted_upto {
            // The guess was too small: sort the rest behind the prefix.
            c.v[sorted_upto..].sort_unstable_by(by_logit_desc);
            sorted_upto = c.v.len();
        }
        cum += c.v[i].p;
        if cum >= p {
            last = i + 1;
            break;
        }
        i += 1;
    }
    c.v.truncate(last);
    c.sorted = true;
}

/// Drops the tokens whose probability is below `p` times the best token's probability.
pub(crate) fn min_p(c: &mut Cands<'_>, p: f32) {
    if p <= 0.0 || c.v.is_empty() {
        return;
    }
    let max_l =
        c.v.iter()
            .map(|x| x.logit)
            .fold(f32::NEG_INFINITY, f32::max);
    // p_i >= p * p_max  <=>  l_i >= l_max + ln p
    let min_logit = max_l + p.ln();
    c.v.retain(|x| x.logit >= min_logit);
}

pub(crate) fn temperature(c: &mut Cands<'_>, t: f32) {
    for x in c.v.iter_mut() {
        x.logit /= t;
    }
}

/// Draws one candidate in proportion to exp(logit). `u` is uniform in [0, 1).
pub(crate) fn dist(v: &mut [Candidate], u: f64) -> Option<Candidate> {
    match v.len() {
        0 => return None,
        1 => {
            v[0].p = 1.0;
            return Some(v[0]);
        }
        _ => {}
    }
    let max_l = v.iter().map(|x| x.logit).fold(f32::NEG_INFINITY, f32::max);
    if max_l == f32::NEG_INFINITY {
        return best_candidate(v);
    }
    let mut sum = 0.0f64;
    for x in v.iter_mut() {
        x.p = (x.logit - max_l).exp();
        sum += x.p as f64;
    }
    let target = sum * u;
    let mut run = 0.0f64;
    // Rounding can leave `run` a hair below `target` at the end; then the last live token wins.
    let mut chosen = v.iter().rposition(|x| x.p > 0.0).unwrap_or(0);
    for (i, x) in v.iter().enumerate() {
        run += x.p as f64;
        if run >= target && x.p > 0.0 {
            chosen = i;
            break;
        }
    }
    for x in v.iter_mut() {
        x.p = (x.p as f64 / sum) as f32;
    }
    Some(v[chosen])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(logits: &[f32]) -> Vec<Candidate> {
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| Candidate {
                id: i as TokenId,
                logit: l,
                p: 0.0,
            })
            .collect()
    }

    /// Logits whose softmax is exactly `probs` (up to rounding).
    fn from_probs(probs: &[f32]) -> Vec<Candidate> {
        cands(&probs.iter().map(|p| p.ln()).collect::<Vec<_>>())
    }

    fn ids(v: &[Candidate]) -> Vec<TokenId> {
        v.iter().map(|c| c.id).collect()
    }

    fn sorted_ids(v: &[Candidate]) -> Vec<TokenId> {
        let mut x = ids(v);
        x.sort_unstable();
        x
    }

    #[test]
    fn softmax_matches_hand_values_and_handles_all_banned() {
        let mut v = cands(&[0.0, (2.0f32).ln(), (5.0f32).ln()]);
        softmax(&mut v);
        let p: Vec<f32> = v.iter().map(|c| c.p).collect();
        for (got, want) in p.iter().zip([0.125f32, 0.25, 0.625]) {
            assert!((got - want).abs() < 1e-6, "{p:?}");
        }
        let mut banned = cands(&[f32::NEG_INFINITY; 4]);
        softmax(&mut banned);
        assert!(banned.iter().all(|c| c.p == 0.25));
    }

    #[test]
    fn top_k_keeps_k_best_sorted() {
        let mut v = cands(&[0.1, 3.0, -1.0, 2.0, 2.5, 0.0]);
        let mut c = Cands {
            v: &mut v,
            sorted: false,
        };
        top_k(&mut c, 3);
        assert!(c.sorted);
        assert_eq!(ids(c.v), vec![1, 4, 3]);

        let mut v = cands(&[0.1, 3.0, -1.0]);
        let mut c = Cands {
            v: &mut v,
            sorted: false,
        };
        top_k(&mut c, 0);
        assert_eq!(c.v.len(), 3, "k <= 0 disables top-k");
        top_k(&mut c, 10);
        assert_eq!(ids(c.v), vec![1, 0, 2], "k >= n keeps all, sorted");
    }

    #[test]
    fn top_k_breaks_ties_by_lowest_id() {
        let mut v = cands(&[1.0, 5.0, 5.0, 5.0, 0.0]);
        let mut c = Cands {
            v: &mut v,
            sorted: false,
        };
        top_k(&mut c, 2);
        assert_eq!(ids(c.v), vec![1, 2]);
    }

    #[test]
    fn top_p_keeps_minimal_prefix_reaching_p() {
        let probs = [0.05f32, 0.5, 0.15, 0.3];
        for (p, want) in [
            (0.45f32, vec![1]),
            (0.7, vec![1, 3]),
            (0.85, vec![1, 3, 2]),
            (0.99, vec![1, 3, 2, 0]),
        ] {
            let mut v = from_probs(&probs);
            let mut c = Cands {
                v: &mut v,
                sorted: false,
            };
            top_p(&mut c, p);
            assert_eq!(ids(c.v), want, "p = {p}");
        }
        let mut v = from_probs(&probs);
        let mut c = Cands {
            v: &mut v,
            sorted: false,
        };
        top_p(&mut c, 1.0);
        assert_eq!(c.v.len(), 4, "p = 1 disables top-p");
    }

    #[test]
    fn top_p_on_a_flat_large_vocab_sorts_beyond_the_first_guess() {
        // 4000 nearly-equal tokens: the nucleus for p = 0.5 needs ~2000 of them, far more than the
        // 256-token first guess, so the fallback full sort must run.
        let logits: Vec<f32> = (0..4000)
            .map(|i| ((i * 7919) % 4000) as f32 * 1e-4)
            .collect();
        let mut v = cands(&logits);
        let mut c = Cands {
            v: &mut v,
            sorted: false,
        };
        top_p(&mut c, 0.5);

        // Reference: full sort, then prefix.
        let mut r = cands(&logits);
        softmax(&mut r);
        r.sort_by(by_logit_desc);
        let mut cum = 0.0f32;
        let mut n = r.len();
        for (i, x) in r.iter().enumerate() {
            cum += x.p;
            if cum >= 0.5 {
                n = i + 1;
                break;
            }
        }
        assert!(
            n > 256,
            "test needs a nucleus larger than the first guess, got {n}"
        );
        assert_eq!(ids(c.v), ids(&r[..n]));
    }

    #[test]
    fn min_p_is_relative_to_the_best_token() {
        // p = [0.6, 0.3, 0.06, 0.04]; min_p 0.4 -> threshold 0.24: keeps 0.6 and 0.3. An absolute
        // threshold of 0.4 would have kept only the first.
        let mut v = from_probs(&[0.6, 0.3, 0.06, 0.04]);
        let mut c = Cands {
            v: &mut v,
            sorted: false,
        };
        min_p(&mut c, 0.4);
        assert_eq!(sorted_ids(c.v), vec![0, 1]);

        let mut v = from_probs(&[0.04, 0.06, 0.3, 0.6]);
        let mut c = Cands {
            v: &mut v,
            sorted: false,
        };
        min_p(&mut c, 0.05);
        assert_eq!(sorted_ids(c.v), vec![0, 1, 2, 3], "0.04 >= 0.05 * 0.6");
        min_p(&mut c, 0.08);
        assert_eq!(sorted_ids(c.v), vec![1, 2, 3], "0.04 < 0.08 * 0.6");
    }

    #[test]
    fn typical_keeps_tokens_closest_to_entropy() {
        // p = [1/2, 1/4, 1/8, 1/8]: entropy 1.75 ln2; surprisal distances ln2 * [0.75, 0.25, 1.25,
        // 1.25], so the order of typicality is 1, 0, then 2 and 3.
        let probs = [0.5f32, 0.25, 0.125, 0.125];
        let mut v = from_probs(&probs);
        let mut c = Cands {
            v: &mut v,
            sorted: false,
        };
        typical(&mut c, 0.5);
        assert_eq!(ids(c.v), vec![1, 0]);
        assert!(!c.sorted);

        let mut v = from_probs(&probs);
        let mut c = Cands {
            v: &mut v,
            sorted: false,
        };
        typical(&mut c, 0.2);
        assert_eq!(
            ids(c.v),
            vec![1],
            "the most likely token is not the most typical"
        );
    }

    #[test]
    fn temperature_divides_logits() {
        let mut v = cands(&[1.0, -2.0, 4.0]);
        let mut c = Cands {
            v: &mut v,
            sorted: false,
        };
        temperature(&mut c, 0.5);
        let l: Vec<f32> = c.v.iter().map(|x| x.logit).collect();
        assert_eq!(l, vec![2.0, -4.0, 8.0]);
    }

    #[test]
    fn penalties_follow_llama_cpp_formulas() {
        // Positive logits are divided by the repeat penalty, non-positive ones multiplied; then
        // count * freq + presence is subtracted.
        assert_eq!(penalize(2.0, 3, 2.0, 0.0, 0.0), 1.0);
        assert_eq!(penalize(-2.0, 1, 2.0, 0.0, 0.0), -4.0);
        assert_eq!(penalize(0.0, 1, 2.0, 0.0, 0.0), 0.0);
        assert_eq!(penalize(2.0, 3, 1.0, 0.5, 0.25), 2.0 - 1.5 - 0.25);
        assert_eq!(penalize(4.0, 2, 2.0, 0.5, 1.0), 4.0 / 2.0 - 1.0 - 1.0);
        assert_eq!(
            penalize(4.0, 0, 2.0, 0.5, 1.0),
            4.0,
            "unseen tokens untouched"
        );

        let mut counts = HashMap::new();
        counts.insert(1, 2u32);
        counts.insert(7, 1u32); // outside the row: ignored, no panic
        let mut row = [1.0f32, 3.0, -1.0];
        apply_penalties_row(&mut row, &counts, 1.5, 0.1, 0.2);
        assert_eq!(row[0], 1.0);
        assert!((row[1] - (3.0 / 1.5 - 0.2 - 0.2)).abs() < 1e-6);
        assert_eq!(row[2], -1.0);
    }

    #[test]
    fn dist_picks_by_cumulative_mass() {
        let mut v = from_probs(&[0.25, 0.5, 0.25]);
        assert_eq!(dist(&mut v.clone(), 0.0).unwrap().id, 0);
        assert_eq!(dist(&mut v.clone(), 0.24).unwrap().id, 0);
        assert_eq!(dist(&mut v.clone(), 0.26).unwrap().id, 1);
        assert_eq!(dist(&mut v.clone(), 0.74).unwrap().id, 1);
        assert_eq!(dist(&mut v, 0.999).unwrap().id, 2);
        // A zero-probability candidate is never chosen, even at u = 0.
        let mut w = cands(&[f32::NEG_INFINITY, 0.0]);
        assert_eq!(dist(&mut w, 0.0).unwrap().id, 1);
        assert!(dist(&mut [], 0.5).is_none());
    }

    #[test]
    fn argmax_prefers_lowest_index_and_skips_nan() {
        assert_eq!(argmax_f32(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax_f32(&[f32::NAN, 0.5, f32::NAN]), Some(1));
        assert_eq!(argmax_f32(&[f32::NAN]), Some(0));
        assert_eq!(argmax_f32(&[]), None);
    }
}
