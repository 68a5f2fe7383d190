"""One test per CPU patch of megatron-core 0.16.1 (a version bump shows which one broke).

Each test runs the megatron code path the patch exists for; without the patch it raises
"Torch not compiled with CUDA enabled" (or the TypeError/assert noted in the patch's `why`).
"""
import pytest
import torch

from megatron_csl.compat import PATCHES, TORCH_PROXY_MODULES, apply_cpu_compat, cpu_compat_applied

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU compat is a no-op with CUDA")


def _patch(name):
    return next(p for p in PATCHES if p.name == name)


def test_every_patch_applies_and_is_idempotent(megatron_cpu):
    names = apply_cpu_compat()
    assert names == [p.name for p in PATCHES] and cpu_compat_applied()
    assert len(names) == len(TORCH_PROXY_MODULES) + 8   # rng, 4 tensor.cuda, 2 type, init_data
    from megatron.core.tensor_parallel import data

    wrapped = data.broadcast_data
    assert apply_cpu_compat() == names
    assert data.broadcast_data is wrapped                     # not wrapped twice
    assert not hasattr(wrapped.__wrapped__, "__wrapped__")


def test_no_op_when_cuda_is_available(monkeypatch):
    from megatron_csl.compat import cpu

    monkeypatch.setattr(cpu, "cuda_is_absent", lambda: False)
    assert apply_cpu_compat() == []


def test_tensor_method_patches_do_not_leak(megatron_cpu):
    from megatron.core.tensor_parallel import broadcast_data

    out = broadcast_data(["x"], {"x": torch.arange(6).view(2, 3)}, torch.int64)
    assert torch.equal(out["x"], torch.arange(6).view(2, 3))
    assert torch.zeros(1).type() == "torch.FloatTensor"
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1).cuda()


def test_rng_tracker_forks_cpu_generator(megatron_cpu):
    from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    assert _patch("rng-tracker").is_applied()
    model_parallel_cuda_manual_seed(123)
    tracker = get_cuda_rng_tracker()
    before = torch.get_rng_state()
    with tracker.fork():
        a = torch.rand(3)
    with tracker.fork():
        b = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)          # default stream untouched
    reference = torch.Generator().manual_seed(123 + 2718)       # megatron's TP-rank-0 seed
    assert torch.equal(a, torch.rand(3, generator=reference))
    assert torch.equal(b, torch.rand(3, generator=reference))   # the forked stream continues
    torch.manual_seed(1234)


def test_model_forward_backward_rope_and_causal_mask(tiny_gpt):
    config, model = tiny_gpt
    tokens = torch.randint(0, 64, (2, 16))
    position_ids = torch.arange(16).expand(2, 16)
    loss = model(tokens, position_ids, None, labels=tokens)   # attention_mask None: default mask
    loss.mean().backward()
    assert loss.shape == (2, 16) and torch.isfinite(loss).all()
    assert all(p.grad is not None for p in model.parameters())


def test_rotary_embedding_on_cpu(megatron_cpu):
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    rope = RotaryEmbedding(kv_channels=16, rotary_percent=1.0, use_cpu_initialization=False)
    emb = rope(8)
    assert emb.device.type == "cpu" and emb.shape == (8, 1, 1, 16)


def test_default_causal_mask_on_cpu(megatron_cpu):
    from megatron.core.transformer.utils import get_default_causal_mask

    mask = get_default_causal_mask(4)
    assert mask.device.type == "cpu" and mask.dtype == torch.bool
    assert torch.equal(mask, torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1))


def _train_steps(config, model, use_distributed_optimizer, steps=2):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    ddp = DistributedDataParallel(
        config,
        DistributedDataParallelConfig(use_distributed_optimizer=use_distributed_optimizer),
        model,
    )
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-2, clip_grad=0.5,
                        use_distributed_optimizer=use_distributed_optimizer),
        [ddp],
    )
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))

    def forward_step(data_iterator, module):
        out = module(tokens, torch.arange(16).expand(2, 16), None, labels=tokens)
        return out, lambda o: (o.mean(), {"lm loss": o.mean().detach()})

    history = []
    for _ in range(steps):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        losses = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([None] * 4), model=[ddp],
            num_microbatches=2, seq_length=16, micro_batch_size=2, forward_only=False,
        )
        ok, grad_norm, _ = optimizer.step()
        assert ok
        history.append((losses[0]["lm loss"].item(), grad_norm))
    return history


