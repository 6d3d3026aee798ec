"""Run folders: what training writes and inference reads, in one place (no training code needed to load a run).

A run folder looks like this:

    runs/<name>/
      config.json                    every setting; written atomically at the start and updated at the end
      model.safetensors              the latest weights (what sample.py / train_ldm.py load)
      ema.safetensors                the EMA weights (latent-diffusion runs)
      checkpoints/step_00000400/     the latest complete training state, for --resume (tinyldm/train.py)
      log.jsonl                      one line of losses per step (loss curves are drawn from it)

Writes never leave a half-written file behind: each file is written under a temporary name and renamed
(`os.replace` is atomic on POSIX). Loading never unpickles arbitrary objects: weights are safetensors.
Bad input is a `RunError` (a ValueError), which `run_cli` turns into one line on stderr and exit code 2.
"""

import atexit
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tinyldm import threads
from tinyldm.malloc import keep_freed_memory


class RunError(ValueError):
    """A run folder that cannot be used as asked (missing, not a run, different config)."""


def run_cli(script: str, body, *args) -> int:
    """Run a script's body → the exit code: an int the body returns (130 after Ctrl-C), else 0. Bad input
    (ValueError, which DataError and RunError are) becomes one line on stderr and exit code 2, never a traceback.
    Bugs (any other exception) still show their traceback. First, malloc is told to keep freed memory
    (tinyldm/malloc.py: 2× faster 256×256 convolutions on a CPU)."""
    keep_freed_memory()
    threads.start()  # torch's threads follow what other processes use of the cores (tinyldm/threads.py)
    try:
        rc = body(*args)
        return rc if isinstance(rc, int) else 0
    except ValueError as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError, OSError) as e:  # out of memory or disk: the user's machine, not a bug
        line = resource_message(e)
        if line is None:
            raise
        print(f"{script}: error: {line}", file=sys.stderr)
        return 2


def resource_message(e: BaseException) -> str | None:
    """One line for an exception that means the machine ran out of memory or disk space, else None. Files are
    written atomically (below), so the checkpoints already on disk are intact either way."""
    text = str(e).splitlines()[0].split(". ")[0][:120] if str(e) else type(e).__name__
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text \
            or "out of memory" in text.lower():
        return (f"out of memory ({text}); lower --batch-size (a training run can raise --grad-accum to keep its "
                "batch) or the image size (--image-size, a smaller --preset); the checkpoints written so far are "
                "intact: continue with --resume RUN_DIR")
    if is_disk_full(e):
        return f"disk full ({text}); free space, then continue with --resume RUN_DIR (the last checkpoint is intact)"
    return None


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT from the OS, or what torch.save and safetensors report for it (a failed C++ stream write)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in ("basic_ios::clear", "file write failed",
                                                                     "No space left"))


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto", "cpu", "cuda", "cuda:N", "mps" (or a torch.device) → a device this machine has; else one ValueError."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name}: CUDA is not available on this machine (this torch build: "
                         f"{'CPU only' if torch.version.cuda is None else 'CUDA ' + torch.version.cuda}); use cpu")
    if name.startswith("mps") and not torch.backends.mps.is_available():
        raise ValueError(f"device {name}: Apple's MPS is not available on this machine; use cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}; choose one of them")
    return device


def cpu_bf16_hardware() -> str | None:
    """What multiplies bfloat16 in hardware on this CPU: "AMX-BF16" (Intel's matrix tiles), "AVX512-BF16" (the
    dot-product instructions of AMD Zen 4 and Intel Cooper Lake and later) or None. There bf16 autocast made the tiny
    autoencoder's training step 2.6× (AMX) and 1.85× (AVX512-BF16, AMD EPYC) faster (docs/speedrun.md); elsewhere
    (AVX2, AVX-512 without BF16) bf16 is emulated, 10–30× slower than float32. oneDNN's own check is part of it, so
    capping its instruction set (ONEDNN_MAX_CPU_ISA=AVX2) turns bf16 off too."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None
        if torch.cpu._is_amx_tile_supported():
            return "AMX-BF16"
        if torch.cpu._is_avx512_bf16_supported():
            return "AVX512-BF16"
    except (AttributeError, RuntimeError):  # an older or other torch build: play safe
        pass
    return None


def autocast_dtype(device: torch.device, precision: str, compiled: bool = False) -> torch.dtype | None:
    """--precision → the autocast dtype (None = float32 throughout). auto: bf16 on CUDA and on CPUs with bf16 hardware,
    float32 elsewhere; bf16 on a CPU without it is allowed (slow, but the same numbers).

    torch.compile together with CPU bf16 autocast is refused on torch 2.13: it gave exactly-zero encoder gradients on
    the autoencoder and all-NaN DiT outputs (issue 12). With --compile, auto falls back to float32 on the CPU."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision {precision!r}: choose auto, fp32 or bf16")
    if precision == "fp32" or device.type not in ("cpu", "cuda"):
        return None
    if device.type == "cpu" and compiled:
        if precision == "bf16":
            raise ValueError("--compile with --precision bf16 on the CPU gives wrong gradients (torch 2.13: zero "
                             "or NaN); drop one of them")
        return None
    if precision == "bf16" or device.type == "cuda" or cpu_bf16_hardware() is not None:
        return torch.bfloat16
    return None


