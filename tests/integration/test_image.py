"""``sky.Image`` on ``sky.Local()`` nodes: packages in a cached venv built with uv, includes,
shell variables, bootstrap failures that name their phase, and what Local refuses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import skyward as sky

QUIET = sky.Options(console="silent")
# Small, pure Python, and installed here by nothing (six is: moto's dependencies bring it).
ISO = sky.Image(pip=["iso8601==2.1.0"])


@sky.function
def _iso() -> tuple[str, str]:
    import importlib.metadata

    import iso8601

    return importlib.metadata.version("iso8601"), iso8601.__file__


@sky.function
def _included() -> tuple[int, list[str], str | None]:
    import mypkg  # type: ignore[import-not-found]

    folder = os.path.dirname(mypkg.__file__)
    return mypkg.VALUE, sorted(os.listdir(folder)), os.environ.get("GREETING")


def _events_of(pool: Any) -> list[Any]:
    return list(pool._core._events._lifecycle)


def test_pip_packages_come_from_a_venv_built_once_per_image() -> None:
    with pytest.raises(ModuleNotFoundError):  # not here: the node's copy is the one used
        import iso8601  # noqa: F401
    with sky.Compute(provider=sky.Local(), nodes=2, image=ISO, options=QUIET) as pool:
        results = _iso() @ pool
        phases = [
            (e.node, e.phase) for e in _events_of(pool) if isinstance(e, sky.BootstrapProgress)
        ]
    envs = Path.home() / ".skyward" / "envs"
    assert [version for version, _ in results] == ["2.1.0", "2.1.0"]
    assert all(Path(path).is_relative_to(envs) for _, path in results)
    for node in (0, 1):
        mine = [phase for n, phase in phases if n == node]
        assert mine == ["ssh", "bootstrap", "uv", "venv", "worker"]
    # Other tests of this session (their own images) may have built environments too.
    built = envs / Path(results[0][1]).relative_to(envs).parts[0] / ".skyward-complete"
    stamp = built.stat().st_mtime_ns
    # What is sampled is no part of the environment: other metrics reuse it too.
    again = sky.Image(pip=["iso8601==2.1.0"], metrics=sky.metrics.CPU())
    with sky.Compute(provider=sky.Local(), nodes=1, image=again, options=QUIET) as pool:
        assert _iso() >> pool == results[0]
    assert built.stat().st_mtime_ns == stamp  # the second pool reused it


def test_includes_excludes_and_shell_vars(tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 42\n")
    (package / "weights.ckpt").write_bytes(b"\0" * 1000)
    image = sky.Image(
        includes=[str(package)],
        excludes=["*.ckpt"],
        shell_vars={"GREETING": "echo hello-$((1 + 1))"},
    )
    with sky.Compute(provider=sky.Local(), nodes=1, image=image, options=QUIET) as pool:
        assert _included() >> pool == (42, ["__init__.py"], "hello-2")


def test_a_failing_install_names_the_phase_the_node_and_the_output() -> None:
    image = sky.Image(pip=["skyward-no-such-package-7f3a==0.0.1"])
    with (
        pytest.raises(sky.ProvisionError) as caught,
        sky.Compute(provider=sky.Local(), nodes=1, image=image, options=QUIET),
    ):
        pass
    error = caught.value
    assert (error.node, error.phase) == (0, "bootstrap")
    message = str(error)
    assert "node 0 failed during bootstrap" in message
    assert "in its 'venv' phase" in message
    assert "skyward-no-such-package-7f3a" in message  # uv's own words, from the node


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (sky.Image(apt=["git"]), ValueError, r"sky.Local\(\) .* never runs apt-get"),
        (sky.Image(python="3.9"), ValueError, r"a function pickled by one Python version"),
        (sky.Image(includes=["./no/such/dir"]), FileNotFoundError, r"no such file or directory"),
        (sky.Image(skyward_source="pypi"), ValueError, r"skyward_source applies to remote"),
        (
            sky.Image(
                pip=["numpy"], pip_indexes=[sky.PipIndex(url="https://x", packages=["torch"])]
            ),
            ValueError,
            r"names 'torch', which Image\(pip=\[...\]\) does not install",
        ),
    ],
)
def test_local_refuses_what_it_cannot_do_before_starting(
    image: sky.Image, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.Compute(provider=sky.Local(), nodes=1, image=image)
