//! llama.cpp's GBNF grammars (the `grammar` request field): a parser for the format and a
//! matcher that keeps every parse stack alive at once, as llama.cpp's grammar sampler does.
//!
//! Supported: rules `name ::= ...`, alternatives `|`, literals `"..."` with escapes, character
//! classes `[a-z]` / `[^...]`, `.`, groups `( ... )`, rule references, and the repetition
//! operators `*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}`. Repetitions become helper rules, so the
//! matcher only knows characters and rule references.

use std::collections::HashMap;

use crate::GrammarError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Elem {
    /// Index into the class table.
    Chars(u32),
    Rule(u32),
}

#[derive(Clone, Debug)]
struct Class {
    ranges: Vec<(char, char)>,
    negated: bool,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= c && c <= b) != self.negated
    }
}

/// A compiled grammar.
#[derive(Clone, Debug)]
pub struct Grammar {
    /// rule -> alternatives -> elements.
    rules: Vec<Vec<Vec<Elem>>>,
    classes: Vec<Class>,
    root: u32,
}

/// Most rules (including helper rules) a grammar may compile to.
const MAX_RULES: usize = 4096;
/// Most repetitions a bounded `{m,n}` may expand to.
const MAX_REPEAT: usize = 256;

struct Parser<'a> {
    src: &'a [char],
    pos: usize,
    rules: Vec<Vec<Vec<Elem>>>,
    names: HashMap<String, u32>,
    defined: Vec<bool>,
    classes: Vec<Class>,
}

