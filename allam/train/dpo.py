"""Direct preference optimization: sequence log-probabilities, the DPO and IPO losses, their metrics, and the
reference log-probabilities computed once before training. Pure tensor functions; no Lightning.

- :func:`sequence_logps`: the sum (or mean) over the scored tokens of ``log p(label)`` under a causal LM's logits,
  in fp32 (fp64 logits stay fp64), a chunk of positions at a time in the forward and in the backward; the backward
  keeps only the logits themselves and one logsumexp per position, no fp32 copy or softmax of the logits.
- :func:`dpo_loss`: the sigmoid loss of Rafailov et al. (2023) with conservative label smoothing (cDPO), or IPO
  (Azar et al., 2023), and the logged metrics (``rewards/*``, ``logps/*``).
- :func:`pair_logps`: the chosen and rejected log-probabilities of a preference batch in one forward.
- :func:`reference_logps`: those of the initial model for every example, keyed by the example's index, under
  ``torch.no_grad`` and in eval mode, so no second model stays in memory during training; :func:`reference_for`
  looks a batch's values up.

A preference batch is a dict with ``index`` ([B] ints, one per example, unique over the data set),
``chosen_input_ids`` and ``chosen_labels`` ([B, T], labels ``-100`` where not scored), the same for ``rejected_``,
and optionally ``chosen_attention_mask`` / ``rejected_attention_mask`` (1 on real tokens).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOSS_TYPES = ("sigmoid", "ipo")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16/fp16 -> fp32; fp32 and fp64 unchanged


class _LabelLogProbs(torch.autograd.Function):
    """``log_softmax(logits)[i, targets[i]]`` for every row of ``logits`` [N, V] (0 where ``targets`` is -100).

    The forward keeps only the per-row logsumexp; the backward recomputes each chunk's softmax from the logits the
    graph holds anyway, so the extra memory is one chunk of ``chunk x V`` values in the compute dtype.
    """

    @staticmethod
    def forward(ctx, logits, targets, chunk: int):
        dtype = _compute_dtype(logits.dtype)
        valid = targets != IGNORE_INDEX
        safe = targets.clamp_min(0)
        out = torch.zeros(logits.shape[0], dtype=dtype, device=logits.device)
        lse = torch.zeros_like(out)
        for start in range(0, logits.shape[0], chunk):
            x = logits[start:start + chunk].to(dtype)
            lse[start:start + chunk] = torch.logsumexp(x, dim=-1)
            picked = x.gather(1, safe[start:start + chunk, None]).squeeze(1)
            out[start:start + chunk] = torch.where(valid[start:start + chunk], picked - lse[start:start + chunk], 0)
            del x
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        logits, targets, lse = ctx.saved_tensors
        valid = targets != IGNORE_INDEX
        safe = targets.clamp_min(0)
        grad = torch.empty_like(logits)
        g_all = torch.where(valid, grad_out.to(lse.dtype), 0)
        for start in range(0, logits.shape[0], ctx.chunk):
            stop = start + ctx.chunk
            g = g_all[start:stop]
            # d/dx (x[t] - logsumexp(x)) = onehot(t) - softmax(x)
            probs = torch.sub(logits[start:stop].to(lse.dtype), lse[start:stop, None]).exp_()  # a new tensor
            probs.mul_(-g[:, None])
            probs[torch.arange(probs.shape[0], device=probs.device), safe[start:stop]] += g
            grad[start:stop] = probs.to(logits.dtype)
            del probs
        return grad, None, None


def token_logps(logits: torch.Tensor, labels: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
    """Per-token ``log p(labels[:, t + 1] | logits[:, t])`` as causal LMs shift them: [B, T - 1], 0 where the label
    is -100. ``logits`` [B, T, V] (any float dtype; computed in fp32 or fp64), ``labels`` [B, T];
    ``chunk``: positions per step (one ``chunk x V`` block in the compute dtype is the extra memory)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)}: expected [B, T, V] and [B, T]")
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: must be a positive number of positions")
    batch, length, vocab = logits.shape
    # the target of position t is the label at t + 1; the last position predicts nothing. Shifting the targets
    # (not the logits) keeps the logits a view: logits[:, :-1].reshape would copy them whole.
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    flat = _LabelLogProbs.apply(logits.reshape(batch * length, vocab), targets.reshape(-1), chunk)
    return flat.view(batch, length)[:, :-1]


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, *, average: bool = False,
                   chunk: int = 1024) -> torch.Tensor:
    """[B]: the sum over the scored tokens (labels not -100, shifted by one against the logits) of their
    log-probabilities; with ``average=True`` the mean per scored token instead (0 for a row with none).
    See :func:`token_logps` for shapes, dtypes and ``chunk``."""
    per_token = token_logps(logits, labels, chunk=chunk)
    total = per_token.sum(dim=1)
    if not average:
        return total
    count = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1).clamp_min(1)
    return total / count.to(total.dtype)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The preference loss, averaged over the batch, and its metrics.

    Inputs are [B] sequence log-probabilities (:func:`sequence_logps`) of the chosen and rejected answers under the
    policy and under the reference; the reference ones are constants (detached). With the log-ratio difference
    ``h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)``:

    - ``loss_type="sigmoid"`` (DPO, Rafailov et al. 2023), with conservative label smoothing ``eps``
      (cDPO: the preference label is wrong with probability ``eps``):
      ``-(1 - eps) * log(sigmoid(beta * h)) - eps * log(sigmoid(-beta * h))``;
    - ``loss_type="ipo"`` (Azar et al. 2023, eq. 17, ``beta`` playing tau): ``(h - 1 / (2 * beta)) ** 2``.
      TRL's IPO divides each log-ratio by its answer's token count first: pass log-probs from
      ``sequence_logps(..., average=True)`` for that form.

    ``beta`` > 0 scales the implicit reward ``beta * (policy - ref)``; ``label_smoothing`` in [0, 0.5), sigmoid only.
    Computed in fp32 (fp64 inputs stay fp64). Metrics (detached batch means): ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/accuracy`` (share of pairs whose chosen reward is above the rejected one),
    ``rewards/margin`` (chosen minus rejected reward), ``logps/chosen``, ``logps/rejected`` (policy).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: allowed are {', '.join(LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta={beta}: must be > 0")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing}: must be in [0, 0.5)")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing={label_smoothing} with loss_type={loss_type!r}: smoothing applies to "
                         "loss_type='sigmoid' only; set it to 0")
    shapes = {t.shape for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError(f"log-prob shapes {sorted(tuple(s) for s in shapes)}: expected four equal [B] tensors")
    dtype = _compute_dtype(policy_chosen.dtype)
    pc, pr = policy_chosen.to(dtype), policy_rejected.to(dtype)
    rc, rr = ref_chosen.detach().to(dtype), ref_rejected.detach().to(dtype)
    chosen_ratio, rejected_ratio = pc - rc, pr - rr
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        per_pair = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        per_pair = (h - 1.0 / (2.0 * beta)) ** 2
    with torch.no_grad():
        chosen_reward, rejected_reward = beta * chosen_ratio, beta * rejected_ratio
        metrics = {
            "rewards/chosen": chosen_reward.mean(),
            "rewards/rejected": rejected_reward.mean(),
            "rewards/accuracy": (chosen_reward > rejected_reward).to(dtype).mean(),
            "rewards/margin": (chosen_reward - rejected_reward).mean(),
            "logps/chosen": pc.mean(),
            "logps/rejected": pr.mean(),
        }
    return per_pair.mean(), metrics


def _pad_right(rows: list[torch.Tensor], length: int, value: int) -> torch.Tensor:
    return torch.cat([F.pad(r, (0, length - r.shape[1]), value=value) for r in rows])


def pair_logps(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, average: bool = False,
               chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """([B], [B]): :func:`sequence_logps` of the chosen and of the rejected answers of a preference batch (keys in
    the module docstring), in one forward of ``model`` (an HF causal LM: ``model(input_ids=..., attention_mask=...)
    .logits``) over both halves right-padded to a common length (padding is masked and unscored)."""
    ids = [batch["chosen_input_ids"], batch["rejected_input_ids"]]
    labels = [batch["chosen_labels"], batch["rejected_labels"]]
    masks = [batch.get(f"{side}_attention_mask") for side in ("chosen", "rejected")]
    masks = [torch.ones_like(i) if m is None else m for i, m in zip(ids, masks)]
    length = max(i.shape[1] for i in ids)
    logits = model(input_ids=_pad_right(ids, length, 0), attention_mask=_pad_right(masks, length, 0)).logits
    logps = sequence_logps(logits, _pad_right(labels, length, IGNORE_INDEX), average=average, chunk=chunk)
    half = ids[0].shape[0]
    return logps[:half], logps[half:]


def reference_logps(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], *,
                    average: bool = False, chunk: int = 1024) -> dict[int, tuple[float, float]]:
    """``{index: (chosen, rejected)}``: the reference log-probabilities of every example in ``batches``, computed
    once with ``model`` as it is now (the initial policy), in eval mode and under ``torch.no_grad`` (the previous
    train/eval mode is restored), so training needs no second model. Batches are moved to the model's device.
    ``average``: as in :func:`sequence_logps`; use the same value in training. A repeated index is an error."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[int, tuple[float, float]] = {}
    try:
        with torch.no_grad():
            for batch in batches:
                moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                chosen, rejected = pair_logps(model, moved, average=average, chunk=chunk)
                for i, c, r in zip(batch["index"].tolist(), chosen.tolist(), rejected.tolist()):
                    if i in out:
                        raise ValueError(f"index={i}: appears twice in the preference batches; each example needs "
                                         "its own index")
                    out[int(i)] = (c, r)
    finally:
        model.train(was_training)
    return out


def reference_for(reference: Mapping[int, tuple[float, float]], index: torch.Tensor, *,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """([B], [B]) chosen and rejected reference log-probabilities of a batch's ``index``, on its device."""
    missing = [i for i in index.tolist() if i not in reference]
    if missing:
        raise KeyError(f"index={missing[:5]}: no reference log-probabilities (computed for {len(reference)} "
                       "examples); compute them over the same data before training")
    values = torch.tensor([reference[i] for i in index.tolist()], dtype=dtype, device=index.device)
    return values[:, 0], values[:, 1]
