import pytest
import torch
import torch.nn.functional as F

from lightning_plugins.functional import zero_shot_classifier


def encoder(dim: int = 8):
    """A fixed random embedding per prompt string, normalised."""
    table: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(0)

    def encode(prompts: list[str]) -> torch.Tensor:
        for prompt in prompts:
            if prompt not in table:
                table[prompt] = F.normalize(torch.randn(dim, generator=generator), dim=0)
        return torch.stack([table[p] for p in prompts])

    return encode


def reference(encode, class_names, templates) -> torch.Tensor:
    """One class at a time: the mean of its normalised prompt embeddings, normalised."""
    rows = []
    for name in class_names:
        prompts = encode([template.format(name) for template in templates])
        rows.append(F.normalize(prompts.mean(0), dim=0))
    return torch.stack(rows)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_matches_one_class_at_a_time(chunk_size):
    encode = encoder()
    classes, templates = ["cat", "dog", "bird", "fish"], ["a {}.", "a photo of a {}.", "{}"]
    got = zero_shot_classifier(encode, classes, templates, chunk_size=chunk_size)
    torch.testing.assert_close(got, reference(encode, classes, templates))
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(4))


def test_chunks_bound_the_prompts_encoded_at_once():
    calls = []
    encode = encoder()
    zero_shot_classifier(
        lambda p: calls.append(len(p)) or encode(p), ["a", "b", "c"], ["{}"] * 3, 4
    )
    assert calls == [4, 4, 1]


@pytest.mark.parametrize(
    ("class_names", "templates", "match"),
    [
        ([], ["{}"], "`class_names` is empty"),
        (["cat"], [], "`templates` must be a non-empty list"),
        (["cat"], ["a photo"], "'a photo' has no '{}'"),
    ],
)
def test_bad_inputs(class_names, templates, match):
    with pytest.raises(ValueError, match=match):
        zero_shot_classifier(encoder(), class_names, templates)


def test_bad_types():
    with pytest.raises(TypeError, match="`class_names` must be a list"):
        zero_shot_classifier(encoder(), "cat", ["{}"])
    with pytest.raises(TypeError, match="`chunk_size` must be an integer"):
        zero_shot_classifier(encoder(), ["cat"], ["{}"], chunk_size=2.0)
