"""The DPO loss (allam/train/dpo.py) against independent references: a per-token loop for the sequence
log-probabilities, the papers' formulas evaluated with the math module on float64 scalars, and TRL's own loss code
(DPOTrainer._compute_loss) on the same tiny Llama and the same tokens, values, gradients and metrics."""
from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from allam.train.dpo import (dpo_loss, pair_logps, reference_for, reference_logps, sequence_logps,
                             token_logps)

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "logps/chosen",
           "logps/rejected")


def _random_labels(gen, batch, length, vocab):
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[torch.rand(batch, length, generator=gen) < 0.3] = -100
    labels[0, 0] = 5  # position 0 is never scored (nothing predicts it)
    labels[-1, 1:] = -100  # a row with no scored token
    return labels


def _loop_logps(logits, labels):
    """The naive reference: one log_softmax per scored position, float64, Python loop."""
    out = []
    for b in range(labels.shape[0]):
        total, count = 0.0, 0
        for t in range(1, labels.shape[1]):
            if labels[b, t] != -100:
                total += torch.log_softmax(logits[b, t - 1].double(), -1)[labels[b, t]].item()
                count += 1
        out.append((total, total / max(count, 1)))
    return out


def test_sequence_logps_equals_a_per_token_loop_in_every_dtype():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 13, generator=gen) * 3
    labels = _random_labels(gen, 4, 9, 13)
    want = _loop_logps(logits, labels)
    for chunk in (1, 5, 1024):  # chunk boundaries inside rows, across rows, and one chunk
        got_sum = sequence_logps(logits, labels, chunk=chunk)
        got_avg = sequence_logps(logits, labels, average=True, chunk=chunk)
        assert got_sum.dtype == torch.float32
        assert torch.allclose(got_sum.double(), torch.tensor([w[0] for w in want], dtype=torch.float64), atol=1e-5)
        assert torch.allclose(got_avg.double(), torch.tensor([w[1] for w in want], dtype=torch.float64), atol=1e-5)
    assert got_sum[-1] == 0 and got_avg[-1] == 0
    assert token_logps(logits, labels).shape == (4, 8)
    # bf16 logits are scored in fp32: the same numbers as the fp32 path on the rounded logits
    low = logits.bfloat16()
    assert sequence_logps(low, labels).dtype == torch.float32
    assert torch.allclose(sequence_logps(low, labels), sequence_logps(low.float(), labels), atol=1e-6)
    with pytest.raises(ValueError, match=r"logits \(4, 9, 13\) and labels \(4, 8\)"):
        sequence_logps(logits, labels[:, :8])


