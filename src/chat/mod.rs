//! Chat requests to generation parameters, by rules a reader can follow (no language model):
//! the gateway's `POST /v1/api/chat/process`. Japanese and English. Each rule takes the words
//! it understood out of the message (or leaves them, where they also describe the subject) and
//! says so in [`Understood::because`]; what is left is the prompt, as the CLIP / T5 encoders
//! take it.
//!
//! The rules, in the order they apply:
//! 1. a seed: `seed 42`, `seed: 42`, `シード42`;
//! 2. an explicit size: `1024x768` (also `×`, `*`);
//! 3. a count: `3枚`, `三枚`, `3 images`, `three pictures` (images, pictures, pics, photos,
//!    variations; `photos` also asks for a realistic style);
//! 4. orientation: 縦長 / portrait / vertical, 横長 / landscape / horizontal, 正方形 / square.
//!    The Japanese words go (with a following の); an English word goes when it is a phrase of its
//!    own (`…, portrait, …`, `in landscape`, `landscape orientation`), else it stays in the prompt
//!    (`a mountain landscape`) and still sets the orientation;
//! 5. negatives: `帽子なし` (なし / 無し / 抜き), `without hats`: into the negative prompt;
//! 6. a style: anime, manga, illustration, アニメ, イラスト, 漫画 → `anime`; realistic,
//!    photorealistic, photo, 写真, リアル, 実写 → `realistic` (kept in the prompt);
//! 7. the request itself goes: 「…を生成してください」, 「…画像」, "please generate an image
//!    of …".

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::registry::Registry;

/// Which parameter a rule set, and the words that set it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reason {
    pub parameter: &'static str,
    pub words: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Orientation {
    Portrait,
    Landscape,
    Square,
}

/// What the rules read in a message.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Understood {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub num_images: Option<u32>,
    pub orientation: Option<Orientation>,
    pub size: Option<(u32, u32)>,
    /// `anime` or `realistic`.
    pub style: Option<&'static str>,
    pub seed: Option<u64>,
    pub because: Vec<Reason>,
}

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a valid pattern")
}

static SEED: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)\bseed\s*[:=]?\s*(\d{1,19})\b|シード\s*[:：]?\s*(\d{1,19})"));
static SIZE: LazyLock<Regex> = LazyLock::new(|| regex(r"(\d{2,4})\s*[x×*]\s*(\d{2,4})"));
static COUNT_JA: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?:を|で)?\s*([0-9０-９]{1,2}|[一二三四五六七八九十])\s*枚"));
static COUNT_EN: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)\b(\d{1,2}|one|two|three|four|five|six|seven|eight)\s+(images?|pictures?|pics?|photos?|variations?)\b(?:\s+of\b)?",
    )
});
static ORIENTATION_JA: LazyLock<Regex> = LazyLock::new(|| regex(r"(縦長|横長|正方形)(?:の)?"));
/// An English orientation word as a phrase of its own: between commas or the message's ends,
/// or with `in … (orientation|format|mode)`.
static ORIENTATION_EN_ALONE: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)(?:^|,)\s*(?:in\s+)?(portrait|landscape|vertical|horizontal|square)(?:\s+(?:orientation|format|mode|aspect))?\s*(?:,|$)",
    )
});
static ORIENTATION_EN: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)\b(portrait|landscape|vertical|horizontal|square)\b"));
static NEGATIVE_JA: LazyLock<Regex> =
    LazyLock::new(|| regex(r"([^、。,，\s]+?)(?:なし|無し|抜き)(?:で|の)?"));
