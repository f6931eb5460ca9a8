"""SkillIt and GradientAlignmentMixing against direct implementations of their updates."""

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from lightning_plugins.callbacks import GradientAlignmentMixing, SkillIt
from lightning_plugins.sampling import find_mixture_sampler
from tests.callbacks.mixing import NAMES, UserMixture, fit_mixture
from tests.callbacks.steering import Snapshots, net_at


def held_out_losses(net, data):
    losses = []
    for x, y in data.held_out:
        with torch.no_grad():
            losses.append(float(F.cross_entropy(net(x), y)))
    return losses


def skill_it_reference(prior, graph, window, eta):
    k = len(prior)
    total = [sum(row[j] for row in window) for j in range(k)]
    scores = [
        math.log(prior[i]) + eta * sum(graph[i][j] * total[j] for j in range(k)) for i in range(k)
    ]
    top = max(scores)
    unnorm = [math.exp(s - top) for s in scores]
    return [u / sum(unnorm) for u in unnorm]


GRAPH = [[1.0, 0.2, 0.0], [0.3, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_skill_it_follows_the_windowed_formula(tmp_path):
    snapshots = Snapshots()
    skill_it = SkillIt(graph=GRAPH, eta=0.5, window=2, update_every=4, save_dir=tmp_path)
    fit_mixture(tmp_path, [snapshots, skill_it], max_steps=16)
    data = UserMixture()
    window = []
    assert skill_it.steps == [0, 4, 8, 12]
    for epoch, weights in enumerate(skill_it.history):
        window = [*window, held_out_losses(net_at(snapshots.weights[epoch]), data)][-2:]
        expected = skill_it_reference([1 / 3] * 3, GRAPH, window, 0.5)
        torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64))
    saved = torch.load(tmp_path / "skill_it_weights.pt", weights_only=True)
    assert saved["sources"] == list(NAMES) and torch.equal(saved["weights"][-1], skill_it.weights)
    assert (tmp_path / "skill_it_weights.png").stat().st_size > 0


def test_the_sampler_draws_with_the_new_weights(tmp_path):
    seen = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(find_mixture_sampler(trainer.train_dataloader).weights.clone())

    skill_it = SkillIt(graph=GRAPH, eta=0.5, update_every=4, plot=False, save_dir=tmp_path)
    fit_mixture(tmp_path, [skill_it, Record()], max_steps=8)
    for step, weights in enumerate(seen):
        torch.testing.assert_close(weights, skill_it.history[step // 4])


def test_skill_it_target_uses_only_the_target_columns(tmp_path):
    snapshots = Snapshots()
    skill_it = SkillIt(graph=GRAPH, eta=1.0, window=1, update_every=4, target=["b"], plot=False)
    fit_mixture(tmp_path, [snapshots, skill_it], max_steps=4)
    losses = held_out_losses(net_at(snapshots.weights[0]), UserMixture())
    scores = [GRAPH[i][1] * losses[1] for i in range(3)]
    expected = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
    torch.testing.assert_close(skill_it.history[0], expected)


def dga_reference(net_weights, data, alpha, eta, beta):
    net = net_at(net_weights)

    def grad(x, y):
        net.zero_grad()
        F.cross_entropy(net(x[:16]), y[:16]).backward()  # eval_batches=1: the first 16
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()]).double()

    target = grad(*data.target)
    dots = torch.stack([grad(x, y) @ target for x, y in data.held_out])
    new = torch.softmax(torch.log(alpha) + eta * dots, 0)
    return (1 - beta) * alpha + beta * new


def test_dga_follows_explicit_per_domain_gradients(tmp_path):
    snapshots = Snapshots()
    dga = GradientAlignmentMixing(eta=2.0, ema=0.5, update_every=4, save_dir=tmp_path)
    fit_mixture(tmp_path, [snapshots, dga], max_steps=12)
    data = UserMixture()
    alpha = torch.full((3,), 1 / 3, dtype=torch.float64)
    for epoch, weights in enumerate(dga.history):
        alpha = dga_reference(snapshots.weights[epoch], data, alpha, 2.0, 0.5)
        torch.testing.assert_close(weights, alpha)
    # the flipped-label domain "c" disagrees with the target: its weight falls
    assert float(dga.weights[2]) < 1 / 3
    assert (tmp_path / "gradient_alignment_weights.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind", ["skill_it", "dga"])
