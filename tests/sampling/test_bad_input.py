"""Bad input to the samplers: wrong arguments, and states saved by another configuration."""

import re

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_plugins.sampling import ConceptAwareBatchSampler, ConceptAwareStream, ShuffleSampler

CONCEPTS = [[i % 5] * (1 + i % 3) for i in range(40)]
SOURCE = [{"index": i, "concepts": CONCEPTS[i]} for i in range(40)]


def cabs(**kwargs):
    settings = {"concepts": CONCEPTS, "batch_size": 4, "filter_ratio": 0.5, **kwargs}
    return ConceptAwareBatchSampler(**settings)


def stream(**kwargs):
    settings = {"source": SOURCE, "batch_size": 4, "filter_ratio": 0.5, **kwargs}
    return ConceptAwareStream(**settings)


# ----------------------------------------------------------------- constructor arguments
@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: ShuffleSampler(1.5), TypeError, r"`size` must be an integer, got 1\.5"),
        (lambda: ShuffleSampler("8"), TypeError, r"`size` must be an integer, got '8'"),
        (lambda: ShuffleSampler(-1), ValueError, r"`size` must be a non-negative.*got -1"),
        (lambda: ShuffleSampler(8, seed=0.5), TypeError, r"`seed` must be an integer"),
        (lambda: ShuffleSampler(8, seed=True), TypeError, r"`seed` must be an integer"),
        (lambda: cabs(batch_size=1.5), TypeError, r"`batch_size` must be an integer"),
        (lambda: cabs(batch_size=0), ValueError, r"`batch_size` must be a positive"),
        (lambda: cabs(filter_ratio=1.0), ValueError, r"filter_ratio"),
        (lambda: cabs(filter_ratio="0.5"), TypeError, r"filter_ratio"),
        (lambda: cabs(variant="xx"), ValueError, r"variant.*'xx'"),
        (lambda: cabs(cap=0), ValueError, r"cap"),
        (lambda: cabs(seed=1.0), TypeError, r"`seed` must be an integer"),
        (lambda: cabs(num_concepts=0), ValueError, r"`num_concepts` must be a positive"),
        (lambda: cabs(num_concepts=3), ValueError, r"concept id 4.*\[0, 3\)"),
        (lambda: cabs(targets=[0.5, 0.5], num_concepts=5), ValueError, r"targets"),
        (lambda: cabs(batch_size=30), ValueError, r"more than the 40 samples"),
        (lambda: cabs(num_replicas=2, rank=2), ValueError, r"`rank` must be in"),
        (lambda: cabs(num_replicas=0), ValueError, r"`num_replicas` must be a positive"),
        (lambda: cabs(concepts=[[1.5], [2]]), TypeError, r"sample 0.*1\.5"),
        (lambda: cabs(concepts=[[1], [-2]] * 20), ValueError, r"concept id -2"),
        (lambda: stream(source=5), TypeError, r"`source` must be an iterable.*int"),
        (lambda: stream(batch_size=2.0), TypeError, r"`batch_size` must be an integer"),
        (lambda: stream(batch_size=0), ValueError, r"`batch_size` must be a positive"),
        (lambda: stream(filter_ratio=-0.1), ValueError, r"filter_ratio"),
        (lambda: stream(variant="dx"), ValueError, r"variant"),
        (lambda: stream(seed="0"), TypeError, r"`seed` must be an integer"),
        (lambda: stream(num_concepts=-1), ValueError, r"`num_concepts` must be a positive"),
        (lambda: stream(targets=[1.0, 1.0]), ValueError, r"targets"),
    ],
)
def test_constructor_refuses(build, error, message):
    with pytest.raises(error, match=message):
        build()


# ----------------------------------------------------------------------- bad samples
@pytest.mark.parametrize(
    ("sample", "error", "message"),
    [
        ([1, 2], TypeError, r"`source` must yield sample dicts, got a list"),
        ({"index": 3}, KeyError, r"no concepts under `concepts_key`='concepts'"),
        (
            {"index": 3, "concepts": [1.5]},
            TypeError,
            r"integer concept ids; sample 3 holds 1\.5 \(float\)",
        ),
        ({"index": 3, "concepts": torch.tensor([1.0])}, ValueError, r"1-D integer ids"),
    ],
)
def test_stream_refuses_bad_samples(sample, error, message):
    source = [*SOURCE[:3], sample, *SOURCE[4:]]
    with pytest.raises(error, match=message):
        list(ConceptAwareStream(source, batch_size=4, filter_ratio=0.5, variant="fm"))


