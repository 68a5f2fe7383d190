"""Run on each of two spawned gloo ranks by test_sharded.py (module level, so it pickles)."""
import json
import os

import torch
import torch.distributed as dist

from megatron_csl.compression import LOCAL, ShardContext, parse_spec

WEIGHT_SPECS = [
    "w4", "w4:tensor", "w2:zero,absmax", "w3:absmean,trust", "w4:g64", "w1:trust",
    "w1.58:absmax,tensor", "w4:had,trust", "s50", "s50:tensor", "s50:rbbm10",
    "s75:tensor,rbbm20", "s50:nm2/4,rbbm10", "s50+w4:trust", "s50:tensor+w2:zero,absmax,tensor",
    "fp4", "fp8:tensor", "fp4:nv", "fp8:mx", "s50+fp4:nv",
    # issue 17: vector quantization, Hadamard + sparsity, float trust, outliers, noise
    "vq2:2", "vq4:1,ste", "vq2:3,had64", "s50:nm4/8+w4:had,trust", "s50+w4:had", "s50:tensor+fp4:had",
    "fp4:trust", "fp4:mx,trust", "w4:out1", "w3:tensor,out2,trust", "noise:w4", "noise:fp4:tensor",
]
ACTIVATION_SPECS = ["a4", "a2:zero,absmax,trust", "a4:had,trust", "afp4:nv", "afp8", "afp4:mx",
                    "a1.58:absmean", "afp4:trust", "as50", "as50+a4:had,trust", "as25+afp4:trust"]
NOISE_SEED = 1234  # noise formats draw from the default generator: the same state for every call


def _compare(name, got, want, failures):
    if not torch.equal(got, want):
        diff = (got - want).abs()
        failures.append(f"{name}: {int((diff > 0).sum())} of {diff.numel()} entries differ "
                        f"(max {float(diff.max()):.3g})")


def _value_and_grad(fn, x, upstream):
    torch.manual_seed(NOISE_SEED)
    x = x.clone().requires_grad_(True)
    out = fn(x)
    (out * upstream).sum().backward()
    return out.detach(), x.grad


def check_formats(rank: int, world_size: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    group = dist.group.WORLD
    gen = torch.Generator().manual_seed(0)  # identical full tensors on every rank
    weights = {
        "gauss": torch.randn(8, 256, generator=gen),
        "ties": torch.randint(-4, 5, (8, 256), generator=gen).float() / 2,  # many equal magnitudes
    }
    w_up = torch.randn(8, 256, generator=gen)
    x = torch.randn(3, 5, 256, generator=gen)
    x_up = torch.randn(3, 5, 256, generator=gen)
    failures, checked = [], 0

    def local(t, dim):
        size = t.shape[dim] // world_size
        return t.narrow(dim, rank * size, size)

    for text in WEIGHT_SPECS:
        spec = parse_spec(text)
        for data_name, w in weights.items():
            ref, ref_grad = _value_and_grad(lambda t: spec.compress_weight(t, LOCAL), w, w_up)
            for split in (0, 1):
                shard = ShardContext(group=group, weight_split_dim=split, input_split=split == 1)
                out, grad = _value_and_grad(lambda t: spec.compress_weight(t, shard),
                                            local(w, split), local(w_up, split))
                name = f"{text} weight split_dim={split} {data_name}"
                _compare(name + " value", out, local(ref, split), failures)
                _compare(name + " grad", grad, local(ref_grad, split), failures)
                checked += 1

    for text in ACTIVATION_SPECS:
        spec = parse_spec(text)
        ref, ref_grad = _value_and_grad(lambda t: spec.quantize_activation(t, LOCAL), x, x_up)
        # RowParallelLinear: the activation's last dim is split.
        shard = ShardContext(group=group, weight_split_dim=1, input_split=True)
        out, grad = _value_and_grad(lambda t: spec.quantize_activation(t, shard),
                                    local(x, -1), local(x_up, -1))
        _compare(f"{text} activation input_split value", out, local(ref, -1), failures)
        _compare(f"{text} activation input_split grad", grad, local(ref_grad, -1), failures)
        # ColumnParallelLinear: every rank holds the whole activation.
        shard = ShardContext(group=group, weight_split_dim=0, input_split=False)
        out, grad = _value_and_grad(lambda t: spec.quantize_activation(t, shard), x, x_up)
        _compare(f"{text} activation replicated value", out, ref, failures)
        _compare(f"{text} activation replicated grad", grad, ref_grad, failures)
        checked += 2

    path = os.path.join(out_dir, f"rank{rank}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"failures": failures, "checked": checked}, f)
    os.replace(path + ".tmp", path)
    dist.barrier()
    dist.destroy_process_group()
