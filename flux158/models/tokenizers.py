"""Tokenizers built offline: CLIP from open_clip's bundled BPE, T5 as a small locally trained Unigram model.

The CLIP vocabulary is OpenAI's own (same token ids as `openai/clip-vit-large-patch14`), truncated to the first
`n_merges` merges. The T5 tokenizer is trained on a fixed corpus, so it is deterministic and needs no hub.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from transformers import CLIPTokenizer, T5TokenizerFast

# A fixed corpus in the phrasing of GenEval / T2I-CompBench prompts; the tokenizer is only for plumbing tests.
_T5_CORPUS = [
    "a photo of a cat", "a photo of two dogs", "a red apple left of a blue car", "three green birds above a bench",
    "a yellow banana below a purple umbrella", "an orange clock right of a white horse", "a brown bear and a pink cake",
    "four black chairs", "a wooden table with a metallic vase", "a fluffy towel and a glass cup on top of a book",
    "a person riding a bicycle", "a circle, a square and a triangle", "one two three four five six seven eight nine",
    "the quick brown fox jumps over the lazy dog", "a painting of a city at night in the style of van gogh",
]


def _open_clip_bpe_path() -> Path:
    # find_spec, not `import open_clip`: importing open_clip pulls in torchvision and timm for nothing.
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip is required to build the CLIP tokenizer offline (pip install open-clip-torch)")
    return Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=False))


def build_clip_tokenizer(save_dir: Path, n_merges: int = 2000, max_length: int = 77) -> CLIPTokenizer:
    """Write `vocab.json`/`merges.txt` for OpenAI's CLIP BPE (first `n_merges` merges) and load them.

    Args:
        save_dir: directory to write the tokenizer files to.
        n_merges: number of BPE merges to keep; 48,894 gives the full 49,408-token vocabulary.
        max_length: `model_max_length` (77 for CLIP).
    """
    lines = gzip.open(_open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1][:n_merges]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (save_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (save_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length}))
    return CLIPTokenizer.from_pretrained(save_dir)


def build_t5_tokenizer(save_dir: Path, vocab_size: int = 256) -> T5TokenizerFast:
    """Train a small Unigram tokenizer with T5's special ids (<pad>=0, </s>=1, <unk>=2) and load it as T5."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(_T5_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    save_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(save_dir / "tokenizer.json"))
    config = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": "<pad>", "model_max_length": 512}
    (save_dir / "tokenizer_config.json").write_text(json.dumps(config))
    return T5TokenizerFast.from_pretrained(save_dir)
