# Builds the T5 and Qwen tokenizers hanga carries in its binary, from the files ComfyUI ships
# (copied unchanged into ../shared/reference/tokenizers; Apache-2.0), with transformers' own
# classes: ComfyUI tokenizes Flux/Chroma T5 prompts with `T5TokenizerFast` and Qwen prompts
# with `Qwen2Tokenizer` from those folders. Also writes the ids those classes give for a few
# prompts, which tests/text.rs checks the built-in tokenizers against.
#   python assets/make_builtin_tokenizers.py ../shared/reference/tokenizers
# (transformers 5.23.0, tokenizers 0.23.3)
import gzip, json, sys
from pathlib import Path
from transformers import Qwen2Tokenizer, T5TokenizerFast

src = Path(sys.argv[1])
assets = Path(__file__).parent
fixtures = assets.parent / "tests/fixtures/tokenizers"

def write_gzipped(json_text, name):
    # mtime=0: the same bytes on every run.
    with gzip.GzipFile(assets / name, "wb", compresslevel=9, mtime=0) as f:
        f.write(json_text.encode("utf-8"))

write_gzipped((src / "t5/tokenizer.json").read_text(encoding="utf-8"), "t5_tokenizer.json.gz")
qwen = Qwen2Tokenizer.from_pretrained(src / "qwen2.5")
write_gzipped(qwen.backend_tokenizer.to_str(pretty=False), "qwen_tokenizer.json.gz")
t5 = T5TokenizerFast.from_pretrained(src / "t5")

prompts = [
    "a photo of a cat",
    "A Very  Long, (weighted:1.2) prompt; with punctuation!? and numbers 12345 and 3.14",
    "日本語のプロンプト、猫と犬 🐱",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand <extra_id_0> <|im_start|> <think>",
    "",
]
cases = []
for text in prompts:
    chat = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    cases.append({
        "text": text,
        # T5TokenizerFast with its post-processor: the ids then `</s>` (1).
        "t5": t5(text)["input_ids"],
        # Z-Image's chat template, tokenized without special-token additions.
        "qwen_chat": qwen(chat, add_special_tokens=False)["input_ids"],
    })
fixtures.mkdir(parents=True, exist_ok=True)
json.dump({"made_by": "assets/make_builtin_tokenizers.py", "cases": cases},
          open(fixtures / "builtin_ids.json", "w"), ensure_ascii=False, indent=0)
