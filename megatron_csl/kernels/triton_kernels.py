"""Triton kernels of the compression formats (imported only where a kernel is about to run).

Every kernel reproduces one reference computation of megatron_csl.compression operation for
operation, so that masks and integer codes are bit-identical and values equal:
  - statistics are sums of float32 terms accumulated in float64 (the reference sums with
    dtype=float64), maxima in float32, and the scale chain (/count, sqrt, * multiplier,
    * 2 / (2^b - 1)) is evaluated in float64 in the reference's order before rounding to float32;
  - x / step is the IEEE division (`div_rn`; Triton's plain fp32 `/` may be approximate), and
    the launchers disable FMA contraction (enable_fp_fusion=False) so a * b + c rounds twice as
    in eager PyTorch;
  - `round` is round-half-to-even (torch.round), written with floor so it also runs in
    Triton's CPU interpreter.
Only core Triton builtins and the combine functions below are used (no triton.language.standard
helpers such as tl.sum): with TRITON_INTERPRET=1 set before this module is imported, the kernels
then run on CPU tensors even when triton itself was imported earlier without it (megatron-core
imports triton), which is how the CPU test suite checks them.

A "segment" is a contiguous run of `seg_len` elements that shares one statistic: a weight row,
an activation token, a group of g inputs, an N:M group. A program handles BLOCK_R segments of at
most BLOCK_C elements each, held in registers.
"""
import triton
import triton.language as tl

# Scale statistics (IntQuant.scale)
ABSMAX, RMS, ABSMEAN = 0, 1, 2


@triton.jit
def _add_fallback(a, b):
    return a + b


@triton.jit
def _max_fallback(a, b):
    return tl.maximum(a, b)


# Triton's own combine functions of tl.sum / tl.max: compiled like any combine function on a
# GPU, and recognised by the CPU interpreter, which then reduces with numpy instead of calling
# the combine function element by element (minutes instead of milliseconds).
_add = getattr(tl.standard, "_sum_combine", _add_fallback)
_max = getattr(tl.standard, "_elementwise_max", _max_fallback)


