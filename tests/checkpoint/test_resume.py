"""Exact mid-epoch resume: N steps straight == K steps, save, a NEW process loads and runs N - K steps.

Bitwise (torch.equal): the batches and their order, the samples, the losses, the final parameters, the worker
seeds and the Python / NumPy streams; for one process (16-mixed: the GradScaler too), 2-rank DDP and 2-rank
FSDP (sharded folder), shuffled, num_workers 0 and 2 (samples drawn from the workers' own generators), stopped
in the middle of the second epoch. The skipped batches are never fetched: the dataset logs every index it reads.
Jobs that LEAVE their loop before saving (break, return, right after an epoch's last batch; workers, persistent
workers, a stateful IterableDataset; 1 process and 2 DDP ranks) resume like the run that never stopped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from fabric_lite import Fabric
from fabric_lite.errors import CheckpointError, ConfigurationError

SCRIPT = str(Path(__file__).parent / "_scripts" / "resume_run.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CONFIGS = {  # strategy: (command-line arguments, ranks, worker settings)
    "single": (["--precision", "16-mixed"], 1, (0, 2)),
    "ddp": (["--strategy", "ddp", "--devices", "2"], 2, (0, 2)),
    "fsdp": (["--strategy", "fsdp", "--devices", "2", "--workers", "0"], 2, (0,)),
}


def launch(out, phase, arguments):
    result = subprocess.run([sys.executable, SCRIPT, str(out), "--phase", phase, *arguments], capture_output=True,
                            text=True, timeout=300, env=ENV, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module", params=list(CONFIGS))
def runs(request, tmp_path_factory):
    arguments, ranks, workers = CONFIGS[request.param]
    out = tmp_path_factory.mktemp(f"resume-{request.param}")
    launch(out, "first", arguments)  # the straight run, then the run that stops and saves
    launch(out, "second", arguments)  # a new process: load, continue
    def load(name):
        return torch.load(out / name, weights_only=True)

    return request.param, out, {(w, r): (load(f"first-w{w}-rank{r}.pt"), load(f"second-w{w}-rank{r}.pt"))
                                for w in workers for r in range(ranks)}


def equal_lists(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_continued_run_is_bitwise_identical_to_one_that_never_stopped(runs):
    strategy, _, results = runs
    for (workers, rank), (first, second) in results.items():
        straight, before, after = first["straight"], first["first"], second["second"]
        stop, total = first["stop"], first["total"]
        assert len(before["losses"]) == stop and len(after["losses"]) == total - stop
        where = f"{strategy}, num_workers={workers}, rank {rank}"
        for key in ("batches", "losses", "extra"):
            assert equal_lists(straight[key], before[key] + after[key]), f"{key} differ ({where})"
        assert equal_lists(straight["params"], after["params"]), f"final parameters differ ({where})"
        assert straight["scale"] == after["scale"], where  # the GradScaler's scale (16-mixed), None otherwise


def test_worker_seeds_are_those_of_the_original_epoch(runs):
    strategy, _, results = runs
    for (workers, rank), (first, second) in results.items():
        if workers:
            straight, after = first["straight"], second["second"]
            # The stop is at an even position: worker w serves batches w, w + 2, ... in both runs.
            assert equal_lists(straight["seeds"][first["stop"]:], after["seeds"]), (strategy, rank)
            assert all(int(s.min()) >= 0 for s in after["seeds"])  # batches did come from workers


def test_skipped_batches_are_never_fetched(runs):
    strategy, _, results = runs
    for (workers, rank), (first, second) in results.items():
        straight, after = first["straight"], second["second"]
        stop = first["stop"]
        fetched = after["fetched_at_first_batch"]
        # Up to the first resumed batch, only indices of the resumed batch and of batches prefetched after it
        # were read: none of the batches handed out before the checkpoint in this epoch.
        epoch_start = stop - 8 if strategy == "single" else stop - 4
        skipped = {int(i) for batch in straight["batches"][epoch_start:stop] for i in batch}
        upcoming = {int(i) for batch in straight["batches"][stop:stop + 1 + 2 * workers] for i in batch}
        assert set(fetched) <= upcoming and not set(fetched) & (skipped - upcoming), (strategy, workers, rank)
        if workers == 0:
            assert sorted(fetched) == sorted(int(i) for i in after["batches"][0])


def test_checkpoint_holds_every_ranks_loader_state(runs):
    strategy, out, results = runs
    ranks = max(rank for _, rank in results) + 1
    if strategy == "fsdp":
        checkpoint = torch.load(out / "w0" / "meta.pt", weights_only=True)
    else:
        checkpoint = torch.load(out / "w0.ckpt", weights_only=True)  # plain torch, weights_only: no pickled objects
    entry = checkpoint["loader"]
    assert entry["world_size"] == ranks and len(entry["ranks"]) == ranks
    for rank_state in entry["ranks"]:
        assert rank_state["epochs_started"] == 2 and rank_state["position"] in (4, 8) and not rank_state["finished"]
        assert set(rank_state["rng"]) >= {"python", "numpy", "torch"}
    if ranks == 2:  # each rank keeps its own random stream
        assert not torch.equal(entry["ranks"][0]["rng"]["torch"], entry["ranks"][1]["rng"]["torch"])


# ----------------------------------------------------------------------------------------- in one process
def loader_of(fabric, n=12, **kwargs):
    return fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(n)), batch_size=2, shuffle=True, **kwargs))


def test_a_loop_left_with_break_is_continued_after_resume_and_restarted_in_process(tmp_path):
    fabric = Fabric(accelerator="cpu")
    torch.manual_seed(0)
    straight = [b[0].tolist() for b in loader_of(fabric)]  # the epoch as an uninterrupted run sees it
    torch.manual_seed(0)
    loader = loader_of(fabric)
    seen = []
    for batch in loader:
        seen.append(batch[0].tolist())
        if len(seen) == 2:
            break  # the epoch is left: its iterator is closed before the save
    fabric.save(tmp_path / "a.ckpt", {"loader": loader})
    assert torch.load(tmp_path / "a.ckpt", weights_only=True)["loader"]["ranks"][0]["position"] == 2
    rest_of_epoch = [b[0].tolist() for b in loader]  # in this process a new iter(loader) starts a new epoch...
    assert len(rest_of_epoch) == 6 and sorted(sum(rest_of_epoch, [])) == list(range(12))

    other = loader_of(Fabric(accelerator="cpu"))
    torch.manual_seed(123)
    fabric.load(tmp_path / "a.ckpt", {"loader": other})
    continued = [b[0].tolist() for b in other]  # ...but a resumed loader continues the epoch that was left
    assert seen + continued == straight and len(continued) == 4


def test_state_dict_of_one_loader_round_trips_without_fabric_save():
    fabric = Fabric(accelerator="cpu")
    torch.manual_seed(0)
    loader = loader_of(fabric)
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = loader.state_dict()  # this rank's own state, e.g. for a per-rank file
    rest = [b[0].tolist() for b in iterator]
    other = loader_of(Fabric(accelerator="cpu"))
    other.load_state_dict(state)
    assert [b[0].tolist() for b in other] == rest and len(rest) == 4


def test_loader_state_of_another_world_size_is_refused(tmp_path):
    fabric = Fabric(accelerator="cpu")
    loader = loader_of(fabric)
    state = {"world_size": 2, "ranks": [loader.state_dict(), loader.state_dict()]}
    with pytest.raises(CheckpointError, match=re.escape(
        "The checkpoint holds dataloader states of 2 process(es), but this run has 1: an exact resume continues each "
        "rank's own share of the data. Fix: resume with 2 process(es), or leave the dataloader out")):
        loader.load_state_dict(state)


def test_loader_of_another_length_is_refused():
    fabric = Fabric(accelerator="cpu")
    state = loader_of(fabric, n=12).state_dict()
    with pytest.raises(CheckpointError, match=re.escape(
        "The checkpoint's dataloader had 6 batches per epoch on rank 0, this one has 5, so its position cannot be "
        "continued. Fix: build the dataset, batch_size, drop_last and world size as in the run that saved it")):
        loader_of(fabric, n=10).load_state_dict(state)


def test_something_that_is_no_loader_state_is_refused():
    with pytest.raises(CheckpointError, match=re.escape(
        "loader.load_state_dict got dict that is not a dataloader state of fabric_lite (format 1). Fix: pass the entry")):
        loader_of(Fabric(accelerator="cpu")).load_state_dict({"step": 3})


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(6))


def test_iterable_dataset_without_state_cannot_resume_mid_epoch_but_can_at_its_end():
    fabric = Fabric(accelerator="cpu")
    loader = fabric.setup_dataloaders(DataLoader(Stream(), batch_size=2))
    iterator = iter(loader)
    next(iterator)
    mid_epoch = loader.state_dict()
    list(iterator)
    at_end = loader.state_dict()
    other = fabric.setup_dataloaders(DataLoader(Stream(), batch_size=2))
    with pytest.raises(ConfigurationError, match=re.escape(
        "The checkpoint stopped an IterableDataset loader after 1 batches; it can continue there only if the dataset "
        "has state_dict() and load_state_dict() (its position; with workers, each worker's copy has its own) and the "
        "loader keeps the num_workers of the run that saved (0) and in_order=True; here: Stream, num_workers=0. Fix: "
        "add the two methods and keep num_workers, save at the end of an epoch, or use a map-style Dataset.")):
        other.load_state_dict(mid_epoch)
    other.load_state_dict(at_end)
    assert [b.tolist() for b in other] == [[0, 1], [2, 3], [4, 5]]


class StatefulStream(Stream):
    def __init__(self):
        self.offset = 0

    def __iter__(self):
        while self.offset < 6:
            self.offset += 1
            yield self.offset - 1
        self.offset = 0

    def state_dict(self):
        return {"offset": self.offset}

    def load_state_dict(self, state):
        self.offset = state["offset"]


def test_stateful_iterable_dataset_resumes_mid_epoch_with_the_same_num_workers():
    fabric = Fabric(accelerator="cpu")
    loader = fabric.setup_dataloaders(DataLoader(StatefulStream(), batch_size=2))
    for _ in loader:
        break
    state = loader.state_dict()
    other = fabric.setup_dataloaders(DataLoader(StatefulStream(), batch_size=2))
    other.load_state_dict(state)
    assert [b.tolist() for b in other] == [[2, 3], [4, 5]]
    with_workers = fabric.setup_dataloaders(DataLoader(StatefulStream(), batch_size=2, num_workers=1))
    with pytest.raises(ConfigurationError, match=re.escape(
        "and the loader keeps the num_workers of the run that saved (0) and in_order=True; here: StatefulStream, "
        "num_workers=1. Fix: add the two methods and keep num_workers")):
        with_workers.load_state_dict(state)


def test_loader_with_other_generators_is_refused():
    fabric = Fabric(accelerator="cpu")
    state = loader_of(fabric, generator=torch.Generator().manual_seed(1)).state_dict()
    with pytest.raises(CheckpointError, match=re.escape(
        "The checkpoint's dataloader drew from 1 torch.Generator(s) (its own and its sampler's), this one from 0. "
        "Fix: build the loader as in the run that saved it")):
        loader_of(fabric).load_state_dict(state)


def test_generators_of_the_loader_and_sampler_are_restored(tmp_path):
    def build(seed):
        g = torch.Generator().manual_seed(seed)
        return Fabric(accelerator="cpu").setup_dataloaders(
            DataLoader(TensorDataset(torch.arange(10)), batch_size=2, shuffle=True, generator=g))

    loader = build(5)
    first = iter(loader)
    next(first)
    state = loader.state_dict()
    expected = [b[0].tolist() for b in first] + [b[0].tolist() for b in loader]  # rest of epoch 0, then epoch 1
    other = build(77)  # another seed: only the checkpoint can make it match
    other.load_state_dict(state)
    assert [b[0].tolist() for b in other] + [b[0].tolist() for b in other] == expected


# ------------------------------------------------------------------- a job that leaves its loop, then saves
LEAVE_EARLY = str(Path(__file__).parent / "_scripts" / "leave_early.py")
LEFT_LOOPS = {  # strategy: (command-line arguments, ranks, cases: <how>-w<num_workers>[-p], see the script)
    "single": ([], 1, ["break-w0", "end-w0", "return-w0", "stream-w0", "break-w3", "end-w2-p", "return-w2-p",
                       "stream-w2"]),
    "ddp": (["--strategy", "ddp", "--devices", "2"], 2, ["break-w0", "end-w0", "return-w0", "break-w2"]),
}


@pytest.fixture(scope="module", params=list(LEFT_LOOPS))
def left_loops(request, tmp_path_factory):
    arguments, ranks, cases = LEFT_LOOPS[request.param]
    out = tmp_path_factory.mktemp(f"left-{request.param}")
    for phase in ("first", "second"):  # the straight run and the one that leaves its loop; then a new process
        result = subprocess.run([sys.executable, LEAVE_EARLY, str(out), *cases, "--phase", phase, *arguments],
                                capture_output=True, text=True, timeout=300, env=ENV, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    def load(name):
        return torch.load(out / name, weights_only=True)

    return request.param, {(case, r): (load(f"first-{case}-rank{r}.pt"), load(f"second-{case}-rank{r}.pt"))
                           for case in cases for r in range(ranks)}


def test_a_loop_left_with_break_or_return_resumes_bitwise_like_the_uninterrupted_run(left_loops):
    # break / return in the middle of an epoch, break right after the last batch of an epoch (the loop's own epoch
    # counter not yet advanced: the resumed epoch has nothing left), random draws in __getitem__ in the main
    # process and in (persistent) worker processes, a stateful IterableDataset; one process and 2 DDP ranks.
    strategy, results = left_loops
    for (case, rank), (first, second) in results.items():
        straight, before, after = first["straight"], first["first"], second["second"]
        assert len(before["batches"]) == first["stop"] and len(after["batches"]) == first["total"] - first["stop"]
        where = f"{strategy}, {case}, rank {rank}"
        for key in ("batches", "samples", "losses", "epochs"):
            assert equal_lists(straight[key], before[key] + after[key]), f"{key} differ ({where})"
        assert equal_lists(straight["params"], after["params"]), f"final parameters differ ({where})"


class WorkerNoise(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.rand(1) + i  # drawn in a worker process


def test_persistent_workers_keep_their_random_streams_across_a_save_between_epochs(tmp_path):
    def build():
        return fabric.setup_dataloaders(
            DataLoader(WorkerNoise(), batch_size=2, shuffle=True, num_workers=2, persistent_workers=True))

    fabric = Fabric(accelerator="cpu")
    torch.manual_seed(0)
    loader = build()
    straight = [b for _ in range(3) for b in loader]
    torch.manual_seed(0)
    loader = build()
    first = list(loader)  # a whole epoch: the pool lives on, its workers' generators where they are
    fabric.save(tmp_path / "a.ckpt", {"loader": loader})
    other = build()
    fabric.load(tmp_path / "a.ckpt", {"loader": other})  # a new pool, its workers put back where they were
    assert equal_lists(straight, first + [b for _ in range(2) for b in other])