def test_mixing_resumes_exactly(tmp_path, kind, num_workers):
    def make():
        if kind == "skill_it":
            return [
                SkillIt(
                    graph=GRAPH, eta=0.5, window=2, update_every=4, plot=False, save_dir=tmp_path
                )
            ]
        return [
            GradientAlignmentMixing(eta=2.0, ema=0.5, update_every=4, plot=False, save_dir=tmp_path)
        ]

    full_root = tmp_path / "full"
    callbacks = make()
    full, _ = fit_mixture(full_root, callbacks, 14, save_every=6, num_workers=num_workers)
    # step 12 ends epoch 2: Lightning resumes without on_train_epoch_start, and with workers
    # the next epoch is drawn before any hook, so that case is exact with num_workers=0 only
    checkpoints = [("epoch=1-step=6.ckpt", 6)] + [("epoch=2-step=12.ckpt", 12)] * (num_workers == 0)
    for name, step in checkpoints:
        resumed_callbacks = make()
        resumed, _ = fit_mixture(
            tmp_path / name,
            resumed_callbacks,
            14,
            ckpt_path=full_root / name,
            num_workers=num_workers,
        )
        assert resumed.seen == full.seen[step:], name
        assert resumed_callbacks[0].steps == callbacks[0].steps
        torch.testing.assert_close(
            torch.stack(resumed_callbacks[0].history), torch.stack(callbacks[0].history)
        )
        for key, value in full.state_dict().items():
            torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


def test_estimated_graph_links_skills_that_share_labels(tmp_path):
    from lightning_plugins.callbacks import estimate_skills_graph
    from tests.callbacks.steering import UserClassifier

    graph = estimate_skills_graph(
        UserClassifier, UserMixture(), steps=6, path=tmp_path / "graph.pt", accelerator="cpu"
    )
    assert graph.shape == (3, 3) and bool((graph >= 0).all())
    # a and b share their labelling, c flips it: training on a helps b, hurts c (clipped to 0)
    assert float(graph[0, 0]) > 0 and float(graph[0, 1]) > 0 and float(graph[1, 0]) > 0
    assert float(graph[0, 2]) == 0.0 and float(graph[2, 0]) == 0.0
    assert torch.equal(SkillIt(graph=tmp_path / "graph.pt").graph, graph)


def _ddp_mixing(rank, world_size, port, root, kind):
    import lightning.pytorch as pl

    from tests.callbacks.steering import UserClassifier
    from tests.helpers import join_lightning

    join_lightning(rank, world_size, port)
    pl.seed_everything(0, verbose=False)
    if kind == "skill_it":
        callback = SkillIt(
            graph=GRAPH, eta=0.5, window=2, update_every=4, plot=False, save_dir=root
        )
    else:
        callback = GradientAlignmentMixing(
            eta=2.0, ema=0.5, update_every=4, plot=False, save_dir=root
        )
    module = UserClassifier()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world_size,
        strategy="ddp",
        max_steps=8,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, UserMixture())
    return {"history": torch.stack(callback.history), "seen": module.seen}


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["skill_it", "dga"])
def test_ranks_get_the_same_weights_as_one_process(tmp_path, kind):
    from tests.helpers import free_port, run_ddp

    a, b = run_ddp(_ddp_mixing, free_port(), str(tmp_path), kind)
    assert torch.equal(a["history"], b["history"])
    for (first, _), (second, _) in zip(a["seen"], b["seen"], strict=True):
        assert len(first) == len(second) and not set(first) & set(second)
    # held-out losses and gradients are shared between the ranks and all-reduced: the first
    # update (same initial weights) equals that of one process on all held-out data
    if kind == "skill_it":
        single = SkillIt(
            graph=GRAPH, eta=0.5, window=2, update_every=4, plot=False, save_dir=tmp_path
        )
    else:
        single = GradientAlignmentMixing(
            eta=2.0, ema=0.5, update_every=4, plot=False, save_dir=tmp_path
        )
    fit_mixture(tmp_path / "one", [single], max_steps=4)
    torch.testing.assert_close(a["history"][0], single.history[0])
