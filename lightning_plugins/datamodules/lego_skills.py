"""LegoSkills: LEGO chain resolution as a skills DataModule for causal LMs, generated on the fly."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.datamodules.checked_resume import CheckedResume
from lightning_plugins.datamodules.lego_chains import (
    LEGO_TOKENS,
    MAX_VARIABLES,
    encode,
    lego_chain,
    prompt_length,
)
from lightning_plugins.datamodules.stateful_loader import stateful_loader
from lightning_plugins.functional._checks import check_bool, check_choice, check_int
from lightning_plugins.sampling import CurriculumSampler

__all__ = ["LegoDataset", "LegoSkills"]

SPLIT_STREAMS = {"train": 0, "val": 1}
"""The random stream of each split: a sample is drawn from ``(seed, stream, index)``."""


class LegoDataset(Dataset):
    """LEGO samples of one split, drawn on the fly from ``(seed, stream, global index)``.

    The split holds ``size_per_skill`` samples of each of the ``num_variables`` skills:
    global index ``g`` asks for variable ``g % num_variables`` (its skill), and its chain
    is drawn by :func:`~lightning_plugins.datamodules.lego_chains.lego_chain` from
    ``numpy.random.default_rng([seed, stream, g])``. With ``skill`` set, the dataset holds
    only that skill's samples: its position ``i`` is global index
    ``i * num_variables + skill``, the very sample the whole split has there.

    Samples are dicts of tensors, all sequences of the fixed length
    ``5 * num_variables + 5`` (so no padding is needed; ``<pad>`` is id 0):

    - ``input_ids`` (int64 ``[L]``): ``<bos> a = val 1 , ... ? c = 0 <eos>`` — the answer
      is in the sequence, for teacher forcing;
    - ``attention_mask`` (int64 ``[L]``): 1 on tokens, 0 on padding;
    - ``answer_mask`` (bool ``[L]``): True at the position whose *next-token* prediction
      is the answer (the ``=`` of the question), so the answer is ``input_ids[t + 1]``
      for every True ``t``;
    - ``answer`` (int64): the answer's token id (of ``"0"`` or ``"1"``);
    - ``skill`` (int64): the variable asked for;
    - ``index`` (int64): the position in this dataset.

    Example:
        >>> ds = LegoDataset(num_variables=3, size_per_skill=2, seed=0, stream=0)
        >>> len(ds), [int(ds[i]["skill"]) for i in range(len(ds))]
        (6, [0, 1, 2, 0, 1, 2])
        >>> only_2 = LegoDataset(3, 2, seed=0, stream=0, skill=2)
        >>> torch.equal(only_2[1]["input_ids"], ds[5]["input_ids"]), int(only_2[1]["index"])
        (True, 1)
    """

    def __init__(
        self,
        num_variables: int,
        size_per_skill: int,
        seed: int,
        stream: int,
        shuffle_clauses: bool = True,
        skill: int | None = None,
    ) -> None:
        self.num_variables = check_int(num_variables, "num_variables", low=2, high=MAX_VARIABLES)
        self.size_per_skill = check_int(size_per_skill, "size_per_skill", low=1)
        self.seed = check_int(seed, "seed")
        self.stream = check_int(stream, "stream", low=0)
        self.shuffle_clauses = check_bool(shuffle_clauses, "shuffle_clauses")
        self.skill = check_int(skill, "skill", low=0, high=num_variables - 1, optional=True)
        self.length = prompt_length(self.num_variables)

    def __len__(self) -> int:
        skills = 1 if self.skill is not None else self.num_variables
        return self.size_per_skill * skills

    def global_index(self, index: int) -> int:
        """The index in the whole split of this dataset's position ``index``."""
        if self.skill is None:
            return index
        return index * self.num_variables + self.skill

    def words(self, index: int) -> list[str]:
        """The words of sample ``index`` (what ``input_ids`` encodes)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        position = self.global_index(index)
        rng = np.random.default_rng([self.seed, self.stream, position])
        skill = position % self.num_variables
        return lego_chain(rng, self.num_variables, skill, self.shuffle_clauses).words()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        words = self.words(index)
        ids = torch.tensor(encode(words), dtype=torch.long)
        answer_mask = torch.zeros(self.length, dtype=torch.bool)
        answer_mask[self.length - 3] = True  # "... ? x = answer <eos>": the question's "="
        return {
            "input_ids": ids,
            "attention_mask": torch.ones(self.length, dtype=torch.long),
            "answer_mask": answer_mask,
            "answer": ids[self.length - 2].clone(),
            "skill": torch.tensor(self.global_index(index) % self.num_variables),
            "index": torch.tensor(index, dtype=torch.long),
        }


class LegoSkills(CheckedResume):
    """LEGO synthetic reasoning (Zhang et al. 2022) as Skill-It's skills: resolve variable i.

    A sample is a chain of ``num_variables`` variables, ``a = val 1 , b = not a , ...``
    (variable 0 a literal, each next one ``val`` or ``not`` the previous; letters drawn per
    sample; clause order shuffled when ``shuffle_clauses``), and a question ``? c =`` about
    one variable. *Skill* ``i`` asks for variable ``i`` (``i`` resolution steps), so there
    are ``num_skills = num_variables`` skills, named ``skill_names = ["skill_0", ...]``.
    Samples are generated on the fly, deterministic from ``(seed, split, index)`` (see
    :class:`LegoDataset` for the keys a batch holds and the ``answer_mask`` convention),
    over a fixed word-level vocabulary of ``vocab_size = 36`` tokens
    (:data:`~lightning_plugins.datamodules.lego_chains.LEGO_TOKENS`; ``pad_token_id = 0``),
    so a causal LM built for ``vocab_size`` tokens reads them without a tokenizer.

    The training split holds ``train_size`` samples per skill (all skills equally,
    interleaved), its loader is a ``StatefulDataLoader`` over a steerable
    :class:`~lightning_plugins.sampling.CurriculumSampler` (iid over all samples, hence
    over skills: Skill-It's "random" baseline; DDP-ready, resumable mid-epoch).
    Validation holds ``val_size`` samples per skill, drawn from another stream, and
    :meth:`val_dataloader` returns one loader per skill, in the order of ``skill_names``,
    for per-skill metrics. :meth:`skill_datasets` gives the samples of each skill apart,
    to build a mixture over skills.

    Args:
        batch_size: samples per batch and process.
        num_variables: variables per chain, in ``[2, 26]``; also the number of skills.
        train_size: training samples per skill.
        val_size: validation samples per skill.
        seed: seed of the samples and of the training order.
        num_workers: dataloader worker processes.
        shuffle_clauses: shuffle the order of the clauses in the prompt (else chain
            order, where every variable is defined right after the one it reads).

    **Resuming.** :meth:`state_dict` holds the settings the training stream depends on;
    resuming a fit with other values raises a ``ValueError`` naming each.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for ``num_variables`` outside ``[2, 26]``, sizes or ``batch_size``
            below 1, a negative ``num_workers``.

    Example:
        >>> dm = LegoSkills(batch_size=4, train_size=8, val_size=2)
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["input_ids"].shape, batch["answer_mask"].sum(1).tolist()
        (torch.Size([4, 30]), [1, 1, 1, 1])
        >>> dm.num_skills, dm.vocab_size, len(dm.val_dataloader()), dm.skill_names[:2]
        (5, 36, 5, ['skill_0', 'skill_1'])
        >>> {name: len(ds) for name, ds in dm.skill_datasets("val").items()}["skill_4"]
        2
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_variables: int = 5,
        train_size: int = 2000,
        val_size: int = 100,
        seed: int = 0,
        num_workers: int = 0,
        shuffle_clauses: bool = True,
    ) -> None:
        super().__init__()
        self.batch_size = check_int(batch_size, "batch_size", low=1)
        self.num_variables = check_int(num_variables, "num_variables", low=2, high=MAX_VARIABLES)
        self.train_size = check_int(train_size, "train_size", low=1)
        self.val_size = check_int(val_size, "val_size", low=1)
        self.seed = check_int(seed, "seed")
        self.num_workers = check_int(num_workers, "num_workers", low=0)
        self.shuffle_clauses = check_bool(shuffle_clauses, "shuffle_clauses")
        self.num_skills = self.num_variables
        self.skill_names: list[str] = [f"skill_{i}" for i in range(self.num_skills)]
        self.vocab_size = len(LEGO_TOKENS)
        self.pad_token_id = LEGO_TOKENS.index("<pad>")
        self.sequence_length = prompt_length(self.num_variables)
        self.train_set = self._dataset("train")
        self.val_set = self._dataset("val")

    def _dataset(self, split: str, skill: int | None = None) -> LegoDataset:
        size = self.train_size if split == "train" else self.val_size
        return LegoDataset(
            self.num_variables,
            size,
            self.seed,
            SPLIT_STREAMS[split],
            self.shuffle_clauses,
            skill=skill,
        )

    def skill_datasets(self, split: str) -> dict[str, LegoDataset]:
        """One dataset per skill (keyed by ``skill_names``) of ``split`` (``"train"``/``"val"``).

        Skill ``i``'s dataset holds exactly the samples of the split with ``skill == i``,
        its ``index`` the position in that dataset.

        Raises:
            ValueError: for another ``split``.
        """
        check_choice(split, "split", tuple(SPLIT_STREAMS))
        return {name: self._dataset(split, skill) for skill, name in enumerate(self.skill_names)}

    def train_dataloader(self) -> StatefulDataLoader:
        """Training batches, iid over all skills, from a steerable ``CurriculumSampler``."""
        sampler = CurriculumSampler(len(self.train_set), self.batch_size, seed=self.seed)
        return stateful_loader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per skill, in the order of ``skill_names``, each in index order."""
        return [
            DataLoader(
                dataset,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
            )
            for dataset in self.skill_datasets("val").values()
        ]

    def config(self) -> dict[str, Any]:
        """The settings the training stream (and a saved loader position) depends on."""
        return {
            "kind": type(self).__name__,
            "batch_size": self.batch_size,
            "num_variables": self.num_variables,
            "train_size": self.train_size,
            "seed": self.seed,
            "shuffle_clauses": self.shuffle_clauses,
            "num_workers": self.num_workers,
        }
