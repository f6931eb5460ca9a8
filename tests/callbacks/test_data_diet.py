"""DataDiet: EL2N, GraNd and forgetting against per-example loops; pruning; files."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from lightning_plugins.callbacks import Curriculum, DataDiet
from tests.callbacks.steering import (
    NUM_SAMPLES,
    Points,
    Snapshots,
    batches_of_epoch,
    fit,
    net_at,
)


def el2n_loop(net, data):
    out = []
    for x, y in zip(data.x, data.label, strict=True):
        p = torch.softmax(net(x[None]).detach().double(), dim=-1)[0]
        onehot = torch.zeros_like(p)
        onehot[y] = 1
        out.append(float(torch.linalg.vector_norm(p - onehot)))
    return torch.tensor(out, dtype=torch.float64)


def grand_loop(net, data):
    out = []
    for x, y in zip(data.x, data.label, strict=True):
        net.zero_grad()
        F.cross_entropy(net(x[None]), y[None]).backward()
        squares = sum(float(p.grad.pow(2).sum()) for p in net.parameters())
        out.append(squares**0.5)
    return torch.tensor(out, dtype=torch.float64)


def test_el2n_averaged_over_repeats_equals_the_loop(tmp_path):
    snapshots = Snapshots()
    diet = DataDiet(score="el2n", score_epoch=2, repeats=2, plot=False, save_dir=tmp_path)
    fit(tmp_path, [snapshots, diet], max_steps=13)
    data = Points()
    expected = (
        el2n_loop(net_at(snapshots.weights[1]), data)
        + el2n_loop(net_at(snapshots.weights[2]), data)
    ) / 2
    torch.testing.assert_close(diet.scores, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("samples", ["independent", "in_batch"])
def test_grand_equals_the_per_example_gradient_loop(tmp_path, samples):
    snapshots = Snapshots()
    diet = DataDiet(
        score="grand", score_epoch=1, plot=False, save_dir=tmp_path, grand_samples=samples
    )
    fit(tmp_path, [snapshots, diet], max_steps=7)
    expected = grand_loop(net_at(snapshots.weights[1]), Points())
    torch.testing.assert_close(diet.scores, expected, rtol=1e-4, atol=1e-6)


def test_forgetting_counts_transitions_between_epoch_passes(tmp_path):
    snapshots = Snapshots()
    diet = DataDiet(score="forgetting", score_epoch=3, plot=False, save_dir=tmp_path)
    fit(tmp_path, [snapshots, diet], max_steps=19)
    data = Points()
    rows = []
    for epoch in (1, 2, 3):
        with torch.no_grad():
            rows.append((net_at(snapshots.weights[epoch])(data.x).argmax(1) == data.label).tolist())
    expected = []
    for i in range(NUM_SAMPLES):
        history = [row[i] for row in rows]
        if not any(history):
            expected.append(len(rows))
        else:
            expected.append(sum(a and not b for a, b in itertools.pairwise(history)))
    assert diet.scores.tolist() == expected


@pytest.mark.parametrize("offset", [0.0, 0.25])
def test_prune_keeps_the_highest_scores_after_the_offset(tmp_path, offset):
    diet = DataDiet(score="el2n", score_epoch=1, prune=0.5, offset=offset, save_dir=tmp_path)
    module = fit(tmp_path, [diet], max_steps=18)
    scores = diet.scores.tolist()
    order = sorted(range(NUM_SAMPLES), key=lambda i: (-scores[i], i))
    skip = round(offset * NUM_SAMPLES)
    kept = set(order[skip : skip + NUM_SAMPLES // 2])
    assert set(diet.kept.nonzero().flatten().tolist()) == kept
    for epoch in (1, 2):
        trained = {i for indices, _ in batches_of_epoch(module, epoch) for i in indices}
        assert trained == kept  # every kept sample, nothing else (6 steps x 8 > 24 kept)
    saved = torch.load(tmp_path / "data_diet_el2n.pt", weights_only=True)
    assert torch.equal(saved["scores"], diet.scores) and torch.equal(saved["kept"], diet.kept)
    assert (tmp_path / "data_diet_el2n.png").stat().st_size > 0
    # the saved scores are a Curriculum difficulty file
    torch.testing.assert_close(Curriculum(tmp_path / "data_diet_el2n.pt").difficulty, diet.scores)


def test_random_scores_are_seeded_and_prune_at_the_score_epoch(tmp_path):
    a = DataDiet(score="random", score_epoch=0, prune=0.25, plot=False, save_dir=tmp_path, seed=3)
    module = fit(tmp_path, [a], max_steps=6)
    assert torch.equal(
        a.scores, torch.rand(NUM_SAMPLES, generator=torch.Generator().manual_seed(3)).double()
    )
    trained = {i for indices, _ in module.seen for i in indices}
    assert trained <= set(a.kept.nonzero().flatten().tolist())


def test_no_scores_when_the_run_ends_before_the_score_epoch(tmp_path):
    diet = DataDiet(score="el2n", score_epoch=5, plot=False, save_dir=tmp_path)
    with pytest.warns(UserWarning, match="nothing was scored"):
        fit(tmp_path, [diet], max_steps=6)
    assert diet.scores is None


def test_clip_scores_with_the_rows_of_its_in_batch_softmax(tmp_path):
    import lightning.pytorch as pl

    from lightning_plugins.datamodules import SyntheticShapes
    from lightning_plugins.modules import CLIP

    pl.seed_everything(0, verbose=False)
    diet = DataDiet(score="el2n", score_epoch=0, prune=0.25, save_dir=tmp_path)
    curriculum = Curriculum(diet, pacing="linear", start=0.5, total_steps=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        callbacks=[diet, curriculum],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = SyntheticShapes(batch_size=8, train_size=32, zero_shot_size=64, retrieval_size=8)
    trainer.fit(CLIP(model_name="ViT-Micro-P8-32"), data)
    assert diet.scores.shape == (32,) and bool(torch.isfinite(diet.scores).all())
    assert bool(((diet.scores >= 0) & (diet.scores <= 2**0.5)).all())
    assert int(diet.kept.sum()) == 24
