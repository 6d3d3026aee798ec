"""Record transformers' CLIP tokenizer on a real CLIP vocabulary for tests/test_text_tokenizer.py.

tinyldm never imports transformers; this script runs in a separate virtualenv that has it and the `clip` package's
merge list (transformers 5.25.0 and tokenizers 0.23.3 made the committed file; ftfy must be absent, as it is in
Stable Diffusion pipelines, which is what tinyldm.text.tokenizer mirrors):

    pip install transformers && pip install --no-deps clip-anytorch==2.6.0
    /path/to/venv/bin/python scripts/make_tokenizer_fixtures.py

The reference. In transformers 5 `CLIPTokenizer` is the tokenizers-backed (Rust) tokenizer, and `CLIPTokenizerFast`
is the very same class (5.x dropped the slow Python one, which without ftfy ran BERT's BasicTokenizer and so split
CJK ideographs apart): one reference, nothing to disagree with. It cuts special tokens out of the raw text,
then NFC, whitespace runs → " ", lower case char by char (no final ς); CLIP's split pattern, then GPT-2's byte-level
one (so a lower-cased "<|ENDOFTEXT|>" becomes "<|", "endoftext", "|>"); BPE with </w>. Where tinyldm (Python's
Unicode tables: 14.0 on 3.11) and tokenizers (its own) still differ: characters that Python leaves unassigned, and
NFC's reordering of combining marks newer than tokenizers' tables; a few in 10 000 random strings of assigned
characters, none of the strings below.

The vocabulary is built here from OpenAI's merge list (clip/bpe_simple_vocab_16e6.txt.gz, MIT licence) the way
CLIP ViT-L/14's vocab.json is: the 256 byte symbols in GPT-2's order, the same with </w>, the first 48894 merges
joined, <|startoftext|>, <|endoftext|> (49408). It is written out independently of tinyldm on purpose: the test
rebuilds the folder with tinyldm and must land on the same ids. The file keeps strings, ids and decoded text only.
"""

import gzip
import hashlib
import importlib.util
import json
import random
import tempfile
from pathlib import Path

import tokenizers
import transformers

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "clip_tokenizer" / "ids.json"
NUM_MERGES = 49408 - 2 * 256 - 2  # CLIP's text encoder has 49408 token embeddings

PROMPTS = [
    "a photo of a cat", "A 1.84 m person walking at 1.3 m/s", "an astronaut riding a horse on the moon, 4k, detailed",
    "(masterpiece:1.2), best quality, ultra-detailed", "3D render, 8k, trending on artstation", "<lora:style:0.8>",
    "a person sitting down, 0.5 s, 60 GHz radar", "person #3 falls; person #4 stands up", "walking -> running",
    "Two dogs & a cat", "HeLLo WoRLD", "CamelCaseWord", "snake_case_word", "kebab-case-word", "UPPER CASE PROMPT",
]
PUNCTUATION = [
    "Hello, world!", "what?!", "...", "--", "—", "(parentheses) [brackets] {braces}", "e-mail@example.com",
    "https://example.com/path?q=1&r=2#frag", "#hashtag", "##", "#…", "# # #", "c++ / c#", "50% off", "$100", "€99.99",
    "a|b|c", "\\backslash\\", 'quote "double" \'single\'', "`backtick`", "~tilde~", "^caret^", "«guillemets»",
    "„German“ quotes", "“curly” ‘quotes’", "a…b", "•bullet", "→ arrow ←", "©2024 ®™", "!!!", "wow!!! amazing!", "?!?",
    "hello!", "! ! !", "=)", ":-) ;-P", "<3", ">.<", "@@@", "***", "___", "a_b", "x&y", "1/2", "semi;colon:colon",
]
NUMBERS = [
    "1,000,000", "3.14159", "-273.15°C", "1e-5", "2024-05-01", "10:30pm", "½ cup", "x² + y² = z²", "①②③", "Ⅻ",
    "٣٤٥", "१२३", "一二三", "0x1F", "007", "1234567890" * 3, "v1.2.3", "room 101", "3rd 2nd 1st", "24/7",
]
CONTRACTIONS = [
    "it's", "IT'S", "they're", "we've", "I'm", "you'll", "he'd", "don't", "can't", "rock'n'roll", "'s'", "''s", "'''",
    "O'Neill", "l'été", "it’s", "'S", "'sa", "y'all'd've", "'ll'd", "the dog's bone", "'twas", "'re're",
]
SCRIPTS = [
    "Crème brûlée", "naïve café", "Ångström", "Zürich", "São Paulo", "Dvořák", "İstanbul", "ǅemal", "Straße", "ẞ",
    "ﬁne ligature", "\u212bngstrom sign", "cafe\u0301", "e\u0300\u0301 stacked", "Σίσυφος", "ΟΔΥΣΣΕΥΣ", "Москва",
    "שלום עולם", "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก", "안녕하세요 세계", "こんにちは世界", "東京タワー",
    "你好，世界！", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "Tiếng Việt", "ქართული", "Հայերեն", "አማርኛ", "தமிழ்", "বাংলা",
    "Ελληνικά και English", "mixed日本語and English", "ñandú", "Øresund", "Łódź", "Ćevapi", "Þórr", "ðæ",
]
EMOJI = [
    "😀", "👍🏽 thumbs", "👨\u200d👩\u200d👧\u200d👦 family", "🇫🇷🇯🇵", "❤️ love", "☃ snowman", "♥♦♣♠",
    "✨ sparkles ✨", "🐱cat", "emoji😀inline", "🔥🔥🔥", "🌍 earth", "👩🏿\u200d🚀", "🎉 party!", "a😀b😀c",
]
WHITESPACE = [
    "  leading and trailing  ", "tab\tseparated", "new\nline", "windows\r\nline", "non\u00a0breaking",
    "em\u2003space", "ideographic\u3000space", "zero\u200bwidth", "\ufeffbyte order mark", "line\u2028separator",
    "file\x1cseparator", "unit\x1fseparator", "null\x00char", "del\x7fchar", "soft\u00adhyphen", "", "   ", "\n\n",
    "a  b   c", "\tindented", "vertical\x0btab", "form\x0cfeed", "next\x85line", "ogham\u1680space",
]
SPECIAL = [
    "<|startoftext|>", "a <|endoftext|> b", "<|ENDOFTEXT|>", "<|endoftext", "x<|startoftext|>y<|endoftext|>z",
    "<|endoftext|><|endoftext|>", "<|startoftext|>hello", "</w>", "a</w>b", "<unk>",
]
LONG = [
    "a photo of a cat " * 30, "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "x" * 300, "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea "
    "commodo consequat.", "!" * 100, "日本語" * 40, "😀" * 80, "a, " * 100, "1 2 3 " * 40,
]


