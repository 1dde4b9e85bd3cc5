"""Tokenising ``(prompt, target)`` examples and the recall probe (log-likelihood of facts on held-out phrasings).

torch is imported inside functions only.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..items import MemoryItem
from .dataset import PROBE_TEMPLATE_SET, Example, control_examples, probe_examples
from .schema import ItemRecall, RecallReport

__all__ = ["encode_example", "score_examples", "recall_probe", "complete_report"]

_PROBE_BATCH = 8


def encode_example(
    tokenizer: Any, prompt: str, target: str, *, max_length: int = 256, add_eos: bool = False
) -> tuple[list[int], list[bool]]:
    """Token ids of ``prompt + target`` and a mask of the tokens that belong to ``target``.

    The text is tokenised in one piece (so token boundaries are the ones the model sees in real use); with a
    fast tokenizer the target tokens are found from character offsets, otherwise by tokenising the prompt alone.
    A BOS token is prepended when the tokenizer defines one and did not add it. With ``add_eos`` an EOS token
    is appended to the target. Sequences are cut at ``max_length`` tokens.
    """
    text = prompt + target
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        cut = len(prompt)
        mask = [
            (end > cut and end > start and tid not in special) for tid, (start, end) in zip(ids, enc["offset_mapping"])
        ]
    else:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        n_prompt = len(tokenizer(prompt, add_special_tokens=True)["input_ids"]) if prompt else 0
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        mask = [i >= n_prompt and tid not in special for i, tid in enumerate(ids)]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
        mask.insert(0, False)
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None:
        # Drop an EOS the tokenizer may already have appended, then add ours as part of the target.
        if ids and ids[-1] == eos:
            ids.pop()
            mask.pop()
        ids.append(eos)
        mask.append(True)
    return ids[:max_length], mask[:max_length]


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        val = getattr(tokenizer, attr, None)
        if val is not None:
            return int(val)
    return 0


def _model_device(model: Any) -> Any:
    try:
        return next(p for p in model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        import torch

        return torch.device("cpu")


def score_examples(
    model: Any, tokenizer: Any, examples: Sequence[Example], *, max_length: int = 256
) -> list[tuple[float, float, int]]:
    """For each example: (mean per-token log-likelihood of the target, greedy token accuracy, target tokens).

    Runs under ``torch.no_grad`` with the model in eval mode (its previous mode is restored). An example whose
    target has no scoreable token gets ``(0.0, 0.0, 0)``.
    """
    import torch

    device = _model_device(model)
    pad = _pad_id(tokenizer)
    encoded = [encode_example(tokenizer, ex.prompt, ex.target, max_length=max_length) for ex in examples]
    results: list[tuple[float, float, int]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), _PROBE_BATCH):
                chunk = encoded[start : start + _PROBE_BATCH]
                width = max(len(ids) for ids, _ in chunk)
                ids_t = torch.full((len(chunk), width), pad, dtype=torch.long)
                att = torch.zeros((len(chunk), width), dtype=torch.long)
                tgt = torch.zeros((len(chunk), width), dtype=torch.bool)
                for row, (ids, mask) in enumerate(chunk):
                    ids_t[row, : len(ids)] = torch.tensor(ids)
                    att[row, : len(ids)] = 1
                    tgt[row, : len(mask)] = torch.tensor(mask)
                logits = model(input_ids=ids_t.to(device), attention_mask=att.to(device)).logits
                # position t predicts token t+1
                sel = tgt[:, 1:].to(device)
                rows = logits[:, :-1][sel].float()
                wanted = ids_t[:, 1:].to(device)[sel]
                logp = torch.log_softmax(rows, dim=-1).gather(-1, wanted[:, None])[:, 0]
                hit = (rows.argmax(-1) == wanted).float()
                counts = sel.sum(dim=1).tolist()
                offset = 0
                for n in counts:
                    if n == 0:
                        results.append((0.0, 0.0, 0))
                    else:
                        results.append(
                            (
                                float(logp[offset : offset + n].mean()),
                                float(hit[offset : offset + n].mean()),
                                int(n),
                            )
                        )
                    offset += n
    finally:
        model.train(was_training)
    return results


def recall_probe(
    model: Any, tokenizer: Any, items: Sequence[MemoryItem], *, per_memory: int = 3, max_length: int = 256
) -> RecallReport:
    """Score ``items`` on held-out phrasings with ``model`` as it is now. Returns a report with ``before`` filled.

    Use :func:`complete_report` to add the ``after`` side measured with another model state.
    """
    items_scores, control = _measure(model, tokenizer, items, per_memory, max_length)
    recalls = [
        ItemRecall(item_id=item.id, version=item.version, probes=n, logprob_before=lp, accuracy_before=acc)
        for item, (lp, acc, n) in zip(items, items_scores)
    ]
    return RecallReport(
        template_set=PROBE_TEMPLATE_SET,
        probes_per_memory=per_memory,
        items=recalls,
        mean_logprob_before=_mean([r.logprob_before for r in recalls]),
        mean_accuracy_before=_mean([r.accuracy_before for r in recalls]),
        control_logprob_before=control,
    )


def complete_report(
    report: RecallReport, model: Any, tokenizer: Any, items: Sequence[MemoryItem], *, max_length: int = 256
) -> RecallReport:
    """Fill the ``after`` side of ``report`` by probing ``model`` (same items, same phrasings)."""
    items_scores, control = _measure(model, tokenizer, items, report.probes_per_memory, max_length)
    by_id = {item.id: score for item, score in zip(items, items_scores)}
    recalls = []
    for r in report.items:
        lp, acc, _ = by_id[r.item_id]
        recalls.append(r.model_copy(update={"logprob_after": lp, "accuracy_after": acc}))
    after = _mean([r.logprob_after for r in recalls if r.logprob_after is not None])
    return report.model_copy(
        update={
            "items": recalls,
            "mean_logprob_after": after,
            "gain": after - report.mean_logprob_before,
            "mean_accuracy_after": _mean([r.accuracy_after for r in recalls if r.accuracy_after is not None]),
            "control_logprob_after": control,
        }
    )


def _measure(
    model: Any, tokenizer: Any, items: Sequence[MemoryItem], per_memory: int, max_length: int
) -> tuple[list[tuple[float, float, int]], float]:
    probes = probe_examples(items, per_memory)
    controls = control_examples()
    scores = score_examples(model, tokenizer, probes + controls, max_length=max_length)
    probe_scores, control_scores = scores[: len(probes)], scores[len(probes) :]
    per_item: dict[str, list[tuple[float, float, int]]] = {}
    for ex, sc in zip(probes, probe_scores):
        if sc[2]:
            per_item.setdefault(ex.item_id, []).append(sc)
    out = []
    for item in items:
        got = per_item.get(item.id, [])
        out.append((_mean([s[0] for s in got]), _mean([s[1] for s in got]), len(got)))
    return out, _mean([s[0] for s in control_scores if s[2]])


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
