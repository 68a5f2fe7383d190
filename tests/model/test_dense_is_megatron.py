"""compression="dense" builds exactly megatron-core's own local-spec GPTModel."""
import torch


def _loss_and_grads(model, tokens):
    loss = model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None, labels=tokens)
    loss.mean().backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_dense_equals_megatron_local_spec_gpt(megatron_cpu):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megatron_csl.layers import compressed_layer_spec
    from megatron_csl.model import ModelShape, build_gpt_model, llama_transformer_config

    config = llama_transformer_config(ModelShape(2, 64, 4, 192))
    torch.manual_seed(7)
    ours = build_gpt_model(config, vocab_size=128, seq_length=32, compression="dense")
    torch.manual_seed(7)
    reference = GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=128, max_sequence_length=32, share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
    )
    assert repr(ours) == repr(reference)
    assert repr(compressed_layer_spec("dense")) == repr(get_gpt_layer_local_spec(normalization="RMSNorm"))
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), reference.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    tokens = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))
    loss1, grads1 = _loss_and_grads(ours, tokens)
    loss2, grads2 = _loss_and_grads(reference, tokens)
    assert torch.equal(loss1, loss2)
    assert grads1.keys() == grads2.keys()
    assert all(torch.equal(grads1[k], grads2[k]) for k in grads1)
