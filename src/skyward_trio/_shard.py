"""Split data so that each node of a pool gets its own disjoint slice.

Imported on remote workers: stdlib and ``attrs`` only. NumPy and PyTorch are
never imported here; an argument is recognised as an array or a tensor only
when its library is already in ``sys.modules`` (it must be, for the caller to
hold such an object).
"""

from __future__ import annotations

import operator
import random
import sys
from collections.abc import Sequence
from typing import Any, Literal, SupportsIndex

from skyward_trio._runtime import instance_info

__all__ = ["shard"]

# Built-in sequences whose slicing returns the same type; contiguous shards of
# these are taken with one slice instead of element by element.
_SLICEABLE = (list, tuple, str, bytes, bytearray, range)


def shard(
    *data: Any,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    node: int | None = None,
    total_nodes: int | None = None,
) -> Any:
    """Return this node's disjoint slice of each argument.

    Every node calling ``shard`` with the same arguments gets a different
    slice, and together the slices cover the data. Without ``drop_last`` the
    first ``len % total_nodes`` nodes get one extra item; with it, every node
    gets exactly ``len // total_nodes`` items and the remainder is dropped.

    Without ``shuffle`` each slice is a contiguous block, in order. With it,
    the indices are first permuted by ``random.Random(seed)``; the permutation
    is the same on every node (same seed), so the slices stay disjoint, and
    each slice keeps the permuted order.

    Several arguments must have the same length and are cut at the same
    indices, so that e.g. features and labels stay aligned.

    The result keeps the input's type where it can:

    * ``list``, ``tuple``, ``str``, ``bytes`` and ``bytearray`` keep their type
      (subclasses are rebuilt as below).
    * ``range`` stays a ``range`` when the slice is contiguous, and becomes a
      ``list`` when shuffled.
    * A NumPy array stays an array and a PyTorch tensor stays a tensor (on the
      same device): a contiguous slice is a view (``x[start:stop]``), a
      shuffled one a copy made by integer-array indexing.
    * Any other :class:`collections.abc.Sequence` is rebuilt with
      ``type(x)(items)``; when that constructor refuses a list of items
      (``TypeError`` or ``ValueError``), the shard is a plain ``list``.

    Args:
        *data: One or more sized, indexable sequences of equal length.
        shuffle: Permute the indices before splitting.
        seed: Seed of the permutation; must be the same on every node.
        drop_last: Give every node exactly ``len // total_nodes`` items.
        node: This node's index. Defaults, together with ``total_nodes``, to
            the current :func:`~skyward_trio._runtime.instance_info`. The
            default splits by *node*: workers sharing a node get the same
            slice; pass ``node=info.global_worker_index,
            total_nodes=info.total_workers`` to split by worker instead.
        total_nodes: How many slices to make. Pass both or neither of
            ``node`` and ``total_nodes``.

    Returns:
        The shard of the single argument, or a tuple with one shard per
        argument when several are given.

    Raises:
        TypeError: If no data is given, an argument is not a sized, indexable
            sequence (a generator, set or dict, say), or only one of ``node``
            and ``total_nodes`` is given.
        ValueError: If ``node`` is not in ``range(total_nodes)`` or the
            arguments have different lengths.
        RuntimeError: If ``node`` and ``total_nodes`` are omitted outside a
            task running on a pool.
    """
    if not data:
        raise TypeError("shard() needs at least one sequence to split; got none")
    kinds = [_kind(x, position) for position, x in enumerate(data, start=1)]
    length = _common_length(data)
    node, total_nodes = _resolve_position(node, total_nodes)

    start, stop = _bounds(length, node, total_nodes, drop_last)
    if shuffle:
        order = list(range(length))
        random.Random(seed).shuffle(order)
        indices: list[int] | None = order[start:stop]
    else:
        indices = None

    shards = tuple(
        _take(x, kind, start, stop, indices) for x, kind in zip(data, kinds, strict=True)
    )
    return shards[0] if len(shards) == 1 else shards


