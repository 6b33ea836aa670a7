//! Prompt weights as ComfyUI reads them: `(text)` ×1.1, `(text:w)` sets the weight to w (it
//! replaces, nesting multiplies only the ×1.1 of bare parentheses), `\(` `\)` are literal.
//! There is no `[text]` and no `BREAK`.
//!
//! Reference: ComfyUI `comfy/sd1_clip.py` `parse_parentheses`, `token_weights`,
//! `escape_important` / `unescape_important`.

/// The prompt as (segment, weight) pairs, in order, escapes resolved.
pub fn comfy_token_weights(text: &str) -> Vec<(String, f64)> {
    let escaped = text.replace("\\)", "\0\u{1}").replace("\\(", "\0\u{2}");
    token_weights(&escaped, 1.0)
        .into_iter()
        .map(|(s, w)| (s.replace("\0\u{1}", ")").replace("\0\u{2}", "("), w))
        .collect()
}

/// Top-level split into plain runs and balanced `( … )` groups (an unclosed group runs to the
/// end; a stray `)` closes nothing and stays in the text).
fn parse_parentheses(s: &str) -> Vec<String> {
    let mut result = Vec::new();
    let mut current = String::new();
    let mut nesting = 0i32;
    for c in s.chars() {
        match c {
            '(' => {
                if nesting == 0 {
                    if !current.is_empty() {
                        result.push(std::mem::take(&mut current));
                    }
                    current.push('(');
                } else {
                    current.push(c);
                }
                nesting += 1;
            }
            ')' => {
                nesting -= 1;
                if nesting == 0 {
                    current.push(')');
                    result.push(std::mem::take(&mut current));
                } else {
                    current.push(c);
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        result.push(current);
    }
    result
}

fn token_weights(s: &str, current_weight: f64) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for x in parse_parentheses(s) {
        if x.chars().count() >= 2 && x.starts_with('(') && x.ends_with(')') {
            let mut inner = &x[1..x.len() - 1];
            let mut weight = current_weight * 1.1;
            // `x.rfind(":") > 0`, then Python's `float()` of the tail.
            if let Some(colon) = inner.rfind(':').filter(|&i| i > 0)
                && let Some(w) = python_float(&inner[colon + 1..])
            {
                weight = w;
                inner = &inner[..colon];
            }
            out.extend(token_weights(inner, weight));
        } else {
            out.push((x, current_weight));
        }
    }
    out
}

/// `float(s)`: surrounding whitespace allowed, `_` between digits allowed.
fn python_float(s: &str) -> Option<f64> {
    let s = s.trim();
    let cleaned: String = s.chars().filter(|&c| c != '_').collect();
    if cleaned.len() != s.len() && (s.starts_with('_') || s.ends_with('_') || s.contains("__")) {
        return None;
    }
    cleaned.parse().ok()
}

/// A word of a prompt segment: text to tokenize, or an embedding's token vectors.
#[derive(Clone, Debug, PartialEq)]
pub enum Word {
    Text(String),
    Embedding(Vec<Vec<f32>>),
}

/// `SDTokenizer.tokenize_with_weights`' words of one weighted segment: split before
/// " embedding:" and "\nembedding:", each word tokenized on its own. A word naming an
/// embedding becomes its vectors (`lookup`, as `_try_get_embedding`: the name up to the first
/// whitespace, else without its commas); one that `lookup` cannot find is dropped with a
/// warning, as ComfyUI drops it. The text after the name stays a word of its own.
pub fn comfy_words(segment: &str, lookup: &dyn Fn(&str) -> Option<Vec<Vec<f32>>>) -> Vec<Word> {
    const ID: &str = "embedding:";
    let mut pieces = Vec::new();
    let (mut rest, mut prefix) = (segment, "");
    loop {
        let next = [" embedding:", "\nembedding:"]
            .iter()
            .filter_map(|p| rest.find(p))
            .min();
        match next {
            Some(i) => {
                pieces.push(format!("{prefix}{}", &rest[..i]));
                rest = &rest[i + 1 + ID.len()..];
                prefix = ID;
            }
            None => {
                pieces.push(format!("{prefix}{rest}"));
                break;
            }
        }
    }
    let mut words = Vec::new();
    for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
        let Some(name) = piece.strip_prefix(ID) else {
            words.push(Word::Text(piece));
            continue;
        };
        let name = name.trim_matches('\n');
        let mut parts = name.split_whitespace();
        let first = parts.next().unwrap_or_default();
        let mut leftover = parts.collect::<Vec<_>>().join(" ");
        let mut found = lookup(first);
        let stripped = first.trim_matches(',');
        if found.is_none() && stripped.len() < first.len() {
            found = lookup(stripped);
            let tail: String = first.chars().skip(stripped.chars().count()).collect();
            leftover = format!("{tail} {leftover}");
        }
        match found {
            Some(vectors) => words.push(Word::Embedding(vectors)),
            None => tracing::warn!("embedding:{name} does not exist, ignoring"),
        }
        if !leftover.is_empty() {
            words.push(Word::Text(leftover));
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_replace_and_bare_parentheses_multiply() {
        let parts = comfy_token_weights("a (b:1.3) ((c)) \\(d\\) (e:x)");
        let expect = [
            ("a ", 1.0),
            ("b", 1.3),
            (" ", 1.0),
            ("c", 1.1 * 1.1),
            (" (d) ", 1.0),
            ("e:x", 1.1),
        ];
        assert_eq!(parts.len(), expect.len(), "{parts:?}");
        for ((s, w), (es, ew)) in parts.iter().zip(expect) {
            assert_eq!(s, es);
            assert!((w - ew).abs() < 1e-12, "{s}: {w} vs {ew}");
        }
    }
}