# ------------------------------------------------- resuming with another configuration
def _mid_epoch_state(sampler, steps=2):
    it = iter(sampler)
    for _ in range(steps):
        next(it)
    return sampler.state_dict()


@pytest.mark.parametrize(
    ("saved", "loading", "message"),
    [
        (
            lambda: ShuffleSampler(16, seed=0),
            lambda: ShuffleSampler(17, seed=0),
            r"saved with size=16, but this one has size=17\. Resume with the same settings",
        ),
        (
            lambda: ShuffleSampler(16, seed=0),
            lambda: ShuffleSampler(16, seed=1),
            r"saved with seed=0, but this one has seed=1",
        ),
        (
            lambda: cabs(batch_size=4),
            lambda: cabs(batch_size=2),
            r"saved with batch_size=4, super_batch_size=8, but this one has batch_size=2, "
            r"super_batch_size=4",
        ),
        (
            lambda: cabs(),
            lambda: ConceptAwareBatchSampler(CONCEPTS * 2, batch_size=4, filter_ratio=0.5),
            r"num_samples=40, but this one has num_samples=80",
        ),
        (lambda: cabs(), lambda: cabs(num_replicas=2), r"num_replicas=1.*num_replicas=2"),
        (lambda: cabs(seed=0), lambda: cabs(seed=3), r"seed=0, but this one has seed=3"),
        (
            lambda: stream(batch_size=4),
            lambda: stream(batch_size=3),
            r"ConceptAwareStream.*batch_size=4, super_batch_size=8, but this one has "
            r"batch_size=3, super_batch_size=6",
        ),
        (lambda: stream(seed=0), lambda: stream(seed=1), r"seed=0, but this one has seed=1"),
        (
            lambda: ShuffleSampler(40),
            lambda: cabs(),
            r"ConceptAwareBatchSampler from a state with keys .* \(saved by 'ShuffleSampler'\)",
        ),
        (
            lambda: cabs(),
            lambda: ShuffleSampler(40),
            r"ShuffleSampler .*saved by 'ConceptAwareBatchSampler'.*another sampler",
        ),
        (lambda: ShuffleSampler(40), lambda: stream(), r"needs \['epoch', 'super_batches'"),
    ],
)
def test_resume_with_another_configuration_is_refused(saved, loading, message):
    state = _mid_epoch_state(saved())
    sampler = loading()
    with pytest.raises(ValueError, match=message):
        sampler.load_state_dict(state)


@pytest.mark.parametrize("state", [None, 3, "epoch"])
def test_resume_from_no_state_is_refused(state):
    for sampler, name in ((ShuffleSampler(8), "ShuffleSampler"), (cabs(), "ConceptAware")):
        with pytest.raises(ValueError, match=rf"Cannot resume {name}.*another sampler"):
            sampler.load_state_dict(state)


def test_variant_and_cap_may_change_on_resume():
    state = _mid_epoch_state(cabs(variant="dm", cap=2))
    resumed = cabs(variant="fm", cap=None)
    resumed.load_state_dict(state)
    assert len(list(resumed)) == len(resumed) - 2


@pytest.mark.parametrize("kind", ["shuffle", "cabs", "stream"])
def test_state_saved_before_the_config_still_loads(kind):
    """A checkpoint written before states carried ``"config"`` resumes as it did."""
    build = {"shuffle": lambda: ShuffleSampler(40), "cabs": cabs, "stream": stream}[kind]
    full = list(build())
    sampler = build()
    state = _mid_epoch_state(sampler, steps=3)
    del state["config"]
    resumed = build()
    resumed.load_state_dict(state)
    assert list(resumed) == full[3:]