@pytest.mark.parametrize("distributed", [False, True], ids=["adam", "distributed-adam"])
def test_schedule_ddp_optimizer_clip_step(tiny_gpt, distributed):
    """schedules (total_num_tokens), param_and_grad_buffer, optimizer (found_inf, scale),
    clip_grads (norm buffers, FloatTensor assert), distrib_optimizer (type strings)."""
    config, model = tiny_gpt
    history = _train_steps(config, model, distributed)
    (loss0, norm0), (loss1, _) = history
    assert norm0 > 0.5            # clipped to 0.5: the step ran through clip_grad_by_total_norm_fp32
    assert loss1 < loss0


def test_clip_grads_fp32(megatron_cpu):
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32, get_grad_norm_fp32

    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    norm = get_grad_norm_fp32([p.grad for p in params])
    assert norm == pytest.approx(5.0)
    clip_grad_by_total_norm_fp32(params, max_norm=1.0, total_norm=norm)
    assert params[0].grad[0].item() == pytest.approx(0.6, rel=1e-5)
    assert params[1].grad[1].item() == pytest.approx(0.8, rel=1e-5)


def test_local_l2_norm_and_param_hashes(tiny_gpt):
    from megatron.core.utils import check_param_hashes_across_dp_replicas, local_multi_tensor_l2_norm

    norm, _ = local_multi_tensor_l2_norm(0, None, [[torch.tensor([3.0]), torch.tensor([4.0])]], False)
    assert norm.item() == pytest.approx(5.0)
    assert check_param_hashes_across_dp_replicas([tiny_gpt[1]], cross_check=True)


def test_dist_checkpoint_roundtrip(tiny_gpt, tmp_path):
    """state_dict_saver (failure flags on current_device) and filesystem writer."""
    from megatron.core import dist_checkpointing

    config, model = tiny_gpt
    dist_checkpointing.save(model.sharded_state_dict(), str(tmp_path))
    expected = {k: v.clone() for k, v in model.state_dict().items() if v is not None}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    loaded = dist_checkpointing.load(model.sharded_state_dict(), str(tmp_path))
    model.load_state_dict(loaded, strict=False)
    for k, v in model.state_dict().items():
        if k in expected and isinstance(v, torch.Tensor):
            assert torch.equal(v, expected[k]), k


def test_async_writer_preload_synchronize(megatron_cpu):
    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

    tensor = torch.arange(4.0)
    buckets = FileSystemWriterAsync.preload_tensors([("f", "k", ([], [("item", tensor)]))],
                                                    non_blocking=True)
    assert torch.equal(buckets[0][2][1][0][1], tensor)


def test_sharded_tensor_init_data_cuda_means_cpu(megatron_cpu):
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    sh = ShardedTensor.from_rank_offsets("w", torch.zeros(4, 2))
    sh.data = None
    sh.init_data("cuda")
    assert sh.data.device.type == "cpu" and sh.data.shape == (4, 2)


def test_two_rank_paths(tmp_path):
    """p2p_communication (PP=2), broadcast_data (TP=2), fully parallel checkpoint load with the
    broadcast and gather_rounds exchanges (DP=2), on two spawned gloo ranks."""
    from megatron_csl.compat import run_ranks

    from .two_rank_worker import compat_paths

    results = run_ranks(compat_paths, 2, str(tmp_path), timeout_s=150)
    expected = torch.arange(6.0).view(3, 1, 2)
    assert torch.equal(results[1]["p2p_variable=False"], expected)
    assert torch.equal(results[1]["p2p_variable=True"], expected)
    for r in (0, 1):
        assert torch.equal(results[r]["broadcast"], torch.zeros(2, 3, dtype=torch.int64))
        assert results[r]["load_broadcast"] and results[r]["load_gather_rounds"]


def test_run_ranks_reports_a_failing_rank_without_waiting_for_its_peers():
    import time

    from megatron_csl.compat import run_ranks

    from .two_rank_worker import fail_on_rank_one

    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1:(.|\n)*ValueError: rank one failed on purpose"):
        run_ranks(fail_on_rank_one, 2, timeout_s=50)
    assert time.monotonic() - start < 40       # rank 0 (sleeping 60 s) was killed, not awaited
