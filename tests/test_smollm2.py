"""The real pretrained model, offline: SmolLM2-135M-Instruct from the package index (its 4-bit
GGUF), imported by raygpt and held against transformers loading the same file. Each model is
loaded once for the session (conftest: `smollm2`, `reference`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raygpt.checkpoint import load_model
from raygpt.inference.engine import GenerationEngine, GenerationRequest
from raygpt.model.int8 import quantize_model

CODE = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'


def test_the_import_is_the_model_the_issue_names(smollm2):
    _, model, meta, tokenizer = smollm2
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.kv_heads, c.mlp_hidden) == (30, 576, 9, 3, 1536)
    assert (c.rope_theta, c.block_size, c.tie_embeddings) == (100000.0, 8192, True)
    assert model.num_params(non_embedding=False) == 134_515_008
    assert meta.chat_template.startswith("{% for message in messages %}")
    assert tokenizer.vocab_size == 49152 and tokenizer.stop_tokens == {0, 2}  # endoftext, im_end


def test_logits_equal_transformers(smollm2, reference):
    _, model, _, tokenizer = smollm2
    ids = torch.tensor([tokenizer.encode(CODE)])
    with torch.no_grad():
        ours = model(ids)[0][..., :49152]
        theirs = reference[0](ids).logits
    assert (ours - theirs).abs().max() < 2e-3


def test_greedy_64_tokens_equal_transformers_with_without_cache_and_batched(smollm2, reference):
    _, model, _, tokenizer = smollm2
    prompt = tokenizer.encode(CODE)
    ids = torch.tensor([prompt])
    theirs = reference[0].generate(ids, max_new_tokens=64, do_sample=False)[0, len(prompt) :]
    assert torch.equal(model.generate(ids, 64, temperature=0)[0, len(prompt) :], theirs)
    assert torch.equal(
        model.generate(ids, 64, temperature=0, use_cache=False)[0, len(prompt) :], theirs
    )
    # through the engine, batched with two other requests of other lengths
    engine = GenerationEngine(model, tokenizer, max_slots=4, max_context=256)
    others = ["import os\n\n", "class Stack:\n    def push(self, item):\n"]
    requests = [
        GenerationRequest(tuple(tokenizer.encode(p)), n, temperature=0, stop_at_eot=False)
        for p, n in [(CODE, 64), (others[0], 40), (others[1], 80)]
    ]
    results: dict[int, list] = {i: [] for i in range(3)}
    for i, request in enumerate(requests):
        engine.submit(request, results[i].append)
    while not all(r and r[-1].finish_reason for r in results.values()):
        engine.step()
    assert [t for u in results[0] for t in u.token_ids] == theirs.tolist()
    text = "".join(u.text for u in results[0])
    assert text == reference[1].decode(theirs) and "return" in text  # it writes Python


def test_the_tokenizer_equals_transformers_on_the_whole_stdlib(smollm2, reference):
    from raygpt.data.corpus import KEPT, decode_document, resolve_inputs

    _, _, _, tokenizer = smollm2
    texts = []
    for path in resolve_inputs(["stdlib"]).files:
        with open(path, "rb") as f:
            text, status = decode_document(f.read())
        if status == KEPT:
            texts.append(text)
    assert len(texts) > 1500
    ours = tokenizer.encode_batch(texts)
    theirs = reference[1](texts, add_special_tokens=False)["input_ids"]
    differing = [i for i in range(len(texts)) if ours[i] != theirs[i]]
    assert differing == []
    assert all(tokenizer.decode(ids) == text for ids, text in zip(ours[:200], texts, strict=False))


def test_int8_changes_the_val_loss_by_under_1_percent(smollm2, tmp_path):
    """On stdlib code the model never trained on here, 16 windows of 256 tokens."""
    from raygpt.data.corpus import resolve_inputs
    from raygpt.data.shards import cut_windows
    from raygpt.release.evaluation import mean_loss

    folder, model, _, tokenizer = smollm2
    files = resolve_inputs(["stdlib"], include=["*/json/*.py"]).files
    stream = np.concatenate([tokenizer.encode_array(Path(f).read_text()) for f in files])
    windows = cut_windows(stream, 256)[:16]
    base = mean_loss(model, windows, batch_size=4)
    int8, _ = load_model(folder)
    int8 = quantize_model(int8)
    quantized = mean_loss(int8, windows, batch_size=4)
    assert base < 2.5  # a real code model: about 1.3 nats per token here
    assert abs(quantized - base) / base < 0.01


def test_fine_tuning_through_ray_train_lowers_the_val_loss(ray_session, smollm2, tmp_path):
    """Two DDP workers, a few steps of the real model on stdlib code; val is the files the
    split kept out of training. The checkpoints keep the tokenizer and the chat template."""
    from raygpt.checkpoint import read_meta
    from raygpt.config import experiment_from_dict
    from raygpt.data.prepare import PrepareOptions, prepare_dataset
    from raygpt.train.launch import plan_training, run_training
    from raygpt.train.run_log import read_metrics

    folder = str(smollm2[0])
    data = prepare_dataset(
        PrepareOptions(
            out_dir=str(tmp_path / "data"),
            tokenizer=folder,
            include=["*/json/*", "*/email/*", "*/http/*"],
            overwrite=True,
        )
    )
    config = experiment_from_dict(
        {
            "model": {"block_size": 128},
            "data": {"dataset": data.out_dir, "tokenizer": folder},
            "train": {
                "out_dir": str(tmp_path / "run"),
                "init_from": folder,
                "max_iters": 4,
                "batch_size": 2,
                "learning_rate": 3e-5,
                "min_lr": 3e-6,
                "warmup_iters": 1,
                "eval_interval": 4,
                "eval_iters": 2,
                "log_interval": 2,
                "dtype": "float32",
            },
            "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        }
    )
    result = run_training(plan_training(config))
    vals = [r["val_loss"] for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    assert len(vals) == 2 and vals[1] < vals[0] < 5.0, vals  # ~3.4 nats/token at the start
    meta = read_meta(result.final_model)
    assert meta.tokenizer == "bpe" and meta.chat_template == smollm2[2].chat_template
    assert meta.special_tokens == smollm2[2].special_tokens
    assert meta.model.block_size == 128 and meta.model.kv_heads == 3


def test_the_chat_template_renders_as_transformers_does(smollm2, reference):
    """The checkpoint's template in raygpt's sandbox gives transformers' prompt ids, with and
    without a system message (the template adds SmolLM's own when there is none)."""
    from raygpt.inference.chat import ChatMessage, render_chat, template_tokens

    _, _, meta, tokenizer = smollm2
    tokens = template_tokens(meta.special_tokens, tokenizer.decode)
    conversations = [
        [{"role": "user", "content": "Write a function that adds two numbers."}],
        [
            {"role": "system", "content": "You write Python."},
            {"role": "user", "content": "Reverse a list."},
            {"role": "assistant", "content": "xs[::-1]"},
            {"role": "user", "content": "In place?"},
        ],
    ]
    for conversation in conversations:
        messages = [ChatMessage(m["role"], m["content"]) for m in conversation]
        ours = tokenizer.encode(render_chat(meta.chat_template, messages, tokens))
        theirs = reference[1].apply_chat_template(conversation, add_generation_prompt=True)
        if not isinstance(theirs, list):  # transformers 5 returns a BatchEncoding
            theirs = theirs["input_ids"]
        assert ours == list(theirs)
