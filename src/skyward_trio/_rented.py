"""What the clouds that rent one machine per node through an HTTP API share.

``sky.Lambda``, ``Hyperstack``, ``Vultr``, ``Verda``, ``Scaleway``, ``Novita``, ``GCP``,
``TensorDock``, ``MassedCompute`` and ``JarvisLabs`` work alike: a node is one machine named
``skyward-<job>-<node>-<n>``, launched with the pool's key and a host key made for it (or,
where the cloud takes none, the first it presents), polled until it runs with an address,
ended by a request and confirmed gone by polling again; the pool's close ends every machine
of the job the cloud still lists (one whose launch answer never came included) and removes
what the pool registered (its SSH key). :class:`RentedCluster` is that life; a subclass says
how its cloud launches, describes, ends and lists a machine, and words what only it can
say. Their listings are each a :class:`GPUCatalog`: credentials checked first, a spec without a
GPU refused, the cloud's offers of that many whole GPUs.

None of these clouds but GCP gives a machine a credential of its own, so none can end a
machine whose client died: a pool on them starts a reaper beside its client (``_reaper``),
which ends them when the client process dies. ``_gcp`` adds a lease-expiry command through
which a GCE VM deletes itself.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import ClassVar, Generic, Protocol, TypeVar

import attrs
import trio

from . import _transport
from ._offers import Catalog, Choice, Offer
from ._providers import (
    Instance,
    ended_on_failure,
    given_host_key,
    poll_delays,
    remote_workdir,
)
from .accelerators import Accelerator

__all__ = ["GPUCatalog", "Machine", "RentedCluster", "positive_number", "whole_gpus"]


class Machine(Protocol):
    """What a cloud's API says of one machine, as far as :class:`RentedCluster` reads it."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> str: ...


class _Config(Protocol):
    @property
    def username(self) -> str: ...


class _Closable(Protocol):
    async def aclose(self) -> None: ...


M = TypeVar("M", bound=Machine)
A = TypeVar("A", bound=_Closable)
C = TypeVar("C")
Config = TypeVar("Config", bound=_Config)