def test_stateful_dataloader_iid_state_into_cabs_loader_names_the_mismatch():
    """The checkpoint of ``sampling: iid`` loaded into a CABS loader (and the reverse)."""
    dataset = list(range(40))
    iid = StatefulDataLoader(dataset, batch_size=4, sampler=ShuffleSampler(40))
    it = iter(iid)
    next(it)
    cabs_loader = StatefulDataLoader(dataset, batch_sampler=cabs())
    cabs_loader.load_state_dict(iid.state_dict())
    with pytest.raises(ValueError, match=r"Cannot resume ConceptAwareBatchSampler from .*None"):
        iter(cabs_loader)

    it = iter(cabs_loader := StatefulDataLoader(dataset, batch_sampler=cabs()))
    next(it)
    iid = StatefulDataLoader(dataset, batch_size=4, sampler=ShuffleSampler(40))
    iid.load_state_dict(cabs_loader.state_dict())
    # torchdata hands a plain batch size's sampler no state here: our datamodules refuse
    # this in their own load_state_dict (tests/datamodules/test_bad_input.py)
    assert len(list(iid)) == 10


def test_message_names_both_values_for_every_field():
    state = _mid_epoch_state(cabs(batch_size=4, seed=0))
    with pytest.raises(ValueError) as info:
        cabs(batch_size=2, seed=1).load_state_dict(state)
    text = str(info.value)
    for field in ("batch_size=4", "seed=0", "batch_size=2", "seed=1"):
        assert re.search(rf"\b{field}\b", text), field


# ------------------------------------------------------------------------ CurriculumSampler
def curriculum(**kwargs):
    from lightning_plugins.sampling import CurriculumSampler

    return CurriculumSampler(**{"num_samples": 10, "batch_size": 4, **kwargs})


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: curriculum(num_samples=0), ValueError, r"`num_samples` must be a positive.*0"),
        (lambda: curriculum(num_samples=2.0), TypeError, r"`num_samples` must be an integer"),
        (lambda: curriculum(batch_size=0), ValueError, r"`batch_size` must be a positive"),
        (lambda: curriculum(seed="1"), TypeError, r"`seed` must be an integer, got '1'"),
        (lambda: curriculum(drop_last="no"), TypeError, r"`drop_last` must be a bool.*'no'"),
        (lambda: curriculum(num_replicas=2, rank=2), ValueError, r"`rank` must be in"),
        (
            lambda: curriculum(batch_size=6, drop_last=True, num_replicas=2),
            ValueError,
            r"`drop_last`=True with 2 ranks x `batch_size` 6 leaves no step.*12.*10",
        ),
    ],
)
def test_curriculum_constructor_refuses(build, error, message):
    with pytest.raises(error, match=message):
        build()


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("setter", "args", "error", "message"),
    [
        (
            "set_subset",
            ([True] * 9,),
            ValueError,
            r"`subset` must hold one entry per sample.*10.*9",
        ),
        ("set_subset", ([0, 10],), ValueError, r"`subset` indices must be in \[0, 10\), got 10"),
        ("set_subset", ([-1],), ValueError, r"`subset` indices.*got -1"),
        ("set_subset", ([False] * 10,), ValueError, r"`subset` leaves no sample to draw"),
        ("set_subset", (torch.ones(10),), TypeError, r"`subset` must be a bool mask or integer"),
        ("set_subset", ("0,1",), TypeError, r"`subset` must be a tensor, array or list.*'0,1'"),
        ("set_subset", (3,), TypeError, r"`subset` must be a tensor.*3 \(int\)"),
        ("set_subset", (torch.zeros(2, 5, dtype=torch.bool),), ValueError, r"`subset` must be 1-D"),
        ("set_weights", ([1.0] * 11,), ValueError, r"`weights` must hold one entry per sample.*11"),
        (
            "set_weights",
            ([1.0] * 9 + [NAN],),
            ValueError,
            r"`weights` must be finite.*nan at index 9",
        ),
        ("set_weights", ([INF] + [1.0] * 9,), ValueError, r"`weights`.*inf at index 0"),
        ("set_weights", ([1.0, -2.0] + [1.0] * 8,), ValueError, r"`weights`.*-2.0 at index 1"),
        ("set_weights", ([0.0] * 10,), ValueError, r"`weights` leaves no sample to draw"),
        ("set_weights", ([True] * 10,), TypeError, r"`weights` must hold real numbers.*bool"),
        ("set_weights", ({"a": 1},), TypeError, r"`weights` must be a tensor"),
        (
            "set_pacing",
            (list(range(9)), [1.0] * 3),
            ValueError,
            r"`ranking` must hold one entry per sample.*9",
        ),
        (
            "set_pacing",
            ([0] * 10, [1.0] * 3),
            ValueError,
            r"`ranking` must be a permutation.*index 0 appears 10 times and 1 is missing",
        ),
        (
            "set_pacing",
            (list(range(1, 11)), [1.0] * 3),
            ValueError,
            r"`ranking` must be a permutation of range\(10\), got index 10",
        ),
        ("set_pacing", ([0.0] * 10, [1.0] * 3), TypeError, r"`ranking` must hold integer.*float"),
        (
            "set_pacing",
            (list(range(10)), [1.0] * 4),
            ValueError,
            r"`fractions` must hold one entry per step of the epoch \(3\), got 4",
        ),
        (
            "set_pacing",
            (list(range(10)), [0.0, 0.5, 1.0]),
            ValueError,
            r"`fractions` must be in \(0, 1\], got 0.0 at index 0",
        ),
        (
            "set_pacing",
            (list(range(10)), [0.5, 1.5, 1.0]),
            ValueError,
            r"`fractions`.*1.5 at index 1",
        ),
        (
            "set_pacing",
            (list(range(10)), [0.5, NAN, 1.0]),
            ValueError,
            r"`fractions`.*nan at index 1",
        ),
        (
            "set_pacing",
            (list(range(10)), None),
            ValueError,
            r"`fractions` is None but `ranking` is not",
        ),
        ("set_pacing", (None, [1.0] * 3), ValueError, r"`ranking` is None but `fractions` is not"),
        ("set_pacing", (list(range(10)), "1"), TypeError, r"`fractions` must be a tensor"),
    ],
)
def test_curriculum_steering_refuses(setter, args, error, message):
    sampler = curriculum()
    with pytest.raises(error, match=message):
        getattr(sampler, setter)(*args)
    assert sampler.pending.subset is None and sampler.pending.weights is None  # unchanged


