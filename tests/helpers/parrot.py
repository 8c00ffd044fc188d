"""A tiny causal LM taught, in a few seconds of real training, to answer every prompt with one phrase.

A random tiny model writes noise, which reflection rightly rejects; a model that always says, e.g.,
"Mostly Action." is grounded exactly for the users whose events have the category Action. That
makes the kept *and* the rejected paths of qa-synth observable with a real model and real generation.
"""

from __future__ import annotations

from pathlib import Path

import torch


def teach_phrase(
    model_dir: str | Path, out: str | Path, prompts: list[str], phrase: str, steps: int = 60
) -> Path:
    """Fine-tune the model in ``model_dir`` to continue each prompt with ``phrase`` + EOS; save to ``out``."""
    from transformers import AutoModelForCausalLM

    from data_modules.dataset.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    target = tok(phrase, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for step in range(steps):
            batch = [prompts[(step * 4 + i) % len(prompts)] for i in range(4)]
            ids = [tok(p, add_special_tokens=False)["input_ids"][-192:] + target for p in batch]
            width = max(map(len, ids))
            x = torch.full((len(ids), width), tok.pad_token_id)
            labels = torch.full((len(ids), width), -100)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for i, seq in enumerate(ids):  # left padding, as at generation time
                x[i, width - len(seq) :] = torch.tensor(seq)
                mask[i, width - len(seq) :] = 1
                labels[i, width - len(target) :] = torch.tensor(target)
            loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return Path(out)
