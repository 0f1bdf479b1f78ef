//! The incremental JSON automaton: a set of parse stacks, one per live `anyOf` alternative, advanced
//! one character at a time. Values whose end is only known from the next character (numbers, and
//! literals such as `1` vs `12`) pop themselves and hand that character to their parent.

use crate::{GrammarError, Schema, MAX_DEPTH, MAX_NODES};

type NodeId = u32;

/// Index of the `Any` node, always present.
const ANY: NodeId = 0;
/// `{...}` with arbitrary keys and values: what `Any` becomes after `{`.
const ANY_OBJECT: NodeId = 1;
/// `[...]` of arbitrary values: what `Any` becomes after `[`.
const ANY_ARRAY: NodeId = 2;
/// A string of any length.
const ANY_STRING: NodeId = 3;
/// A JSON number.
const ANY_NUMBER: NodeId = 4;
/// `true`, `false`, `null`.
const ANY_KEYWORD: NodeId = 5;

/// Longest run of whitespace accepted between tokens: enough for pretty-printed output, short
/// enough that a model cannot stall by emitting blanks forever.
const MAX_WS_RUN: u8 = 24;
/// Digits accepted in each part of a number, so digit loops end.
const MAX_DIGITS: u8 = 18;
/// Parse stacks kept alive at once (anyOf alternatives); more are dropped, oldest kept.
const MAX_STACKS: usize = 64;

