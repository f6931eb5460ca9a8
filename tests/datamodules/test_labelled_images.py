"""Zero-shot evaluation on your own data: ``ImageTextDataModule(zero_shot_val=...)``."""

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightning_plugins.datamodules import ImageTextDataModule
from lightning_plugins.datamodules.labelled_images import read_labelled_images
from lightning_plugins.metrics import read_zero_shot_data

CLASSES = ["circle", "square", "star"]
COLOURS = {"circle": "red", "square": "green", "star": "blue"}


def write_pairs(root: Path, n: int = 8) -> Path:
    """A retrieval manifest of ``n`` coloured images with captions."""
    (root / "pairs").mkdir()
    rows = []
    for i in range(n):
        Image.new("RGB", (24, 24), (30 * i, 255 - 30 * i, 7 * i)).save(root / f"pairs/{i}.png")
        rows.append({"image": f"pairs/{i}.png", "caption": f"colour {i}", "concepts": ["dot"]})
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root / "pairs.jsonl"


def write_folder(root: Path, per_class: int = 2) -> Path:
    """``root/folder/<class>/<i>.png``: torchvision ImageFolder's layout."""
    for name in CLASSES:
        (root / "folder" / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20, 20), COLOURS[name]).save(root / f"folder/{name}/{i}.png")
    (root / "folder" / "star" / "notes.txt").write_text("not an image")
    return root / "folder"


def write_labelled_manifest(root: Path, labels: list) -> Path:
    (root / "zs").mkdir(exist_ok=True)
    rows = []
    for i, label in enumerate(labels):
        Image.new("RGB", (20, 20), "white").save(root / f"zs/{i}.png")
        rows.append({"image": f"zs/{i}.png", "label": label})
    path = root / "zero_shot.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_folder_classes_are_sorted_sub_folders(tmp_path):
    folder = write_folder(tmp_path)
    images, labels, names = read_labelled_images(str(folder), None)
    assert names == sorted(CLASSES)
    assert labels == [0, 0, 1, 1, 2, 2]
    assert [Path(p).parent.name for p in images] == ["circle"] * 2 + ["square"] * 2 + ["star"] * 2


def test_folder_with_given_class_names_uses_their_ids(tmp_path):
    folder = write_folder(tmp_path)
    _, labels, names = read_labelled_images(str(folder), ["star", "dog", "square", "circle"])
    assert names == ["star", "dog", "square", "circle"]
    assert labels == [3, 3, 2, 2, 0, 0]


def test_manifest_labels_by_name_or_id(tmp_path):
    path = write_labelled_manifest(tmp_path, ["star", 0, "1", "circle"])
    _, labels, names = read_labelled_images(str(path), CLASSES)
    assert (labels, names) == ([2, 0, 1, 0], CLASSES)
    path = write_labelled_manifest(tmp_path, ["star", "circle"])
    assert read_labelled_images(str(path), None)[1:] == ([1, 0], ["circle", "star"])


def test_csv_manifest(tmp_path):
    write_labelled_manifest(tmp_path, ["x", "x"])  # the images
    path = tmp_path / "zero_shot.csv"
    path.write_text("image,label\nzs/0.png,square\nzs/1.png,2\n")
    assert read_labelled_images(str(path), CLASSES)[1] == [1, 2]


def test_datamodule_exposes_the_zero_shot_protocol_and_labelled_batches(tmp_path):
    dm = ImageTextDataModule(
        str(write_pairs(tmp_path)),
        val=str(tmp_path / "pairs.jsonl"),
        zero_shot_val=str(write_folder(tmp_path)),
        templates=["a {} shape"],
        class_groups={"pointy": [2]},
        image_size=16,
        batch_size=4,
    )
    dm.setup("fit")
    classes = read_zero_shot_data(dm)
    assert classes.class_names == sorted(CLASSES)
    assert classes.templates == ["a {} shape"] and classes.class_groups == {"pointy": [2]}
    zero_shot, retrieval = dm.val_dataloader()
    batch = next(iter(zero_shot))
    assert sorted(batch) == ["image", "index", "label"]
    assert batch["label"].tolist() == [0, 0, 1, 1] and batch["image"].shape == (4, 3, 16, 16)
    assert "caption" in next(iter(retrieval))


def test_without_zero_shot_val_there_are_no_classes(tmp_path):
    dm = ImageTextDataModule(str(write_pairs(tmp_path)), image_size=16, batch_size=4)
    dm.setup("fit")
    assert dm.class_names is None and read_zero_shot_data(dm) is None
    assert dm.val_dataloader() == []


def test_zero_shot_val_alone_gives_one_loader(tmp_path):
    dm = ImageTextDataModule(
        str(write_pairs(tmp_path)), zero_shot_val=str(write_folder(tmp_path)), image_size=16
    )
    dm.setup("validate")
    assert isinstance(dm.val_dataloader(), DataLoader)


