"""The MPI environment: processes made by ``mpirun`` / ``mpiexec`` (OpenMPI, MPICH, Intel MPI), read from its variables.

Lightning's ``MPIEnvironment`` asks mpi4py (``MPI.COMM_WORLD``) for the ranks, and gathers hostnames over MPI for
the local rank and the rendezvous. Every MPI launcher already writes the ranks into each process's environment
before the program starts, so this one reads them there instead: it needs neither mpi4py nor an MPI library
in the Python environment, it does not call ``MPI_Init`` (which on some fabrics grabs the network devices NCCL
wants), and detection costs a dictionary look-up rather than an import.

The variables, by launcher:

======================  ======================  ==================  ========================  =====================
launcher                world size              global rank         local rank                processes on the node
======================  ======================  ==================  ========================  =====================
OpenMPI ``mpirun``      OMPI_COMM_WORLD_SIZE    OMPI_COMM_WORLD_    OMPI_COMM_WORLD_          OMPI_COMM_WORLD_
                                                RANK                LOCAL_RANK                LOCAL_SIZE
MPICH / Intel MPI       PMI_SIZE                PMI_RANK            MPI_LOCALRANKID           MPI_LOCALNRANKS
(Hydra ``mpiexec``)
======================  ======================  ==================  ========================  =====================

``PMI_RANK``/``PMI_SIZE`` alone are not enough: ``srun --mpi=pmi2`` sets them too, and there the SLURM
environment (which knows the nodes) is the better reader. Hydra's ``MPI_LOCALRANKID`` marks its processes.

The rendezvous: MPI tells no process where rank 0 runs, so ``MASTER_ADDR`` and ``MASTER_PORT`` come from the
user (``mpirun -x MASTER_ADDR=node1 -x MASTER_PORT=29500``, ``mpiexec -genv MASTER_PORT 29500``). When every
process runs on one node (local size = world size) ``MASTER_ADDR`` may be left out: 127.0.0.1 is used.
``MASTER_PORT`` is needed from two processes on; a missing one is an error naming the flag that sets it.

The node rank: ``NODE_RANK`` when set; else it is worked out from the global and local rank assuming every node
runs the same number of processes, placed in blocks (mpirun's default: rank r on node r // local size) or
round-robin (``--map-by node``: rank r on node r % nodes). A layout that fits neither needs ``NODE_RANK``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fabric_lite.environments._variables import check_below, read_int
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.errors import FabricEnvironmentError


@dataclass(frozen=True)
class MPIFlavour:
    """One MPI launcher's rank variables and how its command line passes a variable to every process."""

    name: str
    command: str
    size: str
    rank: str
    local_rank: str
    local_size: str
    #: The flag that exports a variable to every process, with {name} and {value}.
    export: str

    def pass_variable(self, name: str, value: str) -> str:
        return self.export.format(name=name, value=value)


OPENMPI = MPIFlavour(
    "OpenMPI", "mpirun", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE", "-x {name}={value}",
)
HYDRA = MPIFlavour(
    "MPICH/Intel MPI (Hydra)", "mpiexec", "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
    "-genv {name} {value}",
)
#: Checked in this order: OpenMPI's variables are its own; Hydra's PMI_* only count with MPI_LOCALRANKID.
FLAVOURS = (OPENMPI, HYDRA)


def flavour_of(env: Mapping[str, str]) -> MPIFlavour | None:
    """The MPI launcher whose variables ``env`` carries, or None.

    Example:
        >>> flavour_of({"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0"}).name
        'MPICH/Intel MPI (Hydra)'
        >>> flavour_of({"PMI_RANK": "0", "PMI_SIZE": "2"}) is None  # srun --mpi=pmi2: the SLURM environment's
        True
    """
    if OPENMPI.size in env and OPENMPI.rank in env:
        return OPENMPI
    if HYDRA.size in env and HYDRA.rank in env and HYDRA.local_rank in env:
        return HYDRA
    return None


