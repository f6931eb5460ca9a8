import pytest

from lightning_plugins.metrics import (
    DEFAULT_TEMPLATES,
    ZeroShotClasses,
    ZeroShotData,
    read_zero_shot_data,
)


class Data:
    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def test_a_datamodule_with_the_protocol_is_read_whole():
    data = Data(class_names=("cat", "dog"), templates=("a {}",), class_groups={"pets": (1,)})
    assert isinstance(data, ZeroShotData)
    classes = read_zero_shot_data(data)
    assert classes == ZeroShotClasses(["cat", "dog"], ["a {}"], {"pets": [1]})
    assert classes.prompt_templates == ("a {}",)


def test_none_means_no_zero_shot_or_the_defaults():
    assert read_zero_shot_data(None) is None
    assert read_zero_shot_data(Data()) is None  # no class_names: no zero-shot evaluation
    assert read_zero_shot_data(Data(class_names=None, templates=None, class_groups=None)) is None
    classes = read_zero_shot_data(Data(class_names=["cat"], templates=None, class_groups=None))
    assert classes.prompt_templates == DEFAULT_TEMPLATES and classes.class_groups is None


def test_a_partial_protocol_is_an_error_naming_what_is_missing():
    with pytest.raises(TypeError, match="Data has `class_names` but no `templates` or `class_gr"):
        read_zero_shot_data(Data(class_names=["cat"]))
    with pytest.raises(TypeError, match="but no `class_groups`"):
        read_zero_shot_data(Data(class_names=["cat"], templates=None))


@pytest.mark.parametrize(
    ("attributes", "match"),
    [
        ({"class_names": []}, "Data's zero-shot data: `class_names` is empty"),
        ({"templates": ["a photo"]}, "'a photo' has no '{}'"),
        ({"class_groups": {"rare": [0, 2]}}, r"`class_groups\['rare'\]` holds class ids \[2\]"),
    ],
)
def test_bad_values_are_errors(attributes, match):
    data = Data(
        **{"class_names": ["a", "b"], "templates": None, "class_groups": None, **attributes}
    )
    with pytest.raises(ValueError, match=match):
        read_zero_shot_data(data)


def test_zero_shot_classes_check_their_fields():
    with pytest.raises(TypeError, match="`class_names` must be a list of strings"):
        ZeroShotClasses("cat")
    with pytest.raises(ValueError, match="`class_names` is empty"):
        ZeroShotClasses([])
    given = ZeroShotClasses(["cat"])
    assert read_zero_shot_data(given) is given