def inference_autocast(device) -> torch.autocast:
    """Inference (the denoiser while sampling, encoding the latent cache, decoding, reconstructions) in bf16 where the
    hardware multiplies it (CUDA; CPUs with AMX or AVX512-BF16: autocast_dtype's "auto", which the models also
    trained in), float32 elsewhere. At 256×256 on an AMD EPYC with AVX512-BF16 an image encodes in 15.5 ms instead
    of 24.9 and decodes in 44 ms instead of 75, with pixels 57 dB from float32's (benchmarks/bench_codec_batch.py
    --precision), and the compact run's DiT samples 1.6× faster, its images 53 dB (median) from float32's; the
    reconstruction itself is 18 dB from the real image."""
    return autocast_to(device, inference_dtype(device))


def autocast_to(device, amp: torch.dtype | None) -> torch.autocast:
    """A context that autocasts to `amp` on `device` (autocast_dtype's answer), or keeps float32 where amp is None."""
    return torch.autocast(torch.device(device).type, dtype=amp or torch.bfloat16, enabled=amp is not None)


def inference_dtype(device) -> torch.dtype | None:
    """The dtype inference_autocast computes in on `device`: bf16, or None for float32 throughout."""
    return autocast_dtype(torch.device(device), "auto")


def precision_words(device: torch.device, amp: torch.dtype | None) -> str:
    """The start-up line's words for the precision a run trains in, with the reason on a CPU, so that a float32 run
    on a CPU without bf16 hardware explains its speed (and a forced bf16 one its slowness)."""
    if device.type != "cpu":
        return "bf16 autocast" if amp is not None else "float32"
    hardware = cpu_bf16_hardware()
    if amp is None:
        return "float32" + ("" if hardware else " (this CPU has no bf16 hardware)")
    if hardware:
        return f"bf16 autocast ({hardware})"
    return "bf16 autocast (emulated: no bf16 hardware, slower than float32)"


# ---- atomic files and weights ---------------------------------------------------------------------------------------

def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def atomic_write_json(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    _fsync_replace(tmp, path)


def atomic_save_image(path: Path, image) -> None:
    """A PIL image → a PNG under a temporary name, then renamed into place: a kill leaves no cut-short picture."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")  # the format by name: the temporary name has no .png
    _fsync_replace(tmp, path)


def atomic_save_weights(path: Path, state_dict: dict, metadata: dict | None = None) -> None:
    """state_dict → safetensors under a temporary name, then renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    _fsync_replace(tmp, path)


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict:
    """A safetensors file → state dict; a missing, cut-short or damaged file is a RunError naming it."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist; is this a finished tinyldm run folder?")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types for a bad header, size or dtype
        raise RunError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:80]}): it was cut "
                       "short or damaged; resume from a checkpoint or retrain") from None


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB pieces: what identifies a set of weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_finite(state: dict, path: Path) -> None:
    """Weights with NaN or ±inf come from a diverged run; they would only give black images."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RunError(f"{path} holds non-finite weights (NaN/inf in {len(bad)} tensors, e.g. {bad[0]}): the run "
                       "diverged; resume an earlier checkpoint with a lower --lr, or retrain")


def check_writable(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} is a file; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunError(f"run folder {run_dir} is not writable ({e.strerror}); choose another --out") from None


