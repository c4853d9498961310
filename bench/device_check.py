"""The prepared check of the GPU path: one command, everything it measures under one folder.

    bash bench/device_check.sh                          # on a machine with a GPU: about 6-8 minutes
    bash bench/device_check.sh --device cpu --tiny      # the same steps at toy sizes on the CPU, < 1 minute

Steps, each recorded in ``OUT/device_check.json`` as soon as it ends (a run stopped by a time
limit keeps what it measured), its output in ``OUT/device_check.log``:

1. ``cuda_tests``: the CUDA tests of the suite (``pytest -k cuda``); skipped on the CPU.
2. ``data``: a demo set at VOC-like sizes (``blendgen synth`` 400-500 px), mixed and packed with
   one worker per core, timed.
3. ``step_time``: one training step (forward, loss, backward, SGD update) of the source
   separation network (three outputs, stage-1 loss) against the single-head DeepLabv3 with the
   same encoder, batch and crop, side by side, for ResNet-101 at output stride 8 and 16 and crops
   321 and 513 (bf16 autocast and channels_last on CUDA): median step time, samples/s, the
   SourceSep/DeepLabv3 ratio, peak memory, FLOPs per step (``torch.utils.flop_counter``) and the
   achieved FLOP/s against the chip's dense bf16 peak.
4. ``train_run``: a short real ``trainer run`` (loader workers = cores) with the GPU utilisation
   sampled by ``nvidia-smi`` every 0.5 s, and the data-wait fraction of a step from metrics.jsonl.
5. ``eval``: clean and PGD-10 evaluation in images/s, through the suites' code path.
6. ``compile``: step 3's largest setting again under ``torch.compile`` (last: it is the slowest
   to start).
7. ``compile_trainer``: ``trainer run --compile``'s way (``nn.Module.compile``, in place) against
   eager, side by side with its compile time (bench/bench_compile.py, ResNet-101 at 513, batch 8).
8. ``sync_bn``: SyncBatchNorm under DDP with two processes (bench/syncbn_check.py; one GPU: both
   ranks on it over gloo), and with two GPUs also a short ``torchrun`` of ``trainer run``.

Targets it reports against (issue "The GPU path, proven"): GPU busy >= 90% of the training run,
data wait < 2% of a step, SourceSep step <= 1.3x DeepLabv3 on ResNet-101, >= 35% of bf16 peak at
513. Exit status 1 when a step failed; 0 with a one-line notice when no GPU is visible and
``--device cpu`` was not asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blendgen.shards.directory import ShardDir  # noqa: E402
from trainer.attacks import PixelModel, frozen, pgd  # noqa: E402
from trainer.distributed import Dist  # noqa: E402
from trainer.evaluate import eval_loader, evaluate_pass  # noqa: E402
from trainer.losses import ce_loss, stage1_loss  # noqa: E402
from trainer.model import ModelConfig, build_model  # noqa: E402
from trainer.precision import resolve_precision  # noqa: E402
from trainer.transforms import normalize  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, FLOP/s.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


def sizes(tiny: bool) -> dict:
    """Everything that differs between the real check and its CPU rehearsal."""
    if tiny:
        return {"synth": ["--train", "12", "--val", "4", "--min-size", "48", "--max-size", "64"],
                "backbone": "resnet18", "settings": [(16, 32, 2), (8, 32, 2)], "warmup": 1, "steps": 1,
                "train": ["--backbone", "resnet18", "--crop", "48", "--batch-size", "2", "--iters1", "4",
                          "--iters2", "2", "--log-every", "1"],
                "eval_crop": 64, "eval_batch": 2, "pgd_steps": 2, "compile": None}
    return {"synth": ["--train", "300", "--val", "100", "--min-size", "400", "--max-size", "500"],
            "backbone": "resnet101", "settings": [(16, 321, 16), (8, 321, 16), (16, 513, 8), (8, 513, 8)],
            "warmup": 3, "steps": 10,
            "train": ["--backbone", "resnet101", "--crop", "321", "--batch-size", "16", "--iters1", "200",
                      "--iters2", "40", "--log-every", "5"],
            "eval_crop": 513, "eval_batch": 16, "pgd_steps": 10, "compile": (8, 513, 8)}


class Check:
    """The results so far, written after every step, and the log every command writes to."""

    def __init__(self, out: Path, device: torch.device, tiny: bool, workers: int) -> None:
        self.out, self.device, self.tiny, self.workers = out, device, tiny, workers
        for previous in ("demo-voc", "shards", "runs"):  # this check's own outputs of an earlier call
            shutil.rmtree(out / previous, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "device_check.log"
        self.log_path.write_text("")
        self.results = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(device), "tiny": tiny,
                        "workers": workers, "steps": {}}
        self.failed: list[str] = []

    def log(self, text: str) -> None:
        print(text, flush=True)
        with open(self.log_path, "a") as f:
            f.write(text + "\n")

    def step(self, name: str, fn) -> None:
        self.log(f"== {name}")
        start = time.perf_counter()
        try:
            result = fn(self)
            status = "ok"
        except Exception:  # one broken step must not hide the figures of the others
            result, status = {"error": traceback.format_exc(limit=4)}, "failed"
            self.failed.append(name)
            self.log(result["error"])
        self.results["steps"][name] = {"status": status, "seconds": round(time.perf_counter() - start, 1), **result}
        self.log(f"== {name}: {status} in {self.results['steps'][name]['seconds']} s")
        (self.out / "device_check.json").write_text(json.dumps(self.results, indent=2) + "\n")

    def run(self, args: list[str], timeout: float = 600) -> str:
        """A command, its output into the log; raises on a non-zero exit."""
        self.log("$ " + " ".join(args))
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        with open(self.log_path, "a") as f:
            f.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"{args[:4]} exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        return done.stdout

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "device": str(device)}
    if device.type == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                 "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)}
    return info


# -- 1. CUDA tests --------------------------------------------------------------------------------
def cuda_tests(c: Check) -> dict:
    if not c.cuda:
        return {"skipped": "no CUDA device"}
    out = c.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", "tests/"])
    return {"summary": out.strip().splitlines()[-1]}


# -- 2. data --------------------------------------------------------------------------------------
def make_data(c: Check) -> dict:
    s, data, shards = sizes(c.tiny), c.out / "demo-voc", c.out / "shards"
    blendgen = [sys.executable, "-m", "blendgen"]
    w = ["--workers", str(c.workers)]
    times = {}
    for name, args in [("synth", ["synth", "--out", str(data), "--quiet", *s["synth"], *w]),
                       ("build_clusters", ["build-clusters", "--dataset", "voc", "--root", str(data), "--split",
                                           "train", "--out", str(shards), *w]),
                       ("mix", ["mix", "--out", str(shards), "--delta", "0.7:1.0", *w]),
                       ("pack_train", ["pack", "--out", str(shards), "--split", "train", *w]),
                       ("pack_val", ["pack", "--out", str(shards), "--split", "val", *w])]:
        start = time.perf_counter()
        c.run(blendgen + args)
        times[name] = round(time.perf_counter() - start, 1)
    mixed = ShardDir.open(shards / "mixed").num_samples
    return {"command_seconds": times, "mixed_samples": mixed, "mixed_samples_per_s": round(mixed / times["mix"], 1)}


# -- 3. step time ---------------------------------------------------------------------------------
def model_and_loss(c: Check, two_branch: bool, output_stride: int, num_classes: int = 21):
    model = build_model(ModelConfig(num_classes=num_classes, backbone=sizes(c.tiny)["backbone"],
                                    output_stride=output_stride, two_branch=two_branch)).to(c.device)
    if c.cuda:
        model = model.to(memory_format=torch.channels_last)
    loss = (lambda o, y, z, d: stage1_loss(o, y, z, d)[0]) if two_branch else (lambda o, y, z, d: ce_loss(o, y)[0])
    return model, loss


def batch(c: Check, b: int, crop: int, num_classes: int = 21):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (b, 3, crop, crop), dtype=torch.uint8, generator=g).to(c.device)
    if c.cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (b, crop, crop), generator=g).to(c.device)
    z = torch.randint(0, num_classes, (b, crop, crop), generator=g).to(c.device)
    return x, y, z, torch.full((b,), 0.85, device=c.device)


def train_step(c: Check, model, loss_fn, optimizer, inputs):
    x, y, z, d = inputs
    with torch.autocast("cuda", dtype=torch.bfloat16) if c.cuda else torch.autocast("cpu", enabled=False):
        out = model(normalize(x))
    loss_fn(out, y, z, d).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def count_flops(c: Check, model, loss_fn, inputs) -> float:
    """FLOPs of one forward + backward (torch.utils.flop_counter counts matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y, z, d = inputs
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast("cuda", dtype=torch.bfloat16) if c.cuda else torch.autocast("cpu", enabled=False):
            out = model(normalize(x))
        loss_fn(out, y, z, d).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def time_models(c: Check, output_stride: int, crop: int, b: int, compiled: bool = False) -> dict:
    """Both models on the same batch, steps alternating so load changes hit both alike."""
    s = sizes(c.tiny)
    inputs = batch(c, b, crop)
    entries = {}
    for name, two_branch in (("sourcesep", True), ("deeplabv3", False)):
        torch.manual_seed(0)
        model, loss_fn = model_and_loss(c, two_branch, output_stride)
        flops = count_flops(c, model, loss_fn, inputs)
        run = torch.compile(model) if compiled else model
        entries[name] = {"model": run, "loss": loss_fn, "flops": flops, "times": [],
                         "optimizer": torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)}
    if c.cuda:
        torch.cuda.reset_peak_memory_stats(c.device)
    for i in range(s["warmup"] + s["steps"]):
        for e in entries.values():
            sync(c)
            start = time.perf_counter()
            train_step(c, e["model"], e["loss"], e["optimizer"], inputs)
            sync(c)
            if i >= s["warmup"]:
                e["times"].append(time.perf_counter() - start)
    peak = BF16_PEAK.get(next((k for k in BF16_PEAK if c.cuda and k in torch.cuda.get_device_name(c.device)), ""))
    result = {"output_stride": output_stride, "crop": crop, "batch": b, "compiled": compiled}
    for name, e in entries.items():
        step = statistics.median(e["times"])
        achieved = e["flops"] / step
        result[name] = {"step_s": round(step, 4), "samples_per_s": round(b / step, 1),
                        "gflops_per_step": round(e["flops"] / 1e9, 1), "achieved_tflops": round(achieved / 1e12, 2),
                        "fraction_of_bf16_peak": None if peak is None else round(achieved / peak, 3)}
    result["step_ratio"] = round(result["sourcesep"]["step_s"] / result["deeplabv3"]["step_s"], 3)
    if c.cuda:
        result["peak_memory_gib_both"] = round(torch.cuda.max_memory_allocated(c.device) / 2**30, 2)
    c.log(json.dumps(result))
    return result