def test_curriculum_subset_and_weights_together_must_allow_a_sample():
    sampler = curriculum()
    sampler.set_subset([0, 1])
    with pytest.raises(ValueError, match=r"This `weights` leaves no sample"):
        sampler.set_weights([0.0, 0.0] + [1.0] * 8)


def test_curriculum_fractions_for_another_world_are_refused_at_iteration():
    sampler = curriculum()
    sampler.set_pacing(list(range(10)), [1.0, 1.0, 1.0])
    sampler._num_replicas = 2  # as if re-created for two ranks with the same steering
    with pytest.raises(ValueError, match=r"`fractions` holds 3 entries, but this epoch has 2"):
        next(iter(sampler))  # checked at the first draw


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"num_samples": 12}, r"num_samples=10.*num_samples=12"),
        ({"batch_size": 2}, r"batch_size=4.*batch_size=2"),
        ({"seed": 1}, r"seed=0.*seed=1"),
        ({"drop_last": True}, r"drop_last=False.*drop_last=True"),
        ({"num_replicas": 2, "rank": 0, "num_samples": 16}, r"num_replicas=1.*num_replicas=2"),
    ],
)
def test_curriculum_resume_with_another_configuration_is_refused(changed, message):
    state = curriculum().state_dict()
    with pytest.raises(ValueError, match=message):
        curriculum(**changed).load_state_dict(state)


def test_curriculum_refuses_a_state_of_another_sampler():
    with pytest.raises(ValueError, match=r"saved by 'ShuffleSampler'"):
        curriculum().load_state_dict(ShuffleSampler(10).state_dict())


