"""Bad input to the callbacks: EMATeacher's arguments, a teacher attribute the module takes
over, a checkpoint saved under another teacher name, and an accelerator that is not there."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_plugins.callbacks import EMATeacher
from tests.callbacks.test_ema_teacher import Tiny, fit

NO_CUDA = not torch.cuda.is_available()


# --------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"decay": float("nan")}, ValueError, r"`decay` must be a finite number in \[0, 1\)"),
        ({"decay": float("inf")}, ValueError, "`decay`"),
        ({"decay": None}, TypeError, "`decay` must be a number, got None"),
        ({"schedule_kwargs": 3}, TypeError, "`schedule_kwargs` must be a dict.*got 3 \\(int\\)"),
        ({"schedule_kwargs": "gamma"}, TypeError, "`schedule_kwargs` must be a dict"),
        ({"schedule_kwargs": {"gamma": 1}}, ValueError, "`schedule_kwargs` has \\['gamma'\\]"),
        (
            {"schedule": lambda s: 0.9, "schedule_kwargs": {"gamma": 1}},
            ValueError,
            "`schedule_kwargs` only applies",
        ),
        ({"update_every": -3}, ValueError, "`update_every` must be a positive integer, got -3"),
        ({"update_every": "2"}, TypeError, "`update_every` must be an integer, got '2'"),
        ({"start_step": 1.5}, TypeError, "`start_step` must be an integer, got 1.5"),
        ({"device": "tpu:x"}, ValueError, "`device` must be None or a torch device"),
        ({"device": ["cpu"]}, TypeError, "`device` must be None, a string or a torch.device"),
        ({"include_buffers": 1}, TypeError, "`include_buffers` must be a bool"),
        ({"validate_with": None}, ValueError, "`validate_with` must be one of"),
        ({"validate_with": "EMA"}, ValueError, "got 'EMA'"),
        ({"name": ""}, ValueError, "`name` must be a Python identifier.*got ''"),
        ({"name": "_teacher"}, ValueError, "not starting with '_', got '_teacher'"),
        ({"name": None}, TypeError, "`name` must be a string, got None"),
        ({"dtype": "int8"}, ValueError, r"`dtype` must be one of \('float32'.*got 'int8'"),
        ({"dtype": torch.int64}, TypeError, "`dtype` must be None"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_ema_teacher_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        EMATeacher(**kwargs)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_device_without_cuda_fails_at_construction(device):
    with pytest.raises(ValueError, match=r"`device`='cuda(:\d)?' needs CUDA"):
        EMATeacher(device=device)


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_a_gpu_that_does_not_exist_fails_at_construction():
    index = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"`device`='cuda:{index}' names a GPU"):
        EMATeacher(device=f"cuda:{index}")


def test_methods_before_fitting_say_what_is_missing(tmp_path):
    ema = EMATeacher()
    with pytest.raises(RuntimeError, match="attached at fit start"):
        ema.update(1)
    with pytest.raises(RuntimeError, match="after fitting"):
        ema.export(tmp_path / "ema.pt")
    with pytest.raises(RuntimeError, match="resolved when fitting starts"):
        ema.decay_at(1)


def test_a_schedule_giving_a_decay_outside_0_1_is_named(tmp_path):
    ema = EMATeacher(schedule=lambda step: 1.5)
    with pytest.raises(ValueError, match=r"decay schedule gave 1.5 at step 2; it must lie in"):
        fit(tmp_path, [ema], max_steps=3)


# ------------------------------------------------- the teacher's attribute
class SetsAttributeAtValidation(Tiny):
    """Creates `self.cache` lazily, at its first validation."""

    def on_validation_start(self):
        self.cache = {}


class SetsAttributeInTraining(Tiny):
    def training_step(self, batch, batch_idx):
        if batch_idx == 1:
            self.teacher = None  # takes the teacher's attribute over
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("module", "name"),
    [(SetsAttributeAtValidation, "cache"), (SetsAttributeInTraining, "teacher")],
    ids=["at_validation", "in_training"],
)
def test_an_attribute_the_module_creates_later_is_a_name_clash(tmp_path, module, name):
    ema = EMATeacher(name=name)
    with pytest.raises(ValueError, match=rf"attribute `{name}` was replaced by .*another `name`"):
        fit(tmp_path, [ema], max_steps=6, val_check_interval=2, module=module())


def test_the_clash_check_leaves_a_module_that_keeps_the_view_alone(tmp_path):
    module, _ = fit(tmp_path, [EMATeacher(name="cache")], max_steps=4, val_check_interval=2)
    assert type(module.cache).__name__ == "TeacherView"


# ------------------------------------------------- resume under another name
@pytest.fixture(scope="module")
def checkpoint_of_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("named")
    saver = ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_top_k=-1)
    fit(root, [EMATeacher(decay=0.9, name="teacher"), saver], max_steps=2)
    return root / "epoch=0-step=2.ckpt"


def test_resuming_with_another_name_names_both(checkpoint_of_teacher, tmp_path):
    with pytest.raises(ValueError, match=r"name 'teacher'.*name='fast'.*name='teacher'"):
        fit(tmp_path, [EMATeacher(name="fast")], max_steps=4, ckpt_path=checkpoint_of_teacher)


def test_validating_with_another_name_names_both(checkpoint_of_teacher, tmp_path):
    import lightning.pytorch as pl

    trainer = pl.Trainer(callbacks=[EMATeacher(name="fast")], logger=False, accelerator="cpu")
    with pytest.raises(ValueError, match=r"EMATeacher\{'name': 'teacher'\}"):
        trainer.validate(Tiny(), ckpt_path=checkpoint_of_teacher, verbose=False)


def test_adding_a_second_teacher_on_resume_is_fine(checkpoint_of_teacher, tmp_path):
    old, new = EMATeacher(decay=0.9, name="teacher"), EMATeacher(name="fast")
    fit(tmp_path, [old, new], max_steps=4, ckpt_path=checkpoint_of_teacher)
    assert old.num_updates == 4 and new.num_updates == 2


def test_export_names_a_path_of_the_wrong_type(tmp_path):
    ema = EMATeacher()
    fit(tmp_path, [ema], max_steps=2)
    with pytest.raises(TypeError, match=r"`path` must be a file path, got 3 \(int\)"):
        ema.export(3)
    ema.export(tmp_path / "ema.pt")
    assert (tmp_path / "ema.pt").is_file()


def test_teacher_view_refuses_private_and_missing_attributes(tmp_path):
    module, _ = fit(tmp_path, [EMATeacher()], max_steps=2)
    with pytest.raises(AttributeError, match="_secret"):
        module.teacher._secret  # noqa: B018
    with pytest.raises(AttributeError, match="no_such_layer"):
        module.teacher.no_such_layer  # noqa: B018