def sync(c: Check) -> None:
    if c.cuda:
        torch.cuda.synchronize(c.device)


def step_time(c: Check) -> dict:
    return {"settings": [time_models(c, *setting) for setting in sizes(c.tiny)["settings"]]}


def compile_step(c: Check) -> dict:
    setting = sizes(c.tiny)["compile"]
    if setting is None:
        return {"skipped": "not in --tiny (compiling on the CPU needs minutes)"}
    return time_models(c, *setting, compiled=True)


# -- 7. trainer run --compile against eager -------------------------------------------------------
def compile_trainer(c: Check) -> dict:
    if c.tiny:
        return {"skipped": "not in --tiny (compiling on the CPU needs minutes)"}
    out = c.out / "bench_compile.json"
    c.run([sys.executable, "bench/bench_compile.py", "--device", "cuda", "--backbone", "resnet101", "--crop", "513",
           "--batch-size", "8", "--warmup", "3", "--steps", "10", "--out", str(out)], timeout=900)
    return json.loads(out.read_text())


# -- 8. SyncBatchNorm over two processes ------------------------------------------------------------
def sync_bn(c: Check) -> dict:
    if not c.cuda:
        return {"skipped": "this torch's SyncBatchNorm runs on CUDA only"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    out = c.out / "syncbn_check.json"
    c.run([*torchrun, "bench/syncbn_check.py", "--out", str(out)], timeout=300)
    result = {"check": json.loads(out.read_text())}
    if torch.cuda.device_count() >= 2:  # NCCL puts one rank on each GPU
        runs = c.out / "runs"
        text = c.run([*torchrun, "-m", "trainer", "run", "--shards", str(c.out / "shards"), "--out", str(runs),
                      "--name", "syncbn", "--workers", "2", "--eval-every", "0", "--quiet", "--device", "cuda",
                      "--backbone", "resnet18", "--crop", "128", "--batch-size", "2", "--iters1", "10", "--iters2",
                      "4", "--log-every", "2"], timeout=400)
        digests = set(re.findall(r"final weights sha256 (\w+)", text))
        result["trainer_run"] = {"ranks_agree": len(digests) == 1,
                                 "val_miou": json.loads((runs / "syncbn" / "report.json").read_text())["miou"]}
    else:
        result["trainer_run"] = {"skipped": "one GPU: trainer run uses NCCL, one rank per GPU"}
    return result


# -- 4. a real training run -----------------------------------------------------------------------
class GpuSampler:
    """nvidia-smi's utilisation every 0.5 s in a background thread: [(time, percent)]."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-lms", "500"], stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.time(), float(line.split(",")[0])))
            except ValueError:
                pass

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def train_run(c: Check) -> dict:
    s = sizes(c.tiny)
    runs = c.out / "runs"
    cmd = [sys.executable, "-m", "trainer", "run", "--shards", str(c.out / "shards"), "--out", str(runs),
           "--name", "device", "--workers", str(c.workers), "--eval-every", "0", "--quiet",
           "--device", c.device.type, *s["train"]]
    sampler = GpuSampler() if c.cuda else None
    start = time.time()
    try:
        c.run(cmd, timeout=400)
    finally:
        if sampler is not None:
            sampler.stop()
    lines = [json.loads(l) for l in (runs / "device" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "loss" in m and m["stage"] == 1][1:]  # the first interval holds start-up
    batch_size = int(s["train"][s["train"].index("--batch-size") + 1])
    step_s = statistics.mean(batch_size / m["samples_per_s"] for m in steps)
    wait_s = statistics.mean(m["data_wait_s"] for m in steps)
    result = {"wall_s": round(time.time() - start, 1), "stage1_step_s": round(step_s, 4),
              "data_wait_fraction": round(wait_s / step_s, 4),
              "val_miou": json.loads((runs / "device" / "report.json").read_text())["miou"]}
    if sampler is not None and steps:
        t0, t1 = steps[0]["time"], steps[-1]["time"]  # the steady stage-1 window
        busy = [u for t, u in sampler.samples if t0 <= t <= t1]
        result["gpu_util_mean_percent"] = round(statistics.mean(busy), 1) if busy else None
        result["gpu_util_samples"] = len(busy)
    return result


# -- 5. evaluation --------------------------------------------------------------------------------
def eval_speed(c: Check) -> dict:
    s = sizes(c.tiny)
    shards = ShardDir.open(c.out / "shards" / "val")
    K, ignore = shards.classes.num_classes, shards.classes.ignore_index
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=K, backbone=s["backbone"], output_stride=16)).to(c.device).eval()
    precision = resolve_precision("auto", c.device)
    pm = PixelModel(precision.prepare_model(model), "t", precision)
    d = Dist(rank=0, world_size=1, local_rank=0, device=c.device)
    loader = eval_loader(shards, s["eval_crop"], s["eval_batch"], min(c.workers, 4), d)
    batches = list(loader)  # decoded once, so both passes time the model only
    n = sum(len(b["key"]) for b in batches)
    evaluate_pass(pm, batches[:1], K, ignore, d)  # warm-up (cudnn autotuning)
    clean = evaluate_pass(pm, batches, K, ignore, d).seconds
    with frozen(model):
        attacked = evaluate_pass(pm, batches, K, ignore, d,
                                 perturb=lambda x, y: pgd(pm, x, y, 8.0, s["pgd_steps"], ignore_index=ignore)).seconds
    return {"images": n, "eval_crop": s["eval_crop"], "clean_images_per_s": round(n / clean, 2),
            f"pgd{s['pgd_steps']}_images_per_s": round(n / attacked, 3), "pgd_over_clean": round(attacked / clean, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--tiny", action="store_true", help="toy sizes (the CPU rehearsal CI runs)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench" / "results" / "device_check"))
    p.add_argument("--workers", type=int, default=None, help="loader / generation processes; default: the cores")
    args = p.parse_args()
    if args.device == "auto" and not torch.cuda.is_available():
        print("device_check: no GPU visible; nothing to check here (--device cpu --tiny rehearses the steps)")
        return 0
    device = torch.device("cuda" if args.device in ("auto", "cuda") else "cpu")
    workers = args.workers or (2 if args.tiny else os.cpu_count() or 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    c = Check(args.out, device, args.tiny, workers)
    for name, fn in (("cuda_tests", cuda_tests), ("data", make_data), ("step_time", step_time),
                     ("train_run", train_run), ("eval", eval_speed), ("compile", compile_step),
                     ("compile_trainer", compile_trainer), ("sync_bn", sync_bn)):
        c.step(name, fn)
    c.log(f"device_check: {len(c.failed)} failed step(s) {c.failed}; figures in {args.out / 'device_check.json'}")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
