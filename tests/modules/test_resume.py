"""Checkpoints: exact mid-epoch resume, weights-only loading, load_from_checkpoint."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_plugins.datamodules import SyntheticShapes
from lightning_plugins.modules import CLIP

MICRO = "ViT-Micro-P8-32"


def run(
    root, max_steps: int, ckpt_path=None, save_every=None, num_workers=0, sampling="iid", **data
) -> CLIP:
    pl.seed_everything(0)
    module = CLIP(
        model_name=MICRO,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    )
    # 4 batches per epoch: a checkpoint at step 3 is mid-epoch, the run crosses epochs
    data = {
        "batch_size": 4,
        "train_size": 16 if sampling == "iid" else 32,  # CABS: 8 candidates per batch of 4
        **data,
    }
    dm = SyntheticShapes(
        zero_shot_size=64,
        retrieval_size=8,
        num_workers=num_workers,
        sampling=sampling,
        filter_ratio=0.5,
        **data,
    )
    callbacks = (
        [ModelCheckpoint(dirpath=root, every_n_train_steps=save_every, save_top_k=-1)]
        if save_every
        else []
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        callbacks=callbacks,
        enable_checkpointing=bool(save_every),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return module


@pytest.fixture(
    scope="module",
    params=[(0, "iid"), (1, "iid"), (1, "cabs")],
    ids=["main_process", "one_worker", "cabs_one_worker"],
)
def uninterrupted(request, tmp_path_factory):
    """A 7-step run that saves every 3 steps, data loaded in 0 or 1 workers, IID or CABS."""
    root = tmp_path_factory.mktemp("full")
    num_workers, sampling = request.param
    module = run(root, max_steps=7, save_every=3, num_workers=num_workers, sampling=sampling)
    return module, root, request.param


@pytest.mark.parametrize("checkpoint", ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"])
def test_mid_epoch_resume_continues_exactly(uninterrupted, tmp_path, checkpoint):
    full, root, (num_workers, sampling) = uninterrupted
    resumed = run(
        tmp_path, 7, ckpt_path=root / checkpoint, num_workers=num_workers, sampling=sampling
    )
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_checkpoint_loads_weights_only_and_from_checkpoint(uninterrupted):
    _, root, _ = uninterrupted
    path = root / "epoch=1-step=6.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["model_name"] == MICRO
    loaded = CLIP.load_from_checkpoint(path)
    state = checkpoint["state_dict"]
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[name], msg=name)


@pytest.fixture(scope="module")
def iid_checkpoint(tmp_path_factory):
    """A mid-epoch checkpoint (step 3 of 4) of an i.i.d. run."""
    root = tmp_path_factory.mktemp("iid")
    run(root, max_steps=3, save_every=3)
    return root / "epoch=0-step=3.ckpt"


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"sampling": "cabs"}, r"sampling='iid'.*but this one has sampling='cabs'"),
        ({"batch_size": 8}, r"batch_size=4.*but this one has batch_size=8"),
        ({"train_size": 20}, r"train_size=16.*but this one has train_size=20"),
        ({"num_workers": 1}, r"num_workers=0.*but this one has num_workers=1"),
    ],
)
def test_resume_with_other_data_settings_names_the_mismatch(
    iid_checkpoint, tmp_path, changed, message
):
    """Not Lightning's "call `iter(combined_loader)` first", nor a silently skipped epoch."""
    with pytest.raises(ValueError, match=rf"Cannot resume SyntheticShapes.*{message}"):
        run(tmp_path, 6, ckpt_path=iid_checkpoint, **changed)


def test_training_set_one_above_a_multiple_of_the_batch_size(tmp_path):
    """17 pairs in batches of 4: the last pair is dropped, no 1-pair contrastive batch."""
    pl.seed_everything(0)
    module = CLIP(model_name=MICRO)
    dm = SyntheticShapes(batch_size=4, train_size=17, zero_shot_size=64, retrieval_size=8)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, dm)
    assert trainer.global_step == 4
