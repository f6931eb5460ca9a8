"""LegoSkills: LEGO chains generated on the fly, one skill per variable to resolve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_plugins.datamodules import LegoDataset, LegoSkills
from lightning_plugins.datamodules.lego_chains import LEGO_TOKENS, decode, encode
from lightning_plugins.sampling import CurriculumSampler, find_steerable_sampler


def resolve(text: str) -> tuple[int, int, str]:
    """Plain-Python resolution of a decoded prompt: (value, steps, the question variable).

    Reads ``<bos> x = op y , ... ? q = answer <eos>`` word by word; follows the chain from
    ``q`` back to the literal, negating at every ``not``.
    """
    words = text.split()
    assert words[0] == "<bos>" and words[-1] == "<eos>"
    question = words.index("?")
    clauses = " ".join(words[1:question]).split(" , ")
    definitions = {}
    for clause in clauses:
        name, equals, op, operand = clause.split()
        assert equals == "=" and op in ("val", "not") and name not in definitions
        definitions[name] = (op, operand)
    assert words[question + 2] == "="
    variable = words[question + 1]
    negations, steps, current = 0, 0, variable
    while True:
        op, operand = definitions[current]
        negations += op == "not"
        if operand in ("0", "1"):
            return (int(operand) + negations) % 2, steps, variable
        current, steps = operand, steps + 1


@pytest.fixture(scope="module")
def dm() -> LegoSkills:
    return LegoSkills(batch_size=16, train_size=40, val_size=10)


@pytest.mark.parametrize("shuffle_clauses", [True, False])
@pytest.mark.parametrize("num_variables", [2, 5, 8])
def test_every_answer_and_skill_agrees_with_a_plain_resolver(num_variables, shuffle_clauses):
    ds = LegoDataset(num_variables, 30, seed=3, stream=0, shuffle_clauses=shuffle_clauses)
    length = 5 * num_variables + 5
    for i in range(len(ds)):
        sample = ds[i]
        ids = sample["input_ids"]
        assert ids.shape == (length,)
        text = decode(ids)
        value, steps, _ = resolve(text)
        assert steps == int(sample["skill"]) == i % num_variables
        (position,) = torch.nonzero(sample["answer_mask"]).flatten().tolist()
        assert LEGO_TOKENS[int(ids[position])] == "="
        assert int(ids[position + 1]) == int(sample["answer"]) == encode(str(value))[0]
        letters = [w for w in text.split() if len(w) == 1 and w.isalpha()]
        assert len(set(letters[: 4 * num_variables])) == num_variables  # distinct names


def test_all_skills_and_both_answers_occur():
    ds = LegoDataset(5, 40, seed=0, stream=0)
    pairs = {(int(ds[i]["skill"]), int(ds[i]["answer"])) for i in range(len(ds))}
    assert pairs == {(s, encode(a)[0]) for s in range(5) for a in ("0", "1")}


def test_chain_order_without_shuffling_and_shuffled_with_it():
    def in_chain_order(ds, i):
        words = ds.words(i)
        clauses = " ".join(words[1 : words.index("?")]).split(" , ")
        defined = set()
        for clause in clauses:
            name, _, _, operand = clause.split()
            if operand not in ("0", "1") and operand not in defined:
                return False
            defined.add(name)
        return True

    plain = LegoDataset(5, 20, seed=0, stream=0, shuffle_clauses=False)
    shuffled = LegoDataset(5, 20, seed=0, stream=0, shuffle_clauses=True)
    assert all(in_chain_order(plain, i) for i in range(len(plain)))
    assert sum(in_chain_order(shuffled, i) for i in range(len(shuffled))) < len(shuffled) / 2
    # the chain itself (letters, literal, operations) does not depend on the shuffling
    for i in range(10):
        assert resolve(" ".join(plain.words(i)))[::2] == resolve(" ".join(shuffled.words(i)))[::2]
        assert sorted(plain.words(i)) == sorted(shuffled.words(i))


def test_samples_are_deterministic_from_seed_split_and_index():
    a, b = LegoSkills(train_size=10, val_size=5), LegoSkills(train_size=10, val_size=5)
    other = LegoSkills(train_size=10, val_size=5, seed=1)
    same = all(
        torch.equal(a.train_set[i]["input_ids"], b.train_set[i]["input_ids"]) for i in range(50)
    )
    assert same
    # read twice, in another order: the same sample
    assert torch.equal(a.train_set[7]["input_ids"], a.train_set[7]["input_ids"])
    differ_seed = sum(
        not torch.equal(a.train_set[i]["input_ids"], other.train_set[i]["input_ids"])
        for i in range(50)
    )
    differ_split = sum(
        not torch.equal(a.train_set[i]["input_ids"], a.val_set[i]["input_ids"]) for i in range(25)
    )
    assert differ_seed > 40 and differ_split > 20
    # the generator key is (seed, stream, index), as documented
    from lightning_plugins.datamodules.lego_chains import lego_chain

    chain = lego_chain(np.random.default_rng([0, 1, 13]), 5, skill=13 % 5)
    assert encode(chain.words()) == a.val_set[13]["input_ids"].tolist()


def test_vocabulary_round_trip():
    assert len(LEGO_TOKENS) == len(set(LEGO_TOKENS)) == 36
    assert decode(encode(list(LEGO_TOKENS)), skip_pad=False).split() == list(LEGO_TOKENS)
    text = "<bos> q = not z , z = val 0 ? q = 1 <eos>"
    assert decode(encode(text)) == text
    assert decode([0, *encode(text), 0, 0]) == text  # padding left out
    assert encode(text)[:2] == [LEGO_TOKENS.index("<bos>"), LEGO_TOKENS.index("q")]


def test_batches_shapes_and_dtypes(dm):
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch) == [
        "answer",
        "answer_mask",
        "attention_mask",
        "index",
        "input_ids",
        "skill",
    ]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (16, 30)
    assert batch["answer_mask"].shape == (16, 30) and batch["answer_mask"].dtype == torch.bool
    for key in ("input_ids", "attention_mask", "answer", "skill", "index"):
        assert batch[key].dtype == torch.int64, key
    for key in ("answer", "skill", "index"):
        assert batch[key].shape == (16,), key
    assert bool((batch["attention_mask"] == 1).all())
    assert int(batch["input_ids"].max()) < dm.vocab_size and dm.pad_token_id == 0
    rows = torch.arange(16)
    positions = batch["answer_mask"].long().argmax(1)
    assert torch.equal(batch["input_ids"][rows, positions + 1], batch["answer"])
    assert torch.equal(batch["skill"], batch["index"] % dm.num_skills)


def test_attributes(dm):
    assert dm.num_skills == 5 and dm.skill_names == [f"skill_{i}" for i in range(5)]
    assert dm.vocab_size == len(LEGO_TOKENS) and dm.sequence_length == 30
    assert len(dm.train_set) == 5 * 40 and len(dm.val_set) == 5 * 10


def test_train_loader_is_iid_over_all_skills():
    # 200 samples in 10 batches of 20 (CurriculumSampler fills a last partial batch)
    loader = LegoSkills(batch_size=20, train_size=40).train_dataloader()
    assert isinstance(find_steerable_sampler(loader), CurriculumSampler)
    indices = torch.cat([batch["index"] for batch in loader])
    assert sorted(indices.tolist()) == list(range(200))  # one epoch: every sample once
    assert indices[:40].tolist() != list(range(40))  # shuffled
    skills = torch.cat([batch["skill"] for batch in loader])
    assert torch.bincount(skills).tolist() == [40] * 5


@pytest.mark.parametrize("split", ["train", "val"])
def test_skill_datasets_hold_only_their_skill(dm, split):
    whole = dm.train_set if split == "train" else dm.val_set
    datasets = dm.skill_datasets(split)
    assert list(datasets) == dm.skill_names
    seen = []
    for skill, ds in enumerate(datasets.values()):
        assert len(ds) == len(whole) // 5
        for i in range(len(ds)):
            sample = ds[i]
            assert int(sample["skill"]) == skill and int(sample["index"]) == i
            value, steps, _ = resolve(decode(sample["input_ids"]))
            assert steps == skill and encode(str(value))[0] == int(sample["answer"])
            seen.append(tuple(sample["input_ids"].tolist()))
    # together they are the whole split
    assert sorted(seen) == sorted(tuple(whole[i]["input_ids"].tolist()) for i in range(len(whole)))


def test_one_val_loader_per_skill_in_order(dm):
    loaders = dm.val_dataloader()
    assert len(loaders) == 5
    for skill, loader in enumerate(loaders):
        batches = list(loader)
        assert sum(len(b["skill"]) for b in batches) == 10
        assert all(bool((b["skill"] == skill).all()) for b in batches)
        assert torch.cat([b["index"] for b in batches]).tolist() == list(range(10))


def test_resume_state_names_the_settings(dm):
    assert dm.state_dict()["config"]["num_variables"] == 5
    LegoSkills(batch_size=16, train_size=40, val_size=3).load_state_dict(dm.state_dict())
    with pytest.raises(ValueError, match=r"shuffle_clauses=True, but this one has shuffle_clauses"):
        LegoSkills(batch_size=16, train_size=40, shuffle_clauses=False).load_state_dict(
            dm.state_dict()
        )


def test_train_loader_with_workers_gives_the_same_batches():
    dm = LegoSkills(batch_size=8, train_size=4, val_size=1)
    dm_workers = LegoSkills(batch_size=8, train_size=4, val_size=1, num_workers=2)
    plain = [b["input_ids"] for b in dm.train_dataloader()]
    workers = [b["input_ids"] for b in dm_workers.train_dataloader()]
    assert len(plain) == len(workers) == 3
    assert all(torch.equal(a, b) for a, b in zip(plain, workers, strict=True))