static NEGATIVE_EN: LazyLock<Regex> = LazyLock::new(|| regex(r"(?i)\bwithout\s+([^,.;。、]+)"));
static ANIME: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)\b(anime|manga|illustration|illustrated)\b|アニメ|イラスト|漫画"));
static REALISTIC: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)\b(realistic|photorealistic|photo|photograph|photography)\b|写真|リアル|実写")
});
static REQUEST_JA: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?:を|で)?(?:生成|作成|作|描|書)(?:して|って|いて)?(?:ください|下さい|くれ|ほしい|欲しい)?[。！!]?$|(?:ください|お願いします)[。！!]?$",
    )
});
static TRAILING_IMAGE_JA: LazyLock<Regex> = LazyLock::new(|| regex(r"(?:の)?(?:画像)$"));
static REQUEST_EN: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)^\s*(?:please\s+)?(?:can you\s+|could you\s+)?(?:generate|create|make|draw|paint|render)\s+(?:me\s+)?(?:(?:an?\s+|some\s+)?(?:images?|pictures?|illustrations?)\s+(?:of\s+)?)?",
    )
});

fn because(parameter: &'static str, words: &str) -> Reason {
    Reason {
        parameter,
        words: words.trim().to_owned(),
    }
}

fn number(word: &str) -> Option<u32> {
    let ascii: String = word
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from(b'0' + (c as u32 - '０' as u32) as u8),
            c => c,
        })
        .collect();
    if let Ok(n) = ascii.parse() {
        return Some(n);
    }
    let words = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    let kanji = ["一", "二", "三", "四", "五", "六", "七", "八", "九", "十"];
    let lower = word.to_lowercase();
    words
        .iter()
        .position(|w| *w == lower)
        .or_else(|| kanji.iter().position(|k| *k == word))
        .map(|i| i as u32 + 1)
}

fn orientation(word: &str) -> Orientation {
    match word.to_lowercase().as_str() {
        "縦長" | "portrait" | "vertical" => Orientation::Portrait,
        "横長" | "landscape" | "horizontal" => Orientation::Landscape,
        _ => Orientation::Square,
    }
}

/// Removes `text[start..end]`, leaving a comma where the cut text ended with one between two
/// parts, else a space.
fn cut(text: &mut String, start: usize, end: usize) {
    let before = text[..start].trim_end();
    let after = text[end..].trim_start();
    let joiner = if before.is_empty() || after.is_empty() {
        ""
    } else if before.ends_with([',', '、']) || after.starts_with([',', '、']) {
        " "
    } else if text[start..end].trim_end().ends_with(',') {
        ", "
    } else {
        " "
    };
    *text = format!("{before}{joiner}{after}");
}

