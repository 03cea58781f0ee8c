"""Plan mode: build the model on the meta device and estimate training memory per GPU.

No weights are read or downloaded. The estimate counts, per GPU:
- weights, gradients and optimizer states, by precision and optimizer, divided across
  ranks under FSDP (full sharding) and replicated under DDP; under FSDP, the gathered copies (in
  the compute dtype) of the units in flight (root unit and two decoder layers), whatever the precision;
- activations of one micro-batch: ~34·h bytes per token per layer with 16-bit activations
  (Korthikanti et al. 2022, with memory-efficient attention so no s² term), plus, with
  ``model.attention=eager`` only, two batch·heads·s² score matrices per layer
  (:func:`attention_score_bytes`; SDPA, xformers and flash kernels keep O(s)); a checkpointed layer
  (``model.activation_checkpointing``: every layer with ``full``, the even-numbered ones with
  ``selective``) keeps only its input, plus one layer's activations while it is recomputed;
- the loss (``trainer.cross_entropy``): ``plain`` holds the logits of the whole micro-batch
  (16-bit logits, their fp32 copy for the loss and its gradient); ``chunked``/``fused``/``auto``
  hold those of one chunk of tokens, plus the gradient of the hidden states (counted at fp32, an upper bound) and, when
  sharded, the whole head's fp32 gradient (it is made in the forward; unsharded it is the head's
  gradient the gradients term counts). DPO scores its pairs from the model's whole logits, so its
  plan counts ``plain`` whatever ``trainer.cross_entropy`` says, over twice the micro-batch (each
  pair's chosen and rejected sequences).
Host memory per rank (CPU RAM), from the sharded loader and the streaming export:
- at load: the model is created on the meta device and filled tensor by tensor, so a rank holds
  its own shard (on the host only when training on CPUs; on GPUs the shard goes to the device)
  plus the one tensor being read or drawn, twice for an embedding matrix that grows (old rows and
  the grown matrix);
- at export: global rank 0 holds one safetensors file being written (at most
  ``allam.model.export`` 's shard size) plus one tensor.
It is an estimate for choosing a configuration, not a measurement.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from allam.model.decoder import flops_per_token, parameter_counts
from allam.model.spec import build_meta
from allam.model.speed import checkpointed_layers

GiB = 1024**3


@dataclass
class Plan:
    model: str
    parameters: int
    non_embedding_parameters: int
    vocab_size: int
    seq_len: int
    world_size: int
    tokens_per_step: int
    flops_per_token: float
    precision: str
    optimizer: str
    strategy: str
    memory_gib: dict
    host_gib: dict

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        mem = self.memory_gib
        return [
            f"model        {self.model}: {self.parameters:,} parameters ({self.non_embedding_parameters:,} without the input embedding), vocabulary {self.vocab_size:,}",
            f"tokens/step  {self.tokens_per_step:,} (micro-batch x seq_len {self.seq_len} x accumulation x {self.world_size} ranks)",
            f"FLOPs/token  {self.flops_per_token:.3e} (6N + 12*L*H*Q*T)",
            f"memory/GPU   {mem['total']:.1f} GiB estimated for {self.precision}, {self.optimizer}, strategy={self.strategy}: "
            f"weights {mem['weights']:.1f}, gradients {mem['gradients']:.1f}, optimizer {mem['optimizer']:.1f}, "
            f"activations {mem['activations']:.1f}, logits {mem['logits']:.1f}",
            f"host/rank    {self.host_gib['load']:.1f} GiB at load (largest tensor {self.host_gib['largest_tensor']:.2f} GiB in fp32), "
            f"{self.host_gib['export']:.1f} GiB at export (rank 0)",
        ] + self.hints()

    def hints(self, gpu_gib: float = 80.0) -> list[str]:
        if self.memory_gib["total"] <= gpu_gib:
            return []
        return [
            f"hint         over an {gpu_gib:.0f} GiB GPU: try model.activation_checkpointing=full, a smaller "
            "data.batch_size with trainer.accumulate_grad_batches, trainer=fsdp with more devices/nodes, "
            "trainer.precision=bf16-true or optim.name=adamw8bit"
        ]


def _bytes_per_param(precision: str, optimizer: str) -> tuple[float, float, float]:
    """(weights, gradients, optimizer states) bytes per parameter."""
    true_16 = precision in ("bf16-true", "16-true")
    w = 2.0 if true_16 else 4.0
    g = w
    if optimizer == "adamw8bit":
        o = 2.0  # two 8-bit states (+ small block-wise scales)
    else:
        o = 2.0 * w  # exp_avg and exp_avg_sq in the parameter dtype
    if precision in ("bf16-mixed", "16-mixed"):
        w += 2.0  # 16-bit working copy of the fp32 master weights during forward/backward
    return w, g, o


def loss_bytes(kind: str, chunk: int, tokens: int, vocab: int, hidden: int, act_bytes: int, sharded: bool) -> float:
    """Peak bytes of the head's logits and loss for one micro-batch (see the module docstring)."""
    if kind == "plain":
        return tokens * vocab * (act_bytes + 4 + 4)
    head_grad = vocab * hidden * 4 if sharded else 0
    return min(chunk, tokens) * vocab * (act_bytes + 4 + 4) + tokens * hidden * 4 + head_grad


