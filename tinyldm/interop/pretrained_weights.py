"""The file side of from_pretrained / save_pretrained: reading weight files safely, and moving tensors between
tinyldm's names and the other format's through the name tables of diffusers_names.py, strictly.

A diffusers folder's weights are diffusion_pytorch_model.safetensors (older uploads: a pickled .bin, read as plain
tensors); an original DiT checkpoint is a plain state dict in a .pt file. Pickles are read with
torch.load(weights_only=True), which runs no code. Every bad file is a `PretrainedError` naming it and the fix.
The configs, and from_pretrained / save_pretrained themselves, are in pretrained.py.

Leaves first: files → names.
"""

import json
import pickle
import re
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

WEIGHTS = "diffusion_pytorch_model.safetensors"


class PretrainedError(ValueError):
    """A folder or file that cannot be loaded or written as asked; the message names the file and the fix."""


def listed(items: list[str], limit: int = 12) -> str:
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# ---- files -----------------------------------------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); download it again") from None
    if not isinstance(config, dict):
        raise PretrainedError(f"{path} holds a JSON {type(config).__name__}, not a model config; download it again")
    return config


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a bad header or a short file
        first = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise PretrainedError(f"{path} is not a readable safetensors file ({first}): it was cut short or damaged; "
                              "download it again") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A .pt / .pth / .bin file that holds a plain state dict {name: tensor}, read without running pickled code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refuses any class but tensors and containers
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise PretrainedError(
            f"{path} is not a plain state dict (it pickles {found[1] if found else 'other objects'}); where you trust "
            "it, save the weights alone: torch.save(torch.load(path, weights_only=False)['ema'], 'ema.pt') for a "
            "DiT training checkpoint, torch.save(model.state_dict(), 'weights.pt') otherwise") from None
    except Exception as e:  # a cut-short zip archive, or not a torch file at all
        first = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise PretrainedError(f"{path} cannot be read by torch.load ({first}): it was cut short or damaged, or is no "
                              "PyTorch file; download it again") from None
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    inner = [k for k, v in state.items() if isinstance(v, dict)] if isinstance(state, dict) else []
    hint = (f"it holds {listed(sorted(map(str, state)), 6)}: save one part alone, e.g. "
            f"torch.save(ckpt[{inner[0]!r}], 'weights.pt')") if inner else f"it holds a {type(state).__name__}"
    raise PretrainedError(f"{path} is not a plain state dict of tensors ({hint})")


def model_folder(path: Path) -> Path:
    """A diffusers model folder (config.json + weights), or a clear error saying what to pass instead."""
    if not path.exists():
        raise PretrainedError(f"{path} does not exist; pass a diffusers model folder (config.json + {WEIGHTS})")
    if not path.is_dir():
        raise PretrainedError(f"{path} is a file; pass the diffusers model folder that holds config.json and "
                              f"{WEIGHTS} (only DiT.from_pretrained also reads a .pt state dict)")
    if not (path / "config.json").is_file():
        parts = sorted(p.name for p in path.iterdir() if (p / "config.json").is_file())
        fix = (f"it is a pipeline folder: pass subfolder= one of {parts}" if parts
               else f"pass the folder that holds config.json and {WEIGHTS}")
        raise PretrainedError(f"{path} has no config.json; {fix}")
    return path


def folder_weights(folder: Path, single: str = WEIGHTS, legacy: str = "diffusion_pytorch_model.bin"
                   ) -> tuple[dict[str, torch.Tensor], Path]:
    """The folder's tensors: its safetensors file `single`, or the pickled `legacy` .bin of older uploads (read as
    plain tensors). diffusers' names by default; transformers' are model.safetensors and pytorch_model.bin."""
    if (folder / single).is_file():
        return read_safetensors(folder / single), folder / single
    if (folder / legacy).is_file():
        return read_state_dict(folder / legacy), folder / legacy
    others = listed(sorted(p.name for p in folder.iterdir() if p.name != "config.json"), 6) or "nothing else"
    raise PretrainedError(f"{folder} has config.json but no {single} or {legacy} (it holds {others}; sharded or "
                          "fp16-variant weights are not read): download that file too")


# ---- names -----------------------------------------------------------------------------------------------------------

@cache
def row_regex(pattern: str) -> re.Pattern:
    """A table row's side → a regex matching it at a dot boundary; {i} and {each} match a block number."""
    body = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{each\}", r"\d+")
    return re.compile(r"(?:^|(?<=\.))" + body)


def other_name(key: str, table: list) -> tuple[str | None, str]:
    """tinyldm key → (the other format's key, how), by the table's first matching row (see diffusers_names.py)."""
    for left, right, how in table:
        match = row_regex(left).search(key) if left else None
        if match:
            if right is None:
                return None, how
            right = right.replace("{i}", match["i"]) if "{i}" in left else right
            return key[:match.start()] + right + key[match.end():], how
    return key, ""


