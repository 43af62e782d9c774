"""Accelerator factories: catalog, variants, validation and name lookup."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable

import attrs
import pytest

from skyward_trio import accelerators
from skyward_trio.accelerators import Accelerator

CATALOG = [
    "H100", "H200", "GH200", "B100", "B200", "GB200", "A100", "A800", "A40", "A10", "A10G",
    "A16", "L4", "L40", "L40S", "T4", "V100", "P100", "RTX_4090", "RTX_5090", "RTX_A6000",
    "RTX_6000_Ada", "RTX_PRO_6000", "MI300X", "MI250", "Trainium2", "Inferentia2", "TPUv5e",
    "TPUv5p",
]  # fmt: skip


def factory(name: str) -> Callable[..., Accelerator]:
    made: Callable[..., Accelerator] = getattr(accelerators, name)
    return made


@pytest.mark.parametrize("name", CATALOG)
def test_every_factory_builds_one_named_accelerator_with_known_memory(name: str) -> None:
    made = factory(name)()
    assert made.name == name
    assert made.count == 1
    assert made.memory is not None
    assert made.memory_gb is not None
    assert made.memory_gb > 0


@pytest.mark.parametrize("name", CATALOG)
def test_every_factory_is_keyword_only_with_count_and_a_docstring(name: str) -> None:
    made = factory(name)
    params = inspect.signature(made).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert params["count"].default == 1
    assert made.__doc__
    assert "\n" not in made.__doc__.strip()
    with pytest.raises(TypeError):
        made(2)


@pytest.mark.parametrize("name", CATALOG)
def test_every_factory_takes_a_count_and_rejects_non_positive_ones(name: str) -> None:
    assert factory(name)(count=8).count == 8
    assert factory(name)(count=0.5).count == 0.5
    with pytest.raises(ValueError, match=rf"{name}\(count=0\): count must be > 0"):
        factory(name)(count=0)
    with pytest.raises(ValueError, match=r"count=-1"):
        factory(name)(count=-1)
    with pytest.raises(TypeError, match=r"count must be a number > 0, got str"):
        factory(name)(count="8")


def test_all_exports_the_catalog_custom_by_name_and_the_record() -> None:
    assert set(accelerators.__all__) == {*CATALOG, "Accelerator", "Custom", "by_name"}
    for name in accelerators.__all__:
        assert hasattr(accelerators, name)


def test_a100_defaults_to_80gb_and_offers_40gb() -> None:
    assert accelerators.A100() == Accelerator(name="A100", count=1, memory="80GB")
    forty = accelerators.A100(memory="40GB", form_factor="PCIe", count=2)
    assert (forty.memory, forty.memory_gb, forty.form_factor, forty.count) == (
        "40GB",
        40.0,
        "PCIe",
        2,
    )


def test_h100_memory_follows_the_form_factor_unless_given() -> None:
    assert accelerators.H100().memory == "80GB"
    assert accelerators.H100().form_factor is None
    assert accelerators.H100(form_factor="SXM").memory == "80GB"
    assert accelerators.H100(form_factor="PCIe").memory == "80GB"
    assert accelerators.H100(form_factor="NVL").memory == "94GB"
    assert accelerators.H100(memory="94GB").memory_gb == 94.0
    assert accelerators.H100(count=8).count == 8


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("H200", "141GB"),
        ("A10G", "24GB"),
        ("A10", "24GB"),
        ("L4", "24GB"),
        ("L40S", "48GB"),
        ("A40", "48GB"),
        ("T4", "16GB"),
        ("RTX_4090", "24GB"),
        ("RTX_5090", "32GB"),
        ("RTX_A6000", "48GB"),
        ("RTX_PRO_6000", "96GB"),
        ("MI300X", "192GB"),
        ("GH200", "96GB"),
        ("V100", "16GB"),
        ("P100", "16GB"),
    ],
)
def test_default_memory_matches_the_real_card(name: str, expected: str) -> None:
    assert factory(name)().memory == expected


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        (
            "A100",
            {"memory": "24GB"},
            r"A100\(memory='24GB'\): memory must be one of '40GB', '80GB'",
        ),
        ("A100", {"form_factor": "NVL"}, r"form_factor must be one of 'SXM', 'PCIe'"),
        (
            "H100",
            {"memory": "40GB"},
            r"H100\(memory='40GB'\): memory must be one of '80GB', '94GB'",
        ),
        ("H100", {"form_factor": "OAM"}, r"form_factor must be one of 'SXM', 'PCIe', 'NVL'"),
        ("H200", {"form_factor": "PCIe"}, r"form_factor must be one of 'SXM', 'NVL'"),
        ("GH200", {"memory": "80GB"}, r"memory must be one of '96GB', '144GB'"),
        ("V100", {"memory": "80GB"}, r"memory must be one of '16GB', '32GB'"),
        ("P100", {"memory": "32GB"}, r"memory must be one of '12GB', '16GB'"),
        ("A800", {"memory": "48GB"}, r"memory must be one of '40GB', '80GB'"),
    ],
)
def test_variant_literals_are_checked_and_the_error_lists_the_choices(
    name: str, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match) as raised:
        factory(name)(**kwargs)
    assert "Pass e.g." in str(raised.value)


def test_variants_of_other_models() -> None:
    assert accelerators.GH200(memory="144GB").memory_gb == 144.0
    assert accelerators.V100(memory="32GB", form_factor="SXM").form_factor == "SXM"
    assert accelerators.P100(memory="12GB").memory == "12GB"
    assert accelerators.H200(form_factor="NVL").form_factor == "NVL"
    assert accelerators.A800(memory="40GB").memory == "40GB"


def test_custom_takes_the_name_positionally() -> None:
    custom = accelerators.Custom("My-GPU", memory="48GB", count=2)
    assert custom == Accelerator(name="My-GPU", count=2, memory="48GB")
    assert custom.memory_gb == 48.0
    assert accelerators.Custom("X").memory is None
    assert accelerators.Custom("X").memory_gb is None
    with pytest.raises(TypeError):
        accelerators.Custom(name="X", count=1, memory=None, extra=1)  # type: ignore[call-arg]


def test_custom_rejects_a_bad_name_memory_or_count() -> None:
    with pytest.raises(ValueError, match=r"name must not be empty"):
        accelerators.Custom("  ")
    with pytest.raises(TypeError, match=r"name must be a str, got int"):
        accelerators.Custom(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"X\(memory='lots'\): memory must be a size in gigabytes"):
        accelerators.Custom("X", memory="lots")
    with pytest.raises(ValueError, match=r"X\(count=0\)"):
        accelerators.Custom("X", count=0)


def test_memory_gb_parses_decimal_and_spaced_sizes() -> None:
    assert Accelerator(name="X", memory="0.5GB").memory_gb == 0.5
    assert Accelerator(name="X", memory="48 GB").memory_gb == 48.0
    assert Accelerator(name="X", memory="16gb").memory_gb == 16.0


def test_form_factor_must_be_a_string() -> None:
    with pytest.raises(TypeError, match=r"form_factor must be a str"):
        Accelerator(name="X", form_factor=1)  # type: ignore[arg-type]


def test_accelerator_is_frozen_hashable_and_picklable() -> None:
    a100 = accelerators.A100(count=4)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a100.count = 8  # type: ignore[misc]
    assert hash(a100) == hash(accelerators.A100(count=4))
    assert pickle.loads(pickle.dumps(a100)) == a100
    assert attrs.evolve(a100, count=8).count == 8
    with pytest.raises(ValueError, match="count must be > 0"):
        attrs.evolve(a100, count=0)


def test_accelerator_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        Accelerator("A100")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("A100", "A100"),
        ("a100", "A100"),
        ("h100", "H100"),
        ("rtx_4090", "RTX_4090"),
        ("RTX 4090", "RTX_4090"),
        ("rtx-4090", "RTX_4090"),
        ("RTX6000ADA", "RTX_6000_Ada"),
        ("tpuv5e", "TPUv5e"),
        ("trainium2", "Trainium2"),
        ("mi300x", "MI300X"),
    ],
)
def test_by_name_ignores_case_and_separators(query: str, expected: str) -> None:
    found = accelerators.by_name(query)
    assert found is getattr(accelerators, expected)


@pytest.mark.parametrize("query", ["", "A1000", "Custom", "custom", "Accelerator", "by_name"])
def test_by_name_returns_none_outside_the_catalog(query: str) -> None:
    assert accelerators.by_name(query) is None


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("A1OO", "A100"), ("H10", "H100"), ("rtx 4O90", "RTX_4090"), ("MI3OOX", "MI300X")],
)
def test_close_to_puts_the_model_meant_first(typed: str, meant: str) -> None:
    assert accelerators.close_to(typed)[0] == meant


def test_close_to_is_empty_far_from_every_model() -> None:
    assert accelerators.close_to("Quantum") == ()


def test_a_misspelled_factory_says_which_was_meant() -> None:
    with pytest.raises(AttributeError, match=r"no accelerator 'A1OO'; did you mean sky\.acc"):
        accelerators.A1OO  # noqa: B018
    with pytest.raises(AttributeError, match=r"Custom\(\"NAME\"\)"):
        accelerators.Quantum  # noqa: B018
    assert not hasattr(accelerators, "A1OO")
