"""TRL's own DPO / IPO / DPO + NLL losses on controlled pairs, written as a test fixture.

``tests/test_training_losses.py::test_losses_match_trl_on_the_same_logprobs`` checks
rmbandit's per-pair losses against TRL's numbers on the same log-probs.  CI has no TRL (nor
torch), so this script is run once, by hand, in the benchmark venv, and the test reads the
JSON it writes:

    /work/bench-venv/bin/python experiments/reference/trl_dpo_losses.py [--out tests/data/trl_dpo_losses.json]

What runs is TRL's real loss path: a ``DPOTrainer`` built on a tiny random Llama (vocab 64,
hidden 16, one layer) and a separate random reference Llama, with TRL's own collator and
``DPOTrainer.compute_loss`` (which calls ``_compute_loss``) on token ids chosen here.  A
forward hook keeps each model's per-token log-probs (TRL's fused LM head), summed over the
completion and split into chosen / rejected exactly as ``_compute_loss`` does.

Each pair is its own batch, so TRL's batch loss is that pair's per-sequence loss; for the
"sft" term (a token mean over the batch's chosen tokens) a batch of one pair is
-log pi(y_w) / |y_w|, ALGORITHMS.md's per-pair NLL.  Each case also records the loss of one
batch of several pairs (for the "sft" case only pairs whose chosen responses are equally
long, where TRL's token mean equals the mean of the per-pair NLLs).

The pairs: chosen and rejected of different lengths, margins near zero, and margins of
beta * h = +-50 and more (greedy vs anti-greedy tokens of a policy with a scaled LM head),
where -log sigmoid must be computed in its stable form.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

import datasets
import tokenizers
import torch
import transformers
import trl
from trl import DPOConfig, DPOTrainer

VOCAB = 64
CASES = [(["sigmoid"], 0.1), (["sigmoid"], 0.5), (["ipo"], 0.1), (["ipo"], 0.5),
         (["sigmoid", "sft"], 0.1), (["sigmoid", "sft"], 0.5)]


def tiny_llama(seed: int, head_scale: float = 1.0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                      pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)      # a peaked policy: large log-ratios on chosen tokens
    return model


def policy_model() -> transformers.LlamaForCausalLM:
    return tiny_llama(0, head_scale=60.0)


def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A local word-level tokenizer (no hub): token i is the word "t{i}"."""
    vocab = {f"t{i}": i for i in range(VOCAB)}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t3"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=model, pad_token="t0", eos_token="t1",
                                                bos_token="t2", unk_token="t3")


def extreme_completion(model, prompt: list[int], length: int, best: bool) -> list[int]:
    """Greedy (best) or anti-greedy completion of ``prompt`` under ``model``."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(length):
            logits = model(torch.tensor([ids])).logits[0, -1, 4:]   # skip pad / eos / bos / unk
            ids.append(int((logits.argmax() if best else logits.argmin()) + 4))
    return ids[len(prompt):]


def make_pairs(policy) -> list[dict]:
    """Prompt / chosen / rejected token ids: random pairs (small margins, unequal lengths),
    an identical pair (margin 0), and greedy vs anti-greedy pairs both ways (|beta h| >= 50)."""
    gen = torch.Generator().manual_seed(0)

    def rand(n):
        return torch.randint(4, VOCAB, (n,), generator=gen).tolist()

    pairs = [dict(prompt_ids=rand(5), chosen_ids=rand(3), rejected_ids=rand(7)),
             dict(prompt_ids=rand(3), chosen_ids=rand(6), rejected_ids=rand(2))]
    same = rand(4)
    pairs.append(dict(prompt_ids=rand(4), chosen_ids=same, rejected_ids=list(same)))
    for prompt_len, chosen_len, rejected_len in [(4, 4, 25), (6, 5, 4)]:   # h ~ 500, ~ 100
        prompt = rand(prompt_len)
        good = extreme_completion(policy, prompt, chosen_len, best=True)
        bad = extreme_completion(policy, prompt, rejected_len, best=False)
        pairs += [dict(prompt_ids=prompt, chosen_ids=good, rejected_ids=bad),
                  dict(prompt_ids=prompt, chosen_ids=bad, rejected_ids=good)]
    return pairs


class KeepLogProbs:
    """Forward hook: the per-token log-probs TRL's fused LM head returned on the last call."""

    def __init__(self, model):
        self.log_probs = None
        model.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.log_probs = output.log_probs.detach().clone()


def summed(log_probs: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected summed log-probs, as ``DPOTrainer._compute_loss`` forms them."""
    return log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)


def trainer_for(loss_type: list[str], beta: float, policy, reference, workdir: str) -> DPOTrainer:
    args = DPOConfig(output_dir=workdir, loss_type=loss_type, beta=beta, report_to=[], use_cpu=True,
                     per_device_train_batch_size=1, max_length=None, precompute_ref_log_probs=False)
    dataset = datasets.Dataset.from_dict({"prompt": ["t5 t6"], "chosen": [" t7"], "rejected": [" t8"]})
    return DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                      processing_class=word_tokenizer())


def run_case(trainer: DPOTrainer, policy_hook, reference_hook, pairs: list[dict]) -> dict:
    """TRL's loss on ``pairs`` as one batch, with the inputs our losses take."""
    batch = trainer.data_collator(pairs)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    seq_len = batch["completion_mask"].shape[1] - 1
    policy_chosen, policy_rejected = summed(policy_hook.log_probs, seq_len)
    ref_chosen, ref_rejected = summed(reference_hook.log_probs, seq_len)
    chosen_length, rejected_length = batch["completion_mask"].sum(dim=1).chunk(2, dim=0)   # as TRL's IPO counts
    return dict(policy_chosen=policy_chosen.tolist(), policy_rejected=policy_rejected.tolist(),
                ref_chosen=ref_chosen.tolist(), ref_rejected=ref_rejected.tolist(),
                chosen_length=chosen_length.tolist(), rejected_length=rejected_length.tolist(),
                trl_loss=float(loss))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/data/trl_dpo_losses.json")
    out = pathlib.Path(parser.parse_args().out)
    pairs = make_pairs(policy_model())
    cases = []
    with tempfile.TemporaryDirectory() as workdir:
        for loss_type, beta in CASES:     # fresh models: the trainer patches their forward
            trainer = trainer_for(loss_type, beta, policy_model(), tiny_llama(1), workdir)
            hooks = KeepLogProbs(trainer.model), KeepLogProbs(trainer.ref_model)
            per_pair = [run_case(trainer, *hooks, [pair]) for pair in pairs]
            batch_pairs = list(range(len(pairs)))
            if "sft" in loss_type:   # TRL's sft term is a token mean: equal chosen lengths make it the per-pair mean
                lengths = [len(p["chosen_ids"]) for p in pairs]
                common = max(set(lengths), key=lengths.count)
                batch_pairs = [i for i, n in enumerate(lengths) if n == common]
            batch = run_case(trainer, *hooks, [pairs[i] for i in batch_pairs])
            cases.append(dict(loss_type=loss_type, beta=beta,
                              pairs={key: [p[key][0] if key != "trl_loss" else p[key] for p in per_pair]
                                     for key in per_pair[0]},
                              batch=dict(pairs=batch_pairs, **batch)))
    fixture = dict(source="experiments/reference/trl_dpo_losses.py", trl=trl.__version__, torch=torch.__version__,
                   transformers=transformers.__version__, cases=cases)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {out}: {len(cases)} cases of {len(pairs)} pairs")


if __name__ == "__main__":
    main()
