r"""CLIP's byte-level BPE tokenizer (Radford et al. 2021), written from scratch; BPE as in Sennrich et al. 2016.

Text → ids as transformers' CLIPTokenizer does without ftfy (the way Stable Diffusion pipelines run it):
1. Special tokens typed in the text (<|startoftext|>, <|endoftext|>, the pad token: "!" in SD 2.x) are cut out
   first, case-sensitively. The rest is cleaned up (Unicode NFC, then lower case char by char: no final ς) and cut
   into words by CLIP's pattern `'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`, whitespace only separating.
   Python's `re` lacks \p{L} and \p{N}, so `words` scans `unicodedata.category` instead (no `regex` dependency).
2. Each UTF-8 byte becomes one printable symbol (GPT-2's map: printable Latin-1 bytes stand for themselves, the
   other 68 move to U+0100…): 256 symbols spell any text, nothing is unknown. A word's last symbol carries `</w>`.
3. BPE: merge the adjacent pair of lowest rank (its place in merges.txt) until no pair has one; look up the ids.
"""

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
_moved = [b for b in range(256) if b not in _printable]
BYTE_TO_SYMBOL = {b: chr(b) for b in _printable} | {b: chr(256 + n) for n, b in enumerate(_moved)}  # in vocab order
SYMBOL_TO_BYTE = {s: b for b, s in BYTE_TO_SYMBOL.items()}


def kind(c: str) -> str:
    """'L' letter, 'N' number, ' ' Unicode White_Space (str.isspace() less U+001C–U+001F), 'P' anything else."""
    category = unicodedata.category(c)[0]
    return " " if c.isspace() and c not in "\x1c\x1d\x1e\x1f" else category if category in "LN" else "P"


def words(text: str) -> list[str]:
    """Clean text up and cut it into CLIP's words: the pattern above, its alternatives tried in order."""
    text, out, i = "".join(c.lower() for c in unicodedata.normalize("NFC", text)), [], 0
    while i < len(text):
        k, contraction = kind(text[i]), next((c for c in CONTRACTIONS if text.startswith(c, i)), "")
        j = i + (len(contraction) or 1)
        while not contraction and k in "LP" and j < len(text) and kind(text[j]) == k:  # a run; a digit stays alone
            j += 1
        if k != " ":
            out.append(text[i:j])
        i = j
    return out


def symbols(word: str) -> list[str]:
    out = [BYTE_TO_SYMBOL[b] for b in word.encode("utf-8")]
    return out[:-1] + [out[-1] + "</w>"]  # "a" inside a word and "a</w>" ending one are different symbols


def bpe(word: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge the adjacent pair of lowest rank (the leftmost if tied) until no pair has a rank."""
    while True:
        ranked = [(ranks[pair], i) for i, pair in enumerate(zip(word, word[1:])) if pair in ranks]
        if not ranked:
            return word
        i = min(ranked)[1]
        word = word[:i] + [word[i] + word[i + 1]] + word[i + 2:]


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's layout: 256 byte symbols, the same + </w>, each merge joined, BOS, EOS: 49408 ids for CLIP ViT-L/14."""
    tokens = [*BYTE_TO_SYMBOL.values(), *(s + "</w>" for s in BYTE_TO_SYMBOL.values()), *map("".join, merges), BOS, EOS]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}  # a repeated merge result keeps its first id