/// What is left after the rules: commas and spaces tidied.
fn tidy(text: &str) -> String {
    let mut parts: Vec<&str> = text
        .split([',', '，'])
        .map(|p| {
            p.trim()
                .trim_matches(['、', '。', '!', '！', '?', '？'])
                .trim()
        })
        .filter(|p| !p.is_empty())
        .collect();
    parts.dedup();
    parts
        .join(", ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads `message` by the rules above.
pub fn understand(message: &str) -> Understood {
    let mut text = message.trim().to_owned();
    let mut u = Understood::default();

    if let Some(c) = SEED.captures(&text) {
        let whole = c.get(0).expect("a match");
        let digits = c.get(1).or(c.get(2)).expect("a seed group");
        u.seed = digits.as_str().parse().ok();
        u.because.push(because("seed", whole.as_str()));
        let (s, e) = (whole.start(), whole.end());
        cut(&mut text, s, e);
    }
    if let Some(c) = SIZE.captures(&text) {
        let whole = c.get(0).expect("a match");
        if let (Ok(w), Ok(h)) = (c[1].parse(), c[2].parse()) {
            u.size = Some((w, h));
            u.because.push(because("size", whole.as_str()));
            let (s, e) = (whole.start(), whole.end());
            cut(&mut text, s, e);
        }
    }
    let count = COUNT_JA
        .captures(&text)
        .map(|c| (c.get(0).expect("a match").range(), c[1].to_owned(), false))
        .or_else(|| {
            COUNT_EN.captures(&text).map(|c| {
                let photos = c[2].to_lowercase().starts_with("photo");
                (c.get(0).expect("a match").range(), c[1].to_owned(), photos)
            })
        });
    if let Some((range, n, photos)) = count
        && let Some(n) = number(&n)
    {
        u.num_images = Some(n);
        u.because.push(because("num_images", &text[range.clone()]));
        if photos {
            u.style = Some("realistic");
            u.because.push(because("style", &text[range.clone()]));
        }
        cut(&mut text, range.start, range.end);
    }
    if let Some(m) = ORIENTATION_JA.captures(&text) {
        let whole = m.get(0).expect("a match");
        u.orientation = Some(orientation(&m[1]));
        u.because.push(because("orientation", whole.as_str()));
        let (s, e) = (whole.start(), whole.end());
        cut(&mut text, s, e);
    } else if let Some(m) = ORIENTATION_EN_ALONE.captures(&text) {
        let whole = m.get(0).expect("a match");
        u.orientation = Some(orientation(&m[1]));
        u.because
            .push(because("orientation", m.get(1).expect("a word").as_str()));
        let (s, e) = (whole.start(), whole.end());
        cut(&mut text, s, e);
    } else if let Some(m) = ORIENTATION_EN.captures(&text) {
        u.orientation = Some(orientation(&m[1]));
        u.because.push(because("orientation", &m[1]));
    }
    let mut negatives = Vec::new();
    while let Some(c) = NEGATIVE_EN
        .captures(&text)
        .or_else(|| NEGATIVE_JA.captures(&text))
    {
        let whole = c.get(0).expect("a match");
        negatives.push(c[1].trim().to_owned());
        u.because.push(because("negative_prompt", whole.as_str()));
        let (s, e) = (whole.start(), whole.end());
        cut(&mut text, s, e);
    }
    if !negatives.is_empty() {
        u.negative_prompt = Some(negatives.join(", "));
    }
    if u.style.is_none() {
        for (style, pattern) in [("anime", &*ANIME), ("realistic", &*REALISTIC)] {
            if let Some(m) = pattern.find(&text) {
                u.style = Some(style);
                u.because.push(because("style", m.as_str()));
                break;
            }
        }
    }
    let trimmed = tidy(&text);
    let mut prompt = REQUEST_EN.replace(&trimmed, "").into_owned();
    prompt = REQUEST_JA.replace(prompt.trim(), "").into_owned();
    prompt = TRAILING_IMAGE_JA.replace(prompt.trim(), "").into_owned();
    u.prompt = tidy(&prompt);
    u
}

/// The model for `style`: the first (by id) whose catalog category or tags name it, or an
/// alias of it (`anime`: illustrious, illustration; `realistic`: photo, photorealistic, flux),
/// else `default`. Returns the id and, when the style chose it, why.
pub fn choose_model(
    style: Option<&str>,
    registry: &Registry,
    default: &str,
) -> (String, Option<Reason>) {
    let Some(style) = style else {
        return (default.to_owned(), None);
    };
    let aliases: &[&str] = match style {
        "anime" => &["anime", "illustrious", "illustration"],
        "realistic" => &["realistic", "photo", "photorealistic", "flux"],
        other => {
            return (
                default.to_owned(),
                Some(because("model", &format!("no model for style {other}"))),
            );
        }
    };
    for word in aliases {
        if let Some(m) = registry.models().find(|m| m.catalog.names(word)) {
            return (
                m.id.clone(),
                Some(because(
                    "model",
                    &format!("style {style}: catalog `{word}`"),
                )),
            );
        }
    }
    (
        default.to_owned(),
        Some(because(
            "model",
            &format!("no model's catalog names {style}: the default"),
        )),
    )
}

/// The size for an orientation word on a model whose default is `default`: SDXL's 832×1216
/// bucket (portrait), 1216×832 (landscape) or 1024×1024 (square), scaled to the default's area,
/// in multiples of 8 and at least 64 a side.
pub fn dimensions(orientation: Orientation, default: (u32, u32)) -> (u32, u32) {
    let (w, h) = match orientation {
        Orientation::Portrait => (832.0, 1216.0),
        Orientation::Landscape => (1216.0, 832.0),
        Orientation::Square => (1024.0, 1024.0),
    };
    let scale = ((default.0 as f64 * default.1 as f64) / (1024.0 * 1024.0)).sqrt();
    let side = |v: f64| (((v * scale) / 8.0).round() as u32 * 8).max(64);
    (side(w), side(h))
}

/// Steps for a quality preset: `draft` half the model's default, `standard` the default,
/// `high` one and a half times it. None: not a preset.
pub fn preset_steps(quality: &str, default: u32) -> Option<u32> {
    let factor = match quality.to_lowercase().as_str() {
        "draft" | "fast" | "low" => 0.5,
        "standard" | "normal" | "medium" | "auto" => 1.0,
        "high" | "best" | "quality" | "hd" => 1.5,
        _ => return None,
    };
    Some(((default as f64 * factor).round() as u32).clamp(1, 150))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(u: &Understood, parameter: &str) -> Vec<String> {
        u.because
            .iter()
            .filter(|r| r.parameter == parameter)
            .map(|r| r.words.clone())
            .collect()
    }

    #[test]
    fn a_japanese_request_keeps_its_subject() {
        let u = understand("美しい風景画像を生成してください");
        assert_eq!(u.prompt, "美しい風景");
        assert_eq!((u.num_images, u.orientation, u.style), (None, None, None));
    }

    #[test]
    fn english_counts_orientation_and_negatives() {
        let u = understand("3 anime girls, portrait, without hats");
        assert_eq!(u.prompt, "3 anime girls");
        assert_eq!(
            u.num_images, None,
            "3 girls is the subject, not a count of images"
        );
        assert_eq!(u.orientation, Some(Orientation::Portrait));
        assert_eq!(u.negative_prompt.as_deref(), Some("hats"));
        assert_eq!(u.style, Some("anime"));
        assert_eq!(words(&u, "orientation"), ["portrait"]);
        assert_eq!(words(&u, "negative_prompt"), ["without hats"]);
    }

    #[test]
    fn japanese_count_orientation_and_photo() {
        let u = understand("横長の猫の写真を2枚");
        assert_eq!(u.prompt, "猫の写真");
        assert_eq!(u.num_images, Some(2));
        assert_eq!(u.orientation, Some(Orientation::Landscape));
        assert_eq!(u.style, Some("realistic"));
        assert_eq!(words(&u, "num_images"), ["を2枚"]);
        assert_eq!(words(&u, "orientation"), ["横長の"]);
    }

    #[test]
    fn sizes_seeds_and_request_words() {
        let u = understand("Please generate three images of a red fox in snow, 1024x768, seed 42");
        assert_eq!(u.prompt, "a red fox in snow");
        assert_eq!(u.num_images, Some(3));
        assert_eq!(u.size, Some((1024, 768)));
        assert_eq!(u.seed, Some(42));
        let u = understand("帽子なしの女の子のイラストを三枚描いてください、シード7");
        assert_eq!(u.negative_prompt.as_deref(), Some("帽子"));
        assert_eq!(u.num_images, Some(3));
        assert_eq!(u.seed, Some(7));
        assert_eq!(u.style, Some("anime"));
        assert_eq!(u.prompt, "女の子のイラスト");
    }

    #[test]
    fn orientation_sizes_follow_the_default_area() {
        assert_eq!(dimensions(Orientation::Portrait, (1024, 1024)), (832, 1216));
        assert_eq!(
            dimensions(Orientation::Landscape, (1024, 1024)),
            (1216, 832)
        );
        assert_eq!(dimensions(Orientation::Square, (512, 512)), (512, 512));
        // The demo model's 256²: a quarter of each side.
        assert_eq!(dimensions(Orientation::Portrait, (256, 256)), (208, 304));
        assert_eq!(preset_steps("draft", 20), Some(10));
        assert_eq!(preset_steps("high", 20), Some(30));
        assert_eq!(preset_steps("best-ever", 20), None);
    }

    #[test]
    fn a_landscape_subject_stays_in_the_prompt() {
        let u = understand("a mountain landscape at dawn");
        assert_eq!(u.prompt, "a mountain landscape at dawn");
        assert_eq!(u.orientation, Some(Orientation::Landscape));
        let u = understand("two photos of a harbour");
        assert_eq!((u.num_images, u.style), (Some(2), Some("realistic")));
        assert_eq!(u.prompt, "a harbour");
    }
}
