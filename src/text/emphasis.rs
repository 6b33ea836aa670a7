//! Prompt emphasis as A1111 writes it: `(word)` ×1.1, `[word]` ÷1.1, `(word:1.5)` ×1.5
//! (nested weights multiply), `\(` `\)` `\[` `\]` `\\` for literal brackets, `BREAK` to start a
//! new 75-token chunk. A colon outside parentheses is plain text, and an unclosed bracket
//! weights the rest of the prompt.
//!
//! A port of A1111 `modules/prompt_parser.py::parse_prompt_attention` (regex `re_attention`).

#[derive(Clone, Debug, PartialEq)]
pub enum PromptPart {
    Text(String, f32),
    Break,
}

enum Token<'a> {
    Literal(&'a str),
    Open(char),
    WeightClose(f64),
    Close(char),
    /// Plain text; its span is read back from the input.
    Text,
}

/// The next token of `re_attention` at the start of `s`, and its length in bytes.
fn next_token(s: &str) -> (Token<'_>, usize) {
    let mut chars = s.chars();
    let c = chars.next().expect("non-empty");
    match c {
        '\\' => match chars.next() {
            Some(n @ ('(' | ')' | '[' | ']' | '\\')) => {
                (Token::Literal(&s[1..1 + n.len_utf8()]), 1 + n.len_utf8())
            }
            _ => (Token::Literal(""), 1),
        },
        '(' | '[' => (Token::Open(c), 1),
        ')' | ']' => (Token::Close(c), 1),
        ':' => match weight_close(s) {
            Some((w, len)) => (Token::WeightClose(w), len),
            None => (Token::Text, 1),
        },
        _ => {
            let end = s.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(s.len());
            (Token::Text, end)
        }
    }
}

/// `:\s*([+-]?[.\d]+)\s*\)` at the start of `s`.
fn weight_close(s: &str) -> Option<(f64, usize)> {
    let rest = &s[1..];
    let trimmed = rest.trim_start();
    let num_start = s.len() - trimmed.len();
    let sign = trimmed.starts_with(['+', '-']) as usize;
    let digits = trimmed[sign..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len() - sign);
    if digits == 0 {
        return None;
    }
    let number = &s[num_start..num_start + sign + digits];
    let after = &s[num_start + sign + digits..];
    let after_trimmed = after.trim_start();
    if !after_trimmed.starts_with(')') {
        return None;
    }
    let len = s.len() - after_trimmed.len() + 1;
    // Python's float() rejects "1.2.3" and "."; the regex still matched, and A1111 then fails.
    // We read such a weight as 1.0 rather than refuse the prompt.
    Some((number.parse().unwrap_or(1.0), len))
}

pub fn parse_prompt_attention(text: &str) -> Vec<PromptPart> {
    // (text, weight) with weight -1 marking BREAK, as A1111 does.
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<(String, f64)>, from: usize, m: f64| {
        res[from..].iter_mut().for_each(|r| r.1 *= m);
    };
    let mut rest = text;
    while !rest.is_empty() {
        let (token, len) = next_token(rest);
        rest = &rest[len..];
        match token {
            Token::Literal(l) => res.push((l.to_owned(), 1.0)),
            Token::Open('(') => round.push(res.len()),
            Token::Open(_) => square.push(res.len()),
            Token::WeightClose(w) if !round.is_empty() => {
                let from = round.pop().unwrap();
                multiply(&mut res, from, w);
            }
            Token::Close(')') if !round.is_empty() => {
                let from = round.pop().unwrap();
                multiply(&mut res, from, 1.1);
            }
            Token::Close(']') if !square.is_empty() => {
                let from = square.pop().unwrap();
                multiply(&mut res, from, 1.0 / 1.1);
            }
            Token::WeightClose(_) | Token::Close(_) | Token::Text => {
                let raw = &text[text.len() - rest.len() - len..text.len() - rest.len()];
                for (i, part) in split_break(raw).into_iter().enumerate() {
                    if i > 0 {
                        res.push(("BREAK".into(), -1.0));
                    }
                    res.push((part, 1.0));
                }
            }
        }
    }
    for from in round {
        multiply(&mut res, from, 1.1);
    }
    for from in square {
        multiply(&mut res, from, 1.0 / 1.1);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    // Merge runs of identical weights.
    let mut merged: Vec<(String, f64)> = Vec::new();
    for (t, w) in res {
        match merged.last_mut() {
            Some(last) if last.1 == w => last.0.push_str(&t),
            _ => merged.push((t, w)),
        }
    }
    merged
        .into_iter()
        .map(|(t, w)| {
            if w == -1.0 && t == "BREAK" {
                PromptPart::Break
            } else {
                PromptPart::Text(t, w as f32)
            }
        })
        .collect()
}

/// `re.split(r"\s*\bBREAK\b\s*", text)`.
fn split_break(text: &str) -> Vec<String> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut parts = Vec::new();
    let mut start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("BREAK") {
        let at = search + found;
        let end = at + 5;
        let before_ok = text[..at].chars().next_back().is_none_or(|c| !is_word(c));
        let after_ok = text[end..].chars().next().is_none_or(|c| !is_word(c));
        if before_ok && after_ok {
            let left = text[start..at].trim_end();
            parts.push(left.to_owned());
            let right = &text[end..];
            start = end + (right.len() - right.trim_start().len());
            search = start;
        } else {
            search = end;
        }
    }
    parts.push(text[start..].to_owned());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str) -> Vec<(String, f32)> {
        parse_prompt_attention(text)
            .into_iter()
            .map(|p| match p {
                PromptPart::Text(t, w) => (t, w),
                PromptPart::Break => ("BREAK".into(), -1.0),
            })
            .collect()
    }

    fn assert_parts(text: &str, expected: &[(&str, f32)]) {
        let got = parts(text);
        assert_eq!(got.len(), expected.len(), "{text}: {got:?}");
        for ((t, w), (et, ew)) in got.iter().zip(expected) {
            assert_eq!(t, et, "{text}");
            assert!(
                (w - ew).abs() < 1e-5,
                "{text}: {t} weighs {w}, expected {ew}"
            );
        }
    }

    /// The docstring examples of A1111's `parse_prompt_attention`.
    #[test]
    fn a1111_docstring_examples() {
        assert_parts("normal text", &[("normal text", 1.0)]);
        assert_parts(
            "an (important) word",
            &[("an ", 1.0), ("important", 1.1), (" word", 1.0)],
        );
        assert_parts("(unbalanced", &[("unbalanced", 1.1)]);
        assert_parts("\\(literal\\]", &[("(literal]", 1.0)]);
        assert_parts("(unnecessary)(parens)", &[("unnecessaryparens", 1.1)]);
        assert_parts(
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            &[
                ("a ", 1.0),
                ("house", 1.573),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641),
                (".", 1.1),
            ],
        );
    }

    #[test]
    fn colon_outside_parentheses_is_text() {
        assert_parts("score: 9, style:anime", &[("score: 9, style:anime", 1.0)]);
        assert_parts("ratio 16:9)", &[("ratio 16:9)", 1.0)]);
        assert_parts("(cat: 1.25 ) and dog", &[("cat", 1.25), (" and dog", 1.0)]);
    }

    #[test]
    fn break_splits_chunks() {
        assert_parts(
            "a cat BREAK a dog",
            &[("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)],
        );
        assert_parts("BREAKFAST", &[("BREAKFAST", 1.0)]);
    }
}