def test_sequence_logps_gradients_equal_autograd_and_finite_differences():
    gen = torch.Generator().manual_seed(1)
    labels = _random_labels(gen, 3, 6, 7)
    logits = (torch.randn(3, 6, 7, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    # float64 finite differences through the custom backward, chunks split inside a row
    assert torch.autograd.gradcheck(lambda x: sequence_logps(x, labels, average=True, chunk=4), (logits,))
    # and fp32 against plain autograd through log_softmax + gather
    x32 = logits.detach().float().requires_grad_()
    weights = torch.randn(3, generator=gen)
    (sequence_logps(x32, labels, chunk=5) * weights).sum().backward()
    ref = logits.detach().float().requires_grad_()
    shifted = labels[:, 1:]
    picked = torch.log_softmax(ref[:, :-1], -1).gather(2, shifted.clamp_min(0)[..., None]).squeeze(2)
    ((picked * (shifted != -100)).sum(1) * weights).sum().backward()
    assert torch.allclose(x32.grad, ref.grad, atol=1e-6)
    assert x32.grad[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_sequence_logps_keeps_no_fp32_copy_of_the_logits_for_the_backward():
    logits = torch.randn(2, 8, 50, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 8))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        sequence_logps(logits, labels, chunk=3)
    big = [t for t in saved if t.numel() >= logits.numel()]
    assert len(big) == 1 and big[0].dtype == torch.bfloat16 and big[0].data_ptr() == logits.data_ptr()
    assert sum(t.numel() for t in saved if t is not big[0]) <= 2 * 16  # targets and a logsumexp per position


# ----------------------------------------------------------------------------- the formulas, float64 scalars
def _logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _formula(pc, pr, rc, rr, beta, eps, loss_type):
    """Per pair: the loss and its derivative with respect to the policy's chosen log-prob (the rejected one's is
    its negative), from the papers' formulas."""
    h = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":  # Rafailov et al. 2023, with cDPO's smoothing
        loss = -(1 - eps) * _logsig(beta * h) - eps * _logsig(-beta * h)
        grad = -(1 - eps) * beta * _sig(-beta * h) + eps * beta * _sig(beta * h)
    else:  # Azar et al. 2023, eq. 17
        loss = (h - 1 / (2 * beta)) ** 2
        grad = 2 * (h - 1 / (2 * beta))
    return loss, grad


@pytest.mark.parametrize("loss_type,beta,eps", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("ipo", 0.1, 0.0),
                                                ("ipo", 2.0, 0.0)])
def test_dpo_loss_and_gradients_equal_the_papers_formulas(loss_type, beta, eps):
    gen = torch.Generator().manual_seed(2)
    pc, pr, rc, rr = (-20 * torch.rand(6, generator=gen, dtype=torch.float64) for _ in range(4))
    pc.requires_grad_()
    pr.requires_grad_()
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps, loss_type=loss_type)
    loss.backward()
    pc_, pr_ = pc.detach(), pr.detach()
    rows = [_formula(*map(float, v), beta, eps, loss_type) for v in zip(pc_, pr_, rc, rr)]
    n = len(rows)
    assert loss.item() == pytest.approx(sum(r[0] for r in rows) / n, rel=1e-12)
    assert pc.grad.tolist() == pytest.approx([r[1] / n for r in rows], rel=1e-10)
    assert pr.grad.tolist() == pytest.approx([-r[1] / n for r in rows], rel=1e-10)
    # metrics: their definitions, in plain Python
    cr = [beta * (float(a) - float(b)) for a, b in zip(pc_, rc)]
    rj = [beta * (float(a) - float(b)) for a, b in zip(pr_, rr)]
    want = {"rewards/chosen": sum(cr) / n, "rewards/rejected": sum(rj) / n,
            "rewards/accuracy": sum(a > b for a, b in zip(cr, rj)) / n,
            "rewards/margin": sum(a - b for a, b in zip(cr, rj)) / n,
            "logps/chosen": sum(map(float, pc_)) / n, "logps/rejected": sum(map(float, pr_)) / n}
    assert 0 < want["rewards/accuracy"] < 1  # the random pairs go both ways
    assert set(metrics) == set(METRICS)
    for key in METRICS:
        assert not metrics[key].requires_grad
        assert metrics[key].item() == pytest.approx(want[key], rel=1e-12, abs=1e-15)
    # the reference log-probs are constants
    rc2 = rc.clone().requires_grad_()
    dpo_loss(pc, pr, rc2, rr, beta=beta, label_smoothing=eps, loss_type=loss_type)[0].backward()
    assert rc2.grad is None


def test_beta_and_smoothing_move_the_loss_as_the_papers_say():
    def loss(h, **kw):
        return dpo_loss(torch.tensor([h]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), **kw)[0]

    # no preference yet: log 2 at any beta and smoothing, and a tie is not a win for the reward accuracy
    for kw in ({}, {"beta": 1.0}, {"beta": 0.3, "label_smoothing": 0.25}):
        assert loss(0.0, **kw).item() == pytest.approx(math.log(2), rel=1e-6)
    x = torch.full((3,), -7.0)
    assert dpo_loss(x, x, x - 1, x - 1)[1]["rewards/accuracy"].item() == 0
    # a right-ordered pair: a larger beta lowers the sigmoid loss, a wrong-ordered one raises it
    assert loss(2.0, beta=0.5) < loss(2.0, beta=0.1) < math.log(2) < loss(-2.0, beta=0.1) < loss(-2.0, beta=0.5)
    # smoothing penalizes confidence: at a large margin the smoothed loss is higher and grows again with h;
    # its minimum is where sigmoid(beta * h) = 1 - eps
    assert loss(40.0, label_smoothing=0.1) > loss(40.0)
    best = math.log(0.9 / 0.1) / 0.1
    assert loss(best, label_smoothing=0.1) < loss(best - 5, label_smoothing=0.1)
    assert loss(best, label_smoothing=0.1) < loss(best + 5, label_smoothing=0.1)
    # IPO: zero exactly at h = 1 / (2 beta); beta moves the target margin
    assert loss(5.0, beta=0.1, loss_type="ipo").item() == 0
    assert loss(5.0, beta=0.5, loss_type="ipo").item() == pytest.approx(16.0)