def random_strings(n: int, seed: int = 0) -> list[str]:
    """Random mixtures of the characters above, whitespace and digits: word boundaries in odd places."""
    pool = sorted(set("".join(PROMPTS + PUNCTUATION + NUMBERS + CONTRACTIONS + SCRIPTS + EMOJI + SPECIAL)))
    pool += list(" \t\n'!.,0123456789abcdefghijklmnopqrstuvwxyz") * 3
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def byte_symbols() -> list[str]:
    """GPT-2's byte → symbol map, in its order: printable Latin-1 bytes as themselves, then the rest from U+0100."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    return [chr(b) for b in printable] + [chr(0x100 + n) for n in range(256 - len(printable))]


def write_folder(folder: Path, merges: list[str], pad_token: str) -> None:
    """A transformers tokenizer folder, as Stable Diffusion repositories ship it (SD 1.x pads with <|endoftext|>,
    SD 2.x with "!", set in special_tokens_map.json over tokenizer_config.json)."""
    tokens = byte_symbols() + [s + "</w>" for s in byte_symbols()] + [m.replace(" ", "") for m in merges]
    vocab = {t: i for i, t in enumerate(tokens + ["<|startoftext|>", "<|endoftext|>"])}
    assert len(vocab) == 49408
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "pad_token": "<|endoftext|>"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad_token}))


def main() -> None:
    spec = importlib.util.find_spec("clip")
    assert spec is not None, "pip install --no-deps clip-anytorch==2.6.0"
    assert importlib.util.find_spec("ftfy") is None, "uninstall ftfy: Stable Diffusion pipelines run without it"
    assert transformers.CLIPTokenizerFast is transformers.CLIPTokenizer, "two CLIP tokenizers: compare them here"
    gz = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    data = gz.read_bytes()
    merges = gzip.decompress(data).decode("utf-8").split("\n")[1:1 + NUM_MERGES]  # line 1 is a version header

    strings = PROMPTS + PUNCTUATION + NUMBERS + CONTRACTIONS + SCRIPTS + EMOJI + WHITESPACE + SPECIAL + LONG
    strings += random_strings(60)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp) / "sd1", merges, "<|endoftext|>")
        write_folder(Path(tmp) / "sd2", merges, "!")
        sd1 = transformers.CLIPTokenizer.from_pretrained(Path(tmp) / "sd1")
        sd2 = transformers.CLIPTokenizer.from_pretrained(Path(tmp) / "sd2")
        assert (sd1.pad_token_id, sd2.pad_token_id, len(sd1)) == (49407, 0, 49408)
        records = []
        for s in strings:
            ids = sd1(s).input_ids
            record = {"text": s, "ids": ids, "decoded": sd1.decode(ids, skip_special_tokens=True)}
            if "!" in s:  # SD 2.x's pad token "!" is a special token: typed, it is cut out and keeps id 0
                record["ids_pad_bang"] = sd2(s).input_ids
            records.append(record)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    header = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
              "reference": "transformers.CLIPTokenizer (tokenizers-backed; CLIPTokenizerFast is the same class)",
              "merges_gz": "clip/bpe_simple_vocab_16e6.txt.gz of clip-anytorch 2.6.0",
              "merges_gz_sha256": hashlib.sha256(data).hexdigest(), "num_merges": NUM_MERGES}
    # One record a line, ASCII only (control characters and line separators escaped), so diffs stay readable.
    records_text = ",\n".join(json.dumps(record) for record in records)
    OUT.write_text(json.dumps(header)[:-1] + ', "records": [\n' + records_text + "\n]}\n", encoding="ascii")
    print(f"wrote {len(records)} strings to {OUT} ({OUT.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
