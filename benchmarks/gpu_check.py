"""Everything GPU-only, checked in one go (benchmarks/gpu_check.sh runs this; see it for the wheels a
bare GPU machine needs). Each check runs in its own process with a time limit, in this order:

0. ``packages``: every module the checks import is there (else the missing ones are named and
   nothing else runs), and which optional ones (bitsandbytes, liger_kernel, xformers) are;
   ``fallbacks`` (GPU mode): whether Inductor compiles a tiny function and bitsandbytes' AdamW8bit
   takes a step (benchmarks/fallbacks.py); where not, the runs below go eager / use torch's fused
   AdamW and say so (``compile_fallback``, ``optimizer_fallback``);
1. ``attention``: the attention backends agree (benchmarks/attention_check.py): sdpa vs eager;
   xformers where its kernels load, else the reason;
2. ``cross_entropy``: the loss implementations (benchmarks/cross_entropy.py): plain vs chunked vs
   Liger's fused;
3. ``throughput_1b``: benchmarks/throughput.py ``--model 1b`` (seq 2048): the project's step
   against the eager and the compiled Hugging Face loop;
4. ``fsdp_run``: a 20-step FSDP2 training run on synthetic text (the demo corpora need not be
   installed) with sharded checkpoints every 10 steps, a resume from step 10 whose losses must
   repeat the first run's, the run's own export and ``task=export`` of the step-10 checkpoint,
   both loaded back with ``AutoModelForCausalLM``;
5. ``dpo_run``: DPO from that run's export on generated preference pairs (6 steps): the
   reference log-probabilities are computed once on the device before the first step and read
   back per batch, so the first step's loss must be log 2 (the policy is the reference) and every
   loss finite;
6. ``throughput_7b``: ``--model 7b`` (seq 4096, bf16, AdamW8bit, activation checkpointing in
   every arm), one GPU.

Results come back even if the run is cut off: each check's JSON line is appended (and flushed) to
``checks.jsonl`` in the output folder (``$OUT`` where set, else ``--out``) as soon as it finishes;
a global deadline (``--deadline``, env ``GPU_CHECK_DEADLINE``, default 540 s) stops the checks
still to run (recorded as skipped) and still writes ``summary.json``, also on SIGTERM. The last
line printed is the summary, with the issue's targets marked true/false. Run directories and
checkpoints live in a work folder outside the output folder (``--work``, default under /tmp); the
output folder holds only checks.jsonl, summary.json and logs.txt (the tail of each check's log).
Exit status: 0 when every check passed, 1 otherwise, 2 when a needed package is missing.

``--cpu-smoke``: the same on the CPU with tiny shapes (tests/test_gpu_check.py and
benchmarks/rehearse_gpu_image.sh run it).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))

# module -> what provides it on a bare GPU image (the image's own packages, or a carried wheel)
REQUIRED = {"torch": "the image", "lightning": "the image", "transformers": "the image", "tokenizers": "the image",
            "sentencepiece": "the image", "safetensors": "the image", "numpy": "the image", "yaml": "the image",
            "hydra": "hydra-core wheel", "omegaconf": "omegaconf wheel", "antlr4": "antlr4-python3-runtime wheel",
            "google.protobuf": "protobuf wheel"}
OPTIONAL = ("bitsandbytes", "liger_kernel", "xformers", "triton")
DISTRIBUTIONS = {"yaml": "PyYAML", "hydra": "hydra-core", "antlr4": "antlr4-python3-runtime", "google.protobuf": "protobuf",
                 "liger_kernel": "liger-kernel"}  # module -> distribution, where the names differ
RESERVE_S = 5  # kept back from the deadline to write the summary
MIN_CHECK_S = 10  # a check is not started with less time than this left

TINY = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=4",
        "model.seq_len=64"]
# (mode) -> each check's command line (or the FSDP run's overrides) and time cap in seconds
PLANS = {
    "gpu": {
        "fallbacks": ["--device", "cuda"],
        "attention": ["--device", "cuda", "--dtype", "bfloat16", "--seq", "1024"],
        "cross_entropy": ["--device", "cuda", "--dtype", "bfloat16", "--tokens", "16384", "--hidden", "2048",
                          "--vocab", "32000", "--chunk", "1024"],
        # the raw-loop arm (Lightning's overhead, a CPU target) is left out to stay within the deadline
        "throughput": {"1b": ["--model", "1b", "--arms", "hf_loop,hf_compiled,project"],
                       "7b": ["--model", "7b", "--arms", "hf_loop,hf_compiled,project"]},
        "fsdp": ["trainer=fsdp", "trainer.devices=1", "model=1b", "model.num_layers=4", "data.batch_size=4",
                 "trainer.compile=true", "model.activation_checkpointing=selective", "tokenizer.english_vocab_size=2048"],
        "dpo": ["trainer=fsdp", "trainer.devices=1", "data.batch_size=4"],
        "resume_tolerance": 5e-2,  # bf16 kernels need not be bitwise deterministic
        "caps": {"fallbacks": 120, "attention": 90, "cross_entropy": 90, "throughput_1b": 240, "fsdp": 200, "dpo": 150,
                 "throughput_7b": 400},
    },
    "cpu-smoke": {
        "fallbacks": None,  # the smoke plan compiles nothing and uses torch's AdamW: nothing to probe
        "attention": ["--seq", "64"],
        "cross_entropy": ["--tokens", "512", "--hidden", "64", "--vocab", "4096", "--chunk", "128"],
        "throughput": {"tiny": ["--model", "tiny", "--steps", "2", "--warmup", "1", *TINY, "model.vocab_size=512",
                                "tokenizer.english_vocab_size=512", "data.batch_size=2"]},
        "fsdp": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=1", *TINY,
                 "data.batch_size=2", "tokenizer.english_vocab_size=512", "data.val_bytes=4000",
                 "model.activation_checkpointing=selective"],
        "dpo": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=1",
                "data.batch_size=2"],
        "resume_tolerance": 1e-5,
        "caps": {"attention": 300, "cross_entropy": 300, "throughput_tiny": 300, "fsdp": 300, "dpo": 300},
    },
}
# the order the checks run in (a deadline cuts the last ones): throughput_7b is the longest
ORDER = ["packages", "fallbacks", "attention", "cross_entropy", "throughput_1b", "throughput_tiny", "fsdp_run",
         "dpo_run", "throughput_7b"]


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def found(module: str) -> bool:
    """Whether `module` can be imported here (looked up, not imported: that stays cheap)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or blocked in sys.modules
        return False