def other_names_of(prefixes: tuple[str, ...], table: list) -> list[re.Pattern]:
    """Regexes for every other-format key that the tinyldm modules under `prefixes` are stored as."""
    out = []
    for left, right, _ in table:
        if left and right and left.startswith(prefixes):
            module = right if right.endswith(".") else right.rsplit(".", 1)[0] + "."  # onehot: weight and bias
            out.append(re.compile("^" + row_regex(module).pattern.removeprefix(r"(?:^|(?<=\.))")))
    for prefix in prefixes:  # keys that no row renames keep their tinyldm names
        out.append(re.compile("^" + re.escape(prefix)))
    return out


def fill_weights(model: nn.Module, state: dict, table: list, path: Path, depth: int = 0,
                 new: tuple[str, ...] = ()) -> None:
    """Every tensor of `model` from `state` (the other format's names) through `table`, all or nothing: one error lists
    every missing, left-over and mis-shaped tensor. Tensors under the prefixes `new` stay as built; the state's
    tensors for those modules are dropped."""
    filled, used, missing, shapes = {}, set(), [], []
    for key, ref in model.state_dict().items():
        other, how = other_name(key, table)
        if how == "tinyldm" or key.startswith(new):
            continue
        sources = [other.replace("{each}", str(b)) for b in range(depth)] if how == "each" else [other]
        if how == "onehot":
            sources.append(other.removesuffix(".weight") + ".bias")
        absent = [s for s in sources if s not in state]
        missing += absent
        used.update(sources)
        if absent:
            continue
        tensor = state[sources[0]]
        if how == "each" and any(not torch.equal(state[s], tensor) for s in sources[1:]):
            differs = next(s for s in sources[1:] if not torch.equal(state[s], tensor))
            raise PretrainedError(f"{path}: {differs} differs from block 0's: tinyldm's DiT has one timestep and label "
                                  "embedder shared by all blocks (as the original DiT, from which diffusers converts "
                                  "its DiTs); this checkpoint has one per block and cannot be loaded")
        if how.startswith("chunk"):
            k, n = map(int, how.split()[1].split("/"))
            tensor = tensor.chunk(n, dim=0)[k] if tensor.shape[0] % n == 0 else tensor
        if how == "onehot":
            if state[sources[1]].any():
                raise PretrainedError(f"{path}: {sources[1]} is not zero, so {sources[0]} is not a user table written "
                                      "by tinyldm (a Linear on one-hot ids); this conditioning cannot be loaded")
            tensor = tensor.T
        if tensor.shape != ref.shape:
            named = sources[0] if sources[0] == key else f"{sources[0]} ({key})"
            shapes.append(f"{named}: file {list(state[sources[0]].shape)}, model {list(ref.shape)}")
            continue
        filled[key] = tensor
    for _, right, how in table:  # tensors tinyldm computes itself: checked, then dropped
        if how == "fixed" and right in state:
            used.add(right)
            ours = getattr(model, right)
            if state[right].shape != ours.shape or not torch.allclose(state[right].float(), ours, atol=1e-5):
                shapes.append(f"{right} (not the fixed 2-D sin-cos positions of this size)")
    dropped = other_names_of(new, table) if new else []
    unexpected = sorted(k for k in state if k not in used and not any(p.match(k) for p in dropped))
    problems = [f"{what} {listed(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
    if problems:
        raise PretrainedError(f"{path} does not fit the tinyldm {type(model).__name__} its config describes: "
                              f"{'; '.join(problems)}; check that the weights and config.json belong together "
                              "(download both again) and the settings you override")
    with torch.no_grad():
        model.load_state_dict(filled, strict=False)  # strictness is checked above, with the other format's names


def export_weights(model: nn.Module, table: list, depth: int = 0) -> dict[str, torch.Tensor]:
    """The model's tensors under the other format's names (the reverse of fill_weights)."""
    out = {}
    for key, tensor in model.state_dict().items():
        other, how = other_name(key, table)
        tensor = tensor.detach().cpu().contiguous()
        if how == "tinyldm":
            continue
        if how == "each":
            out.update({other.replace("{each}", str(b)): tensor.clone() for b in range(depth)})
        elif how == "onehot":
            out[other] = tensor.T.contiguous()
            out[other.removesuffix(".weight") + ".bias"] = tensor.new_zeros(tensor.shape[1])
        elif how == "":
            out[other] = tensor
        else:
            raise ValueError(f"the table row for {key} ({how!r}) is for reading only")
    return out
