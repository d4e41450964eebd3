"""Top-1 / top-5 accuracy over a labelled image loader."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def evaluate(model, loader, device=None, progress: bool = True, desc: str = "eval",
             per_image: bool = False) -> dict:
    """Returns ``{"top1": %, "top5": %, "correct1": int, "correct5": int, "num": int}``.

    With ``per_image``, also ``"hits"``: a bool tensor ``(num,)`` on the CPU, True where the
    top-1 prediction was right, in loader order (for paired comparisons of two models on the
    same images)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    c1 = c5 = n = 0
    hits = []
    total = len(loader.dataset) if hasattr(loader, "dataset") else None
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
    for images, labels in loader:
        logits = model(images.to(device, non_blocking=True))
        if isinstance(logits, (tuple, list)):  # distilled models in train mode
            logits = (logits[0] + logits[1]) / 2
        labels = labels.to(device)
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hit = top5[:, 0] == labels
        if per_image:
            hits.append(hit.cpu())
        c1 += int(hit.sum())
        c5 += int((top5 == labels[:, None]).any(-1).sum())
        n += labels.shape[0]
        bar.update(labels.shape[0])
        bar.set_postfix(top1=f"{100.0 * c1 / n:.1f}")
    bar.close()
    if n == 0:
        raise ValueError("the evaluation loader yielded no images")
    out = {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "correct1": c1, "correct5": c5, "num": n}
    if per_image:
        out["hits"] = torch.cat(hits)
    return out
