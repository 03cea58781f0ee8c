"""Checks a training run makes before it computes anything, each failing with one line: the
device exists, the W&B login exists and its server answers for an online logger, the plan's
memory estimate fits the device (GPU memory, or host RAM on the CPU), and on the CPU one
micro-batch can finish within the time a stop request waits (``run.memory_check=false`` skips
these two)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from allam.config import ConfigError, LoggerName
from allam.config.derived import device_type, tokens_per_step, world_size

GiB = 1024**3


def check_device(trainer) -> None:
    if device_type(trainer) == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={trainer.accelerator}: no CUDA GPU is visible to torch "
                          f"(torch {torch.__version__}); use trainer=cpu, or task=plan to size a GPU run")


def check_wandb_login(logger) -> None:
    """An online W&B run needs credentials (without them wandb would prompt or stall on the
    network) and a reachable server (:func:`check_wandb_reachable`)."""
    if logger.name != LoggerName.wandb or logger.mode != "online":
        return
    url = wandb_base_url()
    if not os.environ.get("WANDB_API_KEY"):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        host = parts.netloc or url  # wandb keeps a login under host:port when the URL has a port
        if not (_netrc_has(host) or (parts.hostname and _netrc_has(parts.hostname))):
            raise ConfigError(f"logger.mode=online: no W&B credentials (WANDB_API_KEY unset and no {host} entry in "
                              "~/.netrc); run `wandb login`, or keep logger.mode=offline")
    if os.environ.get("WANDB_MODE", "online") in ("online", "run", ""):  # otherwise wandb stays offline
        check_wandb_reachable(url=url)


def wandb_base_url() -> str:
    """The W&B server runs log to, where wandb looks for it: WANDB_BASE_URL, else ``base_url`` in
    the project-local workspace settings (``./wandb/settings``, or ``./.wandb/settings`` where that
    folder exists), which win over the global settings file that ``wandb login --host`` writes
    (``$WANDB_CONFIG_DIR/settings`` or ``~/.config/wandb/settings``), else https://api.wandb.ai.
    The working directory is the command's (Hydra does not change it)."""
    import configparser

    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    global_file = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb") / "settings"
    workspace = Path.cwd() / (".wandb" if (Path.cwd() / ".wandb").exists() else "wandb") / "settings"
    for path in (workspace, global_file):
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        if parser.get("default", "base_url", fallback=None):
            return parser.get("default", "base_url")
    return "https://api.wandb.ai"


def _netrc_has(host: str) -> bool:
    """Whether ~/.netrc (or $NETRC) has a login for `host`, where `wandb login` keeps it."""
    import netrc

    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not path.exists():
        return False
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return f"machine {host}" in path.read_text(errors="ignore")


WANDB_CONNECT_TIMEOUT_S = 10.0


def check_wandb_reachable(timeout: float = WANDB_CONNECT_TIMEOUT_S, url: str | None = None) -> None:
    """An online W&B run needs its server (:func:`wandb_base_url`), or the HTTPS proxy set in the
    environment, to accept a connection within `timeout` seconds; without this check wandb stalls
    for minutes and ends in a traceback."""
    import socket
    from urllib.parse import urlsplit

    url = url or wandb_base_url()
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlsplit(proxy if proxy and "://" in proxy else f"http://{proxy}" if proxy else url)
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    via = f" through the proxy {proxy}" if proxy else ""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"logger.mode=online: cannot reach W&B at {url}{via} ({host}:{port}: {reason}, "
                          f"{timeout:.0f} s limit); check the network, or run with logger.mode=offline and "
                          "`wandb sync` the run later") from None


def available_memory_gib(trainer) -> tuple[float, str]:
    """Memory one rank can use, and what it is."""
    if device_type(trainer) == "cuda":
        _free, total = torch.cuda.mem_get_info()
        return total / GiB, f"GPU memory ({torch.cuda.get_device_name()})"
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        return float("inf"), "host memory (unknown)"
    ranks_here = max(1, world_size(trainer) // max(1, trainer.num_nodes))
    return avail / GiB / ranks_here, f"available host memory per rank ({ranks_here} on this machine)"


def planned(cfg, vocab_size: int, grows: bool = False):
    """The memory plan of this run (allam.model.plan.make_plan). A DPO micro-batch holds each
    pair's chosen and rejected sequences, twice data.batch_size, scored from the model's whole
    logits (``plain``); post-training batches are padded to their longest example, so the plan
    takes model.seq_len, an upper bound."""
    from allam.model.plan import make_plan

    dpo = str(cfg.objective.name) == "dpo"
    per_example = 2 if dpo else 1
    return make_plan(cfg.model, cfg.trainer, batch_size=cfg.data.batch_size * per_example, optimizer=cfg.optim.name,
                     vocab_size=vocab_size, world=world_size(cfg.trainer),
                     tokens_per_step=tokens_per_step(cfg.data, cfg.model, cfg.trainer) * per_example, grows=grows,
                     loss_kind="plain" if dpo else None)


def check_memory(cfg, vocab_size: int) -> None:
    """Refuse a run whose plan cannot fit the device."""
    if not cfg.run.memory_check:
        return
    p = planned(cfg, vocab_size)
    need = p.memory_gib["total"]
    have, what = available_memory_gib(cfg.trainer)
    if need <= have:
        check_step_time(cfg, p.flops_per_token)
    else:
        raise ConfigError(
            f"model={cfg.model.name}: needs about {need:.1f} GiB per rank (plan: weights {p.memory_gib['weights']:.1f}, "
            f"optimizer {p.memory_gib['optimizer']:.1f}, activations {p.memory_gib['activations']:.1f}, logits "
            f"{p.memory_gib['logits']:.1f}) but {what} is {have:.1f} GiB; shrink model.seq_len or data.batch_size, "
            "turn on activation checkpointing, shard with trainer=fsdp, or set run.memory_check=false to try anyway")


def check_step_time(cfg, flops_per_token: float) -> None:
    """On the CPU, refuse a run whose one micro-batch (forward and backward) would take longer
    than a stop request waits for a step boundary (:data:`allam.train.guards.STOP_GRACE_S`), even
    at this CPU's measured peak matmul rate (the real time is longer): such a run could neither
    make progress nor stop cleanly. FLOPs per token include attention's, which grow with
    ``model.seq_len``."""
    if device_type(cfg.trainer) != "cpu":
        return
    from allam.train.callbacks import measured_cpu_tflops
    from allam.train.guards import STOP_GRACE_S

    tokens = int(cfg.data.batch_size) * int(cfg.model.seq_len)
    flops = flops_per_token * tokens
    rate = measured_cpu_tflops() * 1e12
    seconds = flops / rate
    if seconds > STOP_GRACE_S:
        raise ConfigError(
            f"model.seq_len={cfg.model.seq_len}: one micro-batch (data.batch_size={cfg.data.batch_size} x "
            f"{cfg.model.seq_len} tokens) needs about {flops / 1e12:,.0f} TFLOP, at least {seconds / 60:,.0f} min at "
            f"this CPU's measured {rate / 1e12:.3f} TFLOP/s, longer than a stop request waits for a step boundary "
            f"({STOP_GRACE_S:.0f} s); shrink model.seq_len or data.batch_size, use a GPU, or set "
            "run.memory_check=false to try anyway")

