"""CLIP's BPE tokenizer (tinyldm/text/tokenizer.py): round trips on a vocabulary learned here, parity with
transformers on OpenAI's real CLIP vocabulary, and the errors people meet.

The real vocabulary comes from OpenAI's merge list, shipped in the `clip` package (`pip install --no-deps
clip-anytorch==2.6.0`; found with importlib, never imported, since `clip` needs torchvision): the test builds CLIP
ViT-L/14's vocab.json from it with tinyldm and must land on the ids that transformers gave on a folder built
independently (tests/fixtures/clip_tokenizer/ids.json, made by scripts/make_tokenizer_fixtures.py, whose docstring
says what the reference is and where Unicode versions make the two differ). The live tests run transformers itself
on folders that tinyldm saved, where transformers is installed.
"""

import gzip
import hashlib
import importlib.util
import json
import random
import unicodedata
from pathlib import Path

import pytest
import torch

from tinyldm.text.tokenizer import BOS, BYTE_TO_SYMBOL, EOS, CLIPTokenizer, bpe, clip_vocab, train_bpe, words

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "clip_tokenizer" / "ids.json").read_text("ascii"))
CLIP_SPEC = importlib.util.find_spec("clip")
needs_clip = pytest.mark.skipif(CLIP_SPEC is None, reason="OpenAI's CLIP merges are absent: "
                                "pip install --no-deps clip-anytorch==2.6.0")
CAPTIONS = [
    "a 1.84 m person walking at 1.3 m/s", "a 1.62 m person running at 3.1 m/s", "a person sitting down",
    "a person standing up", "a person walking slowly", "two people walking side by side", "a person falls",
    "a person is waving both arms", "a child walking at 0.9 m/s", "a tall person running fast",
] * 3
VARIED = [
    "A Person Walking!", "it's they're we've I'm", "Crème brûlée, naïve café", "東京タワー 日本語", "😀👍🏽 emoji",
    "tab\tnew\nline  spaces", "1.84 m/s²", "", "   ", "(masterpiece:1.2)", "Zürich‐Straße", "'s''s", "x" * 200,
]