# ---- one writer per run folder ---------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_run(run_dir: Path, script: str) -> None:
    """Take run_dir/.lock (pid, host, script) or refuse: two writers would mix one run's config with another's
    weights. A lock left by a dead process on this host (a kill, a crash) is replaced with a notice; this process's
    own lock (an earlier run in the same Python session) is simply taken over."""
    path = Path(run_dir) / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "script": script}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                owner = {}
            pid, host = owner.get("pid"), owner.get("host")
            ours = host == me["host"] and pid == me["pid"]
            if host == me["host"] and isinstance(pid, int) and (ours or not _alive(pid)):
                if not ours:
                    print(f"notice: {path} was left by process {pid} ({owner.get('script')}), which is gone; "
                          "taking it over", flush=True)
                path.unlink(missing_ok=True)
                continue
            raise RunError(f"folder {run_dir} is in use by {owner.get('script', 'another process')} (pid {pid} "
                           f"on {host}); wait for it to finish or choose another --out (if you are sure nothing "
                           f"writes there, delete {path})") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        atexit.register(unlock_run, run_dir)  # also when the run ends in an error; a killed process leaves it stale
        return
    raise RunError(f"could not take the lock {path}; delete it if no run writes to {run_dir}")


def unlock_run(run_dir: Path) -> None:
    """Release this process's lock on run_dir (a lock of another process is left alone)."""
    path = Path(run_dir) / ".lock"
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, json.JSONDecodeError):
        pass


class StopRequest:
    """`with StopRequest() as stop:` around a loop (training, sampling): Ctrl-C (SIGINT) or SIGTERM (what cluster
    schedulers send) sets `stop.requested`, so the loop can finish its step (or batch), write what it has and exit
    130 instead of dying mid-step. A second signal stops at once (writes stay atomic). The handlers are restored on
    exit. `message` is the training scripts' last line."""

    def __enter__(self) -> "StopRequest":
        self.signal = None
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, the default behaviour stays
                pass
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        self.restore()  # a second Ctrl-C falls through to the default handler

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def message(self, script: str, step: int, run_dir: Path) -> str:
        return (f"{self.signal}: stopped after step {step} and wrote a checkpoint; continue with: "
                f"python {script} --resume {run_dir}")


def check_out_not_in_data(run_dir: Path, data: Path) -> None:
    """A run folder inside the data folder would be scanned as a user's images by the next run; samples written
    there would replace real images."""
    out, root = Path(run_dir).resolve(), Path(data).resolve()
    root = root.parent if root.is_file() else root  # a CSV: its folder
    if out == root or root in out.parents:
        raise RunError(f"--out {run_dir} is inside the data folder {data}; choose an --out outside the data")


# What makes a folder a run (finished or not): a new run there would replace it.
RUN_FILES = ("config.json", "model.safetensors", "ema.safetensors", "checkpoints", "log.jsonl")


def check_new_run_folder(run_dir: Path, script: str, overwrite: bool) -> None:
    """A new run may start only in a folder that holds no run: another run's weights, config.json and checkpoints
    would be replaced without a word. With --overwrite the old run's files are deleted first, so that a new run
    stopped before its first checkpoint cannot be resumed from the old run's."""
    found = [name for name in RUN_FILES if (Path(run_dir) / name).exists()]
    if found and not overwrite:
        raise RunError(f"--out {run_dir} already holds a run ({', '.join(found)}); continue it with "
                       f"`python {script} --resume {run_dir}`, choose another --out, or pass --overwrite to replace it")
    for path in (Path(run_dir) / name for name in found):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if found:
        print(f"notice: --overwrite: deleted the earlier run's {', '.join(found)} in {run_dir}", flush=True)


# ---- config.json ---------------------------------------------------------------------------------------

def read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a tinyldm run folder (no config.json)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); was it edited by hand?") from None
    if not isinstance(config, dict):
        raise RunError(f"{path} holds a JSON {type(config).__name__}, not an object of settings; was it edited by "
                       "hand or replaced? Restore it or retrain")
    return config


# ---- the loss log ---------------------------------------------------------------------------------------

def append_log(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(run_dir: Path, up_to_step: int | None = None) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill; it is written again after resume
            continue
    return [r for r in records if up_to_step is None or r.get("step", 0) <= up_to_step]
