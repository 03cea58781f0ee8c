"""Plan mode: build the model on the meta device and estimate training memory per GPU.

No weights are read or downloaded. The estimate counts, per GPU:
- weights, gradients and optimizer states, by precision and optimizer, divided across
  ranks under FSDP (full sharding) and replicated under DDP;
- activations of one micro-batch: ~34·h bytes per token per layer with 16-bit activations
  (Korthikanti et al. 2022, with memory-efficient attention so no s² term), or only the
  layer inputs plus one layer's activations with gradient checkpointing; plus the logits
  (16-bit logits, their fp32 copy for the loss and its gradient).
It is an estimate for choosing a configuration, not a measurement.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from allam.model.build import build_meta, flops_per_token, parameter_counts

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
        ] + self.hints()

    def hints(self, gpu_gib: float = 80.0) -> list[str]:
        if self.memory_gib["total"] <= gpu_gib:
            return []
        return [
            f"hint         over an {gpu_gib:.0f} GiB GPU: try model.gradient_checkpointing=true, a smaller "
            "data.batch_size with trainer.accumulate_grad_batches, trainer=fsdp with more devices/nodes, "
            "trainer.precision=bf16-true or optim=adamw8bit"
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


def make_plan(cfg, vocab_size: int, world: int, tokens_per_step: int) -> Plan:
    m, t, d = cfg.model, cfg.trainer, cfg.data
    model = build_meta(m, vocab_size)
    counts = parameter_counts(model)
    optimizer = getattr(cfg.optim.name, "value", cfg.optim.name)
    strategy = str(t.strategy)
    w, g, o = _bytes_per_param(str(t.precision), optimizer)
    n = counts["total"]
    shard = world if "fsdp" in strategy or "deepspeed" in strategy else 1
    weights = n * w / shard
    grads = n * g / shard
    opt = n * o / shard
    act_bytes = 2 if str(t.precision).startswith(("bf16", "16")) else 4
    tokens = d.batch_size * m.seq_len
    h, L = m.hidden_size, m.num_layers
    per_layer = 34 * h * tokens * act_bytes / 2  # the 34·h coefficient is for 16-bit activations
    if m.gradient_checkpointing:
        activations = L * h * tokens * act_bytes + per_layer
    else:
        activations = L * per_layer
    logits = tokens * vocab_size * (act_bytes + 4 + 4)
    mem = {
        "weights": weights / GiB,
        "gradients": grads / GiB,
        "optimizer": opt / GiB,
        "activations": activations / GiB,
        "logits": logits / GiB,
    }
    mem["total"] = sum(mem.values())
    return Plan(
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
