//! Stop strings over streamed text: what of the generated text is safe to show, and where a stop
//! string ends the generation. Text that could still grow into a stop string is held back, and a
//! matched stop string is never shown (llama-server's `find_stopping_strings` behaviour).

/// The generated text of one sequence and how much of it has been handed out.
#[derive(Debug, Default)]
pub(crate) struct StopText {
    stops: Vec<String>,
    text: String,
    sent: usize,
}

/// The result of adding text.
#[derive(Debug, PartialEq)]
pub(crate) enum Pushed {
    /// Newly safe text (possibly empty).
    Text(String),
    /// A stop string matched: the text before it that was not shown yet, and the stop string.
    Stop { before: String, stop: String },
}

impl StopText {
    pub fn new(stops: Vec<String>) -> StopText {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            sent: 0,
        }
    }

    pub fn push(&mut self, piece: &str) -> Pushed {
        self.text.push_str(piece);
        let tail = &self.text[self.sent..];
        // Everything before `sent` was checked when it was shown, and nothing shown can be the
        // start of a match (it would have been held back), so a match starts in the tail.
        let mut best: Option<(usize, usize)> = None;
        for (i, s) in self.stops.iter().enumerate() {
            if let Some(pos) = tail.find(s.as_str()) {
                if best.is_none_or(|(p, _)| pos < p) {
                    best = Some((pos, i));
                }
            }
        }
        if let Some((pos, i)) = best {
            let before = tail[..pos].to_string();
            self.sent = self.text.len();
            return Pushed::Stop {
                before,
                stop: self.stops[i].clone(),
            };
        }
        let hold = self
            .stops
            .iter()
            .map(|s| partial_suffix(tail, s))
            .max()
            .unwrap_or(0);
        let end = self.text.len() - hold;
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        Pushed::Text(out)
    }

    /// Everything not handed out yet (the generation ended some other way).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, cut at character
/// boundaries.
fn partial_suffix(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&k| {
            stop.is_char_boundary(k)
                && text.is_char_boundary(text.len() - k)
                && text.ends_with(&stop[..k])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut st = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut shown = String::new();
        for p in pieces {
            match st.push(p) {
                Pushed::Text(t) => shown.push_str(&t),
                Pushed::Stop { before, stop } => {
                    shown.push_str(&before);
                    return (shown, Some(stop));
                }
            }
        }
        shown.push_str(&st.finish());
        (shown, None)
    }

    #[test]
    fn stop_split_across_pieces_is_held_back_and_removed() {
        let mut st = StopText::new(vec!["</end>".into()]);
        assert_eq!(st.push("hello </"), Pushed::Text("hello ".into()));
        assert_eq!(st.push("en"), Pushed::Text(String::new()));
        assert_eq!(
            st.push("d> more"),
            Pushed::Stop {
                before: String::new(),
                stop: "</end>".into()
            }
        );
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(
            feed(&["STOP"], &["a ST", "OX b", " ST"]),
            ("a STOX b ST".into(), None)
        );
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(
            feed(&["cd", "b"], &["a", "bcd"]),
            ("a".into(), Some("b".into()))
        );
    }

    #[test]
    fn multibyte_stop_and_text() {
        assert_eq!(
            feed(&["é!"], &["caf", "é", "!x"]),
            ("caf".into(), Some("é!".into()))
        );
        assert_eq!(feed(&["éa"], &["é", "b"]), ("éb".into(), None));
        assert_eq!(feed(&[""], &["x"]), ("x".into(), None));
    }
}
