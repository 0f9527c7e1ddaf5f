"""The embedded model's conversion, its tokenizer fixes and the SmolLM2 training chat template."""

from __future__ import annotations

import json

import pytest
from conftest import DEMO

from rlhf_recipes import models
from rlhf_recipes.errors import UserError


def test_embedded_model_is_an_ordinary_checkpoint(embedded_model_path):
    config = json.loads((embedded_model_path / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    generation = json.loads((embedded_model_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2  # <|im_end|>: generation stops at the end of the assistant turn
    assert (embedded_model_path / "model.safetensors").stat().st_size > 500_000_000  # float32, de-quantized
    assert not list(embedded_model_path.parent.glob(".SmolLM2*")), "no temporary folder left behind"


def test_tokenizer_pads_with_a_token_distinct_from_eos(embedded_model_path):
    tokenizer = models.load_tokenizer(str(embedded_model_path))
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_training_template_renders_like_the_original_and_masks_assistant_turns(embedded_model_path):
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(embedded_model_path)
    training = models.load_tokenizer(str(embedded_model_path))
    assert "{% generation %}" in training.chat_template
    rows = [json.loads(line) for line in (DEMO / "sft" / "train.jsonl").read_text().splitlines()[:50]]
    for row in rows:
        for prompt in (False, True):
            kwargs = dict(tokenize=False, add_generation_prompt=prompt)
            assert training.apply_chat_template(row["messages"], **kwargs) == original.apply_chat_template(
                row["messages"], **kwargs
            )
    rendered = training.apply_chat_template(rows[0]["messages"], return_dict=True, return_assistant_tokens_mask=True)
    masked = training.decode([t for t, m in zip(rendered["input_ids"], rendered["assistant_masks"]) if m])
    answers = [m["content"] for m in rows[0]["messages"] if m["role"] == "assistant"]
    assert masked == "".join(answer + "<|im_end|>" for answer in answers)


def test_atomic_build_leaves_nothing_when_interrupted(tmp_path):
    def failing_build(folder):
        (folder / "half-written").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models._atomic_build(tmp_path / "cache" / "model", failing_build)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unknown_embedded_name_and_bad_folder_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown embedded model 'Nope'"):
        models.resolve_model_path("embedded:Nope")
    with pytest.raises(UserError, match="has neither config.json nor adapter_config.json"):
        models.resolve_model_path(str(tmp_path))