fn err(msg: impl Into<String>) -> GrammarError {
    GrammarError::Syntax {
        message: msg.into(),
    }
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<char> {
        self.src.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while let Some(c) = self.peek() {
                    if c == '\n' {
                        break;
                    }
                    self.pos += 1;
                }
            } else if c.is_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn name(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(is_word) {
            self.pos += 1;
        }
        (self.pos > start).then(|| self.src[start..self.pos].iter().collect())
    }

    /// Whether a new rule definition (`name ::=`) starts here.
    fn at_rule_start(&self) -> bool {
        let mut p = self.pos;
        let start = p;
        while self.src.get(p).is_some_and(|&c| is_word(c)) {
            p += 1;
        }
        if p == start {
            return false;
        }
        while self.src.get(p).is_some_and(|c| c.is_whitespace()) {
            p += 1;
        }
        self.src.get(p..p + 3) == Some(&[':', ':', '='])
    }

    fn rule_id(&mut self, name: &str) -> Result<u32, GrammarError> {
        if let Some(&id) = self.names.get(name) {
            return Ok(id);
        }
        let id = self.new_rule()?;
        self.names.insert(name.to_string(), id);
        Ok(id)
    }

    fn new_rule(&mut self) -> Result<u32, GrammarError> {
        if self.rules.len() >= MAX_RULES {
            return Err(GrammarError::TooLarge { max: MAX_RULES });
        }
        self.rules.push(Vec::new());
        self.defined.push(false);
        Ok((self.rules.len() - 1) as u32)
    }

    fn class(&mut self, c: Class) -> Elem {
        self.classes.push(c);
        Elem::Chars((self.classes.len() - 1) as u32)
    }

    fn escape(&mut self) -> Result<char, GrammarError> {
        let c = self.peek().ok_or_else(|| err("unfinished escape"))?;
        self.pos += 1;
        let hex = |p: &mut Parser, n: usize| -> Result<char, GrammarError> {
            let s: String = p
                .src
                .get(p.pos..p.pos + n)
                .ok_or_else(|| err("short \\x escape"))?
                .iter()
                .collect();
            p.pos += n;
            u32::from_str_radix(&s, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| err(format!("bad escape \\{s}")))
        };
        Ok(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            '0' => '\0',
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            other => other,
        })
    }

    fn parse_alternatives(&mut self, nested: bool) -> Result<Vec<Vec<Elem>>, GrammarError> {
        let mut alts = vec![self.parse_sequence(nested)?];
        loop {
            self.skip_space();
            if self.peek() == Some('|') {
                self.pos += 1;
                alts.push(self.parse_sequence(nested)?);
            } else {
                return Ok(alts);
            }
        }
    }

    fn parse_sequence(&mut self, nested: bool) -> Result<Vec<Elem>, GrammarError> {
        let mut seq: Vec<Elem> = Vec::new();
        let mut last_start: Option<usize> = None;
        loop {
            self.skip_space();
            let Some(c) = self.peek() else { break };
            if c == '|' || c == ')' {
                break;
            }
            if !nested && self.at_rule_start() {
                break;
            }
            match c {
                '"' => {
                    self.pos += 1;
                    last_start = Some(seq.len());
                    loop {
                        let c = self
                            .peek()
                            .ok_or_else(|| err("unterminated string literal"))?;
                        self.pos += 1;
                        let ch = match c {
                            '"' => break,
                            '\\' => self.escape()?,
                            c => c,
                        };
                        let e = self.class(Class {
                            ranges: vec![(ch, ch)],
                            negated: false,
                        });
                        seq.push(e);
                    }
                }
                '[' => {
                    self.pos += 1;
                    let negated = self.peek() == Some('^');
                    if negated {
                        self.pos += 1;
                    }
                    let mut ranges = Vec::new();
                    loop {
                        let c = self
                            .peek()
                            .ok_or_else(|| err("unterminated character class"))?;
                        self.pos += 1;
                        if c == ']' {
                            break;
                        }
                        let lo = if c == '\\' { self.escape()? } else { c };
                        let hi = if self.peek() == Some('-')
                            && self.src.get(self.pos + 1) != Some(&']')
                        {
                            self.pos += 1;
                            let c = self.peek().ok_or_else(|| err("unterminated range"))?;
                            self.pos += 1;
                            if c == '\\' {
                                self.escape()?
                            } else {
                                c
                            }
                        } else {
                            lo
                        };
                        ranges.push((lo, hi));
                    }
                    last_start = Some(seq.len());
                    let e = self.class(Class { ranges, negated });
                    seq.push(e);
                }
                '.' => {
                    self.pos += 1;
                    last_start = Some(seq.len());
                    let e = self.class(Class {
                        ranges: Vec::new(),
                        negated: true,
                    });
                    seq.push(e);
                }
                '(' => {
                    self.pos += 1;
                    let alts = self.parse_alternatives(true)?;
                    self.skip_space();
                    if self.peek() != Some(')') {
                        return Err(err("expected `)`"));
                    }
                    self.pos += 1;
                    let id = self.new_rule()?;
                    self.rules[id as usize] = alts;
                    self.defined[id as usize] = true;
                    last_start = Some(seq.len());
                    seq.push(Elem::Rule(id));
                }
                '*' | '+' | '?' | '{' => {
                    let start = last_start.ok_or_else(|| err(format!("`{c}` follows nothing")))?;
                    let (min, max) = match c {
                        '*' => {
                            self.pos += 1;
                            (0, None)
                        }
                        '+' => {
                            self.pos += 1;
                            (1, None)
                        }
                        '?' => {
                            self.pos += 1;
                            (0, Some(1))
                        }
                        _ => self.parse_braces()?,
                    };
                    let item: Vec<Elem> = seq.drain(start..).collect();
                    let rep = self.repeat(item, min, max)?;
                    last_start = None;
                    seq.extend(rep);
                }
                c if is_word(c) => {
                    let name = self.name().unwrap_or_default();
                    let id = self.rule_id(&name)?;
                    last_start = Some(seq.len());
                    seq.push(Elem::Rule(id));
                }
                other => return Err(err(format!("unexpected `{other}`"))),
            }
        }
        Ok(seq)
    }

    fn number(&mut self) -> Option<usize> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let s: String = self.src[start..self.pos].iter().collect();
        s.parse().ok()
    }

    fn parse_braces(&mut self) -> Result<(usize, Option<usize>), GrammarError> {
        self.pos += 1;
        self.skip_space();
        let min = self
            .number()
            .ok_or_else(|| err("expected a number after `{`"))?;
        self.skip_space();
        let max = match self.peek() {
            Some('}') => Some(min),
            Some(',') => {
                self.pos += 1;
                self.skip_space();
                if self.peek() == Some('}') {
                    None
                } else {
                    Some(
                        self.number()
                            .ok_or_else(|| err("expected a number after `,`"))?,
                    )
                }
            }
            _ => return Err(err("malformed repetition")),
        };
        self.skip_space();
        if self.peek() != Some('}') {
            return Err(err("expected `}`"));
        }
        self.pos += 1;
        if max.is_some_and(|m| m < min) || min > MAX_REPEAT || max.is_some_and(|m| m > MAX_REPEAT) {
            return Err(err("bad repetition bounds"));
        }
        Ok((min, max))
    }

    /// `item{min,max}` as rule references: `min` copies, then a star rule or nested optionals.
    fn repeat(
        &mut self,
        item: Vec<Elem>,
        min: usize,
        max: Option<usize>,
    ) -> Result<Vec<Elem>, GrammarError> {
        let mut out = Vec::new();
        for _ in 0..min {
            out.extend(item.iter().copied());
        }
        match max {
            None => {
                // star ::= item star | ε
                let star = self.new_rule()?;
                let mut alt = item.clone();
                alt.push(Elem::Rule(star));
                self.rules[star as usize] = vec![alt, Vec::new()];
                self.defined[star as usize] = true;
                out.push(Elem::Rule(star));
            }
            Some(max) => {
                // opt_k ::= item opt_{k-1} | ε, innermost first.
                let mut next: Option<u32> = None;
                for _ in min..max {
                    let r = self.new_rule()?;
                    let mut alt = item.clone();
                    if let Some(n) = next {
                        alt.push(Elem::Rule(n));
                    }
                    self.rules[r as usize] = vec![alt, Vec::new()];
                    self.defined[r as usize] = true;
                    next = Some(r);
                }
                if let Some(n) = next {
                    out.push(Elem::Rule(n));
                }
            }
        }
        Ok(out)
    }
}