def _resolve_position(node: int | None, total_nodes: int | None) -> tuple[int, int]:
    if node is None and total_nodes is None:
        info = instance_info()
        return info.node, info.total_nodes
    if node is None or total_nodes is None:
        given, missing = ("node", "total_nodes") if total_nodes is None else ("total_nodes", "node")
        raise TypeError(
            f"shard() got {given}= without {missing}=; pass both, or neither to use "
            "this worker's sky.instance_info()"
        )
    node = _as_index("node", node)
    total_nodes = _as_index("total_nodes", total_nodes)
    if total_nodes < 1:
        raise ValueError(f"shard() needs total_nodes >= 1; got {total_nodes}")
    if node not in range(total_nodes):
        raise ValueError(
            f"shard() needs node in range(total_nodes={total_nodes}), "
            f"i.e. 0..{total_nodes - 1}; got {node}"
        )
    return node, total_nodes


def _as_index(name: str, value: object) -> int:
    # __index__ admits ints and int-like scalars (numpy.int64) but not floats;
    # bool has __index__ too, yet node=True is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise TypeError(
            f"shard() needs {name}= to be an integer; got {value!r} ({type(value).__name__})"
        )
    return operator.index(value)


# How an argument is cut: by array/tensor indexing, by builtin slicing, or
# item by item and rebuilt through its constructor.
_Kind = Literal["numpy", "torch", "builtin", "sequence"]


def _kind(x: object, position: int) -> _Kind:
    """Classify one argument, or raise the TypeError that explains why it can't be split."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray):
        if x.ndim == 0:
            raise TypeError(f"shard() argument {position} is a 0-d numpy array; it has no length")
        return "numpy"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if x.dim() == 0:
            raise TypeError(f"shard() argument {position} is a 0-d torch tensor; it has no length")
        return "torch"
    if type(x) in _SLICEABLE:
        return "builtin"
    if isinstance(x, Sequence):
        return "sequence"
    cls = type(x)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    raise TypeError(
        f"shard() argument {position} has type {name}; shard needs a sized, indexable sequence "
        "(list, tuple, str, range, numpy array, torch tensor, ...). Convert it first, "
        "e.g. with list(...)"
    )


def _common_length(data: tuple[Any, ...]) -> int:
    lengths = [len(x) for x in data]
    if len(set(lengths)) > 1:
        shown = ", ".join(f"argument {i}: {n}" for i, n in enumerate(lengths, start=1))
        raise ValueError(
            f"shard() needs all sequences to have the same length so their shards stay "
            f"aligned; got lengths {shown}"
        )
    return lengths[0]


def _bounds(length: int, node: int, total_nodes: int, drop_last: bool) -> tuple[int, int]:
    """Return this node's ``[start, stop)`` in the (possibly permuted) index order."""
    if drop_last:
        size = length // total_nodes
        return node * size, (node + 1) * size
    base, extra = divmod(length, total_nodes)
    # The first `extra` nodes take one more item each; everyone before this
    # node that did so shifts its start by one.
    start = node * base + min(node, extra)
    return start, start + base + (1 if node < extra else 0)


def _take(x: Any, kind: _Kind, start: int, stop: int, indices: list[int] | None) -> Any:
    """Cut one argument: ``x[start:stop]`` when contiguous, else ``x`` at ``indices``."""
    if kind == "numpy":
        if indices is None:
            return x[start:stop]
        np = sys.modules["numpy"]
        return x[np.asarray(indices, dtype=np.intp)]
    if kind == "torch":
        if indices is None:
            return x[start:stop]
        torch = sys.modules["torch"]
        return x[torch.as_tensor(indices, dtype=torch.long, device=x.device)]
    if kind == "builtin":
        if indices is None:
            return x[start:stop]
        return _rebuild_builtin(x, [x[i] for i in indices])
    positions = range(start, stop) if indices is None else indices
    return _rebuild(x, [x[i] for i in positions])


def _rebuild_builtin(x: Any, items: list[Any]) -> Any:
    if isinstance(x, str):
        return "".join(items)
    if isinstance(x, range):
        return items
    # list, tuple, bytes and bytearray all accept a list of their items.
    return type(x)(items)


def _rebuild(x: Any, items: list[Any]) -> Any:
    # Rebuilding through the constructor is a guess about an unknown type; a
    # constructor that refuses a list is answered with the list itself rather
    # than an error, since the items are what the caller wants.
    if isinstance(x, str):
        # A str subclass would turn a list into its repr; join the characters.
        joined = "".join(items)
        try:
            return type(x)(joined)
        except (TypeError, ValueError):
            return joined
    try:
        return type(x)(items)
    except (TypeError, ValueError):
        return items
