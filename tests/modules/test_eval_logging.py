"""Where validation results land: each metric under the dataloader that produced it."""

import lightning.pytorch as pl
import torch

from lightning_plugins.callbacks import EMATeacher
from lightning_plugins.datamodules import SyntheticShapes
from lightning_plugins.metrics import ImageTextEvaluation, read_zero_shot_data
from lightning_plugins.modules import CLIP

ZERO_SHOT = {
    "val/zero_shot_top1",
    "val/zero_shot_top5",
    "val/zero_shot_top1_rare",
    "val/zero_shot_top5_rare",
}
RETRIEVAL = {f"val/{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}


def _data(**kwargs):
    sizes = dict(batch_size=16, train_size=32, zero_shot_size=64, retrieval_size=32)
    return SyntheticShapes(num_workers=0, **(sizes | kwargs))


def _trainer(tmp_path, **kwargs):
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def _reference(model, loaders, limit):
    """The results of each loader on its own, computed outside Lightning."""
    evaluation = ImageTextEvaluation(chunk_size=model.hparams.eval_chunk_size)
    model.eval()
    out = []
    with torch.no_grad():
        evaluation.start(read_zero_shot_data(model.trainer.datamodule), model.encode_prompts)
        for loader in loaders:
            evaluation.reset()
            for batch_idx, batch in enumerate(loader):
                if batch_idx == limit:
                    break
                text = model.text_tokens(batch) if "caption" in batch else None
                evaluation.update(
                    model.encode_image(batch["image"]),
                    labels=batch.get("label"),
                    text_features=None if text is None else model.encode_text(text),
                    index=batch.get("index"),
                )
            out.append({f"val/{k}": float(v) for k, v in evaluation.compute().items()})
    return out


def test_validate_gives_each_metric_once_under_its_dataloader(tmp_path):
    pl.seed_everything(0)
    model, data = CLIP(model_name="ViT-Micro-P8-32"), _data()
    trainer = _trainer(tmp_path, limit_val_batches=3)
    results = trainer.validate(model, data, verbose=False)
    assert len(results) == 2
    assert set(results[0]) == ZERO_SHOT  # the zero-shot loader: `label`
    assert set(results[1]) == RETRIEVAL  # the retrieval loader: `caption`
    expected = _reference(model, data.val_dataloader(), limit=3)
    assert results == expected  # bitwise: logging moved, the values did not change
    # monitors and loggers see the plain names, no /dataloader_idx_N
    assert set(trainer.callback_metrics) == ZERO_SHOT | RETRIEVAL


def test_one_dataloader_with_labels_and_captions(tmp_path):
    class OneLoader(SyntheticShapes):
        def val_dataloader(self):
            return super().val_dataloader()[0]

    class Captioned(OneLoader):
        """Zero-shot images that also carry captions: both kinds from one loader."""

        def val_dataloader(self):
            loader = super().val_dataloader()
            collate = loader.collate_fn

            def with_caption(samples):
                batch = collate(samples)
                batch["caption"] = [f"a photo of shape {int(y)}" for y in batch["label"]]
                return batch

            loader.collate_fn = with_caption
            return loader

    pl.seed_everything(0)
    model = CLIP(model_name="ViT-Micro-P8-32")
    data = Captioned(num_workers=0, batch_size=16, train_size=32, zero_shot_size=64)
    (result,) = _trainer(tmp_path, limit_val_batches=2).validate(model, data, verbose=False)
    assert set(result) == ZERO_SHOT | RETRIEVAL


def test_a_second_loader_of_the_same_kind_gets_lightnings_suffix(tmp_path):
    class TwoRetrieval(SyntheticShapes):
        def val_dataloader(self):
            zero_shot, retrieval = super().val_dataloader()
            return [zero_shot, retrieval, retrieval]

    pl.seed_everything(0)
    model = CLIP(model_name="ViT-Micro-P8-32")
    data = TwoRetrieval(num_workers=0, batch_size=16, train_size=32, zero_shot_size=64)
    results = _trainer(tmp_path, limit_val_batches=1).validate(model, data, verbose=False)
    assert set(results[0]) == ZERO_SHOT
    assert set(results[1]) == RETRIEVAL
    assert set(results[2]) == {f"{name}/dataloader_idx_2" for name in RETRIEVAL}
    assert results[2] == {f"{k}/dataloader_idx_2": v for k, v in results[1].items()}


def test_a_loader_of_unknown_length_is_logged_at_the_epoch_end(tmp_path, monkeypatch):
    """Without a count of its batches the module cannot tell a loader's last batch: the
    results are logged at the epoch end, which Lightning gives to every dataloader."""
    pl.seed_everything(0)
    model, data = CLIP(model_name="ViT-Micro-P8-32"), _data()
    monkeypatch.setattr(CLIP, "_eval_num_batches", lambda self, stage, idx: float("inf"))
    results = _trainer(tmp_path, limit_val_batches=2).validate(model, data, verbose=False)
    assert set(results[0]) == set(results[1]) == ZERO_SHOT | RETRIEVAL


def test_ema_teacher_pass_still_logs_suffixed_names(tmp_path):
    """EMATeacher(validate_with="both") runs the module's hooks in its own pass, outside the
    loop's dataloader context: the `_teacher` results keep their names (epoch-level)."""
    pl.seed_everything(0)
    model, data = CLIP(model_name="ViT-Micro-P8-32"), _data()
    trainer = _trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[EMATeacher(decay=0.5, validate_with="both")],
    )
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert ZERO_SHOT | RETRIEVAL | {f"{n}_teacher" for n in ZERO_SHOT | RETRIEVAL} <= set(metrics)
    assert not any("dataloader_idx" in name for name in metrics)