impl Grammar {
    /// Parses GBNF text; the start rule is `root`.
    pub fn parse(text: &str) -> Result<Grammar, GrammarError> {
        let src: Vec<char> = text.chars().collect();
        let mut p = Parser {
            src: &src,
            pos: 0,
            rules: Vec::new(),
            names: HashMap::new(),
            defined: Vec::new(),
            classes: Vec::new(),
        };
        loop {
            p.skip_space();
            if p.peek().is_none() {
                break;
            }
            let name = p.name().ok_or_else(|| err("expected a rule name"))?;
            p.skip_space();
            if p.src.get(p.pos..p.pos + 3) != Some(&[':', ':', '=']) {
                return Err(err(format!("expected `::=` after `{name}`")));
            }
            p.pos += 3;
            let alts = p.parse_alternatives(false)?;
            p.skip_space();
            if p.peek() == Some(')') {
                return Err(err("unbalanced `)`"));
            }
            let id = p.rule_id(&name)?;
            if p.defined[id as usize] {
                return Err(err(format!("rule `{name}` is defined twice")));
            }
            p.rules[id as usize] = alts;
            p.defined[id as usize] = true;
        }
        for (name, &id) in &p.names {
            if !p.defined[id as usize] {
                return Err(err(format!("rule `{name}` is used but never defined")));
            }
        }
        let root = *p
            .names
            .get("root")
            .ok_or_else(|| err("the grammar has no `root` rule"))?;
        Ok(Grammar {
            rules: p.rules,
            classes: p.classes,
            root,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Pos {
    rule: u32,
    alt: u32,
    idx: u32,
}

/// Most parse stacks kept alive at once.
const MAX_STACKS: usize = 4096;
/// Deepest rule nesting followed while expanding (guards left recursion).
const MAX_EXPAND_DEPTH: usize = 512;

/// Accepts exactly the prefixes of texts the grammar generates.
#[derive(Clone, Debug)]
pub struct GbnfMatcher {
    g: std::sync::Arc<Grammar>,
    stacks: Vec<Vec<Pos>>,
}

impl GbnfMatcher {
    pub fn new(g: Grammar) -> GbnfMatcher {
        let g = std::sync::Arc::new(g);
        let mut stacks = Vec::new();
        for alt in 0..g.rules[g.root as usize].len() {
            expand(
                &g,
                vec![Pos {
                    rule: g.root,
                    alt: alt as u32,
                    idx: 0,
                }],
                &mut stacks,
                0,
            );
        }
        stacks.sort();
        stacks.dedup();
        GbnfMatcher { g, stacks }
    }

    /// Feeds one character; `false` (state unchanged) when no parse allows it.
    pub fn feed_char(&mut self, c: char) -> bool {
        let mut next = Vec::new();
        for s in &self.stacks {
            let Some(top) = s.last() else { continue };
            let Elem::Chars(k) =
                self.g.rules[top.rule as usize][top.alt as usize][top.idx as usize]
            else {
                continue;
            };
            if !self.g.classes[k as usize].matches(c) {
                continue;
            }
            let mut n = s.clone();
            if let Some(t) = n.last_mut() {
                t.idx += 1;
            }
            expand(&self.g, n, &mut next, 0);
            if next.len() > MAX_STACKS {
                break;
            }
        }
        if next.is_empty() {
            return false;
        }
        next.sort();
        next.dedup();
        self.stacks = next;
        true
    }

    /// Whether the text so far is a complete sentence of the grammar.
    pub fn is_complete(&self) -> bool {
        self.stacks.iter().any(|s| s.is_empty())
    }

    /// Whether nothing may follow.
    pub fn is_finished(&self) -> bool {
        self.stacks.iter().all(|s| s.is_empty())
    }
}

/// Advances a stack until its top element is a character class (or it is empty, meaning the
/// root rule is complete), collecting every resulting stack.
fn expand(g: &Grammar, mut stack: Vec<Pos>, out: &mut Vec<Vec<Pos>>, depth: usize) {
    if depth > MAX_EXPAND_DEPTH || out.len() > MAX_STACKS {
        return;
    }
    loop {
        let Some(&top) = stack.last() else {
            out.push(stack);
            return;
        };
        let elems = &g.rules[top.rule as usize][top.alt as usize];
        if top.idx as usize >= elems.len() {
            stack.pop();
            if let Some(t) = stack.last_mut() {
                t.idx += 1;
            }
            continue;
        }
        match elems[top.idx as usize] {
            Elem::Chars(_) => {
                out.push(stack);
                return;
            }
            Elem::Rule(r) => {
                if stack.len() > MAX_EXPAND_DEPTH {
                    return;
                }
                for alt in 0..g.rules[r as usize].len() {
                    let mut s = stack.clone();
                    s.push(Pos {
                        rule: r,
                        alt: alt as u32,
                        idx: 0,
                    });
                    expand(g, s, out, depth + 1);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(g: &str, text: &str) -> bool {
        let mut m = GbnfMatcher::new(Grammar::parse(g).unwrap());
        text.chars().all(|c| m.feed_char(c)) && m.is_complete()
    }

    #[test]
    fn repetition_bounds_are_exact() {
        let g = r#"root ::= "a"{5,5}"#;
        assert!(accepts(g, "aaaaa"));
        assert!(!accepts(g, "aaaa"));
        assert!(!accepts(g, "aaaaaa"));
        let mut m = GbnfMatcher::new(Grammar::parse(g).unwrap());
        for _ in 0..5 {
            assert!(m.feed_char('a'));
        }
        assert!(m.is_finished());
        assert!(accepts(r#"root ::= "ab"{1,3} "c""#, "ababc"));
        assert!(!accepts(r#"root ::= "ab"{1,3} "c""#, "abababab c"));
    }

    #[test]
    fn rules_classes_groups_and_operators() {
        let g = r#"
            # a tiny arithmetic grammar
            root ::= expr
            expr ::= term ( [+-] term )*
            term ::= [0-9]+ | "(" expr ")"
        "#;
        assert!(accepts(g, "1+22-(3+4)"));
        assert!(!accepts(g, "1+"));
        assert!(!accepts(g, "a"));
        assert!(accepts(r#"root ::= [^x]? "y""#, "zy"));
        assert!(accepts(r#"root ::= [^x]? "y""#, "y"));
        assert!(!accepts(r#"root ::= [^x]? "y""#, "xy"));
        assert!(accepts(r#"root ::= "\n" . "\x41""#, "\nqA"));
    }

    #[test]
    fn invalid_grammars_are_refused() {
        for g in [
            "root ::= this is (not valid GBNF",
            "root ::= undefined-rule",
            "expr ::= \"a\"",
            "root ::= \"unterminated",
            "root ::= [a-",
            "root ::= * \"a\"",
            "root ::= \"a\"{3,1}",
            "root \"a\"",
        ] {
            assert!(Grammar::parse(g).is_err(), "{g}");
        }
    }

    #[test]
    fn left_recursion_does_not_hang() {
        let g = Grammar::parse("root ::= root \"a\" | \"b\"").unwrap();
        let mut m = GbnfMatcher::new(g);
        assert!(m.feed_char('b'));
    }
}