def attention_score_bytes(attention: str, batch: int, heads: int, seq_len: int, act_bytes: int, layers: int) -> float:
    """Bytes of the attention score matrices kept for the backward pass by `layers` layers: only
    eager attention materializes them (the scores and their softmax, batch x heads x s x s each);
    SDPA (its flash kernel on the CPU too), xformers and flash attention work in blocks and keep
    O(s) per head."""
    if attention != "eager":
        return 0.0
    return 2.0 * batch * heads * seq_len**2 * act_bytes * layers


def host_memory(model, n: int, shard: int, accelerator: str, grows: bool) -> dict:
    """Host GiB per rank at load and (rank 0) at export; see the module docstring."""
    from allam.model.export import GiB as _GiB
    from allam.model.export import MAX_SHARD_BYTES

    largest = max(p.numel() for p in model.parameters()) * 4
    transient = largest * (2 if grows else 1)
    resident = n * 4 / shard if accelerator == "cpu" else 0.0
    return {"load": (resident + transient) / GiB, "export": (MAX_SHARD_BYTES + largest) / _GiB,
            "largest_tensor": largest / GiB}


def make_plan(m, t, *, batch_size: int, optimizer: str, vocab_size: int, world: int, tokens_per_step: int,
              grows: bool = False, loss_kind: str | None = None) -> Plan:
    """The plan for model group `m` on trainer group `t` with `batch_size` sequences per rank;
    `grows`: the embedding matrices grow from a checkpoint's (vocabulary expansion); `loss_kind`:
    how the head's logits are held when not as ``trainer.cross_entropy`` says (DPO: ``plain``)."""
    model = build_meta(m, vocab_size)
    counts = parameter_counts(model)
    optimizer = str(optimizer)
    strategy = str(t.strategy)
    w, g, o = _bytes_per_param(str(t.precision), optimizer)
    n = counts["total"]
    shard = world if "fsdp" in strategy or "deepspeed" in strategy else 1
    weights = n * w / shard
    if shard > 1:
        # FSDP2 gathers the compute-dtype weights one unit at a time (the root unit and two decoder
        # layers in flight) on top of each rank's shard; under mixed precision the shard is the fp32
        # master alone (the 16-bit copy exists only gathered), otherwise the shard is in that dtype
        layer = sum(p.numel() for p in model.model.layers[0].parameters())
        root = n - layer * m.num_layers
        mixed = str(t.precision) in ("bf16-mixed", "16-mixed")
        compute = 2.0 if str(t.precision).startswith(("bf16", "16")) else 4.0
        weights = n * (w - 2.0 if mixed else w) / shard + compute * (root + 2 * layer)
    grads = n * g / shard
    opt = n * o / shard
    act_bytes = 2 if str(t.precision).startswith(("bf16", "16")) else 4
    tokens = batch_size * m.seq_len
    h, L = m.hidden_size, m.num_layers
    per_layer = 34 * h * tokens * act_bytes / 2  # the 34·h coefficient is for 16-bit activations
    recomputed = len(checkpointed_layers(L, m.activation_checkpointing))
    activations = recomputed * h * tokens * act_bytes + (L - recomputed) * per_layer + (per_layer if recomputed else 0)
    activations += attention_score_bytes(str(m.attention), batch_size, m.num_heads, m.seq_len, act_bytes,
                                         (L - recomputed) + (1 if recomputed else 0))
    logits = loss_bytes(loss_kind or str(t.cross_entropy), int(t.cross_entropy_chunk), tokens, vocab_size, h, act_bytes,
                        shard > 1)
    mem = {
        "weights": weights / GiB,
        "gradients": grads / GiB,
        "optimizer": opt / GiB,
        "activations": activations / GiB,
        "logits": logits / GiB,
    }
    mem["total"] = sum(mem.values())
    return Plan(host_gib=host_memory(model, n, shard, str(t.accelerator), grows),
        model=m.name,
        parameters=n,
        non_embedding_parameters=counts["non_embedding"],
        vocab_size=vocab_size,
        seq_len=m.seq_len,
        world_size=world,
        tokens_per_step=tokens_per_step,
        flops_per_token=flops_per_token(model.config, counts["non_embedding"], m.seq_len),
        precision=str(t.precision),
        optimizer=optimizer,
        strategy=strategy,
        memory_gib=mem,
    )
