"""Reading the two-rank layout workers' results (exactness_worker, learned_worker)."""


def merge_stages(per_rank, layout, dtype, fmt):
    """Loss from the last stage; full gradients from whichever rank holds each parameter."""
    key = (layout, dtype, fmt)
    loss = next(r[key]["loss"] for r in per_rank[::-1] if r[key]["loss"] is not None)
    grads = {}
    for r in per_rank:
        grads.update(r[key]["grads"])
    return loss, grads


def relative_error(a, b):
    return (a - b).norm().item() / max(b.norm().item(), 1e-30)
