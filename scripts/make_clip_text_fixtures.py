"""Tiny random-weight transformers CLIPTextModel folders, fixed token ids and transformers' outputs, for
tests/test_clip_text.py.

Run it with a Python that has transformers (never tinyldm's own environment; tinyldm does not import transformers):

    OMP_NUM_THREADS=1 /tmp/dvenv/bin/python scripts/make_clip_text_fixtures.py   # transformers 5.25.0, CPU, float32

Writes tests/fixtures/transformers/:
    clip_text/          SD 1.x-like: quick_gelu, eos_token_id 2 (the legacy rule: pool at the largest id), stored as
                        SD 1.x's text_encoder/ files are (transformers 4.x): every tensor under `text_model.`, plus the
                        persistent `text_model.embeddings.position_ids` buffer of those versions
    clip_text_sd2/      SD 2.x-like: gelu, eos_token_id 3, an id that is not the largest (the rule since transformers
                        PR #24773: pool at the first position of eos_token_id), as transformers 5.25 writes it
    <name>_io.safetensors   input_ids and attention_mask (B, T), and transformers' outputs without the mask
                        (last_hidden_state, pooler_output) and with it (…_masked)
    manifest.json       versions and what each file holds

The rows of input_ids: padded with the end-of-text id (SD 1.x's tokenizer), padded with 0 (SD 2.x's), and one
without padding whose last id is the end-of-text id. This script does not import tinyldm.
"""

import json
from pathlib import Path

import safetensors
import torch
from make_diffusers_fixtures import perturb  # the scripts' one "move every weight off its init" (needs diffusers)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel
from transformers import __version__ as transformers_version

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "transformers"
T = 12  # tokens per row (max_position_embeddings is 16)
SIZE = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, layer_norm_eps=1e-5, attention_dropout=0.0)


def token_rows(bos: int, eos: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, T) ids: bos, words, eos, then padding (eos repeated; 0; none), and the matching attention mask."""
    lengths, pads = (6, 9, T), (eos, 0, None)
    ids, mask = torch.zeros(3, T, dtype=torch.long), torch.zeros(3, T, dtype=torch.long)
    for row, (n, pad) in enumerate(zip(lengths, pads)):
        words = torch.randint(4, 90, (n - 2,), generator=g)  # ordinary ids, below the bos / eos ids of clip_text
        ids[row, :n] = torch.cat([torch.tensor([bos]), words, torch.tensor([eos])])
        ids[row, n:] = pad if pad is not None else 0
        mask[row, :n] = 1
    return ids, mask


def write(name: str, model: CLIPTextModel, ids: torch.Tensor, mask: torch.Tensor) -> None:
    with torch.no_grad():
        plain, masked = model(input_ids=ids), model(input_ids=ids, attention_mask=mask)
    model.save_pretrained(OUT / name)
    save_file({"input_ids": ids, "attention_mask": mask,
               "last_hidden_state": plain.last_hidden_state.contiguous(), "pooler_output": plain.pooler_output,
               "last_hidden_state_masked": masked.last_hidden_state.contiguous(),
               "pooler_output_masked": masked.pooler_output}, str(OUT / f"{name}_io.safetensors"))


def sd1_layout(folder: Path) -> None:
    """Rewrite model.safetensors as transformers 4.x wrote SD 1.x's: `text_model.` before every name, and the
    position_ids buffer (int64, (1, L)) that those versions saved."""
    path = folder / "model.safetensors"
    state = {f"text_model.{k}": v for k, v in load_file(str(path)).items()}
    state["text_model.embeddings.position_ids"] = torch.arange(SIZE["max_position_embeddings"])[None]
    save_file(state, str(path), metadata={"format": "pt"})


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)

    # SD 1.x-like: bos 97, eos 98 = the largest id (as CLIP's 49406, 49407), config eos_token_id 2 (legacy).
    torch.manual_seed(10)
    sd1 = perturb(CLIPTextModel(CLIPTextConfig(**SIZE, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2,
                                               pad_token_id=1)), 11)
    ids, mask = token_rows(97, 98, g)
    write("clip_text", sd1, ids, mask)
    sd1_layout(OUT / "clip_text")

    # SD 2.x-like activation, non-legacy pooling: eos 3 lies below most ids, so "largest id" would pick another place.
    torch.manual_seed(20)
    sd2 = perturb(CLIPTextModel(CLIPTextConfig(**SIZE, hidden_act="gelu", bos_token_id=1, eos_token_id=3,
                                               pad_token_id=0)), 21)
    ids, mask = token_rows(1, 3, g)
    assert (ids.argmax(-1) != (ids == 3).int().argmax(-1)).all()  # the two pooling rules disagree on every row
    write("clip_text_sd2", sd2, ids, mask)

    manifest = {"transformers": transformers_version, "torch": torch.__version__,
                "safetensors": safetensors.__version__, "dtype": "float32", "device": "cpu",
                "written_by": "scripts/make_clip_text_fixtures.py",
                "files": {str(p.relative_to(OUT)): p.stat().st_size for p in sorted(OUT.rglob("*"))
                          if p.is_file() and p.name != "manifest.json"}}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {OUT}: {sum(manifest['files'].values()) / 1e3:.0f} KB in {len(manifest['files'])} files")
