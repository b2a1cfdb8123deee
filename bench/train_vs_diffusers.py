"""LoRA training: flenwheel's local trainer against diffusers' own train_text_to_image_lora.py, same everything.

    .venv/bin/python bench/train_vs_diffusers.py --diffusers-script PATH [--models tiny,sd15] [--steps 60]

PATH is diffusers' examples/text_to_image/train_text_to_image_lora.py (or set DIFFUSERS_LORA_SCRIPT). It is not
part of flenwheel: take it from a diffusers checkout of the version you have installed, e.g.
`git clone --depth 1 https://github.com/huggingface/diffusers /tmp/diffusers` and pass
/tmp/diffusers/examples/text_to_image/train_text_to_image_lora.py.

Both tools get the same diffusers model folder (`tiny`, and `sd15`: the random SD1.5-architecture checkpoint of
tests/providers/comfyui_server.py converted to a diffusers folder), the same 8 photos of one person
(tests/fixtures/faces/identities/lisa; an imagefolder with metadata.jsonl for the peer), 64 px centre crops,
rank 4, batch 1, AdamW at 1e-4, the same step count, on the CPU. Each run is its own child process; peak RSS is
that child's (os.wait4). flenwheel runs twice: with an empty cache (it encodes every photo and caption once),
and again on the same data (a re-run: latents and text embeddings come from the cache). The peer encodes every
image with the VAE and every caption with the text encoder at every step.

Columns: end-to-end steps/s = steps / the child's wall time (start-up, model load, caching, training, saving);
CPU s/step = the child's user + system CPU seconds / steps (end to end; steadier than wall time on a shared
machine); loop steps/s = the training loop alone, from its first to its last optimizer step (the peer: updates of its own
"Steps" progress bar, noted by a launcher that runs the script unchanged; flenwheel: its progress reports); ratio = flenwheel / peer for each (for CPU: peer's CPU per step / flenwheel's).

The peer needs the `datasets` and `torchvision` packages. When they are not installed, the bench gives its
process small stand-ins (an imagefolder reader and the five PIL transforms the script uses: Resize, CenterCrop,
ToTensor, Normalize, Compose), says so in the table's title, and changes nothing else.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "providers"))

from photos import LISA  # noqa: E402

RANK = 4
RESOLUTION = 64  # the default; --models tiny@256 runs another
LEARNING_RATE = 1e-4
SEED = 42
CAPTION = "ohwx woman, photo"


@dataclass
class Run:
    tool: str
    model: str
    resolution: int
    steps: int
    wall_s: float
    loop_s: float | None
    loop_steps: int
    peak_rss_mb: float
    cpu_s: float  # user + system CPU seconds of the whole child: less swayed by other load than wall time

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s

    @property
    def loop_steps_per_s(self) -> float | None:
        return self.loop_steps / self.loop_s if self.loop_s else None


def run_child(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS in MB, output, CPU seconds) of one child process."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"{command[1]} failed ({process.returncode}); its output:\n{text[-4000:]}")
    return wall, usage.ru_maxrss / 1024, text, usage.ru_utime + usage.ru_stime


# --- inputs ----------------------------------------------------------------------------------------------


def image_folder(root: Path) -> Path:
    """The photos as an imagefolder with metadata.jsonl (the peer's --train_data_dir)."""
    folder = root / "imagefolder"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metadata.jsonl").open("w") as metadata:
        for index, photo in enumerate(LISA):
            name = f"{index:02d}{photo.suffix}"
            (folder / name).write_bytes(photo.read_bytes())
            metadata.write(json.dumps({"file_name": name, "text": f"{CAPTION} {index}"}) + "\n")
    return folder


def model_folder(model: str, root: Path) -> Path:
    """A diffusers folder both tools load: the tiny model's own, or the SD1.5 random checkpoint converted."""
    from flenwheel.providers.tiny_model import ensure_tiny_model

    if model == "tiny":
        return ensure_tiny_model()
    from comfyui_server import ensure_tiny_sd15

    folder = root / "sd15-diffusers"
    if not (folder / "model_index.json").exists():
        subprocess.run(
            [sys.executable, __file__, "--convert-sd15", str(ensure_tiny_sd15().checkpoint), str(folder)],
            check=True,
        )
    return folder


def convert_sd15(checkpoint: Path, folder: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from flenwheel.trainers.sd_models import load_sd_model

    model = load_sd_model(str(checkpoint), "sd", None)
    pipeline = StableDiffusionPipeline(
        unet=model.unet,
        vae=model.vae,
        text_encoder=model.text_encoders[0],
        tokenizer=model.tokenizers[0],
        scheduler=model.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)


# --- the two tools ---------------------------------------------------------------------------------------


def flenwheel_child(model_dir: str, steps: int, work: str, cache: str, resolution: int) -> None:
    """Runs in the child: one training run, then a JSON line with the loop's timing."""
    from flenwheel.trainers.base import LocalTrainingContext, TrainingImage, TrainingInput, TrainingSpec
    from flenwheel.trainers.local_lora import LocalLoraTrainer

    items = tuple(TrainingImage(path=p, caption=f"{CAPTION} {i}") for i, p in enumerate(LISA))
    data = TrainingInput(
        character="bench", dataset_version="v1", items=items, dataset_dir=LISA[0].parent, work_dir=Path(work)
    )
    spec = TrainingSpec(
        trigger="ohwx woman",
        base_model=model_dir,
        rank=RANK,
        resolution=resolution,
        buckets=False,
        learning_rate=LEARNING_RATE,
        epochs=1000,
        max_steps=steps,
        seed=SEED,
        save_every_epochs=None,
        save_every_steps=steps,
    )
    times: list[float] = []
    ctx = LocalTrainingContext(on_progress=lambda step, total, loss: times.append(time.perf_counter()))
    trainer = LocalLoraTrainer(cache_root=Path(cache))
    trainer.run(spec, data, ctx)
    stats = trainer.last_cache_stats
    print(
        "FLENWHEEL "
        + json.dumps(
            {
                "loop_s": times[-1] - times[0],
                "loop_steps": len(times) - 1,
                "encoded": stats.latents_encoded,
                "cached": stats.latents_cached,
            }
        )
    )


def run_flenwheel(
    model: str, model_dir: Path, steps: int, root: Path, cache: Path, label: str, resolution: int
) -> Run:
    name = f"flenwheel-{model}-{resolution}-{cache.name}-{label.replace(' ', '-').replace(',', '')}"
    command = [
        *(sys.executable, __file__, "--flenwheel-child", str(model_dir), str(steps)),
        *(str(root / name), str(cache), str(resolution)),
    ]
    wall, rss, text, cpu = run_child(command, dict(os.environ), root / f"{name}.log")
    found = re.search(r"^FLENWHEEL (\{.*\})$", text, re.M)
    assert found, text[-2000:]
    timing = json.loads(found.group(1))
    return Run(
        f"flenwheel ({label})",
        model,
        resolution,
        steps,
        wall,
        timing["loop_s"],
        timing["loop_steps"],
        rss,
        cpu,
    )


# Runs the peer's script unchanged; only notes the time of each update of its "Steps" bar (one per optimizer step),
# so its loop is timed exactly as flenwheel's is (first to last step).
PEER_LAUNCHER = """
import atexit, importlib.util, json, os, runpy, sys, time
import tqdm.auto
stand_ins = os.environ.get("FLENWHEEL_BENCH_STAND_INS")
if stand_ins:
    sys.path.insert(0, stand_ins)  # `datasets`, if it is missing
    import diffusers, peft, transformers  # they probe for torchvision first, and must find none
    tv = os.path.join(stand_ins, "torchvision_stand_in.py")
    if os.path.exists(tv):
        spec = importlib.util.spec_from_file_location("torchvision.transforms", tv)
        transforms = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(transforms)
        package = type(sys)("torchvision")
        package.transforms = transforms
        sys.modules.update({"torchvision": package, "torchvision.transforms": transforms})
stamps = []
original = tqdm.auto.tqdm.update
def update(self, n=1):
    done = original(self, n)
    if self.desc == "Steps":
        stamps.append(time.perf_counter())
    return done
tqdm.auto.tqdm.update = update
atexit.register(lambda: print("PEER_LOOP " + json.dumps(
    {"loop_s": stamps[-1] - stamps[0] if len(stamps) > 1 else None, "loop_steps": len(stamps) - 1}), flush=True))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

STAND_INS = {
    "datasets/__init__.py": '''
        """Stand-in for `datasets`: load_dataset("imagefolder") over a folder with metadata.jsonl."""
        import json, os, random, types
        from PIL import Image

        class _Logging:
            def set_verbosity_warning(self): pass
            def set_verbosity_error(self): pass
        utils = types.SimpleNamespace(logging=_Logging())

        class Dataset:
            def __init__(self, rows, transform=None):
                self.rows, self.transform = rows, transform
                self.column_names = ["image", "text"]
            def __len__(self): return len(self.rows)
            def __getitem__(self, index):
                path, text = self.rows[index]
                batch = {"image": [Image.open(path)], "text": [text]}
                if self.transform is not None:
                    batch = self.transform(batch)
                return {key: value[0] for key, value in batch.items()}
            def with_transform(self, transform): return Dataset(self.rows, transform)
            def shuffle(self, seed=None):
                rows = list(self.rows); random.Random(seed).shuffle(rows); return Dataset(rows, self.transform)
            def select(self, indexes): return Dataset([self.rows[i] for i in indexes], self.transform)

        def load_dataset(kind, data_files=None, cache_dir=None, **_):
            assert kind == "imagefolder", kind
            folder = os.path.dirname(data_files["train"])
            with open(os.path.join(folder, "metadata.jsonl")) as handle:
                rows = [json.loads(line) for line in handle if line.strip()]
            return {"train": Dataset([(os.path.join(folder, r["file_name"]), r["text"]) for r in rows])}
    ''',
    "torchvision_stand_in.py": '''
        """Stand-in for torchvision.transforms: the PIL transforms train_text_to_image_lora.py uses."""
        import numpy as np
        import torch
        from PIL import Image

        class InterpolationMode:
            NEAREST, BILINEAR, BICUBIC, BOX, HAMMING, LANCZOS = 0, 2, 3, 4, 5, 1
        class Compose:
            def __init__(self, steps): self.steps = steps
            def __call__(self, value):
                for step in self.steps: value = step(value)
                return value
        class Resize:  # the shorter side to `size`, as torchvision does for an int
            def __init__(self, size, interpolation=InterpolationMode.BILINEAR): self.size, self.mode = size, interpolation
            def __call__(self, image):
                w, h = image.size; s = self.size / min(w, h)
                return image.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), self.mode)
        class CenterCrop:
            def __init__(self, size): self.size = size
            def __call__(self, image):
                w, h = image.size; left, top = round((w - self.size) / 2), round((h - self.size) / 2)
                return image.crop((left, top, left + self.size, top + self.size))
        class Lambda:
            def __init__(self, function): self.function = function
            def __call__(self, value): return self.function(value)
        class ToTensor:
            def __call__(self, image):
                return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        class Normalize:
            def __init__(self, mean, std): self.mean, self.std = mean[0], std[0]
            def __call__(self, tensor): return (tensor - self.mean) / self.std
    ''',
}


def missing_peer_packages() -> list[str]:
    """Installed distributions only (tests/datasets/ would fool importlib.util.find_spec here)."""
    missing = []
    for name in ("datasets", "torchvision"):
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def write_stand_ins(root: Path, missing: list[str]) -> Path:
    folder = root / "stand-ins"
    for relative, source in STAND_INS.items():
        if relative.split("/")[0].removesuffix("_stand_in.py") in missing:
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source).lstrip())
    return folder


def run_diffusers(
    script: Path, model: str, model_dir: Path, data_dir: Path, steps: int, root: Path, resolution: int
) -> Run:
    output = root / f"diffusers-{model}-{resolution}"
    command = [
        sys.executable,
        "-c",
        PEER_LAUNCHER,
        str(script),
        f"--pretrained_model_name_or_path={model_dir}",
        f"--train_data_dir={data_dir}",
        f"--resolution={resolution}",
        "--center_crop",
        "--train_batch_size=1",
        f"--max_train_steps={steps}",
        f"--learning_rate={LEARNING_RATE}",
        "--lr_scheduler=constant",
        "--lr_warmup_steps=0",
        f"--rank={RANK}",
        f"--seed={SEED}",
        f"--checkpointing_steps={10 * steps}",
        "--dataloader_num_workers=0",
        f"--output_dir={output}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_MININTERVAL": "0"}
    missing = missing_peer_packages()
    if missing:
        env["FLENWHEEL_BENCH_STAND_INS"] = str(write_stand_ins(root, missing))
    wall, rss, text, cpu = run_child(command, env, root / f"diffusers-{model}-{resolution}.log")
    found = re.search(r"^PEER_LOOP (\{.*\})$", text, re.M)
    timing = json.loads(found.group(1)) if found else {"loop_s": None, "loop_steps": 0}
    return Run(
        "diffusers train_text_to_image_lora.py",
        model,
        resolution,
        steps,
        wall,
        timing["loop_s"],
        timing["loop_steps"],
        rss,
        cpu,
    )


# --- table -----------------------------------------------------------------------------------------------


def median_run(runs: list[Run]) -> Run:
    """One row from repeated runs of the same tool: median wall and loop times, the largest peak RSS."""
    middle = sorted(runs, key=lambda run: run.wall_s)[len(runs) // 2]
    loops = sorted(run.loop_s for run in runs if run.loop_s)
    loop_s = loops[len(loops) // 2] if loops else None
    peak = max(run.peak_rss_mb for run in runs)
    cpu = sorted(run.cpu_s for run in runs)[len(runs) // 2]
    return Run(
        middle.tool,
        middle.model,
        middle.resolution,
        middle.steps,
        middle.wall_s,
        loop_s,
        middle.loop_steps,
        peak,
        cpu,
    )


def print_table(rows: list[Run], note: str, repeats: int) -> None:
    from rich.console import Console
    from rich.table import Table

    runs_note = f"median of {repeats} alternating runs each" if repeats > 1 else "one run each"
    table = Table(title=f"LoRA training, rank {RANK}, batch 1, CPU, {runs_note}{note}")
    columns = (
        "model",
        "px",
        "tool",
        "steps",
        "end-to-end steps/s",
        "loop steps/s",
        "CPU s/step",
        "peak RSS MB",
        "ratio e2e / loop / CPU",
    )
    for column in columns:
        table.add_column(column)
    peers = {(run.model, run.resolution): run for run in rows if run.tool.startswith("diffusers")}
    for run in rows:
        peer = peers.get((run.model, run.resolution))
        ratio = "1.00 / 1.00 / 1.00" if run is peer or peer is None else _ratios(run, peer)
        loop = run.loop_steps_per_s
        table.add_row(
            run.model,
            str(run.resolution),
            run.tool,
            str(run.steps),
            f"{run.steps_per_s:.3f}",
            f"{loop:.3f}" if loop else "n/a",
            f"{run.cpu_s / run.steps:.2f}",
            f"{run.peak_rss_mb:.0f}",
            ratio,
        )
    Console(width=170).print(table)


def _ratios(run: Run, peer: Run) -> str:
    """flenwheel / peer: steps per second end to end and in the loop; CPU seconds per step, peer / flenwheel."""
    e2e = f"{run.steps_per_s / peer.steps_per_s:.2f}x"
    loop = "n/a"
    if peer.loop_steps_per_s and run.loop_steps_per_s:
        loop = f"{run.loop_steps_per_s / peer.loop_steps_per_s:.2f}x"
    return f"{e2e} / {loop} / {peer.cpu_s / run.cpu_s:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--diffusers-script", type=Path, default=os.environ.get("DIFFUSERS_LORA_SCRIPT"))
    parser.add_argument(
        "--models", default="tiny,tiny@256,sd15", help="tiny, sd15; @PX for another resolution than 64"
    )
    parser.add_argument("--steps", type=int, default=60, help="steps for the tiny model")
    parser.add_argument("--sd15-steps", type=int, default=6, help="steps for the 860M SD1.5 UNet on a CPU")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each tool (the table shows medians)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.diffusers_script is None or not args.diffusers_script.is_file():
        raise SystemExit(
            "give diffusers' examples/text_to_image/train_text_to_image_lora.py with --diffusers-script PATH or "
            "DIFFUSERS_LORA_SCRIPT (e.g. `git clone --depth 1 https://github.com/huggingface/diffusers "
            "/tmp/diffusers`); it is not shipped with flenwheel"
        )
    root = args.workdir or Path(tempfile.mkdtemp(prefix="flenwheel-bench-train-"))
    data_dir = image_folder(root)
    missing = missing_peer_packages()
    note = f"; peer given stand-ins for {', '.join(missing)} (not installed)" if missing else ""
    runs: list[Run] = []
    rows: list[Run] = []
    for choice in args.models.split(","):
        model, _, px = choice.partition("@")
        resolution = int(px or RESOLUTION)
        steps = args.steps if model == "tiny" else args.sd15_steps
        model_dir = model_folder(model, root)
        measured: dict[str, list[Run]] = {}
        for repeat in range(args.repeats):  # alternate the tools, so a busy spell on the machine hits all
            cache = root / f"cache-{model}-{resolution}-{repeat}"
            runs = [run_diffusers(args.diffusers_script, model, model_dir, data_dir, steps, root, resolution)]
            for label in ("empty cache", "re-run, cached"):
                runs.append(run_flenwheel(model, model_dir, steps, root, cache, label, resolution))
            for run in runs:
                measured.setdefault(run.tool, []).append(run)
        rows.extend(median_run(runs) for runs in measured.values())
        print_table(rows, note, args.repeats)
    print(f"logs and outputs: {root}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--flenwheel-child"]:
        flenwheel_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]))
    elif sys.argv[1:2] == ["--convert-sd15"]:
        convert_sd15(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
