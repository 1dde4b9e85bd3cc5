"""Training-set and probe construction for parametric memory (pure Python: no torch needed)."""

from __future__ import annotations

import pytest

from memos_core.errors import ValidationError
from memos_core.items import MemoryItem
from memos_core.parametric import TrainingConfig, probe_examples, split_statement, training_examples
from memos_core.parametric.dataset import CONTROL_SENTENCES, generator_prompt, parse_generated
from memos_core.parametric.schema import validate_adapter_name


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Ann's dog is called Rex.", ("Ann's dog", "is called Rex.")),
        ("The user prefers window seats on long flights.", ("The user", "prefers window seats on long flights.")),
        ("Bob  works as a pilot\nin Oslo.", ("Bob", "works as a pilot in Oslo.")),
        ("Is it raining?", None),  # verb first: no subject
        ("Rex.", None),
        ("Meeting moved. Ann is late.", None),  # the "subject" would span a sentence boundary
    ],
)
def test_split_statement(text, expected):
    assert split_statement(text) == expected


def test_training_forms_and_heldout_probes_are_disjoint():
    items = [MemoryItem(content="Ann's dog is called Rex."), MemoryItem(content="Flight LH 1234 to Lisbon on 3 May, seat 14C.")]
    train = training_examples(items)
    forms = [e.form for e in train if e.item_id == items[0].id]
    assert forms == ["statement", "framed", "framed", "framed", "framed", "qa", "qa", "completion"]
    assert [e.form for e in train if e.item_id == items[1].id] == ["statement"] + ["framed"] * 4
    assert all(e.target.strip().endswith(".") for e in train)
    probes = probe_examples(items, per_memory=3)
    assert len(probes) == 6
    train_prompts = {e.prompt for e in train}
    assert not train_prompts & {p.prompt for p in probes}
    # split facts are probed on their predicate, conditioned on a held-out framing that names the subject
    p0 = [p for p in probes if p.item_id == items[0].id]
    assert all(p.target == " is called Rex." and p.prompt.endswith("Ann's dog") for p in p0)
    p1 = [p for p in probes if p.item_id == items[1].id]
    assert all(p.target == "Flight LH 1234 to Lisbon on 3 May, seat 14C." for p in p1)
    assert len(CONTROL_SENTENCES) >= 5
    assert training_examples(items, paraphrases=False) == [e for e in train if e.form == "statement"]


def test_generator_output_parsing():
    prompt = generator_prompt("Ann's dog is called Rex.", 3)
    assert "Ann's dog is called Rex." in prompt and "Q:" in prompt
    reply = "\n".join(
        [
            "1. Rex is the name of Ann's dog.",
            "- Q: What is Ann's dog called? A: Rex.",
            "Ann's dog is called Rex.",  # the statement itself: dropped
            "Rex is the name of Ann's dog.",  # duplicate: dropped
            "",
            "A: orphan answer",
            "x" * 500,
            "Ann calls her dog Rex.",
            "One more that is over the limit.",
        ]
    )
    out = parse_generated("id1", "Ann's dog is called Rex.", reply, 3)
    assert [(e.prompt, e.target) for e in out] == [
        ("", "Rex is the name of Ann's dog."),
        ("Question: What is Ann's dog called? Answer:", " Rex."),
        ("", "Ann calls her dog Rex."),
    ]
    items = [MemoryItem(content="Ann's dog is called Rex.")]
    with pytest.raises(ValidationError):
        training_examples(items, generator=lambda p: None)  # type: ignore[arg-type,return-value]
    assert training_examples(items, generator=lambda p: "", generated_per_memory=2)[-1].form == "completion"


def test_names_and_config_validation():
    for good in ("facts", "user-42_v2", "X"):
        assert validate_adapter_name(good) == good
    for bad in ("", "a", "lora", "has.dot", "../x", "-x", "x" * 65, None, "sp ace"):
        with pytest.raises(ValidationError):
            validate_adapter_name(bad)
    with pytest.raises(Exception):
        TrainingConfig(rank=0)
    with pytest.raises(Exception):
        TrainingConfig(target_modules=[])
    assert TrainingConfig(target_modules=["v_proj", "q_proj", "q_proj"]).target_modules == ["q_proj", "v_proj"]