def version(module: str) -> str:
    """The installed distribution's version of `module`, or why there is none."""
    import importlib.metadata

    if not found(module):
        return "missing"
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "?"


def missing_modules() -> dict[str, str]:
    """Needed modules that cannot be imported here -> where they should have come from."""
    return {name: source for name, source in REQUIRED.items() if not found(name)}


class Checks:
    """The output folder's record: each check's JSON line appended as it finishes, the summary at
    the end (or when stopped), and a deadline shared by every check."""

    def __init__(self, out: Path, work: Path, deadline_s: float, mode: str):
        self.out, self.work, self.mode = out, work, mode
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline_s
        self.lines = out / "checks.jsonl"
        self.summary: dict = {"check": "gpu_check", "mode": mode, "out": str(out), "work": str(work),
                              "deadline_s": deadline_s, "throughput": {}}
        self.child: subprocess.Popen | None = None
        self.finished = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, name: str, result: dict) -> dict:
        line = {"check": name, **result}
        with self.lines.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        print(json.dumps(line), flush=True)
        if name.startswith("throughput_"):
            self.summary["throughput"][name.removeprefix("throughput_")] = result
        else:
            self.summary[name] = result
        return result

    def log(self, name: str, text: str, lines: int = 80) -> None:
        """Keep the tail of a check's output in the output folder (the whole log stays in the work folder)."""
        tail = "\n".join(text.strip().splitlines()[-lines:])
        with (self.out / "logs.txt").open("a", encoding="utf-8") as fh:
            fh.write(f"===== {name} (last {lines} lines; whole log in {self.work})\n{tail}\n")

    def run_json(self, name: str, args: list[str], cap: float) -> dict:
        """Run a command with at most `cap` seconds and what is left before the deadline; its last
        JSON line, or what went wrong (with the tail of stderr). The command runs in its own
        process group, all of which is killed at the time limit."""
        left = self.remaining() - RESERVE_S
        if left < MIN_CHECK_S:
            return {"skipped": f"deadline: {max(left, 0):.0f} s left before it, {MIN_CHECK_S} s needed"}
        limit = min(cap, left)
        t0 = time.perf_counter()
        self.child = proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                             start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            stdout, stderr = proc.communicate()
            why = "the global deadline" if limit < cap else "its time cap"
            self._keep(name, stdout, stderr)
            return {"error": f"timed out after {limit:.0f} s ({why})", "log": str(self.work / f"{name}.log")}
        finally:
            self.child = None
        self._keep(name, stdout, stderr)
        out = last_json(stdout)
        if proc.returncode != 0 or out is None:
            tail = [ln for ln in stderr.strip().splitlines() if ln.strip()][-3:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[-600:], "log": str(self.work / f"{name}.log")}
        out["seconds"] = round(time.perf_counter() - t0, 1)
        return out

    def _keep(self, name: str, stdout: str, stderr: str) -> None:
        text = f"{stdout or ''}\n{stderr or ''}"
        (self.work / f"{name}.log").write_text(text)
        self.log(name, text)

    def finish(self, reason: str | None = None) -> dict:
        """Write summary.json (atomically) and print it as the last line."""
        if self.finished:
            return self.summary
        self.finished = True
        s = self.summary
        if reason:
            s["stopped"] = reason
        # planned checks that never ran: not reached, or reached with too little time left
        s["skipped"] = [n for n in ORDER if n in s.get("planned", []) and "skipped" in self._result(n, {"skipped": True})]
        s["targets"] = targets(s)
        s["ratios"] = ratios(s)
        checks = [s[n] for n in ("packages", "fallbacks", "attention", "cross_entropy", "fsdp_run", "dpo_run") if n in s]
        checks += list(s["throughput"].values())
        s["ok"] = (not reason and not s["skipped"] and all("error" not in c and "skipped" not in c for c in checks)
                   and bool(s.get("attention", {}).get("sdpa_vs_eager", {}).get("ok"))
                   and bool(s.get("fsdp_run", {}).get("ok")) and bool(s.get("dpo_run", {}).get("ok")))
        s["seconds"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out / "summary.json.tmp"
        tmp.write_text(json.dumps(s, indent=1))
        os.replace(tmp, self.out / "summary.json")
        print(json.dumps(s), flush=True)
        return s

    def _result(self, name: str, default: dict) -> dict:
        if name.startswith("throughput_"):
            return self.summary["throughput"].get(name.removeprefix("throughput_"), default)
        return self.summary.get(name, default)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


# --------------------------------------------------------------------------- the FSDP run
def synthetic_corpus(folder: Path, lines: int = 2000, seed: int = 0) -> dict:
    """Generated Arabic-script and Latin-script text (Zipf-distributed made-up words, one document a
    line) and the data sources that read it. Written once: a source's fingerprint covers its files'
    sizes and times, so a resume must find the same files."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    alphabets = {"ar": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي", "en": "abcdefghijklmnopqrstuvwxyz"}
    sources = {}
    for lang, letters in alphabets.items():
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(3000)]
        weights = [1 / (i + 1) for i in range(len(words))]
        path = folder / f"{lang}.txt"
        sources[f"synthetic_{lang}"] = {"lang": lang, "loader": "text", "path": str(path)}
        if path.exists():
            continue
        with path.open("w", encoding="utf-8") as fh:
            for _ in range(lines):
                fh.write(" ".join(rng.choices(words, weights, k=rng.randint(30, 90))) + "\n")
    return sources


def train_task(out: Path, corpus: Path, overrides: list[str]) -> None:
    """Run an allam task (``task=train`` unless overridden) as run.py would, on the synthetic corpus
    instead of the demo sources (a group's sources cannot be replaced from the command line)."""
    from hydra import compose, initialize_config_dir

    from allam import tasks
    from allam.config import CONF_DIR, validate

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[f"paths.output_dir={out}", f"paths.cache_dir={out.parent / 'cache'}",
                                           "trainer.progress_bar=false", *overrides])
    cfg.data.sources = synthetic_corpus(corpus)
    cfg.data.name = "synthetic"
    validate(cfg)
    print(json.dumps({"task": cfg.task, "result": str(tasks.run(cfg).get("run_dir", out))}))


def _losses(run_dir: Path) -> dict[int, float]:
    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def _load_export(folder: Path, device: str, corpus: Path) -> float:
    """Mean next-token loss of the exported model on generated English text (finite, sane)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    text = (corpus / "en.txt").read_text(encoding="utf-8").splitlines()[1]
    ids = torch.tensor([tok(text)["input_ids"][:256]], device=device)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def fsdp_run(checks: Checks, mode: str, extra: list[str]) -> dict:
    plan, device = PLANS[mode], "cuda" if mode == "gpu" else "cpu"
    work, cap = checks.work, plan["caps"]["fsdp"]
    corpus, me = work / "corpus", [sys.executable, str(Path(__file__).resolve()), "_task"]
    overrides = [*plan["fsdp"], *extra]
    common = [*overrides, "logger=csv", "trainer.log_every_n_steps=1", "trainer.max_steps=20", "trainer.val_every_steps=null",
              "trainer.checkpoint_every_steps=10"]
    first, resumed = work / "first", work / "resumed"
    res: dict = {"steps": None, "overrides": extra}
    step = checks.run_json("fsdp_first", [*me, str(first), str(corpus), *common], cap)
    if "error" in step or "skipped" in step:
        return {**res, "error": f"first run: {step.get('error') or step.get('skipped')}"}
    results = json.loads((first / "results.json").read_text())
    res.update(steps=results["train.steps"], tokens_per_s=results.get("train.tokens_per_second"),
               mfu=results.get("train.mfu"), val=dict((k, v) for k, v in results.items() if k.startswith("val.") and k.endswith(".loss")))
    ckpt = next(iter(sorted((first / "checkpoints").glob("step10*"))), None)
    if ckpt is None:
        return {**res, "error": "no step-10 checkpoint in " + str(first / "checkpoints")}
    res["sharded_checkpoint_files"] = len(list(ckpt.glob("*.distcp"))) if ckpt.is_dir() else 0
    step = checks.run_json("fsdp_resumed", [*me, str(resumed), str(corpus), *common, f"ckpt={ckpt}", "export=false"], cap)
    if "error" in step or "skipped" in step:
        return {**res, "error": f"resume: {step.get('error') or step.get('skipped')}"}
    a, b = _losses(first), _losses(resumed)
    common_steps = sorted(set(a) & set(b))
    res["resumed_steps"] = json.loads((resumed / "results.json").read_text())["train.steps"]
    res["resume_compared_steps"] = len(common_steps)
    res["resume_max_loss_diff"] = max((abs(a[s] - b[s]) for s in common_steps), default=math.inf)
    exported = work / "exported"
    step = checks.run_json("fsdp_export", [*me, str(exported), str(corpus), *overrides, "task=export", f"ckpt={ckpt}"], cap)
    if "error" in step or "skipped" in step:
        return {**res, "error": f"task=export: {step.get('error') or step.get('skipped')}"}
    try:
        res["export_loss"] = _load_export(first / "hf", device, corpus)
        res["export_task_loss"] = _load_export(exported / "hf", device, corpus)
        res["export_loads"] = True
    except Exception as exc:  # the check reports, it does not stop
        res.update(export_loads=False, error=f"loading the export: {type(exc).__name__}: {exc}"[:600])
        return res
    res["ok"] = (res["steps"] == 20 and res["resumed_steps"] == 20 and res["resume_compared_steps"] >= 10
                 and res["resume_max_loss_diff"] < plan["resume_tolerance"]
                 and all(math.isfinite(res[k]) for k in ("export_loss", "export_task_loss")))
    return res


# --------------------------------------------------------------------------- the DPO run
def preference_pairs(corpus: Path, path: Path, words: int, pairs: int = 48, seed: int = 0) -> Path:
    """Generated (prompt, chosen, rejected) rows from the synthetic English text: a line's first
    `words` words, its next `words` words, and `words` words of another line."""
    rng = random.Random(seed)
    lines = (corpus / "en.txt").read_text(encoding="utf-8").splitlines()
    with path.open("w", encoding="utf-8") as fh:
        for i in range(pairs):
            line, other = lines[i].split(), lines[(i + 1 + rng.randrange(len(lines) - 1)) % len(lines)].split()
            fh.write(json.dumps({"prompt": " ".join(line[:words]), "chosen": " ".join(line[words:2 * words]),
                                 "rejected": " ".join(other[words:2 * words])}) + "\n")
    return path


def dpo_run(checks: Checks, mode: str, extra: list[str]) -> dict:
    """DPO for 6 steps from the FSDP run's export on the device: the first loss is log 2, all finite."""
    plan, work = PLANS[mode], checks.work
    start, corpus = work / "first" / "hf", work / "corpus"
    if not (start / "config.json").is_file():
        return {"skipped": f"no export at {start} (fsdp_run did not finish)"}
    words = 12 if mode == "gpu" else 3  # the smoke model's context is 64 tokens
    train = preference_pairs(corpus, work / "pairs_train.jsonl", words)
    val = preference_pairs(corpus, work / "pairs_val.jsonl", words, 16, 1)
    out = work / "dpo"
    shape = [o for o in plan["fsdp"] if o.startswith("model") and "activation_checkpointing" not in o]  # the export's
    overrides = [*shape, *plan["dpo"], *extra, "objective=dpo", "init=pretrained", f"init.checkpoint={start}", "tokenizer=base",
                 f"objective.train={train}", f"objective.val={val}", "trainer.max_steps=6", "trainer.log_every_n_steps=1",
                 "trainer.val_every_steps=null", "logger=csv", "export=false", "optim.warmup_steps=2"]
    step = checks.run_json("dpo", [sys.executable, str(Path(__file__).resolve()), "_task", str(out), str(corpus), *overrides],
                           plan["caps"]["dpo"])
    if "error" in step or "skipped" in step:
        return {"error": f"dpo: {step.get('error') or step.get('skipped')}"}
    losses = _losses(out)
    results = json.loads((out / "results.json").read_text())
    res = {"steps": results.get("train.steps"), "losses": [round(losses[k], 6) for k in sorted(losses)],
           "first_loss_minus_log2": (losses[min(losses)] - math.log(2)) if losses else None,
           "val": {k: v for k, v in results.items() if k.startswith("val.dpo.")}}
    res["ok"] = (res["steps"] == 6 and len(losses) == 6 and all(math.isfinite(v) for v in losses.values())
                 and abs(res["first_loss_minus_log2"]) < (1e-2 if mode == "gpu" else 1e-5))
    return res


# --------------------------------------------------------------------------- summary
def targets(summary: dict) -> dict:
    """The issue's targets, true/false (None: not measured in this mode)."""
    t = summary.get("throughput", {})
    one, seven = t.get("1b", {}), t.get("7b", {})
    proj1, proj7 = one.get("project", {}), seven.get("project", {})

    def plan_within(run, arm="project"):
        r = run.get(arm, {}).get("plan_vs_measured")
        return None if r is None else abs(r - 1) <= 0.15

    def at_least(value, floor):
        return None if value is None else value >= floor

    return {
        "1b_at_least_1.5x_plain_loop": at_least(one.get("ratio_project_vs_hf"), 1.5),
        "1b_mfu_at_least_50%": at_least(proj1.get("mfu"), 0.5),
        "7b_trains_without_oom": None if not seven else ("error" not in seven and "tokens_per_s" in proj7),
        "7b_mfu_at_least_40%": at_least(proj7.get("mfu"), 0.4),
        "plan_within_15%_1b": plan_within(one) if one else None,
        "plan_within_15%_7b": plan_within(seven) if seven else None,
    }


def ratios(summary: dict) -> dict:
    """The project's tokens/s over each Hugging Face baseline's, per throughput run (the fair one
    is the compiled baseline: eager against compiled mostly measures torch.compile)."""
    return {name: {"vs_hf_eager": run.get("ratio_project_vs_hf"), "vs_hf_compiled": run.get("ratio_project_vs_hf_compiled")}
            for name, run in summary.get("throughput", {}).items()}


def fallback_overrides(probe: dict) -> tuple[list[str], dict]:
    """The overrides the training run needs where the fallbacks check found a piece missing, and
    the fallbacks named for the JSON."""
    extra, named = [], {}
    if probe.get("compile", {}).get("ok") is False:
        extra.append("trainer.compile=false")
        named["compile_fallback"] = "eager: " + probe["compile"]["reason"]
    return extra, named


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_task":  # one training/export run, in its own process
        train_task(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for the JSON lines, summary and log tails ($OUT wins where set; default: a new temp folder)")
    ap.add_argument("--work", type=Path, default=None, help="folder for run directories and checkpoints (default: under /tmp)")
    ap.add_argument("--deadline", type=float, default=float(os.environ.get("GPU_CHECK_DEADLINE", 540)),
                    help="seconds from the start after which no check runs on (env GPU_CHECK_DEADLINE; default 540)")
    args = ap.parse_args()
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    plan = PLANS[mode]
    stamp = f"{int(time.time())}-{os.getpid()}"
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else args.out or tmp / f"allam-gpu-check-{stamp}"
    work = args.work or tmp / f"allam-gpu-check-work-{stamp}"
    out, work = out.resolve(), work.resolve()
    if work == out or out in work.parents:
        sys.exit(f"error: --work {work} is inside the output folder {out}; runs and checkpoints must stay outside it")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    checks = Checks(out, work, args.deadline, mode)
    checks.summary["planned"] = [n for n in ORDER if n in ("packages", "fsdp_run", "dpo_run")
                                 or (n == "fallbacks" and plan["fallbacks"] is not None)
                                 or n in ("attention", "cross_entropy")
                                 or n.removeprefix("throughput_") in plan["throughput"]]

    def stop(signum, _frame):  # the device tool's time limit, or Ctrl-C: keep what is done
        if checks.child is not None:
            _kill_group(checks.child)
        checks.finish(f"signal {signal.Signals(signum).name} after {time.monotonic() - checks.t0:.0f} s")
        os._exit(1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    carried = os.environ.get("GPU_CHECK_CARRIED")
    missing = missing_modules()
    packages: dict = {"carried_wheels": carried.split() if carried else [], "missing": missing,
                      "versions": {name: version(name) for name in (*REQUIRED, *OPTIONAL)}}
    if missing:
        wheels = sorted({src for src in missing.values() if src.endswith("wheel")})
        hint = (f"; carry {', '.join(wheels)} in .whl/ (bash benchmarks/gpu_wheels.sh)" if wheels else "")
        packages["error"] = (f"missing modules: {', '.join(missing)}" + hint
                             + ("" if carried else "; no wheels were carried (.whl/ is empty or absent)"))
        checks.record("packages", packages)
        checks.finish()
        sys.exit(2)
    checks.record("packages", packages)

    import torch

    checks.summary["torch"] = torch.__version__
    if mode == "gpu" and not torch.cuda.is_available():
        checks.record("device", {"error": "no CUDA GPU here; run with --cpu-smoke to check the script on a CPU"})
        checks.finish()
        sys.exit(1)
    checks.summary["device"] = torch.cuda.get_device_name(0) if mode == "gpu" else "cpu"
    py, caps = sys.executable, plan["caps"]
    extra, named = [], {}
    if plan["fallbacks"] is not None:
        probe = checks.record("fallbacks", checks.run_json("fallbacks", [py, str(BENCH / "fallbacks.py"), *plan["fallbacks"]],
                                                           caps["fallbacks"]))
        extra, named = fallback_overrides(probe)
        checks.summary.update(named)
    checks.record("attention", checks.run_json("attention", [py, str(BENCH / "attention_check.py"), *plan["attention"]],
                                               caps["attention"]))
    checks.record("cross_entropy", checks.run_json("cross_entropy", [py, str(BENCH / "cross_entropy.py"), *plan["cross_entropy"]],
                                                   caps["cross_entropy"]))
    throughput = [n for n in ORDER if n.removeprefix("throughput_") in plan["throughput"]]
    for name in [n for n in throughput if n != "throughput_7b"]:
        argv = plan["throughput"][name.removeprefix("throughput_")]
        checks.record(name, checks.run_json(name, [py, str(BENCH / "throughput.py"), *argv], caps[name]))
    checks.record("fsdp_run", {**fsdp_run(checks, mode, extra), **named})
    checks.record("dpo_run", dpo_run(checks, mode, extra))
    if "throughput_7b" in throughput:
        name = "throughput_7b"
        checks.record(name, checks.run_json(name, [py, str(BENCH / "throughput.py"), *plan["throughput"]["7b"]], caps[name]))
    summary = checks.finish()
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
