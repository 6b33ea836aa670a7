//! Tokenization into 77-token sequences: diffusers' layout, long-prompt chunking, emphasis.

mod common;

use common::fixtures;
use hanga::text::{ClipTokenizer, LongPrompt, SEQUENCE_LEN};

fn fixture_tokenizer(pad: Option<&str>) -> ClipTokenizer {
    ClipTokenizer::from_file(
        &fixtures().join("components/clip_tokenizer/tokenizer.json"),
        pad,
    )
    .unwrap()
}

#[test]
fn sequences_match_the_reference_tokenizer() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("components/clip_tokenizer/expected.json"))
            .unwrap(),
    )
    .unwrap();
    let tokenizer = fixture_tokenizer(Some("!"));
    for case in expected["encodings"].as_array().unwrap() {
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let chunks = tokenizer
            .chunks(case["text"].as_str().unwrap(), LongPrompt::Truncate)
            .unwrap();
        assert_eq!(chunks.len(), 1);
        let chunk = &chunks[0];
        assert_eq!(chunk.ids.len(), SEQUENCE_LEN);
        assert_eq!(&chunk.ids[..ids.len()], &ids[..], "{}", case["text"]);
        assert_eq!(chunk.eos_position, ids.len() - 1);
        // "!" (id 0) pads after EOS, as SDXL's second tokenizer does.
        assert!(chunk.ids[ids.len()..].iter().all(|&i| i == 0));
    }
}

#[test]
fn bundled_vocabulary_is_clips() {
    // openai/clip-vit-large-patch14: "a photo of a cat" → 49406 320 1125 539 320 2368 49407
    let chunks = ClipTokenizer::bundled(None)
        .unwrap()
        .chunks("a photo of a cat", LongPrompt::Chunk)
        .unwrap();
    assert_eq!(
        &chunks[0].ids[..8],
        &[49406, 320, 1125, 539, 320, 2368, 49407, 49407]
    );
}

#[test]
fn long_prompts_chunk_or_truncate() {
    let tokenizer = ClipTokenizer::bundled(None).unwrap();
    let prompt = vec!["red apple"; 60].join(" ");
    let chunked = tokenizer.chunks(&prompt, LongPrompt::Chunk).unwrap();
    assert_eq!(chunked.len(), 2, "120 tokens make two chunks");
    assert_eq!(chunked[0].eos_position, 76);
    assert_eq!(chunked[1].eos_position, 1 + 45);
    assert_eq!(
        tokenizer
            .chunks(&prompt, LongPrompt::Truncate)
            .unwrap()
            .len(),
        1
    );

    // A comma within 20 tokens of a full chunk's end moves the rest to the next chunk.
    let with_comma = format!(
        "{}, {}",
        vec!["apple"; 70].join(" "),
        ["pear"; 10].join(" ")
    );
    let chunked = tokenizer.chunks(&with_comma, LongPrompt::Chunk).unwrap();
    assert_eq!(chunked[0].eos_position, 1 + 71, "70 apples and the comma");

    let with_break = tokenizer
        .chunks("a cat BREAK a dog", LongPrompt::Chunk)
        .unwrap();
    assert_eq!(with_break.len(), 2);
}

#[test]
fn emphasis_weights_tokens() {
    let tokenizer = ClipTokenizer::bundled(None).unwrap();
    let chunk = &tokenizer
        .chunks("a (red:1.5) [fox]", LongPrompt::Chunk)
        .unwrap()[0];
    assert_eq!(&chunk.ids[..5], &[49406, 320, 736, 3240, 49407]);
    let expected = [1.0, 1.0, 1.5, 1.0 / 1.1, 1.0];
    for (w, e) in chunk.weights[..5].iter().zip(expected) {
        assert!((w - e).abs() < 1e-6, "{:?}", &chunk.weights[..5]);
    }
    assert!(chunk.is_weighted());
    assert!(!tokenizer.chunks("score: 9", LongPrompt::Chunk).unwrap()[0].is_weighted());
}

/// The T5 and Qwen tokenizers built into the binary give the ids transformers'
/// `T5TokenizerFast` and `Qwen2Tokenizer` give (the classes ComfyUI tokenizes with), on
/// prompts with spaces, punctuation, CJK, emoji and special-token text.
#[test]
fn bundled_t5_and_qwen_tokenizers_match_transformers() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tokenizers/builtin_ids.json")).unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect()
    };
    let t5 = hanga::text::T5Tokenizer::bundled().unwrap();
    let qwen = hanga::text::Qwen3Tokenizer::bundled().unwrap();
    let cases = expected["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["t5"]);
        let got = t5.encode(text, want.len()).unwrap();
        assert_eq!(got.ids, want, "T5 {text:?}");
        assert!(got.mask.iter().all(|&m| m == 1));
        assert_eq!(
            qwen.encode_chat(text, usize::MAX).unwrap(),
            ids(&case["qwen_chat"]),
            "Qwen {text:?}"
        );
    }
}
