"""Sessions: ``nox`` runs them all: the tests on 3.11-3.13 (the clouds' on 3.11 only),
lint and typecheck."""

import glob
import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.11", "3.12", "3.13"]

# pyenv installs each version but selects one; its shims refuse the others. Put every
# installed 3.11-3.13 on PATH so nox finds all three.
for _version in PYTHONS:
    for _bin in sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{_version}.*/bin"))):
        os.environ["PATH"] = _bin + os.pathsep + os.environ["PATH"]


# Four pytest workers on these two-core machines: a test spends much of its time waiting
# (SSH round trips, a machine's notice polled every 5 s, a lease running out), and four
# keep both cores about 90% busy, a run some 20% shorter than with two. Each takes whole
# files: a file's tests share its module fixtures, and test_ssh.py's apt tests take the
# real dpkg lock in turn. `nox -s tests-3.11 -- -n 0` runs in one process.
PARALLEL = ("-n", "4", "--dist", "loadfile")
TORCH = "torch==2.13.0"
JAX = "jax==0.10.2"
ACCELERATE = "accelerate==1.15.0"


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite (real Local nodes over real SSH)."""
    session.install("-e", ".[test]")
    if session.python == "3.11":
        # For the torch, jax and accelerate plugins' multi-node tests: these machines hold
        # PyTorch's CPU build for 3.11 only, where pip finds it (elsewhere pip downloads a
        # CUDA build of several GB); JAX's CPU build is about 600 MB installed. On 3.12
        # and 3.13 those tests skip.
        session.install(TORCH, JAX, ACCELERATE)
    # The clouds' tests (marked ``clouds``: each provider's calls against a fake of its
    # API, and those fakes' own tests) are some 40% of the run and exercise HTTP code that
    # does not vary with the interpreter: they run on 3.11 only, to keep the three runs short
    # on two cores (23 to 29 minutes measured, 36 to 38 on slower machines: README). Every
    # other test runs on all three (the core, the worker, SSH, the faces, the server).
    # `nox -s tests-3.12 -- -m ""` runs them all.
    chosen = () if session.python == "3.11" else ("-m", "not clouds")
    session.run("pytest", *PARALLEL, *chosen, *session.posargs)


LINTED = ("src", "tests", "examples", "bench", "scripts", "noxfile.py")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff, with the ASYNC rules on."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    # Skyward with its one optional dependency, and mypy: not the test tools of .[dev].
    session.install("-e", ".[aws]", "mypy>=1.11")
    session.run("mypy")