class MPIEnvironment(ClusterEnvironment):
    """Ranks from the variables an MPI launcher sets in each process (see the module docstring for the table).

    Example:
        >>> env = MPIEnvironment({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3",
        ...                       "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
        ...                       "MASTER_ADDR": "node1", "MASTER_PORT": "29500"})
        >>> env.world_size(), env.global_rank(), env.local_rank(), env.node_rank(), env.main_address
        (4, 3, 1, 1, 'node1')
    """

    name = "mpi"

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return flavour_of(env) is not None

    @staticmethod
    def describe(env: Mapping[str, str]) -> str:
        """Which launcher's variables were found, for the plan's reason column."""
        flavour = flavour_of(env)
        if flavour is None:
            return "no MPI launcher variables"
        return f"{flavour.name} {flavour.command} set {flavour.rank}={env[flavour.rank]} of {flavour.size}={env[flavour.size]}"

    @property
    def flavour(self) -> MPIFlavour:
        flavour = flavour_of(self.env)
        if flavour is None:
            raise FabricEnvironmentError(
                "MPIEnvironment is used, but this process carries no MPI launcher's rank variables "
                f"({OPENMPI.rank}/{OPENMPI.size} from OpenMPI's mpirun, or {HYDRA.rank}/{HYDRA.size} with "
                f"{HYDRA.local_rank} from MPICH/Intel MPI's mpiexec). Fix: start the script with mpirun -np N python "
                "train.py, or drop MPIEnvironment() from plugins to let Fabric detect how it was started."
            )
        return flavour

    @property
    def creates_processes_externally(self) -> bool:
        return True

    # ------------------------------------------------------------------ ranks
    def world_size(self) -> int:
        self._check()
        return self._read(self.flavour.size, lowest=1)

    def global_rank(self) -> int:
        self._check()
        return self._read(self.flavour.rank, lowest=0)

    def local_rank(self) -> int:
        self._check()
        return self._read(self.flavour.local_rank, lowest=0)

    def local_world_size(self) -> int | None:
        self._check()
        name = self.flavour.local_size
        return self._read(name, lowest=1) if name in self.env else None

    def node_rank(self) -> int:
        self._check()
        if "NODE_RANK" in self.env:
            return self._read("NODE_RANK", lowest=0)
        world, rank, local = self._read(self.flavour.size, 1), self._read(self.flavour.rank, 0), self._read(self.flavour.local_rank, 0)
        per_node = self.local_world_size()
        if per_node == world:
            return 0
        if per_node is None:
            return self._node_rank_unknown(f"{self.flavour.local_size} is not set")
        if (rank - local) % per_node == 0:  # blocks: node n holds ranks n*per_node .. n*per_node + per_node - 1
            return (rank - local) // per_node
        nodes = world // per_node
        if world % per_node == 0 and rank // nodes == local:  # round-robin: rank r on node r % nodes
            return rank % nodes
        return self._node_rank_unknown(f"the ranks are placed neither in blocks of {per_node} nor round-robin")

    def _node_rank_unknown(self, why: str) -> int:
        f = self.flavour
        raise FabricEnvironmentError(
            f"The mpi environment cannot tell this process's node: {why} ({f.rank}={self.env[f.rank]}, "
            f"{f.local_rank}={self.env[f.local_rank]}, {f.size}={self.env[f.size]}). Fix: set NODE_RANK in each "
            f"process (e.g. a wrapper script that exports it per host), or start the same number of processes on "
            f"every node, in blocks ({f.command} --map-by slot) or round-robin (--map-by node)."
        )

    # ------------------------------------------------------------------ rendezvous
    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" in self.env:
            return self.env["MASTER_ADDR"]
        if self.local_world_size() == self.world_size():
            return "127.0.0.1"  # every process runs on this node
        f = self.flavour
        raise FabricEnvironmentError(
            f"{f.name} started {self.world_size()} processes over several nodes ({f.local_size}="
            f"{self.env.get(f.local_size, '?')}), but MPI does not tell a process where rank 0 runs, and MASTER_ADDR "
            f"is not set. Fix: pass the address of the node of rank 0 to every process: {f.command} "
            f"{f.pass_variable('MASTER_ADDR', '<host of rank 0>')} {f.pass_variable('MASTER_PORT', '29500')} ..."
        )

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in self.env:
            return self._read("MASTER_PORT", lowest=1)
        if self._read(self.flavour.size, 1) == 1:
            return 0  # mpirun -np 1: nobody to meet (a one-process group picks a free port itself)
        f = self.flavour
        raise FabricEnvironmentError(
            f"{f.name} started this process, but MPI sets no rendezvous port and MASTER_PORT is not set, so the "
            f"processes cannot meet. Fix: pass a free port to every process: {f.command} "
            f"{f.pass_variable('MASTER_PORT', '29500')} ... (and {f.pass_variable('MASTER_ADDR', '<host of rank 0>')} "
            f"on several nodes)."
        )

    # ------------------------------------------------------------------ checks
    def _read(self, name: str, lowest: int) -> int:
        return read_int(self.env, name, lowest=lowest, environment="mpi", fix=self._fix())

    def _fix(self) -> str:
        f = flavour_of(self.env) or OPENMPI
        return (f"Fix: start the script with {f.command} -np N python train.py and do not set {f.rank}, {f.size} "
                f"or {f.local_rank} yourself ({f.command} sets them in every process).")

    def _check(self) -> None:
        """The launcher's variables fit together: ranks below sizes, and the rendezvous is known."""
        if getattr(self, "_checked", False):
            return
        f = self.flavour
        world, rank, local = self._read(f.size, 1), self._read(f.rank, 0), self._read(f.local_rank, 0)
        check_below(f.rank, rank, f.size, world, environment="mpi", fix=self._fix())
        if f.local_size in self.env:
            local_size = self._read(f.local_size, 1)
            check_below(f.local_rank, local, f.local_size, local_size, environment="mpi", fix=self._fix(), what="local rank")
            if local_size > world:
                raise FabricEnvironmentError(
                    f"The mpi environment reads {f.local_size}={local_size} processes on this node but {f.size}={world} "
                    f"in all; a node cannot hold more than the whole job. {self._fix()}"
                )
        else:
            check_below(f.local_rank, local, f.size, world, environment="mpi", fix=self._fix(), what="local rank")
        self._checked = True
        # Known rendezvous before any process waits for the others (errors here name the flag to add).
        self.main_address, self.main_port  # noqa: B018

    def __repr__(self) -> str:
        flavour = flavour_of(self.env)
        return f"MPIEnvironment({flavour.name if flavour else 'not launched by MPI'})"
