"""The LSF environment: processes made by ``jsrun`` (IBM's Job Step Manager) inside an LSF job (``bsub``).

``jsrun`` sets ``JSM_NAMESPACE_SIZE``, ``JSM_NAMESPACE_RANK`` and ``JSM_NAMESPACE_LOCAL_RANK`` in every task;
LSF sets ``LSB_JOBID`` and lists the job's hosts, one line per slot, in the file named by
``LSB_DJOB_RANKFILE`` and as ``host count host count ...`` pairs in ``LSB_MCPU_HOSTS``.

The hosts: the first slot of either list is the launch (batch) node, where the job script and jsrun run and no
task does (CSM clusters such as Summit list it as ``batch1 1``); it is dropped, as Lightning does. The node rank
is this host's position among the remaining hosts (in order of first appearance), and the rendezvous runs on the
first of them, unless ``MASTER_ADDR`` says otherwise.

The port: ``MASTER_PORT`` when set, else derived from the job id and array index (``LSB_JOBINDEX``), so that
every task agrees without talking: ``10000 + (LSB_JOBID * 16 + LSB_JOBINDEX) % 20000``, above the usual
service ports and below Linux's ephemeral range. Two jsrun steps run side by side in one job need their own
``MASTER_PORT``.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from fabric_lite.environments._variables import check_below, read_int
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.errors import FabricEnvironmentError

_FIX = ("Fix: start the script with jsrun inside the LSF job (bsub ... jsrun -n N python train.py); it sets "
        "JSM_NAMESPACE_SIZE, JSM_NAMESPACE_RANK and JSM_NAMESPACE_LOCAL_RANK in every task.")


def parse_mcpu_hosts(value: str) -> list[str]:
    """``LSB_MCPU_HOSTS`` (``"batch1 1 h1 2"``) as one host per slot, like the rank file.

    Example:
        >>> parse_mcpu_hosts("batch1 1 h1 2 h2 2")
        ['batch1', 'h1', 'h1', 'h2', 'h2']
    """
    words = value.split()
    if len(words) % 2 or not all(count.isdigit() for count in words[1::2]):
        raise FabricEnvironmentError(
            f"LSB_MCPU_HOSTS={value!r} is not a list of 'host slots' pairs (e.g. 'batch1 1 node1 42'), so the LSF "
            f"environment cannot find the job's hosts. Fix: set LSB_DJOB_RANKFILE to the job's rank file, or "
            f"MASTER_ADDR and NODE_RANK (LSF sets LSB_MCPU_HOSTS itself: do not override it)."
        )
    return [host for host, count in zip(words[::2], words[1::2]) for _ in range(int(count))]


class LSFEnvironment(ClusterEnvironment):
    """Ranks from jsrun's ``JSM_NAMESPACE_*`` variables, hosts from ``LSB_DJOB_RANKFILE`` or ``LSB_MCPU_HOSTS``.

    Example:
        >>> env = LSFEnvironment({"LSB_JOBID": "4242", "LSB_MCPU_HOSTS": "batch1 1 h1 2 h2 2",
        ...                       "JSM_NAMESPACE_SIZE": "4", "JSM_NAMESPACE_RANK": "3",
        ...                       "JSM_NAMESPACE_LOCAL_RANK": "1"}, hostname="h2")
        >>> env.world_size(), env.global_rank(), env.local_rank(), env.node_rank(), env.main_address, env.main_port
        (4, 3, 1, 1, 'h1', 17872)
    """

    name = "lsf"

    def __init__(self, env: Mapping[str, str] | None = None, *, hostname: str | None = None) -> None:
        super().__init__(env)
        #: This machine's name as the host lists spell it (default: socket.gethostname()).
        self.hostname = hostname
        self._hosts: list[str] | None = None

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return "LSB_JOBID" in env and "JSM_NAMESPACE_SIZE" in env

    @staticmethod
    def describe(env: Mapping[str, str]) -> str:
        return (f"jsrun in LSF job {env.get('LSB_JOBID')} set JSM_NAMESPACE_RANK={env.get('JSM_NAMESPACE_RANK')} "
                f"of JSM_NAMESPACE_SIZE={env.get('JSM_NAMESPACE_SIZE')}")

    @property
    def creates_processes_externally(self) -> bool:
        return True

    # ------------------------------------------------------------------ ranks
    def world_size(self) -> int:
        self._check()
        return self._read("JSM_NAMESPACE_SIZE", 1)

    def global_rank(self) -> int:
        self._check()
        return self._read("JSM_NAMESPACE_RANK", 0)

    def local_rank(self) -> int:
        self._check()
        return self._read("JSM_NAMESPACE_LOCAL_RANK", 0)

    def local_world_size(self) -> int | None:
        return self._read("JSM_NAMESPACE_LOCAL_SIZE", 1) if "JSM_NAMESPACE_LOCAL_SIZE" in self.env else None

    def node_rank(self) -> int:
        if "NODE_RANK" in self.env:
            return self._read("NODE_RANK", 0)
        nodes = self.nodes()
        hostname = self.hostname or socket.gethostname()
        for candidate in (hostname, hostname.split(".")[0]):
            for index, node in enumerate(nodes):
                if node == candidate or node.split(".")[0] == candidate:
                    return index
        raise FabricEnvironmentError(
            f"This host ({hostname}) is not among the LSF job's compute hosts {nodes} (from {self._hosts_source()}), "
            f"so its node rank is unknown. Fix: run the script through jsrun inside the job's allocation, or set "
            f"NODE_RANK."
        )

    # ------------------------------------------------------------------ hosts and rendezvous
    def nodes(self) -> list[str]:
        """The job's compute hosts in order, without the launch node (see the module docstring)."""
        if self._hosts is None:
            slots = self._read_slots()
            compute = slots[1:] or slots  # a one-slot list has no separate launch node
            self._hosts = list(dict.fromkeys(compute))
        return self._hosts

    def _hosts_source(self) -> str:
        if self.env.get("LSB_DJOB_RANKFILE"):
            return f"LSB_DJOB_RANKFILE={self.env['LSB_DJOB_RANKFILE']}"
        return f"LSB_MCPU_HOSTS={self.env.get('LSB_MCPU_HOSTS')!r}"

    def _read_slots(self) -> list[str]:
        path = self.env.get("LSB_DJOB_RANKFILE")
        if path:
            try:
                with open(path) as handle:
                    slots = [line.strip() for line in handle if line.strip()]
            except OSError as error:
                raise FabricEnvironmentError(
                    f"LSB_DJOB_RANKFILE={path} cannot be read ({error.strerror}), so the LSF environment cannot find "
                    f"the job's hosts. Fix: run inside the LSF job that wrote it (LSF sets the variable), or unset it "
                    f"to use LSB_MCPU_HOSTS."
                ) from None
        elif "LSB_MCPU_HOSTS" in self.env:
            slots = parse_mcpu_hosts(self.env["LSB_MCPU_HOSTS"])
        else:
            raise FabricEnvironmentError(
                "The LSF environment was detected (LSB_JOBID, JSM_NAMESPACE_SIZE) but neither LSB_DJOB_RANKFILE nor "
                "LSB_MCPU_HOSTS lists the job's hosts, so the rendezvous host is unknown. Fix: run inside the LSF "
                "job (LSF sets both), or set MASTER_ADDR and NODE_RANK."
            )
        if not slots:
            raise FabricEnvironmentError(
                f"{self._hosts_source()} lists no hosts, so the LSF environment cannot find the rendezvous host. "
                f"Fix: run inside the LSF job that wrote it, or set MASTER_ADDR and NODE_RANK."
            )
        return slots

    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" in self.env:
            return self.env["MASTER_ADDR"]
        return self.nodes()[0]

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in self.env:
            return self._read("MASTER_PORT", 1)
        job = self._read("LSB_JOBID", 0)
        index = self._read("LSB_JOBINDEX", 0) if "LSB_JOBINDEX" in self.env else 0
        return 10000 + (job * 16 + index) % 20000

    # ------------------------------------------------------------------ checks
    def _read(self, name: str, lowest: int) -> int:
        return read_int(self.env, name, lowest=lowest, environment=self.name, fix=_FIX)

    def _check(self) -> None:
        if getattr(self, "_checked", False):
            return
        world, rank = self._read("JSM_NAMESPACE_SIZE", 1), self._read("JSM_NAMESPACE_RANK", 0)
        local = self._read("JSM_NAMESPACE_LOCAL_RANK", 0)
        check_below("JSM_NAMESPACE_RANK", rank, "JSM_NAMESPACE_SIZE", world, environment=self.name, fix=_FIX)
        local_size = self.local_world_size()
        if local_size is not None:
            check_below("JSM_NAMESPACE_LOCAL_RANK", local, "JSM_NAMESPACE_LOCAL_SIZE", local_size,
                        environment=self.name, fix=_FIX, what="local rank")
        else:
            check_below("JSM_NAMESPACE_LOCAL_RANK", local, "JSM_NAMESPACE_SIZE", world,
                        environment=self.name, fix=_FIX, what="local rank")
        self._checked = True
        # The hosts and the port, before any task waits for the others.
        self.main_address, self.main_port, self.node_rank()  # noqa: B018

    def __repr__(self) -> str:
        return "LSFEnvironment()"