#[derive(Clone, Debug)]
enum Node {
    Any,
    Integer,
    Number,
    String {
        min_len: usize,
        max_len: Option<usize>,
    },
    Array {
        prefix: Vec<NodeId>,
        items: Option<NodeId>,
        min_items: usize,
        max_items: Option<usize>,
    },
    Object {
        props: Vec<(String, NodeId)>,
        required: Vec<bool>,
        additional: Option<NodeId>,
    },
    Literal(Vec<String>),
    AnyOf(Vec<NodeId>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumSt {
    Start,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl NumSt {
    fn accepting(self) -> bool {
        matches!(
            self,
            NumSt::Zero | NumSt::Int | NumSt::Frac | NumSt::ExpDigits
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    /// Hex digits of a `\u` escape still expected.
    Hex(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ObjSt {
    Open,
    Key,
    AfterKey,
    AfterValue,
    AfterComma,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArrSt {
    Open,
    AfterValue,
}

#[derive(Clone, Debug)]
enum Frame {
    /// A value of this node comes next (whitespace may precede it).
    Value(NodeId),
    Str {
        min_len: usize,
        max_len: Option<usize>,
        len: usize,
        esc: Esc,
    },
    Num {
        integer: bool,
        st: NumSt,
        digits: u8,
    },
    Lit {
        node: NodeId,
        pos: usize,
        /// Options of the literal still matching the text so far.
        alive: Vec<u16>,
    },
    Obj {
        node: NodeId,
        st: ObjSt,
        seen: Vec<bool>,
        key: String,
    },
    Arr {
        node: NodeId,
        st: ArrSt,
        count: usize,
    },
}

#[derive(Clone, Debug)]
struct Stack {
    frames: Vec<Frame>,
    ws_run: u8,
}

/// Accepts exactly the prefixes of JSON texts valid under a [`Schema`]; feed it text with
/// [`JsonValidator::feed`] and ask [`JsonValidator::is_complete`] whether a full value was seen.
#[derive(Clone, Debug)]
pub struct JsonValidator {
    nodes: std::sync::Arc<Vec<Node>>,
    stacks: Vec<Stack>,
}

struct Compiler {
    nodes: Vec<Node>,
}

impl Compiler {
    fn push(&mut self, n: Node) -> Result<NodeId, GrammarError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(GrammarError::TooLarge { max: MAX_NODES });
        }
        self.nodes.push(n);
        Ok((self.nodes.len() - 1) as NodeId)
    }

    fn compile(&mut self, s: &Schema, depth: usize) -> Result<NodeId, GrammarError> {
        if depth > MAX_DEPTH {
            return Err(GrammarError::TooDeep { max: MAX_DEPTH });
        }
        let node = match s {
            Schema::Any => return Ok(ANY),
            Schema::Null => Node::Literal(vec!["null".into()]),
            Schema::Boolean => Node::Literal(vec!["true".into(), "false".into()]),
            Schema::Integer => Node::Integer,
            Schema::Number => Node::Number,
            Schema::String { min_len, max_len } => {
                if let Some(max) = max_len {
                    if max < min_len {
                        return Err(GrammarError::Unsatisfiable {
                            reason: format!("maxLength {max} < minLength {min_len}"),
                        });
                    }
                }
                Node::String {
                    min_len: *min_len,
                    max_len: *max_len,
                }
            }
            Schema::Array {
                prefix,
                items,
                min_items,
                max_items,
            } => {
                let prefix = prefix
                    .iter()
                    .map(|p| self.compile(p, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                let items = match items {
                    Some(i) => Some(self.compile(i, depth + 1)?),
                    None => None,
                };
                let reachable = if items.is_some() {
                    usize::MAX
                } else {
                    prefix.len()
                };
                if *min_items > reachable || max_items.is_some_and(|m| m < *min_items) {
                    return Err(GrammarError::Unsatisfiable {
                        reason: format!("array needs at least {min_items} items"),
                    });
                }
                Node::Array {
                    prefix,
                    items,
                    min_items: *min_items,
                    max_items: *max_items,
                }
            }
            Schema::Object {
                properties,
                required,
                additional,
            } => {
                let mut props = Vec::with_capacity(properties.len());
                for (name, sch) in properties {
                    if name.contains(['"', '\\']) || name.chars().any(|c| (c as u32) < 0x20) {
                        return Err(GrammarError::Unsatisfiable {
                            reason: format!("property name {name:?} needs escaping"),
                        });
                    }
                    props.push((name.clone(), self.compile(sch, depth + 1)?));
                }
                for r in required {
                    if !properties.iter().any(|(n, _)| n == r) && additional.is_none() {
                        return Err(GrammarError::Unsatisfiable {
                            reason: format!("required property `{r}` is not allowed"),
                        });
                    }
                }
                let req = props
                    .iter()
                    .map(|(n, _)| required.iter().any(|r| r == n))
                    .collect();
                let additional = match additional {
                    Some(a) => Some(self.compile(a, depth + 1)?),
                    None => None,
                };
                Node::Object {
                    props,
                    required: req,
                    additional,
                }
            }
            Schema::Literal(opts) => {
                if opts.is_empty() {
                    return Err(GrammarError::Unsatisfiable {
                        reason: "empty enum".into(),
                    });
                }
                if opts.len() > u16::MAX as usize {
                    return Err(GrammarError::TooLarge { max: MAX_NODES });
                }
                Node::Literal(opts.clone())
            }
            Schema::AnyOf(alts) => {
                if alts.is_empty() {
                    return Err(GrammarError::Unsatisfiable {
                        reason: "empty anyOf".into(),
                    });
                }
                let ids = alts
                    .iter()
                    .map(|a| self.compile(a, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                Node::AnyOf(ids)
            }
        };
        self.push(node)
    }
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

enum Outcome {
    /// The character was consumed.
    Ok,
    /// The character is not allowed here.
    Reject,
    /// The top frame expects an `anyOf`: split the stack and feed the character to each branch.
    Split,
}

impl JsonValidator {
    /// Compiles the schema. The automaton starts before the first character of the value.
    pub fn new(schema: &Schema) -> Result<JsonValidator, GrammarError> {
        let mut c = Compiler {
            nodes: vec![
                Node::Any,
                Node::Object {
                    props: Vec::new(),
                    required: Vec::new(),
                    additional: Some(ANY),
                },
                Node::Array {
                    prefix: Vec::new(),
                    items: Some(ANY),
                    min_items: 0,
                    max_items: None,
                },
                Node::String {
                    min_len: 0,
                    max_len: None,
                },
                Node::Number,
                Node::Literal(vec!["true".into(), "false".into(), "null".into()]),
            ],
        };
        let root = c.compile(schema, 0)?;
        let mut v = JsonValidator {
            nodes: std::sync::Arc::new(c.nodes),
            stacks: vec![Stack {
                frames: vec![Frame::Value(root)],
                ws_run: 0,
            }],
        };
        v.expand();
        Ok(v)
    }

    /// Feeds one character. On `false` the character was rejected and the state is unchanged.
    pub fn feed_char(&mut self, c: char) -> bool {
        let mut next = Vec::with_capacity(self.stacks.len());
        let mut work: Vec<Stack> = self.stacks.iter().rev().cloned().collect();
        let mut splits = 0;
        while let Some(mut s) = work.pop() {
            match self.step(&mut s, c) {
                Outcome::Ok => next.push(s),
                Outcome::Reject => {}
                Outcome::Split => {
                    splits += 1;
                    if splits > MAX_NODES {
                        continue;
                    }
                    // `s` may have changed before the split point (frames pushed or popped):
                    // branch from there, with the character still unconsumed.
                    if let Some(Frame::Value(n)) = s.frames.last() {
                        if let Node::AnyOf(alts) = &self.nodes[*n as usize] {
                            for &a in alts.iter().rev() {
                                let mut b = s.clone();
                                if let Some(last) = b.frames.last_mut() {
                                    *last = Frame::Value(a);
                                }
                                work.push(b);
                            }
                        }
                    }
                }
            }
            if next.len() >= MAX_STACKS {
                break;
            }
        }
        if next.is_empty() {
            return false;
        }
        self.stacks = next;
        self.expand();
        true
    }

    /// Feeds a whole text; `false` (state unchanged) when any character is rejected.
    pub fn feed(&mut self, text: &str) -> bool {
        let saved = self.stacks.clone();
        for c in text.chars() {
            if !self.feed_char(c) {
                self.stacks = saved;
                return false;
            }
        }
        true
    }

    /// Whether `text` could be fed now, without changing the state.
    pub fn accepts(&self, text: &str) -> bool {
        let mut probe = self.clone();
        text.chars().all(|c| probe.feed_char(c))
    }

    /// Whether the text so far is one complete value (it may still be extendable, like `12`).
    pub fn is_complete(&self) -> bool {
        self.stacks.iter().any(|s| self.can_end(s))
    }

    /// Whether nothing but the end of the text may follow.
    pub fn is_finished(&self) -> bool {
        self.stacks.iter().all(|s| s.frames.is_empty())
    }

    /// Only a root value whose end is implicit (a number, a literal like `12`) can still be
    /// open when the text ends; any open container means the text is incomplete.
    fn can_end(&self, s: &Stack) -> bool {
        match s.frames.as_slice() {
            [] => true,
            [Frame::Num { st, .. }] => st.accepting(),
            [Frame::Lit { node, pos, alive }] => self.lit_complete(*node, *pos, alive),
            _ => false,
        }
    }

    fn lit_options(&self, node: NodeId) -> &[String] {
        match &self.nodes[node as usize] {
            Node::Literal(o) => o,
            _ => &[],
        }
    }

    fn lit_complete(&self, node: NodeId, pos: usize, alive: &[u16]) -> bool {
        let opts = self.lit_options(node);
        alive.iter().any(|&i| opts[i as usize].len() == pos)
    }

    /// Replaces every stack whose top expects an `anyOf` by one stack per alternative.
    fn expand(&mut self) {
        let mut i = 0;
        let mut guard = 0;
        while i < self.stacks.len() {
            let alts = match self.stacks[i].frames.last() {
                Some(Frame::Value(n)) => match &self.nodes[*n as usize] {
                    Node::AnyOf(a) => Some(a.clone()),
                    _ => None,
                },
                _ => None,
            };
            match alts {
                Some(alts) => {
                    guard += 1;
                    let base = self.stacks.swap_remove(i);
                    for a in alts {
                        if self.stacks.len() >= MAX_STACKS || guard > MAX_NODES {
                            break;
                        }
                        let mut s = base.clone();
                        if let Some(last) = s.frames.last_mut() {
                            *last = Frame::Value(a);
                        }
                        self.stacks.push(s);
                    }
                }
                None => i += 1,
            }
        }
    }

    fn step(&self, s: &mut Stack, c: char) -> Outcome {
        let ws = is_ws(c);
        let in_string = matches!(s.frames.last(), Some(Frame::Str { .. }))
            || matches!(s.frames.last(), Some(Frame::Obj { st: ObjSt::Key, .. }));
        if ws && !in_string && s.ws_run >= MAX_WS_RUN {
            return Outcome::Reject;
        }
        let out = self.step_inner(s, c);
        if let Outcome::Ok = out {
            if ws && !in_string {
                s.ws_run += 1;
            } else {
                s.ws_run = 0;
            }
        }
        out
    }

    fn step_inner(&self, s: &mut Stack, c: char) -> Outcome {
        loop {
            let depth = s.frames.len();
            let Some(top) = s.frames.last_mut() else {
                // The root value is complete: nothing may follow.
                return Outcome::Reject;
            };
            match top {
                Frame::Value(node) => {
                    if is_ws(c) {
                        return Outcome::Ok;
                    }
                    let node = *node;
                    let target = match &self.nodes[node as usize] {
                        Node::Any => match c {
                            '{' => ANY_OBJECT,
                            '[' => ANY_ARRAY,
                            '"' => ANY_STRING,
                            '-' | '0'..='9' => ANY_NUMBER,
                            't' | 'f' | 'n' => ANY_KEYWORD,
                            _ => return Outcome::Reject,
                        },
                        _ => node,
                    };
                    if depth > 2 * MAX_DEPTH && matches!(c, '{' | '[') {
                        return Outcome::Reject;
                    }
                    let frame = match &self.nodes[target as usize] {
                        Node::Integer | Node::Number => {
                            let integer = matches!(self.nodes[target as usize], Node::Integer);
                            Frame::Num {
                                integer,
                                st: NumSt::Start,
                                digits: 0,
                            }
                        }
                        Node::String { min_len, max_len } => {
                            if c != '"' {
                                return Outcome::Reject;
                            }
                            *top = Frame::Str {
                                min_len: *min_len,
                                max_len: *max_len,
                                len: 0,
                                esc: Esc::None,
                            };
                            return Outcome::Ok;
                        }
                        Node::Literal(opts) => Frame::Lit {
                            node: target,
                            pos: 0,
                            alive: (0..opts.len() as u16).collect(),
                        },
                        Node::Object { props, .. } => {
                            if c != '{' {
                                return Outcome::Reject;
                            }
                            *top = Frame::Obj {
                                node: target,
                                st: ObjSt::Open,
                                seen: vec![false; props.len()],
                                key: String::new(),
                            };
                            return Outcome::Ok;
                        }
                        Node::Array { .. } => {
                            if c != '[' {
                                return Outcome::Reject;
                            }
                            *top = Frame::Arr {
                                node: target,
                                st: ArrSt::Open,
                                count: 0,
                            };
                            return Outcome::Ok;
                        }
                        Node::AnyOf(_) => return Outcome::Split,
                        Node::Any => return Outcome::Reject,
                    };
                    *top = frame;
                    // Re-run with the new frame on the same character.
                }
                Frame::Str {
                    min_len,
                    max_len,
                    len,
                    esc,
                } => {
                    match *esc {
                        Esc::Backslash => {
                            *esc = match c {
                                '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => Esc::None,
                                'u' => Esc::Hex(4),
                                _ => return Outcome::Reject,
                            };
                            if *esc == Esc::None {
                                *len += 1;
                            }
                            return Outcome::Ok;
                        }
                        Esc::Hex(n) => {
                            if !c.is_ascii_hexdigit() {
                                return Outcome::Reject;
                            }
                            if n == 1 {
                                *esc = Esc::None;
                                *len += 1;
                            } else {
                                *esc = Esc::Hex(n - 1);
                            }
                            return Outcome::Ok;
                        }
                        Esc::None => {}
                    }
                    if c == '"' {
                        if *len < *min_len {
                            return Outcome::Reject;
                        }
                        s.frames.pop();
                        return Outcome::Ok;
                    }
                    if (c as u32) < 0x20 {
                        return Outcome::Reject;
                    }
                    if max_len.is_some_and(|m| *len >= m) {
                        return Outcome::Reject;
                    }
                    if c == '\\' {
                        *esc = Esc::Backslash;
                    } else {
                        *len += 1;
                    }
                    return Outcome::Ok;
                }
                Frame::Num {
                    integer,
                    st,
                    digits,
                } => {
                    let d = c.is_ascii_digit();
                    let next = match (*st, c) {
                        (NumSt::Start, '-') => Some(NumSt::Minus),
                        (NumSt::Start | NumSt::Minus, '0') => Some(NumSt::Zero),
                        (NumSt::Start | NumSt::Minus, _) if d => Some(NumSt::Int),
                        (NumSt::Int, _) if d => Some(NumSt::Int),
                        (NumSt::Zero | NumSt::Int, '.') if !*integer => Some(NumSt::Dot),
                        (NumSt::Dot | NumSt::Frac, _) if d => Some(NumSt::Frac),
                        (NumSt::Zero | NumSt::Int | NumSt::Frac, 'e' | 'E') if !*integer => {
                            Some(NumSt::Exp)
                        }
                        (NumSt::Exp, '+' | '-') => Some(NumSt::ExpSign),
                        (NumSt::Exp | NumSt::ExpSign | NumSt::ExpDigits, _) if d => {
                            Some(NumSt::ExpDigits)
                        }
                        _ => None,
                    };
                    match next {
                        Some(n) => {
                            if d {
                                let same_part = n == *st
                                    || (matches!(*st, NumSt::Dot) && n == NumSt::Frac)
                                    || (matches!(*st, NumSt::Exp | NumSt::ExpSign)
                                        && n == NumSt::ExpDigits);
                                *digits = if same_part && n == *st {
                                    *digits + 1
                                } else {
                                    1
                                };
                                if *digits > MAX_DIGITS {
                                    return Outcome::Reject;
                                }
                            }
                            *st = n;
                            return Outcome::Ok;
                        }
                        None if st.accepting() => {
                            s.frames.pop();
                            // Hand the character to the parent.
                        }
                        None => return Outcome::Reject,
                    }
                }
                Frame::Lit { node, pos, alive } => {
                    let opts = self.lit_options(*node);
                    let p = *pos;
                    let mut buf = [0u8; 4];
                    let cb = c.encode_utf8(&mut buf).as_bytes();
                    let still: Vec<u16> = alive
                        .iter()
                        .copied()
                        .filter(|&i| opts[i as usize].as_bytes().get(p..p + cb.len()) == Some(cb))
                        .collect();
                    if !still.is_empty() {
                        *alive = still;
                        *pos += cb.len();
                        return Outcome::Ok;
                    }
                    if alive.iter().any(|&i| opts[i as usize].len() == p) {
                        s.frames.pop();
                        // Hand the character to the parent.
                    } else {
                        return Outcome::Reject;
                    }
                }
                Frame::Obj {
                    node,
                    st,
                    seen,
                    key,
                } => {
                    let Node::Object {
                        props,
                        required,
                        additional,
                    } = &self.nodes[*node as usize]
                    else {
                        return Outcome::Reject;
                    };
                    let can_close = || required.iter().zip(seen.iter()).all(|(r, s)| !r || *s);
                    let can_add = |seen: &[bool]| additional.is_some() || seen.iter().any(|s| !*s);
                    match *st {
                        ObjSt::Open | ObjSt::AfterComma | ObjSt::AfterValue if is_ws(c) => {
                            return Outcome::Ok
                        }
                        ObjSt::AfterKey if is_ws(c) => return Outcome::Ok,
                        ObjSt::Open | ObjSt::AfterValue if c == '}' => {
                            if !can_close() {
                                return Outcome::Reject;
                            }
                            s.frames.pop();
                            return Outcome::Ok;
                        }
                        ObjSt::AfterValue if c == ',' => {
                            if !can_add(seen) {
                                return Outcome::Reject;
                            }
                            *st = ObjSt::AfterComma;
                            return Outcome::Ok;
                        }
                        ObjSt::Open | ObjSt::AfterComma if c == '"' => {
                            if !can_add(seen) {
                                return Outcome::Reject;
                            }
                            key.clear();
                            *st = ObjSt::Key;
                            return Outcome::Ok;
                        }
                        ObjSt::Key => {
                            if c == '"' {
                                let known = props
                                    .iter()
                                    .enumerate()
                                    .any(|(i, (n, _))| !seen[i] && n == key.as_str());
                                if !known && additional.is_none() {
                                    return Outcome::Reject;
                                }
                                *st = ObjSt::AfterKey;
                                return Outcome::Ok;
                            }
                            if c == '\\' || (c as u32) < 0x20 {
                                return Outcome::Reject;
                            }
                            key.push(c);
                            let ok = additional.is_some()
                                || props
                                    .iter()
                                    .enumerate()
                                    .any(|(i, (n, _))| !seen[i] && n.starts_with(key.as_str()));
                            if !ok {
                                return Outcome::Reject;
                            }
                            return Outcome::Ok;
                        }
                        ObjSt::AfterKey if c == ':' => {
                            let idx = props
                                .iter()
                                .enumerate()
                                .position(|(i, (n, _))| !seen[i] && n == key.as_str());
                            let value = match idx {
                                Some(i) => {
                                    seen[i] = true;
                                    props[i].1
                                }
                                None => match additional {
                                    Some(a) => *a,
                                    None => return Outcome::Reject,
                                },
                            };
                            *st = ObjSt::AfterValue;
                            s.frames.push(Frame::Value(value));
                            return Outcome::Ok;
                        }
                        _ => return Outcome::Reject,
                    }
                }
                Frame::Arr { node, st, count } => {
                    let Node::Array {
                        prefix,
                        items,
                        min_items,
                        max_items,
                    } = &self.nodes[*node as usize]
                    else {
                        return Outcome::Reject;
                    };
                    let item_at = |i: usize| prefix.get(i).copied().or(*items);
                    let room = |n: usize| max_items.is_none_or(|m| n < m) && item_at(n).is_some();
                    if is_ws(c) {
                        return Outcome::Ok;
                    }
                    if c == ']' {
                        if *count < *min_items {
                            return Outcome::Reject;
                        }
                        s.frames.pop();
                        return Outcome::Ok;
                    }
                    match *st {
                        ArrSt::Open => {
                            if !room(0) {
                                return Outcome::Reject;
                            }
                            let Some(item) = item_at(0) else {
                                return Outcome::Reject;
                            };
                            *st = ArrSt::AfterValue;
                            *count = 1;
                            s.frames.push(Frame::Value(item));
                            // Re-run: the character starts the first item.
                        }
                        ArrSt::AfterValue => {
                            if c != ',' || !room(*count) {
                                return Outcome::Reject;
                            }
                            let Some(item) = item_at(*count) else {
                                return Outcome::Reject;
                            };
                            *count += 1;
                            s.frames.push(Frame::Value(item));
                            return Outcome::Ok;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &Schema) -> JsonValidator {
        JsonValidator::new(s).unwrap()
    }

    fn full(s: &Schema, text: &str) -> bool {
        let mut x = v(s);
        x.feed(text) && x.is_complete()
    }

    fn obj(props: &[(&str, Schema)], req: &[&str]) -> Schema {
        Schema::Object {
            properties: props
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect(),
            required: req.iter().map(|s| s.to_string()).collect(),
            additional: None,
        }
    }

    fn string() -> Schema {
        Schema::String {
            min_len: 0,
            max_len: None,
        }
    }

    #[test]
    fn any_accepts_json_and_rejects_garbage() {
        for t in [
            "{}",
            "[]",
            "{\"a\": [1, 2.5, -3e4, true, null, \"x\\n\\u00e9\"]}",
            "\"s\"",
            "0",
            "-0.5E+3",
            " [ {} , [ ] ]",
        ] {
            assert!(full(&Schema::Any, t), "{t}");
        }
        for t in [
            "{,}",
            "[1,]",
            "01",
            "{\"a\" 1}",
            "tru e",
            "[1 2]",
            "\"\n\"",
            "{'a':1}",
            "+1",
        ] {
            assert!(!full(&Schema::Any, t), "{t}");
        }
    }

    #[test]
    fn prefixes_are_accepted_but_not_complete() {
        let mut x = v(&Schema::Any);
        assert!(x.feed("{\"a\": [1"));
        assert!(!x.is_complete());
        assert!(x.feed("]}"));
        assert!(x.is_complete());
        assert!(!x.accepts("x"));
        assert!(x.is_finished());
    }

    #[test]
    fn object_schema_enforces_keys_types_and_required() {
        let s = obj(
            &[
                ("name", string()),
                ("age", Schema::Integer),
                ("ok", Schema::Boolean),
            ],
            &["name", "age"],
        );
        assert!(full(&s, "{\"name\": \"Bob\", \"age\": 3}"));
        assert!(full(&s, "{\"age\":3,\"name\":\"\",\"ok\":false}"));
        assert!(!full(&s, "{\"name\": \"Bob\"}"), "missing required");
        assert!(!full(&s, "{\"name\": \"Bob\", \"age\": 3.5}"), "integer");
        assert!(!full(&s, "{\"nam\": 1}"), "unknown key");
        assert!(
            !full(&s, "{\"name\": \"a\", \"name\": \"b\", \"age\": 1}"),
            "dup"
        );
        let mut x = v(&s);
        assert!(x.feed("{\"name\": \"x\", \"age\": 1"));
        assert!(!x.accepts(",\"foo"));
        assert!(x.accepts(", \"ok\": true}"));
    }

    #[test]
    fn enums_consts_and_number_boundaries() {
        let e = Schema::Literal(vec![
            "\"red\"".into(),
            "\"green\"".into(),
            "1".into(),
            "12".into(),
        ]);
        assert!(full(&e, "\"red\""));
        assert!(full(&e, "1"));
        assert!(full(&e, "12"));
        assert!(!full(&e, "\"blue\""));
        assert!(!full(&e, "123"));
        let arr = Schema::Array {
            prefix: vec![],
            items: Some(Box::new(e.clone())),
            min_items: 1,
            max_items: Some(2),
        };
        assert!(full(&arr, "[1,12]"));
        assert!(!full(&arr, "[]"));
        assert!(!full(&arr, "[1,1,1]"));
        assert!(full(&Schema::Integer, "-42"));
        assert!(!full(&Schema::Integer, "4.2"));
    }

    #[test]
    fn any_of_keeps_alternatives_alive() {
        let s = Schema::AnyOf(vec![Schema::Null, string(), Schema::Number]);
        assert!(full(&s, "null"));
        assert!(full(&s, "\"x\""));
        assert!(full(&s, "3.5"));
        assert!(!full(&s, "true"));
        let o = obj(&[("v", s)], &["v"]);
        assert!(full(&o, "{\"v\": null}"));
        assert!(full(&o, "{\"v\": 1}"));
    }

    #[test]
    fn string_length_limits() {
        let s = Schema::String {
            min_len: 2,
            max_len: Some(3),
        };
        assert!(full(&s, "\"ab\""));
        assert!(full(&s, "\"a\\nc\""));
        assert!(!full(&s, "\"a\""));
        assert!(!full(&s, "\"abcd\""));
    }

    #[test]
    fn whitespace_and_digit_runs_are_bounded() {
        let mut x = v(&Schema::Any);
        assert!(x.feed("["));
        assert!(!x.accepts(&" ".repeat(MAX_WS_RUN as usize + 1)));
        assert!(!x.accepts(&"1".repeat(MAX_DIGITS as usize + 1)));
        assert!(x.accepts(&"1".repeat(MAX_DIGITS as usize)));
    }

    #[test]
    fn nesting_is_bounded_for_any() {
        let mut x = v(&Schema::Any);
        let mut fed = 0;
        while fed < 500 && x.feed_char('[') {
            fed += 1;
        }
        assert!(fed < 500);
    }

    #[test]
    fn hostile_schemas_are_rejected() {
        let mut s = Schema::Any;
        for _ in 0..100 {
            s = Schema::Array {
                prefix: vec![],
                items: Some(Box::new(s)),
                min_items: 0,
                max_items: None,
            };
        }
        assert!(matches!(
            JsonValidator::new(&s),
            Err(GrammarError::TooDeep { .. })
        ));
        assert!(JsonValidator::new(&Schema::Literal(vec![])).is_err());
        let bad = obj(&[("a", Schema::Null)], &["b"]);
        assert!(JsonValidator::new(&bad).is_err());
    }
}