# -------------------------------------------------------------------------- MixtureSampler
def mixture(**kwargs):
    from lightning_plugins.sampling import MixtureSampler

    return MixtureSampler(**{"source_sizes": [6, 4, 5], "batch_size": 4, **kwargs})


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: mixture(source_sizes=[]), ValueError, r"`source_sizes` must hold at least one"),
        (
            lambda: mixture(source_sizes=[6, 0, 5]),
            ValueError,
            r"`source_sizes\[1\]` is 0: source 1 is an empty source.*\[6, 0, 5\]",
        ),
        (lambda: mixture(source_sizes=[6, -1]), ValueError, r"`source_sizes\[1\]`.*got -1"),
        (lambda: mixture(source_sizes=[6, 2.5]), TypeError, r"`source_sizes\[1\]` must be an int"),
        (lambda: mixture(source_sizes=6), TypeError, r"`source_sizes` must be a sequence.*6"),
        (lambda: mixture(source_sizes="65"), TypeError, r"`source_sizes` must be a sequence"),
        (lambda: mixture(batch_size=0), ValueError, r"`batch_size` must be a positive.*0"),
        (lambda: mixture(seed=0.5), TypeError, r"`seed` must be an integer, got 0\.5"),
        (lambda: mixture(num_steps=0), ValueError, r"`num_steps` must be a positive.*0"),
        (lambda: mixture(mode="uniform"), ValueError, r"`mode` must be one of \('dynamic', "),
        (lambda: mixture(num_replicas=2, rank=2), ValueError, r"`rank` must be in"),
        (lambda: mixture(weights=[1.0, -1.0, 1.0]), ValueError, r"`weights`.*-1\.0 at index 1"),
        (lambda: mixture(weights=[1.0, NAN, 1.0]), ValueError, r"`weights`.*nan at index 1"),
        (lambda: mixture(weights=[1.0, 1.0]), ValueError, r"`weights`.*per source \(3\), got 2"),
        (lambda: mixture(weights=[0, 0, 0]), ValueError, r"`weights` must not be all 0"),
        (
            lambda: mixture(weights=[0, 0, 0], mode="static"),
            ValueError,
            r"`weights` must not be all 0",
        ),
        (lambda: mixture(weights="1,1,1"), TypeError, r"`weights` must be a tensor.*'1,1,1'"),
    ],
)
def test_mixture_constructor_refuses(build, error, message):
    with pytest.raises(error, match=message):
        build()


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        ([1.0, 1.0], ValueError, r"`weights` must hold one weight per source \(3\), got 2"),
        ([1.0, NAN, 1.0], ValueError, r"`weights` must be finite and non-negative.*nan"),
        ([INF, 1.0, 1.0], ValueError, r"`weights`.*inf at index 0"),
        ([1.0, 1.0, -0.5], ValueError, r"`weights`.*-0\.5 at index 2"),
        ([0.0, 0.0, 0.0], ValueError, r"`weights` must not be all 0.*\[0\.0, 0\.0, 0\.0\]"),
        ([[1.0, 1.0, 1.0]], ValueError, r"`weights` must be 1-D.*\(1, 3\)"),
        ([True, True, False], TypeError, r"`weights` must hold real numbers.*bool"),
        (None, TypeError, r"`weights` must be a tensor.*None"),
    ],
)
def test_mixture_set_weights_refuses(weights, error, message):
    sampler = mixture()
    with pytest.raises(error, match=message):
        sampler.set_weights(weights)
    assert sampler.pending_weights.tolist() == sampler.weights.tolist()  # unchanged


@pytest.mark.parametrize("mode", ["static", "stratified"])
def test_mixture_set_weights_needs_dynamic_mode(mode):
    with pytest.raises(ValueError, match=rf"`set_weights` needs `mode`='dynamic'.*'{mode}'"):
        mixture(mode=mode).set_weights([1, 1, 1])


def test_mixture_source_of_refuses_an_index_outside():
    with pytest.raises(ValueError, match=r"`index` must be an integer in \[0, 14\], got 15"):
        mixture().source_of(15)


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"source_sizes": [6, 4, 6]}, r"source_sizes=\[6, 4, 5\].*source_sizes=\[6, 4, 6\]"),
        ({"batch_size": 2}, r"batch_size=4.*batch_size=2"),
        ({"seed": 1}, r"seed=0.*seed=1"),
        ({"mode": "stratified"}, r"mode='dynamic'.*mode='stratified'"),
        ({"num_steps": 7}, r"num_steps=None.*num_steps=7"),
        ({"num_replicas": 2, "rank": 1}, r"num_replicas=1.*num_replicas=2"),
    ],
)
def test_mixture_resume_with_another_configuration_is_refused(changed, message):
    state = mixture().state_dict()
    with pytest.raises(ValueError, match=message):
        mixture(**changed).load_state_dict(state)


def test_mixture_resume_with_other_static_weights_is_refused():
    state = mixture(mode="static", weights=[1, 1, 2]).state_dict()
    with pytest.raises(ValueError, match=r"static weights \[0\.25, 0\.25, 0\.5\]"):
        mixture(mode="static", weights=[1, 1, 1]).load_state_dict(state)


def test_mixture_refuses_a_state_of_another_sampler():
    with pytest.raises(ValueError, match=r"saved by 'CurriculumSampler'"):
        mixture().load_state_dict(curriculum().state_dict())
    with pytest.raises(ValueError, match=r"Cannot resume MixtureSampler from the state None"):
        mixture().load_state_dict(None)
