"""Our datamodules build torchdata loaders without the dependency's ``set_vital`` warning."""

import warnings

import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.datamodules import SyntheticShapes
from lightning_plugins.datamodules.stateful_loader import stateful_loader


def record(build):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # override pyproject's filters for this check
        result = build()
    return result, [str(w.message) for w in caught]


def test_torchdata_warns_without_the_wrapper():
    # the check below could fail: torchdata's own constructor does warn
    _, messages = record(lambda: StatefulDataLoader(list(range(4))))
    if not any("set_vital" in m for m in messages):
        pytest.skip("this torchdata no longer calls torch.set_vital")


@pytest.mark.parametrize("sampling", ["iid", "cabs"])
def test_train_loader_is_built_without_the_set_vital_warning(sampling):
    dm = SyntheticShapes(batch_size=4, train_size=16, sampling=sampling, filter_ratio=0.5)
    dm.setup("fit")
    loader, messages = record(dm.train_dataloader)
    assert isinstance(loader, StatefulDataLoader)
    assert not any("set_vital" in m for m in messages)


def test_only_that_warning_is_ignored_and_only_while_building():
    def build():
        loader = stateful_loader(list(range(4)), batch_size=2)
        warnings.warn("'set_vital' is deprecated, from elsewhere", UserWarning, stacklevel=1)
        return loader

    loader, messages = record(build)
    assert [len(b) for b in loader] == [2, 2]
    assert messages == ["'set_vital' is deprecated, from elsewhere"]
