"""The plain PyTorch reference for the training-step benchmark: a Llama of the same shape in a
few dozen lines of torch (no megatron), eager and torch.compile'd.

Same architecture and FLOPs as the project's model (megatron_csl.model.build_gpt_model with
llama_transformer_config): token embedding, L pre-norm blocks (RMSNorm, fused QKV without bias,
rotary embeddings on every channel, causal attention through SDPA (flash on a GPU), output
projection, RMSNorm, SwiGLU MLP with fused gate/up), final RMSNorm and an untied output layer;
cross-entropy in float32. Parameters in the benchmark's dtype with torch's AdamW (fused on a
GPU) — what a plain PyTorch training script does, and what the issue's "plain PyTorch" rows were.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.RMSNorm(hidden, eps=eps)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.proj = nn.Linear(hidden, hidden, bias=False)
        self.mlp_norm = nn.RMSNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, 2 * ffn, bias=False)  # gate and up, fused
        self.fc2 = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x, cos, sin):
        b, s, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, s, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)                 # each [b, heads, s, head_dim]
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, d))
        gate, up = self.fc1(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.fc2(F.silu(gate) * up)


def _rotate(x, cos, sin):
    """Rotary embedding (the rotate-half form megatron uses)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class PlainLlama(nn.Module):
    def __init__(self, num_layers: int, hidden: int, heads: int, ffn: int, vocab: int,
                 seq_length: int, eps: float = 1e-5, rotary_base: int = 10000):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, heads, ffn, eps) for _ in range(num_layers))
        self.norm = nn.RMSNorm(hidden, eps=eps)
        self.output = nn.Linear(hidden, vocab, bias=False)
        head_dim = hidden // heads
        inv_freq = 1.0 / rotary_base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(seq_length).float(), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        for p in self.parameters():  # megatron's init_method_std
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
        for block in self.blocks:    # and its scaled init of the output projections
            for layer in (block.proj, block.fc2):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * num_layers))

    def forward(self, tokens, labels):
        x = self.embedding(tokens)
        cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.output(self.norm(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))


MODES = ("eager", "compiled")


def build_plain_step(cfg, device: torch.device, mode: str, compile_backend: str = "inductor"):
    """(step() running one AdamW step of PlainLlama over cfg.micro_batches micro-batches,
    objects to free afterwards). mode: 'eager' or 'compiled' (torch.compile of the model)."""
    if mode not in MODES:
        raise ValueError(f"plain mode must be one of {', '.join(MODES)}, got {mode!r}")
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    torch.manual_seed(0)
    model = PlainLlama(cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads,
                       cfg.ffn_hidden_size, cfg.vocab_size, cfg.seq_length).to(device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1,
                                  fused=device.type == "cuda")
    forward = torch.compile(model, backend=compile_backend) if mode == "compiled" else model
    gen = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (cfg.micro_batch_size, cfg.seq_length + 1),
                           generator=gen).to(device)
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step():
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for _ in range(cfg.micro_batches):
            loss = forward(inputs, labels) / cfg.micro_batches
            loss.backward()
            losses.append(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        return losses

    return step, (model, forward, optimizer)


def plain_parameter_count(cfg) -> int:
    """Parameters of PlainLlama at cfg's shape (for the check that it matches the project's)."""
    d, f, L, V = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_layers, cfg.vocab_size
    return L * (4 * d * d + 3 * d * f + 2 * d) + d + 2 * V * d


__all__ = ["PlainLlama", "build_plain_step", "plain_parameter_count", "MODES"]