def test_bad_settings_are_one_line_errors():
    x = torch.zeros(2)
    for kw, match in [({"loss_type": "hinge"}, r"loss_type='hinge': allowed are sigmoid, ipo"),
                      ({"beta": 0.0}, r"beta=0.0: must be > 0"),
                      ({"label_smoothing": 0.5}, r"label_smoothing=0.5: must be in \[0, 0.5\)"),
                      ({"label_smoothing": 0.1, "loss_type": "ipo"}, r"loss_type='sigmoid' only")]:
        with pytest.raises(ValueError, match=match) as err:
            dpo_loss(x, x, x, x, **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="expected four equal"):
        dpo_loss(x, x, x, torch.zeros(3))


# ----------------------------------------------------------------------------- a tiny Llama and TRL's loss
@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).float()


def _pairs(seed, batch=3, prompt=4, vocab=64):
    """Preference pairs sharing a prompt, answers of different lengths, right-padded (pad id 0, label -100)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for side, lengths in (("chosen", [3, 5, 2][:batch]), ("rejected", [4, 1, 5][:batch])):
        total = prompt + max(lengths)
        ids = torch.zeros(batch, total, dtype=torch.long)
        labels = torch.full((batch, total), -100)
        mask = torch.zeros(batch, total, dtype=torch.long)
        for b, n in enumerate(lengths):
            ids[b, :prompt + n] = torch.randint(1, vocab, (prompt + n,), generator=gen)
            labels[b, prompt:prompt + n] = ids[b, prompt:prompt + n]
            mask[b, :prompt + n] = 1
        out.update({f"{side}_input_ids": ids, f"{side}_labels": labels, f"{side}_attention_mask": mask})
    out["index"] = torch.arange(seed * 10, seed * 10 + batch)
    return out


def _trl_loss(model, batch, ref, *, beta, loss_type, swap=False):
    """TRL's DPO loss code (DPOTrainer._compute_loss) on ``batch``: its fused head computes the policy log-probs
    from the model, the reference ones are given as precomputed. A stand-in carries the attributes the method
    reads; TRL 1.16 has no loss function of its own outside the trainer. Returns the loss and TRL's metrics."""
    from trl.trainer.dpo_trainer import DPOTrainer

    first, second = ("rejected", "chosen") if swap else ("chosen", "rejected")
    length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)

    inputs = {
        "input_ids": torch.cat([pad(batch[f"{s}_input_ids"], 0) for s in (first, second)]),
        "attention_mask": torch.cat([pad(batch[f"{s}_attention_mask"], 0) for s in (first, second)]),
        "completion_mask": torch.cat([pad((batch[f"{s}_labels"] != -100).long(), 0) for s in (first, second)]),
        "ref_chosen_logps": ref[0 if not swap else 1], "ref_rejected_logps": ref[1 if not swap else 0],
    }
    ident = lambda x: x  # noqa: E731 (one process: gathering is the identity)
    trainer = SimpleNamespace(
        model=model, accelerator=SimpleNamespace(device=torch.device("cpu"), gather=ident, gather_for_metrics=ident),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    loss = DPOTrainer._compute_loss(trainer, model, inputs, False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _grads(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def test_loss_gradients_and_metrics_equal_trl_on_a_tiny_llama(tiny_llama):
    from trl.trainer.utils import add_fused_lm_head

    model = tiny_llama
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # only fused_lm_head=True
    model.train()
    model.zero_grad(set_to_none=True)
    batch = _pairs(seed=3)
    gen = torch.Generator().manual_seed(4)
    ref_sum = tuple(-15 - 5 * torch.rand(3, generator=gen) for _ in range(2))
    ref_avg = tuple(-3 - torch.rand(3, generator=gen) for _ in range(2))
    counts = tuple((batch[f"{s}_labels"] != -100).sum(1) for s in ("chosen", "rejected"))

    for beta, eps in ((0.1, 0.0), (0.7, 0.0), (0.7, 0.3)):
        # cDPO from TRL's plain sigmoid loss: (1 - eps) on the pairs as given + eps on the pairs swapped
        trl, trl_metrics = _trl_loss(model, batch, ref_sum, beta=beta, loss_type="sigmoid")
        if eps:
            trl = (1 - eps) * trl + eps * _trl_loss(model, batch, ref_sum, beta=beta, loss_type="sigmoid", swap=True)[0]
        trl.backward()
        want = _grads(model)
        ours, metrics = dpo_loss(*pair_logps(model, batch), *ref_sum, beta=beta, label_smoothing=eps)
        ours.backward()
        got = _grads(model)
        assert ours.item() == pytest.approx(trl.item(), rel=1e-5)
        for name in want:
            assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-7), name
        assert metrics["rewards/accuracy"].item() == trl_metrics["rewards/accuracies"]
        assert metrics["rewards/margin"].item() == pytest.approx(trl_metrics["rewards/margins"], rel=1e-5, abs=1e-6)
        for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
            assert metrics[key].item() == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-6), key

    # TRL's IPO divides each log-ratio by the answer's token count: ours on per-token mean log-probs
    trl, _ = _trl_loss(model, batch, (ref_avg[0] * counts[0], ref_avg[1] * counts[1]), beta=0.5, loss_type="ipo")
    trl.backward()
    want = _grads(model)
    ours, _ = dpo_loss(*pair_logps(model, batch, average=True), *ref_avg, beta=0.5, loss_type="ipo")
    ours.backward()
    got = _grads(model)
    assert ours.item() == pytest.approx(trl.item(), rel=1e-5)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-7), name