def positive_number(value: object) -> float | None:
    """A positive number, given as one or as its text (some clouds write prices as text);
    None for anything else."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def whole_gpus(count: float) -> int:
    """GPUs per machine where a cloud rents whole ones (a fractional count is refused
    before any request)."""
    return max(1, math.ceil(count))


@attrs.frozen
class GPUCatalog(Generic[C, A]):
    """A GPU cloud's listing, as its module's ``catalog(config, *, accelerator, gpus,
    everything=False)``: the offers ``listed(client, config, wanted)`` gives, through the
    client ``api(config)`` makes, of machines with ``gpus`` whole GPUs (``wanted``); every
    offer with GPUs when no accelerator is asked for. The model is judged with the rest of
    the spec (``_offers``), which says what the cloud has instead.

    ``credentials(config)`` runs first, before any request: a missing key is a setting the
    user must fix, raised (``ValueError``), not a cloud to skip. A spec with no accelerator
    gets no offer, saying what the cloud rents (``rents``: ``"sky.Lambda() rents GPU
    instances"``), unless ``everything`` is asked for (``sky offers``). The cloud's
    ``error`` becomes the catalog's; the client is closed either way.
    """

    rents: str
    credentials: Callable[[C], object]
    api: Callable[[C], A]
    listed: Callable[[A, C, int], Awaitable[Iterable[Offer | None]]]
    error: type[Exception]

    async def __call__(
        self, config: C, *, accelerator: Accelerator | None, gpus: float, everything: bool = False
    ) -> Catalog:
        self.credentials(config)
        if accelerator is None and not everything:
            return Catalog(error=f"{self.rents}: pass an accelerator")
        wanted = whole_gpus(gpus)
        client = self.api(config)
        try:
            offers = await self.listed(client, config, wanted)
        except self.error as exc:
            return Catalog(error=str(exc))
        finally:
            await client.aclose()
        return Catalog(
            offers=tuple(
                o
                for o in offers
                if o is not None
                and o.accelerator is not None
                and (accelerator is None or o.accelerator.count == wanted)
            )
        )


class RentedCluster(ABC, Generic[Config, M]):
    """One pool's machines on a cloud that rents one per node (see the module).

    A subclass sets the class attributes and implements the abstract methods; the rest of
    the cluster protocol (``provision``, ``alive``, ``terminate``, ``aclose``) is here.
    """

    #: The provider's short name (``"lambda"``).
    name: str
    #: Machines reach each other only through their public addresses: the collections
    #: store runs in the client.
    peers_reachable: bool = False
    #: The cloud, as messages name it (``"Lambda"``).
    cloud: ClassVar[str]
    #: What the cloud's failures raise.
    error: ClassVar[type[Exception]]
    #: What the cloud calls one machine (``"instance"``, ``"VM"``).
    thing: ClassVar[str] = "instance"
    #: The verb for ending a machine, as ``(verb, -ing, past)``.
    ending: ClassVar[tuple[str, str, str]] = ("delete", "deleting", "deleted")
    #: How long an ended machine may stay listed before that is an error.
    end_wait: ClassVar[float] = 60.0
    #: Whether a pool on this cloud starts a reaper (``_reaper``): its machines cannot end
    #: themselves when their client dies. GCP's can (with their own service account).
    needs_reaper: ClassVar[bool] = True

    _api: _Closable  # the cloud's API client, set by the subclass

    def __init__(
        self, config: Config, *, job_id: str, client_key: _transport.SSHKey, choice: Choice
    ) -> None:
        self.config = config
        self.job_id = job_id
        self._choice = choice
        self._offers = [choice.offer, *choice.also]  # cheapest first after the chosen
        self._public_key = _transport.public_openssh(client_key)
        self._login = _transport.Login(keys=(client_key,), tried="the pool's own key")
        self._serial = 0
        self._live: set[str] = set()  # machine ids launched and not confirmed ended

    # What each cloud says for itself.

    @abstractmethod
    async def _launch(self, node: int, name: str, host_key: _transport.SSHKey) -> tuple[str, Offer]:
        """Launch one machine called ``name`` that will present ``host_key``, of the first
        offer and region the cloud accepts: its id (added to ``_live`` as soon as the
        cloud answers) and that offer."""

    @abstractmethod
    async def _get(self, machine_id: str) -> M | None:
        """The machine as the cloud sees it now; None once it is gone."""

    @abstractmethod
    def _address(self, machine: M) -> tuple[str, str] | None:
        """The machine's public and private address once it is up and reachable, else
        None (still coming up)."""

    @abstractmethod
    def _failed(self, machine: M) -> str | None:
        """Why a machine that is coming up never will (its error, naming it), or None."""

    @abstractmethod
    def _running(self, machine: M) -> bool:
        """Whether a listed machine still runs (for ``alive``)."""

    def _ended(self, machine: M) -> bool:
        """Whether a listed machine has ended for good (the cloud keeps some listed a
        while)."""
        return False

    def _still_ending(self, machine: M) -> bool:
        """Whether a machine that is not yet ended is on its way there (else its end
        stalled, and waiting on is no use)."""
        return True

    @abstractmethod
    async def _request_end(self, machine_id: str) -> str | None:
        """Ask the cloud to end the machine: None once it accepted (or has no such
        machine), else its words for the refusal, ``(status: message)``."""

    @abstractmethod
    async def _listed(self) -> Sequence[M]:
        """Every machine the account has (raises the cloud's error)."""

    def _releases(self) -> Sequence[tuple[str, Callable[[], Awaitable[None]]]]:
        """What the pool registered besides its machines, to remove when it closes: each
        as (what it is, for a message; how to remove it). None here: a cloud whose pool
        registers something (an SSH key) says what."""
        return ()

    def reaping(self) -> None:
        """This object ends the pool of a client that died (``_reaper``), knowing nothing of
        what that pool did: a cloud that removes only what it registered assumes all was."""

    def _left_behind(self, failed: str) -> str:
        """The error's message when the close could not confirm everything gone: ``failed``
        and where to look. A cloud whose pool registers more says where that is too."""
        return (
            f"sky.{type(self.config).__name__} could not confirm every {self.thing} of this "
            f"pool {self.ending[2]}; these may still bill: {failed}. Check {self.cloud}'s "
            f"console for {self.thing}s named {self._prefix}*"
        )

    async def _reach(self, machine_id: str) -> tuple[str, int, str]:
        """Wait until the machine is up: where its sshd answers (host and port), and its
        private address. Port 22 of its public address unless the cloud maps another."""
        public, private = await self._until_up(machine_id)
        return public, 22, private

    async def _pin_host_key(self, machine_id: str, host: str, port: int, given: str) -> str:
        """The host key the client pins for the machine: the one it was given, once sshd
        there presents it (a cloud that takes none trusts the first it presents)."""
        await given_host_key(machine_id, host, port, given)
        return given

    # The life of a machine.

    @property
    def _prefix(self) -> str:
        return f"skyward-{self.job_id}-"

    @property
    def _key_name(self) -> str:
        return f"skyward-{self.job_id}"

    def _regions(self, offer: Offer) -> list[str]:
        """The offer's regions the spec allows, in the offer's order."""
        region = self._choice.spec.region
        return [r for r in offer.regions if region in (None, r)]

    async def provision(self, node: int) -> Instance:
        """Launch a machine, wait until it runs with an address and sshd answers with the
        host key it was given, and learn its home."""
        host_key = _transport.generate_key()
        self._serial += 1
        name = f"{self._prefix}{node}-{self._serial}"
        machine_id, offer = await self._launch(node, name, host_key)
        async with ended_on_failure(lambda: self._end(machine_id), self.error):
            host, port, private = await self._reach(machine_id)
            given = _transport.public_openssh(host_key)
            pinned = await self._pin_host_key(machine_id, host, port, given)
            user = self.config.username
            workdir = await remote_workdir(
                host,
                port,
                user=user,
                login=self._login,
                host_key=pinned,
                name=f"{self.job_id}-{node}",
            )
        return Instance(
            id=machine_id,
            node=node,
            host=host,
            port=port,
            username=user,
            host_key=pinned,
            private_ip=private,
            public_ip=host,
            python=None,
            workdir=workdir,
            hourly_price=offer.on_demand_price or self._choice.hourly_price,
            # No on_lease_expiry: nothing on the machine can end it (see the module).
        )

    async def _until_up(self, machine_id: str) -> tuple[str, str]:
        """Poll until the machine is up with an address (the caller's deadline): its public
        and private address."""
        delays = poll_delays()
        while True:
            now = await self._get(machine_id)
            if now is None:
                raise self.error(
                    f"{self.thing} {machine_id} was {self.ending[2]} before it came up"
                )
            why = self._failed(now)
            if why is not None:
                raise self.error(why)
            address = self._address(now)
            if address is not None:
                return address
            await trio.sleep(next(delays))

    async def alive(self, instance: Instance) -> bool:
        """Whether the cloud still runs the machine."""
        try:
            now = await self._get(instance.id)
        except self.error:
            return True  # the API did not answer: the reconnection finds out
        return now is not None and self._running(now)

    async def terminate(self, instance: Instance) -> None:
        """End the machine and confirm the cloud has it ended; raise otherwise."""
        await self._end(instance.id)

    async def _end(self, machine_id: str) -> None:
        verb, verbing = self.ending[:2]
        refused = await self._request_end(machine_id)
        if refused is not None:
            raise self.error(
                f"{self.cloud} did not {verb} {self.thing} {machine_id} {refused}; {verb} it "
                f"in {self.cloud}'s console"
            )
        delays = poll_delays()
        now: M | None = None
        with trio.move_on_after(self.end_wait):
            while True:
                now = await self._get(machine_id)
                if now is None or self._ended(now):
                    self._live.discard(machine_id)
                    return
                if not self._still_ending(now):
                    break
                await trio.sleep(next(delays))
        raise self.error(
            f"{self.cloud} still lists {self.thing} {machine_id} as "
            f"{now.status if now is not None else 'unknown'} after {verbing} it (waited up "
            f"to {self.end_wait:g} s); {verb} it in {self.cloud}'s console"
        )

    async def aclose(self) -> None:
        """End every machine of this job still there, those never handed out included (a
        launch whose answer never came), then remove what the pool registered; raise
        naming anything left."""
        failed: list[str] = []
        try:
            with trio.move_on_after(2 * self.end_wait) as scope:
                unlisted = await self._find_strays()
                if unlisted is not None:
                    failed.append(unlisted)
                for machine_id in sorted(self._live):
                    try:
                        await self._end(machine_id)
                    except self.error as exc:
                        failed.append(f"{self.thing} {machine_id} ({exc})")
                for what, release in self._releases():
                    try:
                        await release()
                    except self.error as exc:
                        failed.append(f"{what} ({exc})")
            if scope.cancelled_caught:
                failed.append(f"no answer from {self.cloud} within {2 * self.end_wait:g} s")
        finally:
            await self._api.aclose()
        if failed:
            raise self.error(self._left_behind("; ".join(failed)))

    async def _find_strays(self) -> str | None:
        """Add the job's machines the cloud lists to those to end; or say why it could not
        list them (a machine launched but never answered for may then be left)."""
        try:
            listed = await self._listed()
        except self.error as exc:
            return f"the job's {self.thing}s could not be listed: {exc}"
        for machine in listed:
            if machine.name.startswith(self._prefix) and not self._ended(machine):
                self._live.add(machine.id)
        return None
