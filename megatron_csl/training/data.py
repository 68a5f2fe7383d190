"""Training and validation data: megatron-core GPTDataset / MockGPTDataset and batch order.

Datasets come from ``BlendedMegatronDatasetBuilder`` over Megatron indexed datasets
(``PREFIX.bin``/``PREFIX.idx``), shuffled by megatron with the run's seed. Batches are a pure
function of the number of samples consumed so far, in the order of Megatron-LM's pretraining
sampler: global sample ``c + m*mbs*dp + r*mbs + i`` goes to data-parallel rank ``r`` in
micro-batch ``m``. A resumed run therefore continues with exactly the batches the uninterrupted
run would have seen. Validation always uses the same first ``eval_iters x global_batch`` samples
of the validation split, so validation losses are comparable across steps and runs.
"""
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy
import torch

from .errors import ConfigError

# Beyond this many tokens per prefix the start-up scan samples evenly spaced windows instead of
# reading every token; every batch is still checked during training (check_batch_tokens).
SCAN_TOKEN_LIMIT = 1 << 26
SCAN_WINDOWS = 64


def check_split(split: str, separate_validation: bool) -> None:
    parts = [p.strip() for p in split.replace("/", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--split {split!r}: expected comma-separated weights "
                          f"train,validation,test such as 99,1,0") from None
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise ConfigError(f"--split {split!r}: expected up to three non-negative weights "
                          f"train,validation,test with a positive sum, such as 99,1,0")
    if values[0] <= 0:
        raise ConfigError(f"--split {split!r}: the training share must be positive")
    if not separate_validation and (len(values) < 2 or values[1] <= 0):
        raise ConfigError(f"--split {split!r}: the validation share is 0, so there is nothing to "
                          f"evaluate on; give it a share (e.g. 99,1,0) or pass --valid-data-path")


def check_prefixes_exist(prefixes: Sequence[str], flag: str) -> None:
    """Every prefix needs PREFIX.bin and PREFIX.idx (what megatron's preprocessing writes)."""
    for prefix in prefixes:
        missing = [ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
        if missing:
            hint = ""
            if os.path.isfile(prefix) and prefix.endswith((".bin", ".idx")):
                hint = f"; pass the prefix without the extension: {prefix[:-4]!r}"
            elif os.path.isdir(os.path.dirname(prefix) or "."):
                near = sorted(f[:-4] for f in os.listdir(os.path.dirname(prefix) or ".")
                              if f.endswith(".idx"))[:5]
                if near:
                    hint = f"; prefixes found there: {', '.join(near)}"
            raise ConfigError(f"{flag}: dataset prefix {prefix!r} not found (missing "
                              f"{' and '.join(prefix + e for e in missing)}){hint}")


def sentencepiece_vocab_size(model_path: str) -> int:
    import sentencepiece

    if not os.path.isfile(model_path):
        raise ConfigError(f"--tokenizer-model {model_path!r}: file not found")
    try:
        processor = sentencepiece.SentencePieceProcessor(model_file=model_path)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError on a bad file
        raise ConfigError(f"--tokenizer-model {model_path!r}: not a SentencePiece model ({e})") \
            from None
    return int(processor.get_piece_size())


def max_token_id(prefix: str, limit: int = SCAN_TOKEN_LIMIT, windows: int = SCAN_WINDOWS) -> int:
    """The largest token id in PREFIX.bin: all of it up to ``limit`` tokens, else ``windows``
    evenly spaced windows of ``limit // windows`` tokens (first and last included)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dtype = IndexedDataset(prefix, multimodal=False, mmap=True).index.dtype
    tokens = numpy.memmap(prefix + ".bin", dtype=dtype, mode="r")
    n = tokens.shape[0]
    if n == 0:
        return -1
    if n <= limit:
        chunk = 1 << 22
        return int(max(tokens[i:i + chunk].max() for i in range(0, n, chunk)))
    width = max(1, limit // windows)
    starts = numpy.linspace(0, n - width, windows).astype(numpy.int64)
    return int(max(tokens[s:s + width].max() for s in starts))


def check_token_range(prefixes: Sequence[str], vocab_size: int, flag: str) -> None:
    for prefix in prefixes:
        top = max_token_id(prefix)
        if top >= vocab_size:
            raise ConfigError(
                f"{flag}: dataset {prefix!r} holds token id {top}, which does not fit the "
                f"vocabulary of {vocab_size} (ids 0..{vocab_size - 1}); the data was tokenized "
                f"with a different tokenizer: pass the matching --tokenizer-model/--vocab-size")


def check_batch_tokens(batch: Dict[str, torch.Tensor]) -> int:
    """Largest token id in a micro-batch (tokens and labels)."""
    return int(max(batch["tokens"].max().item(), batch["labels"].max().item()))


def build_tokenizer(vocab_size: int, tokenizer_model: Optional[str]):
    """megatron-core tokenizer the datasets consult for vocab size and the EOD id."""
    from megatron.core.tokenizers import MegatronTokenizer

    if tokenizer_model is not None:
        return MegatronTokenizer.from_pretrained(tokenizer_path=tokenizer_model,
                                                 metadata_path={"library": "sentencepiece"})
    # NullTokenizer(n) has n + 1 ids with EOD = n, so this gives exactly vocab_size ids.
    return MegatronTokenizer.from_pretrained(metadata_path={"library": "null"},
                                             vocab_size=vocab_size - 1)


def _blend(prefixes, weights):
    return (list(prefixes), None if weights is None else list(weights))


def build_datasets(plan, train_samples: int, valid_samples: int, is_built_on_rank: bool = True):
    """(train, validation) GPTDatasets (MockGPTDatasets with --mock-data) from megatron's builder.

    Needs an initialised torch.distributed process group (megatron builds and caches index files
    on rank 0 first, then the other ranks load them).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import \
        BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    d = plan.data
    common = dict(
        random_seed=plan.config.optimizer.seed,
        sequence_length=plan.seq_length,
        tokenizer=build_tokenizer(plan.vocab_size, d.tokenizer_model),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=bool(plan.config.data.eod_mask_loss),
        # The causal mask comes from the attention layer (attn_mask_type=causal): a per-sample
        # [seq, seq] mask from the loader would cost seq^2 bytes per sample for nothing.
        create_attention_mask=False,
        path_to_cache=d.cache_path,
    )
    if d.mock:
        config = GPTDatasetConfig(**common)
        cls = MockGPTDataset
    elif d.valid_prefixes:
        config = GPTDatasetConfig(blend_per_split=[_blend(d.prefixes, d.weights),
                                                   _blend(d.valid_prefixes, d.valid_weights),
                                                   None], **common)
        cls = GPTDataset
    else:
        config = GPTDatasetConfig(blend=_blend(d.prefixes, d.weights), split=d.split, **common)
        cls = GPTDataset
    builder = BlendedMegatronDatasetBuilder(cls, [train_samples, valid_samples, None],
                                            lambda: is_built_on_rank, config)
    train, valid, _ = builder.build()
    if train is None or valid is None or len(valid) == 0:
        raise ConfigError("the validation split is empty: give it a larger --split share or a "
                          "--valid-data-path")
    return train, valid


def microbatch_indices(first_sample: int, num_microbatches: int, micro_batch_size: int,
                       dp_size: int, dp_rank: int) -> List[List[int]]:
    """Sample indices of this DP rank's micro-batches for one global batch starting at
    ``first_sample`` (Megatron-LM's MegatronPretrainingSampler order)."""
    stride = micro_batch_size * dp_size
    return [[first_sample + m * stride + dp_rank * micro_batch_size + i
             for i in range(micro_batch_size)] for m in range(num_microbatches)]


class BatchSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches for ``num_steps`` global batches from ``first_sample``."""

    def __init__(self, first_sample: int, num_steps: int, global_batch_size: int,
                 micro_batch_size: int, dp_size: int, dp_rank: int):
        self.first_sample = first_sample
        self.num_steps = num_steps
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_size = dp_size
        self.dp_rank = dp_rank
        self.num_microbatches = global_batch_size // (micro_batch_size * dp_size)

    def __len__(self):
        return self.num_steps * self.num_microbatches

    def __iter__(self) -> Iterator[List[int]]:
        for step in range(self.num_steps):
            yield from microbatch_indices(self.first_sample + step * self.global_batch_size,
                                          self.num_microbatches, self.micro_batch_size,
                                          self.dp_size, self.dp_rank)


def make_loader(dataset, sampler: BatchSampler, num_workers: int, pin_memory: bool):
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       pin_memory=pin_memory,
                                       persistent_workers=False)


def samples_needed(plan) -> Tuple[int, int]:
    """(train, validation) sample counts to ask the dataset builder for."""
    return (plan.train_iters * plan.global_batch_size,
            plan.config.logging.eval_iters * plan.global_batch_size)
