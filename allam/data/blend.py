"""The exact, deterministic, seeded token blend.

Every source is packed into blocks of ``seq_len + 1`` tokens (a block is one training sequence),
so a share of blocks *is* a share of tokens. The blend assigns each global block position
``g = 0, 1, 2, ...`` to a source by a tree of two-way Bresenham splits, evaluated in closed
form (O(1) per position, no stored index, so it scales to any run length):

- language: position ``i`` of a stage is Arabic when ``floor((i+1)·a + ½) > floor(i·a + ½)``,
  ``a = ar_ratio``. Over *every* window of N consecutive blocks the number of Arabic blocks is
  ``floor`` or ``ceil`` of ``a·N`` (it differs from the target by less than one block), and
  every prefix is within half a block. With more languages (``data.mix``) the languages form a
  chain of such splits in the mix's order (the first at its share, the next at its share of the
  rest, ...): the language k splits down the chain is within k blocks of its share on every
  window (Arabic then English: one split, exactly as above).
- kind: the same split of a target language's blocks (in order) by ``translated_share``; so
  within them, in any window, the translated count is within one block of its share.
- source: within a (language, kind) group (all English sources form one group), a chain of
  splits by weight (``weight`` if given, else the source's size in blocks).

A source's blocks are consumed in a seeded pseudo-random order that changes every epoch (a
Feistel permutation with cycle walking: no stored permutation either). Stages
(``data.stages``) apply their own ratios to consecutive ranges of positions; each source
continues where the previous stage left it. Stage ``k`` ends at the first block whose start,
counted in training tokens (``seq_len`` per block, as ``trainer.max_tokens`` counts them),
reaches the sum of the ``tokens`` of stages ``0..k``.

The stages come checked from :func:`allam.config.mix_stages` (ratios, token budgets, and that
every language and kind a stage asks for has a source); the blend checks only what it alone
knows: weights are given to all sources of a group or to none, and every drawn source has a block.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from allam.config import ConfigError, Stage
from allam.config.langs import BASE_LANG, lang_name

_SHIFT = 32
_ONE = 1 << _SHIFT
_HALF = 1 << (_SHIFT - 1)
_U = np.uint64


def _rate(p: float) -> int:
    return int(round(min(max(float(p), 0.0), 1.0) * _ONE))


def bcount(P: int, n):
    """Number of 'left' positions among the first n of a Bresenham split with rate P/2^32. The
    array path splits n at 2^32 so no product leaves 64 bits (n*P would from 2^32 blocks on,
    about 17.6T tokens at seq_len 4096), and equals the integer path for every n below 2^64."""
    if isinstance(n, np.ndarray):
        n = n.astype(_U)
        hi, lo = n >> _U(_SHIFT), n & _U(_ONE - 1)
        return hi * _U(P) + ((lo * _U(P) + _U(_HALF)) >> _U(_SHIFT))
    return (int(n) * P + _HALF) >> _SHIFT


# --------------------------------------------------------------------------- split tree
class Leaf:
    def __init__(self, idx: int):
        self.idx = idx

    def locate(self, i: np.ndarray, src: np.ndarray, k: np.ndarray, where: np.ndarray) -> None:
        src[where] = self.idx
        k[where] = i

    def counts(self, n: int, out: dict) -> None:
        out[self.idx] = out.get(self.idx, 0) + n

    def targets(self, mult: float, out: dict) -> None:
        out[self.idx] = out.get(self.idx, 0.0) + mult


class Split:
    def __init__(self, p: float, left, right):
        self.p = float(p)
        self.P = _rate(p)
        self.left, self.right = left, right

    def locate(self, i: np.ndarray, src: np.ndarray, k: np.ndarray, where: np.ndarray) -> None:
        c = bcount(self.P, i)
        is_left = bcount(self.P, i + _U(1)) > c
        if is_left.any():
            self.left.locate(c[is_left], src, k, where[is_left])
        if not is_left.all():
            self.right.locate(i[~is_left] - c[~is_left], src, k, where[~is_left])

    def counts(self, n: int, out: dict) -> None:
        nl = bcount(self.P, n)
        if nl:
            self.left.counts(nl, out)
        if n - nl:
            self.right.counts(n - nl, out)

    def targets(self, mult: float, out: dict) -> None:
        if self.p > 0:
            self.left.targets(mult * self.p, out)
        if self.p < 1:
            self.right.targets(mult * (1 - self.p), out)


def _chain(members: list[int], weights: list[float]):
    if len(members) == 1:
        return Leaf(members[0])
    total = sum(weights)
    p = weights[0] / total if total > 0 else 1.0 / len(members)
    return Split(p, Leaf(members[0]), _chain(members[1:], weights[1:]))


# --------------------------------------------------------------------------- stages
@dataclass
class SourceInfo:
    name: str
    lang: str
    kind: str
    blocks: int  # training blocks available (one epoch)
    weight: Optional[float] = None


def _group_weights(sources: Sequence[SourceInfo], members: list[int], what: str) -> list[float]:
    given = [sources[m].weight for m in members]
    if all(w is None for w in given):
        return [float(sources[m].blocks) for m in members]
    if any(w is None for w in given):
        names = ", ".join(sources[m].name for m in members if sources[m].weight is None)
        raise ConfigError(f"data.sources.{names}.weight=None: give a weight to every {what} source or to none")
    return [float(w) for w in given]  # type: ignore[arg-type]


def _lang_node(sources: Sequence[SourceInfo], members: list[int], code: str, tau: Optional[float]):
    """A language's subtree: English (the base language) one chain by weight; a target language
    split into translated and natural sources by ``tau`` (None: by size), each a chain."""
    name = lang_name(code)
    if code == BASE_LANG:
        return _chain(members, _group_weights(sources, members, name))
    tr = [i for i in members if sources[i].kind == "translated"]
    nat = [i for i in members if sources[i].kind != "translated"]
    if tau is None:
        size_all = sum(sources[i].blocks for i in members)
        tau = sum(sources[i].blocks for i in tr) / size_all if size_all else 0.0
    tr_node = _chain(tr, _group_weights(sources, tr, f"{name} translated")) if tr else None
    nat_node = _chain(nat, _group_weights(sources, nat, f"{name} natural")) if nat else None
    if tr_node is None or nat_node is None:
        return tr_node or nat_node
    return Split(tau, tr_node, nat_node)


def _chain_nodes(nodes: list, shares: list[float], total: float = 1.0):
    """A chain of splits over language subtrees by share (the first split is at the first share
    itself, so Arabic/English splits at exactly ``ar_ratio``)."""
    if len(nodes) == 1:
        return nodes[0]
    p = shares[0] / total if total > 0 else 1.0 / len(nodes)
    return Split(p, nodes[0], _chain_nodes(nodes[1:], shares[1:], sum(shares[1:])))


def build_tree(sources: Sequence[SourceInfo], stage: Stage):
    """The split tree of one stage (checked by allam.config.mix_stages): a chain of splits over the
    stage's languages in order (Arabic then English: one split at ``ar_ratio``), each language's
    subtree below it."""
    nodes, weights = [], []
    for code, share in stage.shares:
        members = [i for i, s in enumerate(sources) if s.lang == code]
        if members:
            nodes.append(_lang_node(sources, members, code, stage.translated_share))
            weights.append(float(share))
    return _chain_nodes(nodes, weights) if nodes else None


# --------------------------------------------------------------------------- permutation
def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
    return z ^ (z >> _U(31))


class Permutation:
    """A seeded bijection of [0, n) evaluated element-wise (Feistel network + cycle walking)."""

    def __init__(self, n: int, *key_parts):
        self.n = int(n)
        bits = max(1, (self.n - 1).bit_length())
        self.h = (bits + 1) // 2
        self.mask = _U((1 << self.h) - 1)
        digest = hashlib.blake2b(repr(key_parts).encode(), digest_size=32).digest()
        self.keys = [_U(int.from_bytes(digest[8 * r : 8 * r + 8], "little")) for r in range(4)]

    def _round(self, x: np.ndarray) -> np.ndarray:
        h = _U(self.h)
        left, right = x >> h, x & self.mask
        with np.errstate(over="ignore"):
            for k in self.keys:
                left, right = right, left ^ (_mix64(right ^ k) & self.mask)
        return (left << h) | right

    def __call__(self, i: np.ndarray) -> np.ndarray:
        if self.n <= 1:
            return np.zeros_like(i, dtype=np.int64)
        y = self._round(np.asarray(i, dtype=_U))
        bad = y >= _U(self.n)
        while bad.any():
            y[bad] = self._round(y[bad])
            bad = y >= _U(self.n)
        return y.astype(np.int64)


# --------------------------------------------------------------------------- the blend
class Blend:
    """Maps global block positions to (source index, block index inside that source's shard)."""

    def __init__(self, sources: Sequence[SourceInfo], stages: Sequence[Stage], seq_len: int, seed: int):
        self.sources = list(sources)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.stages = list(stages)
        self.trees = [build_tree(self.sources, st) for st in self.stages]
        # stage start positions in blocks
        starts, cum = [0], 0
        for st in self.stages[:-1]:
            cum += int(st.tokens)  # mix_stages: only the last stage may leave tokens unset
            starts.append(max(starts[-1], math.ceil(cum / self.seq_len)))
        self.starts = starts
        # per-source blocks consumed before each stage
        self.offsets: list[dict[int, int]] = [{}]
        for s in range(len(self.stages) - 1):
            prev = dict(self.offsets[-1])
            self.trees[s].counts(self.starts[s + 1] - self.starts[s], prev)
            self.offsets.append(prev)
        self._perms: dict[tuple[int, int], Permutation] = {}

    # -- positions --------------------------------------------------------------
    def locate(self, g) -> tuple[np.ndarray, np.ndarray]:
        """(source index, consumption index K in that source's stream) of each global position."""
        g = np.asarray(g, dtype=np.int64)
        src = np.empty(g.shape, np.int64)
        k = np.empty(g.shape, _U)
        st = np.searchsorted(np.asarray(self.starts), g, side="right") - 1
        for s in np.unique(st).tolist():
            where = np.nonzero(st == s)[0]
            local = (g[where] - self.starts[s]).astype(_U)
            self.trees[s].locate(local, src, k, where)
            off = self.offsets[s]
            if off:
                add = np.array([off.get(int(j), 0) for j in range(len(self.sources))], dtype=_U)
                k[where] += add[src[where]]
        return src, k.astype(np.int64)

    def blocks(self, g) -> tuple[np.ndarray, np.ndarray]:
        """(source index, block index inside the source's training shard) of each global position."""
        src, k = self.locate(g)
        block = np.empty_like(k)
        for s in np.unique(src).tolist():
            m = src == s
            nb = self.sources[s].blocks
            if nb <= 0:
                raise ConfigError(f"data.sources.{self.sources[s].name}: has no training block of {self.seq_len + 1} tokens")
            ks = k[m]
            epochs, pos = ks // nb, ks % nb
            out = np.empty_like(ks)
            for e in np.unique(epochs).tolist():
                me = epochs == e
                out[me] = self._perm(s, e)(pos[me])
            block[m] = out
        return src, block

    def _perm(self, s: int, epoch: int) -> Permutation:
        key = (s, epoch)
        p = self._perms.get(key)
        if p is None:
            if len(self._perms) > 64:
                self._perms.clear()
            p = self._perms[key] = Permutation(self.sources[s].blocks, self.seed, self.sources[s].name, epoch)
        return p

    # -- accounting -------------------------------------------------------------
    def stage_ranges(self, total: int) -> list[tuple[int, int]]:
        out = []
        for s in range(len(self.stages)):
            lo = min(self.starts[s], total)
            hi = total if s == len(self.stages) - 1 else min(self.starts[s + 1], total)
            out.append((lo, hi))
        return out

    def counts(self, total: int) -> list[dict[int, int]]:
        """Realized blocks per source in each stage over the first `total` positions."""
        out = []
        for s, (lo, hi) in enumerate(self.stage_ranges(total)):
            c: dict[int, int] = {}
            if hi > lo:
                self.trees[s].counts(hi - lo, c)
            out.append(c)
        return out

    def targets(self, total: int) -> list[dict[int, float]]:
        """Target (real-valued) blocks per source in each stage over the first `total` positions."""
        out = []
        for s, (lo, hi) in enumerate(self.stage_ranges(total)):
            t: dict[int, float] = {}
            if hi > lo:
                self.trees[s].targets(float(hi - lo), t)
            out.append(t)
        return out