def test_fit_logs_zero_shot_accuracy_of_the_labelled_images(tmp_path):
    from lightning_plugins.modules import CLIP

    pl.seed_everything(0)
    dm = ImageTextDataModule(
        str(write_pairs(tmp_path)),
        val=str(tmp_path / "pairs.jsonl"),
        zero_shot_val=str(write_folder(tmp_path, per_class=3)),
        model_name="ViT-Micro-P8-32",
        batch_size=4,
    )
    model = CLIP(model_name="ViT-Micro-P8-32")
    trainer = pl.Trainer(
        max_steps=1,
        limit_train_batches=1,  # validate after the one step
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    logged = trainer.callback_metrics
    assert {"val/zero_shot_top1", "val/i2t_R@1"} <= set(logged)
    # Reference: the trained weights' nearest prompt for each of the 9 images.
    model.eval()
    with torch.no_grad():
        classifier = model.encode_prompts([f"a photo of a {c}." for c in sorted(CLASSES)])
        batches = list(dm.val_dataloader()[0])
        images = torch.cat([b["image"] for b in batches])
        labels = torch.cat([b["label"] for b in batches])
        predicted = (model.encode_image(images) @ classifier.T).argmax(dim=1)
    expected = (predicted == labels).float().mean()
    torch.testing.assert_close(logged["val/zero_shot_top1"], expected)


@pytest.mark.parametrize(
    ("labels", "class_names", "match"),
    [
        (["circle", "dog"], CLASSES, r"line 2 of .*zero_shot.jsonl.*label 'dog'.*not a class"),
        ([0, 3], CLASSES, r"line 2 of .*zero_shot.jsonl.*class id 3, outside \[0, 3\)"),
        ([0, 1], None, r"zero_shot.jsonl.*by class id; give `class_names`"),
        ([None, 1], CLASSES, r"line 1 of .*zero_shot.jsonl.*needs a 'label'"),
    ],
)
def test_bad_labels_raise_naming_the_file(tmp_path, labels, class_names, match):
    path = write_labelled_manifest(tmp_path, labels)
    dm = ImageTextDataModule(
        str(write_pairs(tmp_path)), zero_shot_val=str(path), class_names=class_names
    )
    with pytest.raises(ValueError, match=match):
        dm.setup("validate")


def test_empty_folders_raise_naming_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"'.*empty' holds no class sub-folders"):
        read_labelled_images(str(tmp_path / "empty"), None)
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(ValueError, match=r"class folder '.*empty/cat' holds no image"):
        read_labelled_images(str(tmp_path / "empty"), None)
    folder = write_folder(tmp_path)
    with pytest.raises(ValueError, match=r"sub-folders \['star'\] that are not in `class_names`"):
        read_labelled_images(str(folder), ["circle", "square"])


def test_undecodable_image_names_the_file(tmp_path):
    folder = write_folder(tmp_path)
    (folder / "star" / "1.png").write_bytes(b"not a png")
    dm = ImageTextDataModule(str(write_pairs(tmp_path)), zero_shot_val=str(folder), image_size=8)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"Cannot decode .*star/1.png"):
        list(dm.val_dataloader())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_names": ["a"]}, r"`class_names` describe .* `zero_shot_val`, which is None"),
        ({"zero_shot_val": "missing_dir"}, r"`zero_shot_val`='missing_dir' must be an existing"),
        ({"zero_shot_val": ".", "templates": ["no slot"]}, r"`templates` entry 'no slot'"),
        ({"zero_shot_val": ".", "class_names": ["a", "a"]}, r"`class_names` lists \['a'\]"),
    ],
)
def test_bad_arguments_raise_at_construction(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageTextDataModule(str(write_pairs(tmp_path)), **kwargs)


def test_class_groups_outside_the_classes_raise_at_setup(tmp_path):
    dm = ImageTextDataModule(
        str(write_pairs(tmp_path)),
        zero_shot_val=str(write_folder(tmp_path)),
        class_groups={"rare": [5]},
    )
    with pytest.raises(ValueError, match=r"class_groups\['rare'\].*outside \[0, 3\)"):
        dm.setup("validate")


def test_zero_shot_val_from_lightning_cli(tmp_path, monkeypatch):
    import sys

    from lightning_plugins.cli import main

    monkeypatch.setattr(sys, "argv", ["lightning-plugins"])
    config = {
        "model": {"class_path": "CLIP", "init_args": {"model_name": "ViT-Micro-P8-32"}},
        "data": {
            "class_path": "ImageTextDataModule",
            "init_args": {
                "train": str(write_pairs(tmp_path)),
                "zero_shot_val": str(write_folder(tmp_path)),
                "templates": ["a {} shape"],
                "class_groups": {"pointy": [2]},
                "model_name": "ViT-Micro-P8-32",
                "batch_size": 4,
            },
        },
        "trainer": {"fast_dev_run": True, "default_root_dir": str(tmp_path), "logger": False},
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    cli = main(["validate", "--config", str(tmp_path / "config.yaml")])
    assert cli.datamodule.class_groups == {"pointy": [2]}
    assert {"val/zero_shot_top1", "val/zero_shot_top1_pointy"} <= set(cli.trainer.callback_metrics)
