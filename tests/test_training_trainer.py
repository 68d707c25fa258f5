"""The training sampler: the order of transformers' Trainer + accelerate (SeedableRandomSampler) without a Python
list of every index (training/trainer.py, CompactRandomSampler)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": i}


def _order(trainer, epoch: int) -> list[int]:
    loader = trainer.get_train_dataloader()
    loader.set_epoch(epoch)
    return [i["index"] for batch in loader for i in batch]


def test_preference_trainer_draws_the_plain_trainers_order_without_an_index_list(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from unipo.objective import Objective
    from unipo.training.trainer import CompactRandomSampler, PreferenceTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                             data_seed=7, seed=3, remove_unused_columns=False)
    kw = {"model": model, "args": args, "train_dataset": _Rows(103), "data_collator": list}
    plain, ours = Trainer(**kw), PreferenceTrainer(**kw, objective=Objective("simpo"), reference_mode="none")
    assert isinstance(ours._get_train_sampler(), CompactRandomSampler)
    for epoch in (0, 1, 2):
        want = _order(plain, epoch)
        assert sorted(want) == list(range(103)) and want != sorted(want)
        assert _order(ours, epoch) == want
    assert _order(ours, 0) != _order(ours, 1)