@triton.jit
def _round_half_even(v):
    """torch.round (half to even) for |v| < 2^22, with floor only."""
    f = tl.floor(v)
    frac = v - f  # exact: f <= v < f + 1
    half = f * 0.5
    odd = (half - tl.floor(half)) != 0.0
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def _round_to_bf16(v):
    """float32 -> nearest bfloat16 (ties to even), still as float32: the following cast is then
    exact. Done on the bits because Triton's CPU interpreter truncates fp32 -> bf16 casts."""
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _segment_tile(pid, n_seg, seg_len, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    inside = (rows < n_seg)[:, None] & (cols < seg_len)[None, :]
    offs = rows.to(tl.int64)[:, None] * seg_len + cols[None, :]
    return rows, offs, inside


@triton.jit
def _grid_step(xs, keep, inside, seg_len, consts_ptr, SCALE: tl.constexpr, HAS_KEEP: tl.constexpr,
               ZERO_ABSMAX: tl.constexpr, HALF_RANGE: tl.constexpr, BLOCK_R: tl.constexpr):
    """(step fp32 [BLOCK_R], rms fp64 [BLOCK_R]) of IntQuant.step over the segment's survivors.

    consts (float64): [0] rms multiplier (alpha*, beta* or tau*), [1] 2^(b-1), [2] 2^b - 1,
    [3] sqrt(pi / 2).
    """
    if HAS_KEEP:
        count = tl.reduce(keep.to(tl.float64), 1, _add)
    else:
        count = tl.full([BLOCK_R], 0.0, tl.float64) + seg_len
    count = tl.maximum(count, 1.0)
    sum_sq = tl.reduce((xs * xs).to(tl.float64), 1, _add)
    rms = tl.sqrt(sum_sq / count)
    if SCALE == 0:  # absmax
        size = tl.reduce(tl.abs(xs), 1, _max).to(tl.float64)
        if ZERO_ABSMAX:
            size = size / tl.load(consts_ptr + 1)
    elif SCALE == 1:  # rms
        size = rms * tl.load(consts_ptr)
    else:  # absmean: the rms rule with RMS = sqrt(pi/2) * mean|x|
        mean_abs = tl.reduce(tl.abs(xs).to(tl.float64), 1, _add) / count
        size = (mean_abs * tl.load(consts_ptr + 3)) * tl.load(consts_ptr)
    if HALF_RANGE:  # sym grid: half-range -> step
        size = size * 2.0 / tl.load(consts_ptr + 2)
    return size.to(tl.float32), rms


@triton.jit
def int_fake_quant_kernel(
    x_ptr, keep_ptr, step_in_ptr, rms_in_ptr, out_ptr, gmask_ptr, step_out_ptr, rms_out_ptr,
    consts_ptr, consts32_ptr, n_seg, seg_len, step_in_stride,
    QMIN: tl.constexpr, QMAX: tl.constexpr, SCALE: tl.constexpr, FLOOR_GRID: tl.constexpr,
    ZERO_ABSMAX: tl.constexpr, HALF_RANGE: tl.constexpr, HAS_KEEP: tl.constexpr,
    STEP_GIVEN: tl.constexpr, TRUST: tl.constexpr, ONE_BIT: tl.constexpr,
    STORE_STATS: tl.constexpr, OUT_BF16: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """IntQuant.quantize (+ the survivors' statistics and `* keep` of fake_quantize) per segment.

    out = value (* keep), in out's dtype; gmask (TRUST) = trust mask | ~keep as uint8.
    STEP_GIVEN: the step (and for 1-bit trust the rms) come from step_in/rms_in (stride 0 for a
    whole-tensor statistic) instead of the segment's own statistics.
    consts32 (float32): [0] 1 + trust tolerance, [1] the 1-bit trust clip.
    """
    pid = tl.program_id(0)
    rows, offs, inside = _segment_tile(pid, n_seg, seg_len, BLOCK_R, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    keep = inside
    xs = x
    if HAS_KEEP:
        keep = (tl.load(keep_ptr + offs, mask=inside, other=0) != 0) & inside
        xs = tl.where(keep, x, 0.0)
    if STEP_GIVEN:
        srow = rows.to(tl.int64) * step_in_stride
        step = tl.load(step_in_ptr + srow, mask=rows < n_seg, other=0.0)
        rms = tl.load(rms_in_ptr + srow, mask=rows < n_seg, other=0.0)
    else:
        step, rms = _grid_step(xs, keep, inside, seg_len, consts_ptr, SCALE, HAS_KEEP,
                               ZERO_ABSMAX, HALF_RANGE, BLOCK_R)
    positive = step > 0.0
    st = tl.where(positive, step, 1.0)[:, None]
    v = tl.math.div_rn(x, st)
    if FLOOR_GRID:  # sym: floor, clip, level = (code + 1/2) step
        code = tl.minimum(tl.maximum(tl.floor(v), QMIN), QMAX)
        value = (code + 0.5) * st
    else:  # zero / ternary: round half to even, clip (clip then round = round then clip)
        code = _round_half_even(tl.minimum(tl.maximum(v, QMIN), QMAX))
        value = code * st
    value = tl.where(positive[:, None], value, 0.0)
    if TRUST:
        if ONE_BIT:
            clip = tl.load(consts32_ptr + 1)
            grad = tl.abs(x) <= clip * rms.to(tl.float32)[:, None]
        else:
            half_step = (step * 0.5) * tl.load(consts32_ptr)
            grad = (tl.abs(value - x) <= half_step[:, None]) | (~positive)[:, None]
        if HAS_KEEP:
            grad = grad | ~keep
        tl.store(gmask_ptr + offs, grad.to(tl.uint8), mask=inside)
    if HAS_KEEP:
        value = tl.where(keep, value, 0.0)
    if OUT_BF16:
        value = _round_to_bf16(value)
    tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=inside)
    if STORE_STATS:
        tl.store(step_out_ptr + rows, step, mask=rows < n_seg)
        tl.store(rms_out_ptr + rows, rms, mask=rows < n_seg)


@triton.jit
def segment_sums_kernel(x_ptr, keep_ptr, sum_sq_ptr, sum_abs_ptr, amax_ptr, count_ptr,
                        n_seg, seg_len, HAS_KEEP: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """Per-segment partial statistics of the survivors (for a whole-tensor statistic):
    sum x^2 and sum |x| (float32 terms, float64 sums), max |x| (float32), count (float64)."""
    pid = tl.program_id(0)
    rows, offs, inside = _segment_tile(pid, n_seg, seg_len, BLOCK_R, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    if HAS_KEEP:
        keep = (tl.load(keep_ptr + offs, mask=inside, other=0) != 0) & inside
        x = tl.where(keep, x, 0.0)
        count = tl.reduce(keep.to(tl.float64), 1, _add)
    else:
        count = tl.full([BLOCK_R], 0.0, tl.float64) + seg_len
    ok = rows < n_seg
    tl.store(sum_sq_ptr + rows, tl.reduce((x * x).to(tl.float64), 1, _add), mask=ok)
    tl.store(sum_abs_ptr + rows, tl.reduce(tl.abs(x).to(tl.float64), 1, _add), mask=ok)
    tl.store(amax_ptr + rows, tl.reduce(tl.abs(x), 1, _max), mask=ok)
    tl.store(count_ptr + rows, count, mask=ok)


@triton.jit
def segment_topk_kernel(x_ptr, keep_ptr, out_ptr, n_seg, seg_len, k,
                        STORE_VALUE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Keep the k largest |x| of every segment (per-row top-k, N:M); ties: lowest index first.

    The k-th largest magnitude T is found bit by bit on the float bits (non-negative floats order
    like their int32 patterns): T = max{t : #(bits >= t) >= k}, 31 counting passes in registers,
    no sort. Then every |x| > T is kept, and of the |x| == T the first k - #(> T) in index order.
    """
    pid = tl.program_id(0)
    rows, offs, inside = _segment_tile(pid, n_seg, seg_len, BLOCK_R, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    bits = tl.where(inside, tl.abs(x).to(tl.int32, bitcast=True), -1)
    threshold = tl.full([BLOCK_R], 0, tl.int32)
    for i in range(31):
        candidate = threshold | (1 << (30 - i))
        count = tl.reduce((bits >= candidate[:, None]).to(tl.int32), 1, _add)
        threshold = tl.where(count >= k, candidate, threshold)
    above = bits > threshold[:, None]
    tied = bits == threshold[:, None]
    need = k - tl.reduce(above.to(tl.int32), 1, _add)
    rank = tl.associative_scan(tied.to(tl.int32), 1, _add)  # 1-based among the ties
    keep = above | (tied & (rank <= need[:, None]))
    tl.store(keep_ptr + offs, keep.to(tl.uint8), mask=inside)
    if STORE_VALUE:
        tl.store(out_ptr + offs, tl.where(keep, x, 0.0).to(out_ptr.dtype.element_ty), mask=inside)


# ---- per-tensor top-k: radix select over the whole tensor, 8 bits per pass ----------------------

@triton.jit
def radix_histogram_kernel(x_ptr, n, prefix_ptr, hist_ptr, SHIFT: tl.constexpr,
                           BLOCK: tl.constexpr):
    """hist[d] += #{i : |x_i| bits agree with *prefix above SHIFT + 8 and have digit d at SHIFT}.

    Elements outside the prefix's bucket go to bins 256..511, which the caller ignores (a
    masked histogram without relying on tl.histogram's mask argument)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    bits = tl.abs(x).to(tl.int32, bitcast=True)
    digit = (bits >> SHIFT) & 255
    if SHIFT < 24:
        prefix = tl.load(prefix_ptr)
        inside = inside & ((bits >> (SHIFT + 8)) == (prefix >> (SHIFT + 8)))
    hist = tl.histogram(tl.where(inside, digit, 256 + digit), 512)
    tl.atomic_add(hist_ptr + tl.arange(0, 512), hist)


@triton.jit
def radix_select_kernel(hist_ptr, prefix_ptr, remaining_ptr, SHIFT: tl.constexpr):
    """One program: pick the digit at SHIFT that holds the remaining-th largest element of the
    bucket, narrow *prefix to it, subtract the elements above it from *remaining, and clear the
    histogram for the next pass (all on the device: no host sync, one launch)."""
    digits = tl.arange(0, 256)
    counts = tl.load(hist_ptr + digits).to(tl.int64)
    at_least = tl.associative_scan(counts, 0, _add, reverse=True)  # #(digit >= d)
    remaining = tl.load(remaining_ptr)
    digit = tl.reduce((at_least >= remaining).to(tl.int32), 0, _add) - 1
    above = tl.reduce(tl.where(digits == digit, at_least - counts, 0), 0, _add)
    tl.store(remaining_ptr, remaining - above)
    tl.store(prefix_ptr, tl.load(prefix_ptr) | (digit << SHIFT))
    tl.store(hist_ptr + tl.arange(0, 512), tl.full([512], 0, tl.int32))


@triton.jit
def tie_count_kernel(x_ptr, n, threshold_ptr, counts_ptr, BLOCK: tl.constexpr):
    """counts[block] = #{i in block : |x_i| bits == threshold}."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    bits = tl.abs(x).to(tl.int32, bitcast=True)
    tied = (bits == tl.load(threshold_ptr)) & inside
    tl.store(counts_ptr + pid, tl.reduce(tied.to(tl.int64), 0, _add))


@triton.jit
def threshold_mask_kernel(x_ptr, n, threshold_ptr, need_ptr, tie_offsets_ptr, keep_ptr, out_ptr,
                          STORE_VALUE: tl.constexpr, BLOCK: tl.constexpr):
    """keep = |x| > T, plus the ties |x| == T whose global rank (index order) is <= need."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    bits = tl.abs(x).to(tl.int32, bitcast=True)
    threshold = tl.load(threshold_ptr)
    tied = (bits == threshold) & inside
    rank = tl.associative_scan(tied.to(tl.int64), 0, _add) + tl.load(tie_offsets_ptr + pid)
    keep = ((bits > threshold) & inside) | (tied & (rank <= tl.load(need_ptr)))
    tl.store(keep_ptr + offs, keep.to(tl.uint8), mask=inside)
    if STORE_VALUE:
        tl.store(out_ptr + offs, tl.where(keep, x, 0.0).to(out_ptr.dtype.element_ty), mask=inside)