def train_bpe(texts: list[str], num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn up to num_merges merges: the most frequent adjacent pair (ties: the first met) merges next."""
    counts = Counter(tuple(symbols(w)) for text in texts for w in words(text))  # word as symbols → frequency
    merges = []
    while len(merges) < num_merges:
        pairs = Counter()
        for word, n in counts.items():
            pairs.update({pair: n * c for pair, c in Counter(zip(word, word[1:])).items()})
        if not pairs:
            break
        merges.append(pairs.most_common(1)[0][0])
        counts = {tuple(bpe(list(word), {merges[-1]: 0})): n for word, n in counts.items()}
    return clip_vocab(merges), merges


def read(file: Path, parse=str):
    try:
        return parse(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {file} ({e}); point from_folder at a CLIP tokenizer folder, such as the "
                         "tokenizer/ folder of a Stable Diffusion repository (vocab.json, merges.txt)") from e


class CLIPTokenizer:
    """Text → (B, max_length) ids: <|startoftext|>, the text's ids (cut to max_length − 2), <|endoftext|>, padding."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int = 77,
                 pad_token: str = EOS):
        missing = [t for t in [pad_token, *clip_vocab([]), *map("".join, merges)] if t not in vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks {missing[:3]} ({len(missing)} in all) of the byte symbols, the "
                             "special tokens and the merges' results: are vocabulary and merges from one tokenizer?")
        self.vocab, self.merges, self.max_length, self.pad_token = vocab, [*map(tuple, merges)], max_length, pad_token
        self.bos_id, self.eos_id, self.pad_id, self.vocab_size = vocab[BOS], vocab[EOS], vocab[pad_token], len(vocab)
        self.ranks, self.id_to_token = {m: r for r, m in enumerate(self.merges)}, {i: t for t, i in vocab.items()}
        specials = sorted({BOS, EOS, pad_token}, key=len, reverse=True)
        self.specials = re.compile("(" + "|".join(map(re.escape, specials)) + ")")  # kept by re.split, at odd places
        self.cache = {s: [vocab[s]] for s in specials}  # word → ids; a special token is a word of its own

    @classmethod
    def from_folder(cls, path) -> "CLIPTokenizer":
        """Read a transformers tokenizer folder: vocab.json, merges.txt, and the settings files when present."""
        path = Path(path)
        vocab, lines = read(path / "vocab.json", json.loads), read(path / "merges.txt").splitlines()
        lines = [line for n, line in enumerate(lines) if line.strip() and (n or not line.startswith("#version"))]
        if bad := [line for line in lines if len(line.split()) != 2]:
            raise ValueError(f"{path / 'merges.txt'} has the line {bad[0]!r}; each must be two symbols and a space")
        files = [path / "tokenizer_config.json", path / "special_tokens_map.json"]  # the second wins, like transformers
        settings = {key: value for file in files if file.exists() for key, value in read(file, json.loads).items()}
        pad = settings.get("pad_token") or EOS
        pad = pad["content"] if isinstance(pad, dict) else pad  # {"content": "!", "lstrip": false, …} in some files
        return cls(vocab, [tuple(line.split()) for line in lines], settings.get("model_max_length", 77), pad)

    def save(self, folder) -> None:
        """Write vocab.json, merges.txt and tokenizer_config.json, for from_folder and transformers alike."""
        (folder := Path(folder)).mkdir(parents=True, exist_ok=True)
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.max_length, "pad_token": self.pad_token}
        (folder / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges), "utf-8")
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), "utf-8")

    def encode(self, text: str) -> list[int]:
        """<|startoftext|>, the ids of the text, <|endoftext|>; no padding, no truncation."""
        ids = [self.bos_id]
        for k, piece in enumerate(self.specials.split(text)):
            for word in [piece] if k % 2 else words(piece):
                if word not in self.cache:
                    self.cache[word] = [self.vocab[s] for s in bpe(symbols(word), self.ranks)]
                ids += self.cache[word]
        return ids + [self.eos_id]

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """(B, max_length) int64 ids; a long text keeps its first max_length − 2 tokens between the two ends."""
        T, rows = self.max_length, [self.encode(text) for text in ([texts] if isinstance(texts, str) else texts)]
        rows = [ids if len(ids) <= T else ids[:T - 1] + [self.eos_id] for ids in rows]
        return torch.tensor([ids + [self.pad_id] * (T - len(ids)) for ids in rows], dtype=torch.long).view(-1, T)

    def decode(self, ids) -> str:
        """The text of the ids less the special tokens; words come back separated by single spaces."""
        text = "".join(self.id_to_token[i] for i in map(int, ids) if i not in {self.bos_id, self.eos_id, self.pad_id})
        return bytes(SYMBOL_TO_BYTE[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ").strip()