def test_reference_logps_once_per_example_without_gradients(tiny_llama):
    model = tiny_llama
    model.train()
    batches = [_pairs(seed=1), _pairs(seed=2, batch=2)]
    grad_modes = []
    hook = model.register_forward_hook(lambda *_: grad_modes.append((torch.is_grad_enabled(), model.training)))
    try:
        ref = reference_logps(model, batches)
    finally:
        hook.remove()
    assert grad_modes == [(False, False), (False, False)]  # one forward per batch, no graph, eval mode
    assert model.training  # restored
    assert sorted(ref) == [10, 11, 12, 20, 21]
    # each side alone, unpadded, through a direct forward: the same numbers
    for batch in batches:
        for b, i in enumerate(batch["index"].tolist()):
            for k, side in enumerate(("chosen", "rejected")):
                n = int(batch[f"{side}_attention_mask"][b].sum())
                ids, labels = batch[f"{side}_input_ids"][b:b + 1, :n], batch[f"{side}_labels"][b:b + 1, :n]
                with torch.no_grad():
                    direct = sequence_logps(model(input_ids=ids).logits, labels).item()
                assert ref[i][k] == pytest.approx(direct, rel=1e-5), (i, side)
    chosen, rejected = reference_for(ref, torch.tensor([21, 10]))
    assert chosen.tolist() == pytest.approx([ref[21][0], ref[10][0]])
    assert rejected.tolist() == pytest.approx([ref[21][1], ref[10][1]])
    with pytest.raises(KeyError, match=r"index=\[99\]"):
        reference_for(ref, torch.tensor([10, 99]))
    with pytest.raises(ValueError, match="index=10: appears twice"):
        reference_logps(model, [batches[0], batches[0]])
