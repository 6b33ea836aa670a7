# Builds a tokenizers-format CLIP tokenizer.json (gzipped: assets/clip_tokenizer.json.gz) from CLIP's original BPE file, following
# open_clip/tokenizer.py (bytes_to_unicode, merges = lines[1:49152-256-2+1], vocab order),
# with the normalizer / pre-tokenizer / post-processor of openai/clip-vit-large-patch14.
import gzip, json, sys
bpe, template, out = sys.argv[1:4]
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~")+1))+list(range(ord("¡"), ord("¬")+1))+list(range(ord("®"), ord("ÿ")+1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b); cs.append(2**8+n); n += 1
    return dict(zip(bs, [chr(c) for c in cs]))
merges = gzip.open(bpe).read().decode("utf-8").split('\n')
merges = merges[1:49152-256-2+1]
merges = [tuple(m.split()) for m in merges]
vocab = list(bytes_to_unicode().values())
vocab = vocab + [v+'</w>' for v in vocab]
for m in merges:
    vocab.append(''.join(m))
vocab.extend(['<|startoftext|>', '<|endoftext|>'])
assert len(vocab) == 49408
t = json.load(open(template))
t["model"]["vocab"] = {v: i for i, v in enumerate(vocab)}
t["model"]["merges"] = [f"{a} {b}" for a, b in merges]
t["added_tokens"] = [dict(a, id=49406 if a["content"] == "<|startoftext|>" else 49407) for a in t["added_tokens"] if a["content"] in ("<|startoftext|>", "<|endoftext|>")]
t["post_processor"]["cls"] = ["<|startoftext|>", 49406]
t["post_processor"]["sep"] = ["<|endoftext|>", 49407]
t["truncation"] = None; t["padding"] = None
# Gzipped, as hanga builds it in; mtime=0 gives the same bytes on every run.
with gzip.GzipFile(out, "wb", compresslevel=9, mtime=0) as f:
    f.write(json.dumps(t, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
