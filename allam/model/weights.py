"""Where a model's starting weights come from, delivered one tensor at a time.

A weight source answers "the rows ``start:stop`` of parameter ``name``" for every parameter, in
the order of ``model.named_parameters()``. :func:`materialize` walks a model (plain, or sharded
by FSDP2 with ``Shard(0)`` DTensor parameters) and fills each parameter, or only this rank's
rows of it, from the source. So no process ever holds more than its own shards plus one tensor,
and a sharded model gets exactly the values a single-process model gets, whatever the world size.

Sources:
- :class:`RandomWeights`: Llama-style normal init, each block of :data:`ROW_BLOCK` rows of each
  parameter drawn from its own generator seeded from (seed, parameter name, block), so a rank
  draws only the blocks that hold its rows and the values do not depend on sharding;
- :class:`PretrainedWeights`: a Hugging Face safetensors checkpoint read tensor by tensor (only
  this rank's rows are read, except for embedding matrices that grow, read whole); those get their new rows per
  ``init.new_embeddings`` (:func:`allam.model.embeddings.fill_new_rows`).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Optional

import torch

EMBEDDING_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


ROW_BLOCK = 256  # rows of one parameter drawn from one generator (fixed: the values must not depend on sharding)
PARALLEL_VALUES = 1 << 22  # a slice of at least this many values is drawn by several threads


def block_seed(seed: int, name: str, block: int) -> int:
    """The generator seed of rows ``block * ROW_BLOCK ...`` of parameter `name` (stable across
    processes and Python versions, unlike ``hash``)."""
    digest = hashlib.blake2b(f"{int(seed)}/{name}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: any torch.Generator takes it


def normal_rows(seed: int, name: str, shape, start: int, stop: int, std: float) -> torch.Tensor:
    """Rows ``start:stop`` of an N(0, std) tensor of `shape` named `name`: each block of
    :data:`ROW_BLOCK` rows comes from its own seeded generator, so any slice of rows is drawn without
    drawing the others' (only the blocks it overlaps), and the same rows get the same values
    whatever slice asked for them. Large slices are drawn by several threads (the blocks are independent)."""
    shape = tuple(int(d) for d in shape)
    row = shape[1:]
    out = torch.empty((stop - start, *row), dtype=torch.float32)

    def draw(block: int) -> None:
        a, b = block * ROW_BLOCK, min((block + 1) * ROW_BLOCK, shape[0])
        gen = torch.Generator(device="cpu").manual_seed(block_seed(seed, name, block))
        lo, hi = max(a, start), min(b, stop)
        if (lo, hi) == (a, b):  # the whole block is wanted: draw straight into place
            torch.randn((b - a, *row), generator=gen, dtype=torch.float32, out=out[a - start : b - start])
        else:
            out[lo - start : hi - start] = torch.randn((b - a, *row), generator=gen, dtype=torch.float32)[lo - a : hi - a]

    blocks = range(start // ROW_BLOCK, -(-stop // ROW_BLOCK)) if stop > start else range(0)
    threads = min(len(blocks), torch.get_num_threads())
    if out.numel() >= PARALLEL_VALUES and threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(draw, blocks))
    else:
        for block in blocks:
            draw(block)
    return out.mul_(std)


class RandomWeights:
    """N(0, std) for every matrix and embedding, zeros for biases, ones for norm weights (zeros
    where the norm scales by 1 + weight, as Gemma's does); the output projections of each residual
    branch (o_proj, down_proj) get std / sqrt(2 * layers) when `scaled_residual`. Values are drawn
    per (parameter name, block of rows) (:func:`normal_rows`): a rank draws only its own rows."""

    def __init__(self, std: float, scaled_residual: bool, seed: int, num_layers: int, zero_centered_norms: bool = False):
        self.seed = int(seed)
        self.std = float(std)
        self.resid_std = self.std / math.sqrt(2 * num_layers) if scaled_residual else self.std
        self.norm_value = 0.0 if zero_centered_norms else 1.0

    @classmethod
    def for_config(cls, init, config) -> "RandomWeights":
        """The init group's draws for a model of Hugging Face `config`."""
        gemma = str(getattr(config, "model_type", "")).startswith("gemma")
        return cls(init.std, init.scaled_residual, init.seed, config.num_hidden_layers, zero_centered_norms=gemma)

    def rows(self, name: str, shape: torch.Size, start: int, stop: int) -> torch.Tensor:
        if name.endswith(".bias"):
            return torch.zeros((stop - start, *shape[1:]))
        if len(shape) == 1:  # RMSNorm weights
            return torch.full((stop - start,), self.norm_value)
        s = self.resid_std if name.endswith(("o_proj.weight", "down_proj.weight")) else self.std
        return normal_rows(self.seed, name, shape, start, stop, s)


class SafetensorsFolder:
    """Tensors of a Hugging Face checkpoint folder (``model.safetensors`` or sharded with
    ``model.safetensors.index.json``), read one slice at a time; each read opens and closes its
    file, so no mapping outlives the tensor it served."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                self.files = {k: self.folder / v for k, v in weight_map.items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise self._error(f"{index.name} is not a safetensors index ({type(exc).__name__}: {exc})") from None
            self._check_files()
        else:
            single = self.folder / "model.safetensors"
            if not single.exists():
                raise self._error("neither model.safetensors nor model.safetensors.index.json is there")
            self.files = {k: single for k in self._header(single)}

    def _error(self, what: str):
        from allam.config import ConfigError

        return ConfigError(f"init.checkpoint={self.folder}: {what}; copy or download the checkpoint again")

    def _header(self, path: Path) -> dict:
        """A safetensors file's tensors (name -> dtype, shape, data_offsets), after checking that the
        file holds every byte its header promises (a truncated file names its first cut-off tensor)."""
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                raise self._error(f"{path.name} is not a safetensors file or is truncated ({size:,} bytes, "
                                  "its header incomplete)")
            try:
                header = json.loads(f.read(n))
            except ValueError as exc:
                raise self._error(f"{path.name} has an unreadable header ({exc})") from None
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        have = size - 8 - n
        cut = sorted((v["data_offsets"][0], k) for k, v in tensors.items() if v["data_offsets"][1] > have)
        if cut:
            need = max(v["data_offsets"][1] for v in tensors.values())
            rest = f" and {len(cut) - 1} after it are" if len(cut) > 1 else " is"
            raise self._error(f"{path.name} is truncated ({size:,} of {8 + n + need:,} bytes): tensor "
                              f"{cut[0][1]}{rest} cut off")
        return tensors

    def _check_files(self) -> None:
        """Every file the index names is there, whole, and holds the tensors the index puts in it."""
        by_file: dict[Path, list[str]] = {}
        for name, path in self.files.items():
            by_file.setdefault(path, []).append(name)
        for path, names in by_file.items():
            if not path.exists():
                raise self._error(f"{path.name} is missing (the index puts {len(names)} tensors in it, e.g. {names[0]})")
            held = self._header(path)
            absent = [k for k in names if k not in held]
            if absent:
                raise self._error(f"tensor {absent[0]} is not in {path.name}, where the index puts it")

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def shape(self, name: str) -> list[int]:
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt") as f:
            return list(f.get_slice(name).get_shape())

    def rows(self, name: str, start: Optional[int] = None, stop: Optional[int] = None) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt") as f:
            piece = f.get_slice(name)
            t = piece[start:stop] if piece.get_shape() else f.get_tensor(name)
            return t.clone()  # own the memory before the file's mapping closes


class PretrainedWeights:
    """A checkpoint's weights; the input embedding and output head may grow to `rows` rows, whose
    rows past `num_old_rows` are filled per `strategy` (the output head per `output_strategy` when given;
    see :func:`allam.model.embeddings.fill_new_rows`);
    under ``random`` a rank draws only its own new rows (:func:`normal_rows`, seeded per parameter
    name and block of rows, with the base rows' standard deviation)."""

    def __init__(self, folder: str | Path, *, rows: Optional[int] = None, num_old_rows: Optional[int] = None,
                 num_new: int = 0, strategy: str = "subtoken_mean", groups: Optional[list[list[int]]] = None,
                 seed: int = 0, output_strategy: Optional[str] = None):
        self.ckpt = SafetensorsFolder(folder)
        self.rows_total, self.num_old, self.num_new = rows, num_old_rows, num_new
        self.strategy, self.groups = str(strategy), groups
        self.output_strategy = str(output_strategy) if output_strategy is not None else self.strategy  # lm_head's
        self.seed = int(seed)
        self.gen = torch.Generator(device="cpu").manual_seed(self.seed)

    def _grows(self, name: str) -> bool:
        return name in EMBEDDING_NAMES and self.rows_total is not None and self.num_old is not None

    def rows(self, name: str, shape: torch.Size, start: int, stop: int) -> torch.Tensor:
        param = name
        if name == "lm_head.weight" and name not in self.ckpt:
            name = "model.embed_tokens.weight"  # a checkpoint with tied embeddings stores one matrix
        if not self._grows(name):
            return self.ckpt.rows(name, start, stop)
        from allam.model.embeddings import fill_new_rows

        old = self.ckpt.rows(name)  # one whole matrix: the new rows are built from its rows
        strategy = self.output_strategy if param == "lm_head.weight" else self.strategy
        if strategy == "random":  # only rows start:stop are drawn
            out = torch.empty((stop - start, old.shape[1]), dtype=torch.float32)
            keep = min(stop, self.num_old)
            if start < keep:
                out[: keep - start] = old[start:keep].float()
            lo = max(start, self.num_old)
            if lo < stop:
                std = old[: self.num_old].float().std().item()
                out[lo - start :] = normal_rows(self.seed, param, (self.rows_total, old.shape[1]), lo, stop, std)
            return out
        full = torch.empty((self.rows_total, old.shape[1]), dtype=torch.float32)
        full[: self.num_old] = old[: self.num_old].float()
        fill_new_rows(full, self.num_old, self.num_new, strategy, self.gen, self.groups)
        return full[start:stop]


def local_rows(param: torch.Tensor) -> tuple[int, int]:
    """The rows ``start:stop`` of the full parameter that this rank holds (all of them unless
    `param` is a DTensor sharded on dim 0, as FSDP2 shards)."""
    from torch.distributed.tensor import DTensor, Shard

    n = param.shape[0] if param.ndim else 1
    if not isinstance(param, DTensor):
        return 0, n
    mesh, placements = param.device_mesh, param.placements
    if len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise NotImplementedError(f"only Shard(0) parameters are supported, got {placements}")
    world, rank = mesh.size(), mesh.get_local_rank()
    chunk = math.ceil(n / world)  # torch.chunk's split, as FSDP2 uses
    start = min(rank * chunk, n)
    return start, min(start + chunk, n)


@torch.no_grad()
def materialize(model: torch.nn.Module, source) -> None:
    """Fill every parameter of `model` (already allocated, e.g. by ``to_empty``) from `source`,
    only this rank's rows of a sharded one, and recompute the buffers (rotary frequencies)."""
    from torch.distributed.tensor import DTensor

    reset_buffers(model)  # first: a module's own init may draw its parameters too
    for name, p in model.named_parameters():
        start, stop = local_rows(p)
        local = p.to_local() if isinstance(p, DTensor) else p
        values = source.rows(name, p.shape, start, stop)
        if tuple(values.shape) != tuple(local.shape):
            raise ValueError(f"{name}: source gave {tuple(values.shape)} for a local shard of {tuple(local.shape)}")
        local.copy_(values.to(local.dtype))


@torch.no_grad()
def reset_buffers(model: torch.nn.Module) -> None:
    """Recompute the non-persistent buffers a meta-device model lost (rotary inverse frequencies,
    Gemma's embedding scale) with the model's own ``_init_weights`` on each module that holds
    buffers. Parameters it touches are overwritten afterwards (:func:`materialize` fills them)."""
    init = getattr(model, "_init_weights", None)
    for module in model.modules():
        if init is not None and next(module.buffers(recurse=False), None) is not None:
            init(module)
