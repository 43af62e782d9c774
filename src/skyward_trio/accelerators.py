"""Accelerators: what a node should carry, as a record built by one factory per model.

In Python an accelerator is always an object, ``sky.accelerators.A100()``, never the string
``"A100"``: a typo then fails at the call site, and the variants a model really comes in
(memory size, form factor) are checked against a closed list. Every factory is keyword-only
and takes ``count`` (accelerators per node; fractions are allowed).

This module is imported on remote workers: it may use only the standard library and attrs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

import attrs

__all__ = [
    "A10",
    "A10G",
    "A16",
    "A40",
    "A100",
    "A800",
    "B100",
    "B200",
    "GB200",
    "GH200",
    "H100",
    "H200",
    "L4",
    "L40",
    "L40S",
    "MI250",
    "MI300X",
    "P100",
    "RTX_4090",
    "RTX_5090",
    "RTX_A6000",
    "RTX_PRO_6000",
    "T4",
    "V100",
    "Accelerator",
    "Custom",
    "Inferentia2",
    "RTX_6000_Ada",
    "TPUv5e",
    "TPUv5p",
    "Trainium2",
    "by_name",
]

# "80GB", "0.5 GB", "48gb": a number of gigabytes, nothing else, so that `memory_gb` is exact.
_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*GB\s*", re.IGNORECASE)


@attrs.frozen(kw_only=True)
class Accelerator:
    """One kind of accelerator, and how many of it each node needs.

    Build it with a factory (``sky.accelerators.H100(count=8)``) rather than directly; the
    factories know each model's real memory sizes and form factors.

    Attributes:
        name: The model, as the factory is named (``"H100"``, ``"RTX_4090"``) or as given to
            :func:`Custom`.
        count: Accelerators per node, > 0. Fractions are allowed.
        memory: Memory per accelerator, such as ``"80GB"``, or None when not pinned.
        form_factor: The board variant (``"SXM"``, ``"PCIe"``, ``"NVL"``), or None for any.
    """

    name: str
    count: float = 1
    memory: str | None = None
    form_factor: str | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(
                f"Accelerator(name={self.name!r}): name must be a str, got "
                f"{type(self.name).__name__}. Use a factory such as sky.accelerators.A100() "
                'or sky.accelerators.Custom("MyGPU").'
            )
        if not self.name.strip():
            raise ValueError(
                f"Accelerator(name={self.name!r}): name must not be empty. "
                'Pass the model name, e.g. sky.accelerators.Custom("MyGPU").'
            )
        _check_count(self.name, self.count)
        if self.memory is not None and (
            not isinstance(self.memory, str) or _MEMORY.fullmatch(self.memory) is None
        ):
            raise ValueError(
                f"{self.name}(memory={self.memory!r}): memory must be a size in gigabytes such "
                'as "80GB", or None. Pass e.g. memory="48GB".'
            )
        if self.form_factor is not None and not isinstance(self.form_factor, str):
            raise TypeError(
                f"{self.name}(form_factor={self.form_factor!r}): form_factor must be a str "
                f'such as "SXM" or None, got {type(self.form_factor).__name__}.'
            )

    @property
    def memory_gb(self) -> float | None:
        """Memory per accelerator in gigabytes (``"80GB"`` -> ``80.0``), or None if unknown."""
        if self.memory is None:
            return None
        match = _MEMORY.fullmatch(self.memory)
        # __attrs_post_init__ rejected anything else, so this is unreachable in practice.
        assert match is not None
        return float(match.group(1))


def _check_count(name: str, count: object) -> None:
    if isinstance(count, bool) or not isinstance(count, int | float):
        raise TypeError(
            f"{name}(count={count!r}): count must be a number > 0, "
            f"got {type(count).__name__}. Pass e.g. count=8."
        )
    if not count > 0:
        raise ValueError(
            f"{name}(count={count!r}): count must be > 0 (accelerators per node). "
            "Pass e.g. count=1, or leave accelerator=None for a CPU-only node."
        )


def _pick(name: str, arg: str, value: object, choices: tuple[str, ...]) -> str:
    """Checks a variant literal at run time, where type hints do not reach."""
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(
            f"{name}({arg}={value!r}): {arg} must be one of {listed}. "
            f"Pass e.g. {arg}={choices[0]!r}, or leave it out."
        )
    assert isinstance(value, str)
    return value


def _pick_optional(name: str, arg: str, value: object, choices: tuple[str, ...]) -> str | None:
    return None if value is None else _pick(name, arg, value, choices)


def _fixed(name: str, count: float, memory: str) -> Accelerator:
    """A model sold in one memory size only."""
    _check_count(name, count)
    return Accelerator(name=name, count=count, memory=memory)


_SXM_PCIE = ("SXM", "PCIe")


# --- NVIDIA data center, Hopper and Blackwell -----------------------------------------------


def H100(
    *,
    count: float = 1,
    memory: Literal["80GB", "94GB"] | None = None,
    form_factor: Literal["SXM", "PCIe", "NVL"] | None = None,
) -> Accelerator:
    """NVIDIA H100: 80GB (SXM, PCIe) or 94GB (NVL); memory follows form_factor when omitted."""
    _check_count("H100", count)
    form = _pick_optional("H100", "form_factor", form_factor, ("SXM", "PCIe", "NVL"))
    if memory is None:
        # Only the NVL board has 94GB; asking for NVL must not silently pin the 80GB size.
        memory = "94GB" if form == "NVL" else "80GB"
    size = _pick("H100", "memory", memory, ("80GB", "94GB"))
    return Accelerator(name="H100", count=count, memory=size, form_factor=form)


def H200(*, count: float = 1, form_factor: Literal["SXM", "NVL"] | None = None) -> Accelerator:
    """NVIDIA H200, 141GB HBM3e, as SXM or NVL (PCIe) boards."""
    _check_count("H200", count)
    form = _pick_optional("H200", "form_factor", form_factor, ("SXM", "NVL"))
    return Accelerator(name="H200", count=count, memory="141GB", form_factor=form)


def GH200(*, count: float = 1, memory: Literal["96GB", "144GB"] = "96GB") -> Accelerator:
    """NVIDIA GH200 Grace Hopper superchip: 96GB HBM3 or 144GB HBM3e (arm64 hosts)."""
    _check_count("GH200", count)
    size = _pick("GH200", "memory", memory, ("96GB", "144GB"))
    return Accelerator(name="GH200", count=count, memory=size)


def B100(*, count: float = 1) -> Accelerator:
    """NVIDIA B100 (Blackwell), 192GB HBM3e."""
    return _fixed("B100", count, "192GB")


def B200(*, count: float = 1) -> Accelerator:
    """NVIDIA B200 (Blackwell), 180GB usable per GPU in HGX B200 systems."""
    return _fixed("B200", count, "180GB")


def GB200(*, count: float = 1) -> Accelerator:
    """NVIDIA GB200 Grace Blackwell (per GPU), 186GB HBM3e, arm64 hosts."""
    return _fixed("GB200", count, "186GB")


# --- NVIDIA data center, Ampere, Ada and older ------------------------------------------------


def A100(
    *,
    count: float = 1,
    memory: Literal["40GB", "80GB"] = "80GB",
    form_factor: Literal["SXM", "PCIe"] | None = None,
) -> Accelerator:
    """NVIDIA A100, 80GB (default) or 40GB, SXM or PCIe."""
    _check_count("A100", count)
    size = _pick("A100", "memory", memory, ("40GB", "80GB"))
    form = _pick_optional("A100", "form_factor", form_factor, _SXM_PCIE)
    return Accelerator(name="A100", count=count, memory=size, form_factor=form)


def A800(
    *,
    count: float = 1,
    memory: Literal["40GB", "80GB"] = "80GB",
    form_factor: Literal["SXM", "PCIe"] | None = None,
) -> Accelerator:
    """NVIDIA A800 (export variant of the A100), 80GB (default) or 40GB, SXM or PCIe."""
    _check_count("A800", count)
    size = _pick("A800", "memory", memory, ("40GB", "80GB"))
    form = _pick_optional("A800", "form_factor", form_factor, _SXM_PCIE)
    return Accelerator(name="A800", count=count, memory=size, form_factor=form)


def A40(*, count: float = 1) -> Accelerator:
    """NVIDIA A40, 48GB GDDR6."""
    return _fixed("A40", count, "48GB")


def A10(*, count: float = 1) -> Accelerator:
    """NVIDIA A10, 24GB GDDR6."""
    return _fixed("A10", count, "24GB")


def A10G(*, count: float = 1) -> Accelerator:
    """NVIDIA A10G (AWS G5 instances), 24GB GDDR6."""
    return _fixed("A10G", count, "24GB")


def A16(*, count: float = 1) -> Accelerator:
    """NVIDIA A16, 16GB per GPU (four GPUs per board)."""
    return _fixed("A16", count, "16GB")


def L4(*, count: float = 1) -> Accelerator:
    """NVIDIA L4, 24GB GDDR6."""
    return _fixed("L4", count, "24GB")


def L40(*, count: float = 1) -> Accelerator:
    """NVIDIA L40, 48GB GDDR6."""
    return _fixed("L40", count, "48GB")


def L40S(*, count: float = 1) -> Accelerator:
    """NVIDIA L40S, 48GB GDDR6."""
    return _fixed("L40S", count, "48GB")


def T4(*, count: float = 1) -> Accelerator:
    """NVIDIA T4, 16GB GDDR6."""
    return _fixed("T4", count, "16GB")


def V100(
    *,
    count: float = 1,
    memory: Literal["16GB", "32GB"] = "16GB",
    form_factor: Literal["SXM", "PCIe"] | None = None,
) -> Accelerator:
    """NVIDIA V100, 16GB (default, the common cloud size) or 32GB, SXM or PCIe."""
    _check_count("V100", count)
    size = _pick("V100", "memory", memory, ("16GB", "32GB"))
    form = _pick_optional("V100", "form_factor", form_factor, _SXM_PCIE)
    return Accelerator(name="V100", count=count, memory=size, form_factor=form)


def P100(
    *,
    count: float = 1,
    memory: Literal["12GB", "16GB"] = "16GB",
    form_factor: Literal["SXM", "PCIe"] | None = None,
) -> Accelerator:
    """NVIDIA P100, 16GB (default) or 12GB (PCIe only), SXM or PCIe."""
    _check_count("P100", count)
    size = _pick("P100", "memory", memory, ("12GB", "16GB"))
    form = _pick_optional("P100", "form_factor", form_factor, _SXM_PCIE)
    return Accelerator(name="P100", count=count, memory=size, form_factor=form)


# --- NVIDIA workstation and consumer --------------------------------------------------------


def RTX_4090(*, count: float = 1) -> Accelerator:
    """NVIDIA GeForce RTX 4090, 24GB GDDR6X."""
    return _fixed("RTX_4090", count, "24GB")


def RTX_5090(*, count: float = 1) -> Accelerator:
    """NVIDIA GeForce RTX 5090, 32GB GDDR7."""
    return _fixed("RTX_5090", count, "32GB")


def RTX_A6000(*, count: float = 1) -> Accelerator:
    """NVIDIA RTX A6000 (Ampere), 48GB GDDR6."""
    return _fixed("RTX_A6000", count, "48GB")


def RTX_6000_Ada(*, count: float = 1) -> Accelerator:
    """NVIDIA RTX 6000 Ada Generation, 48GB GDDR6."""
    return _fixed("RTX_6000_Ada", count, "48GB")


def RTX_PRO_6000(*, count: float = 1) -> Accelerator:
    """NVIDIA RTX PRO 6000 Blackwell, 96GB GDDR7."""
    return _fixed("RTX_PRO_6000", count, "96GB")


# --- AMD, AWS silicon, Google TPU -----------------------------------------------------------


def MI300X(*, count: float = 1) -> Accelerator:
    """AMD Instinct MI300X, 192GB HBM3."""
    return _fixed("MI300X", count, "192GB")


def MI250(*, count: float = 1) -> Accelerator:
    """AMD Instinct MI250, 128GB HBM2e."""
    return _fixed("MI250", count, "128GB")


def Trainium2(*, count: float = 1) -> Accelerator:
    """AWS Trainium2 chip (Trn2 instances), 96GB HBM."""
    return _fixed("Trainium2", count, "96GB")


def Inferentia2(*, count: float = 1) -> Accelerator:
    """AWS Inferentia2 chip (Inf2 instances), 32GB HBM."""
    return _fixed("Inferentia2", count, "32GB")


def TPUv5e(*, count: float = 1) -> Accelerator:
    """Google Cloud TPU v5e chip, 16GB HBM."""
    return _fixed("TPUv5e", count, "16GB")


def TPUv5p(*, count: float = 1) -> Accelerator:
    """Google Cloud TPU v5p chip, 95GB HBM."""
    return _fixed("TPUv5p", count, "95GB")


def Custom(name: str, *, memory: str | None = None, count: float = 1) -> Accelerator:
    """An accelerator outside the catalog, matched by name: ``Custom("MyGPU", memory="48GB")``."""
    return Accelerator(name=name, count=count, memory=memory)


def _key(name: str) -> str:
    # "rtx-4090", "RTX 4090" and "RTX_4090" all mean the same card.
    return re.sub(r"[\s_\-]", "", name).upper()


_CATALOG: dict[str, Callable[..., Accelerator]] = {
    _key(factory.__name__): factory
    for factory in (
        H100, H200, GH200, B100, B200, GB200, A100, A800, A40, A10, A10G, A16, L4, L40, L40S,
        T4, V100, P100, RTX_4090, RTX_5090, RTX_A6000, RTX_6000_Ada, RTX_PRO_6000, MI300X,
        MI250, Trainium2, Inferentia2, TPUv5e, TPUv5p,
    )
}  # fmt: skip


def by_name(name: str) -> Callable[..., Accelerator] | None:
    """Finds the catalog factory for a model name, ignoring case, spaces, ``-`` and ``_``.

    Args:
        name: A model name such as ``"a100"`` or ``"RTX-4090"``.

    Returns:
        The factory (``A100``, ``RTX_4090``), or None when the name is not in the catalog
        (:func:`Custom` is never returned: it takes any name).
    """
    return _CATALOG.get(_key(name))


def close_to(name: str) -> tuple[str, ...]:
    """The catalog's factory names nearest to ``name`` (a misspelled model), best first;
    empty when none is near."""
    import difflib  # only on this error path: workers import this module

    # Compared with look-alikes folded (O and 0, I and 1), which typing slips between:
    # "A1OO" is A100 before it is A10.
    folded = {key.translate(_LOOKALIKES): key for key in _CATALOG}
    keys = difflib.get_close_matches(_key(name).translate(_LOOKALIKES), folded, n=3, cutoff=0.5)
    return tuple(_CATALOG[folded[key]].__name__ for key in keys)


_LOOKALIKES = str.maketrans("OI", "01")


def __getattr__(name: str) -> object:
    # `sky.accelerators.A1OO`: say which model was meant, not only that it is missing.
    close = close_to(name) if not name.startswith("__") else ()
    hint = (
        f"; did you mean {' or '.join(f'sky.accelerators.{c}' for c in close)}?"
        if close
        else ('; for a model not in the catalog use sky.accelerators.Custom("NAME")')
    )
    raise AttributeError(f"module {__name__!r} has no accelerator {name!r}{hint}")
