"""The control API of a sharded fleet: every link request routed to the worker that runs the link.

``qkdops up --workers N`` runs the links in N worker processes (``qkdops worker``), each with its own
control API for its own links. The control API users know — ``qkdops fault``/``action``/``status``,
the calibration scheduler, game days, runbooks — keeps its one address and token on the supervisor;
``ShardedFleet`` answers it with the same methods ``Fleet`` offers, each a call to the owning worker's
API with the same token. The owner of a link follows from its position in the config
(``FleetConfig.shard``), so routing needs no lookup and survives a worker's restart.

The exporters ``/api/v1/exporters`` stops and starts (the exporter-crash game day, the runbook's
restart) are kinds on a sharded fleet: ``ShardedExporter("device")`` is every worker's device
exporter, ``"postprocessing"`` every worker's and the supervisor's own; stopping one stops them all,
as the game day means, and the listing shows each instance with its worker.

A worker's own refusal (an unknown fault, a bad parameter) is passed on as that worker answered it
(``ApiResponseError``: same status, code, message and field); a worker that does not answer
(restarting after a crash) is ``WorkerUnavailable``, a 503 naming the link and the worker, so a
caller retries rather than mistaking it for a missing link.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from qkdlink.emulator import CalibrationResult
from qkdops.config import FleetConfig
from qkdops.control_client import ApiUnreachable, ControlClient
from qkdops.runtime.fleet import UnknownLink

ROUTED_TIMEOUT_S = 30.0   # a calibration action (a phase relock scan) may take seconds on a busy worker


class WorkerUnavailable(RuntimeError):
    """The worker that runs a link is not answering; ``str()`` names both."""


class ShardedFleet:
    """``Fleet``'s control surface over worker control APIs: ``urls[i]`` is worker i's, which runs
    ``config.shard(i, len(urls))``."""

    def __init__(self, config: FleetConfig, urls: Sequence[str], token: str, timeout_s: float = ROUTED_TIMEOUT_S) -> None:
        self.config = config
        self.workers = [ControlClient(url, token, timeout_s) for url in urls]
        self.owner = {spec.id: i for i in range(len(urls)) for spec in config.shard(i, len(urls)).links}

    def worker_of(self, link_id: str) -> int:
        """The index of the worker that runs ``link_id``; UnknownLink if none does."""
        if (index := self.owner.get(link_id)) is None:
            raise UnknownLink(f"unknown link '{link_id}' (links: {', '.join(s.id for s in self.config.links)})")
        return index

    runtime = worker_of   # what the control API calls to check a link exists before judging a body

    def _call(self, link_id: str, call: str, *args: Any) -> Any:
        index = self.worker_of(link_id)
        try:
            return getattr(self.workers[index], call)(link_id, *args)
        except ApiUnreachable:
            raise WorkerUnavailable(f"link '{link_id}' runs on worker {index} ({self.workers[index].url}), which is not "
                                    "answering (restarting after a crash?): try again in a few seconds") from None

    def link_ids(self) -> list[tuple[str, str]]:
        """(link id, protocol) in configuration order, from the config (no worker needs to answer)."""
        return [(spec.id, spec.protocol) for spec in self.config.links]

    def status(self, link_id: str) -> dict[str, Any]:
        return self._call(link_id, "status")

    def recent_blocks(self, link_id: str, last: int) -> dict[str, Any]:
        return self._call(link_id, "blocks", last)

    def inject(self, link_id: str, fault: str, parameters: Mapping[str, float]) -> dict[str, Any]:
        return self._call(link_id, "inject", fault, dict(parameters))

    def clear(self, link_id: str, fault: str | None = None) -> list[str]:
        return list(self._call(link_id, "clear", fault)["cleared"])

    def act(self, link_id: str, action: str) -> CalibrationResult:
        answer = self._call(link_id, "act", action)
        return CalibrationResult(answer["action"], answer["ok"], answer["message"], answer["before"], answer["after"])


class LocalExporter(Protocol):
    """An exporter served in this process (``exporters.server.ServedExporter``)."""

    name: str
    port: int

    @property
    def serving(self) -> bool: ...

    def start(self) -> bool: ...

    def stop(self) -> bool: ...


class ShardedExporter:
    """One kind of exporter over a sharded fleet: every worker's (through its control API) and, for
    the post-processing exporter, the supervisor's own (``local``). ``port`` is the local one's (0:
    none here; each worker's is in ``listing``)."""

    def __init__(self, name: str, workers: ShardedFleet, local: LocalExporter | None = None) -> None:
        self.name, self.local, self.fleet = name, local, workers
        self.port = local.port if local is not None else 0

    def _each_worker(self, call: str) -> list[Any]:
        answers = []
        for index, client in enumerate(self.fleet.workers):
            try:
                answers.append(getattr(client, call)(*(() if call == "exporters" else (self.name,))))
            except ApiUnreachable:
                raise WorkerUnavailable(f"exporter '{self.name}': worker {index} ({client.url}) is not answering "
                                        "(restarting after a crash?): try again in a few seconds") from None
        return answers

    def listing(self) -> list[dict[str, Any]]:
        """Every instance: ``{"name", "port", "serving"}``, with ``"worker": "worker-i"`` for a worker's."""
        here = [{"name": self.name, "port": self.local.port, "serving": self.local.serving}] if self.local is not None else []
        return here + [{**entry, "worker": f"worker-{i}"} for i, answer in enumerate(self._each_worker("exporters"))
                       for entry in answer if entry["name"] == self.name]

    @property
    def serving(self) -> bool:
        return all(entry["serving"] for entry in self.listing())

    def stop(self) -> bool:
        """Stop every instance (each is idempotent); True: the stop was carried out."""
        if self.local is not None:
            self.local.stop()
        self._each_worker("stop_exporter")
        return True

    def start(self) -> bool:
        """Start every instance again; OSError if the local one's port was taken, a worker's 409 passed on."""
        if self.local is not None:
            self.local.start()
        self._each_worker("start_exporter")
        return True