@pytest.fixture(scope="module")
def small():
    vocab, merges = train_bpe(CAPTIONS, num_merges=40)
    return CLIPTokenizer(vocab, merges)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """CLIP ViT-L/14's tokenizer folder, built by tinyldm from OpenAI's merge list."""
    data = (Path(CLIP_SPEC.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == FIXTURE["merges_gz_sha256"], "not the merge list the fixture used"
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1:1 + FIXTURE["num_merges"]]  # line 1: a version header
    merges = [tuple(line.split()) for line in lines]
    folder = tmp_path_factory.mktemp("clip") / "tokenizer"
    CLIPTokenizer(clip_vocab(merges), merges).save(folder)
    return folder


# Byte-level BPE on a vocabulary learned from captions.

def test_byte_symbols_are_printable_and_one_per_byte():
    symbols = list(BYTE_TO_SYMBOL.values())
    assert sorted(BYTE_TO_SYMBOL) == list(range(256)) and len(set(symbols)) == 256
    assert all(s.isprintable() and not s.isspace() for s in symbols)  # so a merges.txt line splits on its one space
    assert all(BYTE_TO_SYMBOL[b] == chr(b) for b in b"az09!~")  # printable ASCII stands for itself


def test_train_bpe_builds_clip_layout(small):
    vocab, merges = small.vocab, small.merges
    assert len(merges) == 40 and small.vocab_size == 2 * 256 + len(merges) + 2 == len(set(vocab.values()))
    assert [vocab[s] for s in BYTE_TO_SYMBOL.values()] == list(range(256))
    assert [vocab[s + "</w>"] for s in BYTE_TO_SYMBOL.values()] == list(range(256, 512))
    assert [vocab["".join(m)] for m in merges] == list(range(512, 512 + len(merges)))
    assert (small.bos_id, small.eos_id, small.pad_id) == (vocab[BOS], vocab[EOS], vocab[EOS]) == (552, 553, 553)


def test_train_bpe_merges_the_most_frequent_pair_first():
    _, merges = train_bpe(["ab ab ab cd", "xy"], num_merges=10)
    assert merges[0] == ("a", "b</w>") and set(merges) == {("a", "b</w>"), ("c", "d</w>"), ("x", "y</w>")}
    vocab, merges = train_bpe(["aaaa"], num_merges=10)  # a|a|a|a</w>: (a, a) twice, merged leftmost first
    assert merges == [("a", "a"), ("aa", "a"), ("aaa", "a</w>")]
    assert CLIPTokenizer(vocab, merges).encode("aaaa")[1:-1] == [vocab["aaaa</w>"]]
    vocab, merges = train_bpe(CAPTIONS, num_merges=10_000)  # stops when every word is one symbol
    assert all(len(CLIPTokenizer(vocab, merges).encode(w)) == 3 for w in words(" ".join(CAPTIONS)))


def test_bpe_merges_by_rank_leftmost_first():
    assert bpe(["a", "b", "c"], {("b", "c"): 0, ("a", "b"): 1}) == ["a", "bc"]
    assert bpe(["a", "b", "c"], {("b", "c"): 1, ("a", "b"): 0}) == ["ab", "c"]
    assert bpe(["a", "a", "a"], {("a", "a"): 0}) == ["aa", "a"]
    assert bpe(["x"], {}) == ["x"]


def test_words_follow_clips_pattern():
    assert words("It's 1.84 m/s!!  Héllo\tWORLD") == ["it", "'s", "1", ".", "8", "4", "m", "/", "s", "!!", "héllo",
                                                       "world"]
    assert words("''s 'sam rock'n'roll") == ["''", "s", "'s", "am", "rock", "'", "n", "'", "roll"]
    assert words("e\u0301") == ["é"]  # NFC first: a decomposed accent joins its letter
    assert words("a\x1cb\u00a0c\u3000d") == ["a", "\x1c", "b", "c", "d"]  # U+001C is not Unicode White_Space


def test_words_match_the_regex_package():
    regex = pytest.importorskip("regex")
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
    rng, pool = random.Random(0), [chr(c) for c in range(0x3000) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    texts = [r["text"] for r in FIXTURE["records"]] + ["".join(rng.choices(pool, k=30)) for _ in range(300)]
    for text in texts:
        clean = "".join(c.lower() for c in unicodedata.normalize("NFC", text))
        assert words(text) == pattern.findall(clean), text


def test_decode_inverts_encode_up_to_the_clean_up(small):
    for text in VARIED + CAPTIONS:
        ids = small.encode(text)
        assert ids[0] == small.bos_id and ids[-1] == small.eos_id and max(ids) < small.vocab_size  # nothing unknown
        assert small.decode(ids) == " ".join(words(text))
    assert small.decode(small.encode("A person WALKING  slowly")) == "a person walking slowly"


def test_merges_are_used(small):
    walking = small.encode("walking")[1:-1]
    assert len(walking) < len("walking") and small.decode(small.encode("walking")) == "walking"
    assert len(small.encode("zqzqzq")) == 2 + 6  # unseen letters stay single bytes


def test_padding_and_truncation(small):
    long = "a person walking " * 40
    ids = small(["a person", long])  # (B, T)
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    short = small.encode("a person")
    assert ids[0, :len(short)].tolist() == short and (ids[0, len(short):] == small.pad_id).all()
    assert ids[1].tolist() == small.encode(long)[:76] + [small.eos_id]  # start, the first 75 tokens, end
    assert small("a person").shape == (1, 77) and small([]).shape == (0, 77)
    tiny = CLIPTokenizer(small.vocab, small.merges, max_length=4)
    assert tiny(long).tolist() == [[small.bos_id, *small.encode(long)[1:3], small.eos_id]]


def test_special_tokens_typed_in_the_text(small):
    ids = small.encode(f"a {EOS} b")
    assert ids[1:-1] == small.encode("a")[1:-1] + [small.eos_id] + small.encode("b")[1:-1]
    assert small.eos_id not in small.encode("<|EndOfText|>")[1:-1]  # case-sensitive: lower-cased it is plain text
    bang = CLIPTokenizer(small.vocab, small.merges, pad_token="!")  # SD 2.x: "!" is the pad token, and special
    assert bang.pad_id == small.vocab["!"] == 0 and bang.encode("hi!")[-2] == 0
    assert bang.decode(bang.encode("hi!")) == "hi"


def test_save_and_from_folder_round_trip(small, tmp_path):
    CLIPTokenizer(small.vocab, small.merges, max_length=32, pad_token="!").save(tmp_path)
    loaded = CLIPTokenizer.from_folder(tmp_path)
    assert (loaded.vocab, loaded.merges, loaded.max_length, loaded.pad_token) == (small.vocab, small.merges, 32, "!")
    (tmp_path / "tokenizer_config.json").unlink()  # optional: defaults are SD 1.x's
    assert (CLIPTokenizer.from_folder(tmp_path).max_length, CLIPTokenizer.from_folder(tmp_path).pad_token) == (77, EOS)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!", "lstrip": False}}))
    assert CLIPTokenizer.from_folder(tmp_path).pad_token == "!"


# Parity with transformers on the real vocabulary.

@needs_clip
def test_ids_match_transformers_on_the_real_vocabulary(clip_folder):
    sd1 = CLIPTokenizer.from_folder(clip_folder)
    assert sd1.vocab_size == 49408 and (sd1.bos_id, sd1.eos_id, sd1.pad_id) == (49406, 49407, 49407)
    sd2 = CLIPTokenizer(sd1.vocab, sd1.merges, pad_token="!")
    records = FIXTURE["records"]
    assert len(records) >= 200 and any(len(r["ids"]) > 77 for r in records)
    for record in records:
        assert sd1.encode(record["text"]) == record["ids"], record["text"]
        assert sd1.decode(record["ids"]) == record["decoded"], record["text"]
        if "ids_pad_bang" in record:
            assert sd2.encode(record["text"]) == record["ids_pad_bang"], record["text"]
    assert sd1.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]  # SD 1.x's known prompt ids


@needs_clip
def test_live_transformers_reads_what_tinyldm_saves(clip_folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    texts = [r["text"] for r in FIXTURE["records"]]
    ours, theirs = CLIPTokenizer.from_folder(clip_folder), transformers.CLIPTokenizer.from_pretrained(clip_folder)
    expected = theirs(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ours(texts), expected)
    small = CLIPTokenizer(*train_bpe(CAPTIONS, num_merges=40), max_length=16, pad_token="!")
    small.save(tmp_path)
    theirs = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    assert (theirs.pad_token, theirs.model_max_length, len(theirs)) == ("!", 16, small.vocab_size)
    for text in VARIED + CAPTIONS:
        assert small.encode(text) == theirs(text).input_ids, text
        assert small.decode(small.encode(text)) == theirs.decode(theirs(text).input_ids, skip_special_tokens=True)


# Errors people meet.

def test_clear_errors(small, tmp_path):
    with pytest.raises(ValueError, match=r"vocab\.json.*point from_folder at a CLIP tokenizer folder"):
        CLIPTokenizer.from_folder(tmp_path)
    small.save(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read .*vocab\.json"):
        CLIPTokenizer.from_folder(tmp_path)
    small.save(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nw a l\n")
    with pytest.raises(ValueError, match=r"merges\.txt has the line 'w a l'; each must be two symbols"):
        CLIPTokenizer.from_folder(tmp_path)
    with pytest.raises(ValueError, match=r"lacks \['zq'\].*merges' results"):
        CLIPTokenizer(small.vocab, [("z", "q")] + small.merges)
    with pytest.raises(ValueError, match=r"lacks \['!'"):
        CLIPTokenizer({k: v for k, v in small.vocab.items() if k != "!"}, small.merges)
