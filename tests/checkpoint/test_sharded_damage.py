"""Sharded (FSDP / torch.distributed.checkpoint) folders on 2 real gloo ranks: mismatched models, damaged files and
failed saves give ONE CheckpointError on EVERY rank (none waits for the other), with the single-file wording.

Before: a model with fewer layers loaded silently under strict=True, more layers or other shapes printed DCP's
30-line trace; a damaged shard raised torch's CheckpointException (a BaseException that escapes ``except
Exception``) or, for changed tensor bytes, loaded wrong weights; a save that failed on a full disk left its
staging folder behind. One launch runs every case (see _scripts/sharded_damage.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = str(Path(__file__).parent / "_scripts" / "sharded_damage.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
FIX_OTHER = "Fix: load another checkpoint (latest_checkpoint(folder) names the newest intact one), or save it again."


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded_damage")
    disk = out / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True,
                             text=True, check=False)
    command = [sys.executable, SCRIPT, str(out)] + (["--disk", str(disk)] if mounted.returncode == 0 else [])
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=ENV, check=False)
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [json.loads((out / f"result{rank}.json").read_text()) for rank in (0, 1)]
    return out, ranks, (None if mounted.returncode == 0 else mounted.stderr.strip())


def same_on_both_ranks(ranks, key):
    assert ranks[0][key] == ranks[1][key], (ranks[0][key], ranks[1][key])
    return ranks[0][key]


def test_the_marker_lists_every_file_with_its_checksum(run):
    out, ranks, _ = run
    marker = same_on_both_ranks(ranks, "marker").splitlines()
    assert marker[0] == "fabric_lite sharded checkpoint: complete"
    listed = sorted(line.split(" ", 3)[3] for line in marker[1:])
    assert listed == sorted(name for name in ranks[0]["files"] if name != "COMPLETE")
    assert all(re.fullmatch(r"crc32 [0-9a-f]{8} \d+ \S+", line) for line in marker[1:])


def test_strict_loads_name_missing_unexpected_and_mismatched_keys_like_single_files(run):
    out, ranks, _ = run
    call = f"CheckpointError: fabric.load({str(out / 'ckpt')!r}, ...) cannot load the checkpoint's 'model' into FSDPSequential: it was saved from a different model"
    assert same_on_both_ranks(ranks, "fewer_layers") == (
        f"{call} (the model has no 4.weight, 4.bias). Fix: build the model exactly as when it was saved, or pass "
        f"strict=False to skip the keys that differ.")
    assert same_on_both_ranks(ranks, "more_layers") == (
        f"{call} (shapes differ for 4.weight (checkpoint 1x8, model 8x8), 4.bias (checkpoint 1, model 8); the "
        f"checkpoint lacks 6.weight, 6.bias). Fix: build the model exactly as when it was saved.")
    assert same_on_both_ranks(ranks, "other_shapes") == (
        f"{call} (shapes differ for 0.weight (checkpoint 8x4, model 16x4), 0.bias (checkpoint 8, model 16), 2.weight "
        f"(checkpoint 8x8, model 8x16)). Fix: build the model exactly as when it was saved.")
    for key in ("fewer_layers_not_strict", "same_model"):
        assert same_on_both_ranks(ranks, key) == "ok"
    assert same_on_both_ranks(ranks, "fewer_layers_not_strict_values") is True
    assert same_on_both_ranks(ranks, "same_model_values") is True


def test_a_damaged_shard_makes_every_rank_raise_the_same_checkpoint_error(run):
    out, ranks, _ = run
    shards = same_on_both_ranks(ranks, "shards")
    assert len(shards) == 2  # one per rank: rank 0 checks one, rank 1 the other, both raise for either

    def refused(case, problem):
        folder = str(out / "cases" / case)
        return (f"CheckpointError: fabric.load({folder!r}) refused the sharded checkpoint {folder!r}: {problem}. Its "
                f"files were cut off or changed after the save finished. {FIX_OTHER}")

    assert same_on_both_ranks(ranks, "flipped_shard_0") == refused("flipped_shard_0", f"the checksum of {shards[0]} does not match its bytes")
    assert same_on_both_ranks(ranks, "flipped_shard_1") == refused("flipped_shard_1", f"the checksum of {shards[1]} does not match its bytes")
    for case, name in (("cut_shard", shards[0]), ("cut_metadata", ".metadata")):
        head, tail = refused(case, f"{name} has @").split("@")
        assert re.fullmatch(re.escape(head) + r"\d+ bytes but was written with \d+" + re.escape(tail),
                            same_on_both_ranks(ranks, case))


def test_folders_without_checksums_still_give_one_checkpoint_error_on_every_rank(run):
    """A marker from before checksums: what DCP itself notices becomes a CheckpointError (not its BaseException)."""
    out, ranks, _ = run
    folder = str(out / "cases" / "old_marker_cut_shard")
    assert re.fullmatch(re.escape(f"CheckpointError: fabric.load({folder!r}) could not read the sharded checkpoint {folder!r} (rank ")
                        + r"\d: \w+: .+" + re.escape(f"). The folder is damaged, or was saved from other objects. {FIX_OTHER}"),
                        same_on_both_ranks(ranks, "old_marker_cut_shard"))
    folder = str(out / "cases" / "old_marker_cut_metadata")
    assert same_on_both_ranks(ranks, "old_marker_cut_metadata") == (
        f"CheckpointError: fabric.load({folder!r}) could not read .metadata (UnpicklingError: pickle data was "
        f"truncated): the folder is damaged. Fix: load another checkpoint (latest_checkpoint(folder) names the newest "
        f"intact one).")


def test_a_rank_that_fails_during_a_save_makes_both_raise_and_leaves_nothing(run):
    out, ranks, _ = run
    assert same_on_both_ranks(ranks, "rank1_fails") == (
        f"CheckpointError: fabric.save({str(out / 'flaky')!r}) failed: RuntimeError: rank 1 cannot give its state. "
        f"Nothing was written at that path (a checkpoint already there is unchanged). Fix: resolve that error (the rank "
        f"that raised it shows its traceback) and save again. [failed on rank 1]")
    assert same_on_both_ranks(ranks, "rank1_fails_left") == []


def test_a_sharded_save_to_a_full_disk_says_so_on_both_ranks_and_keeps_the_old_checkpoint(run):
    out, ranks, skipped = run
    if skipped is not None:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {skipped}")
    disk = out / "disk"
    message = same_on_both_ranks(ranks, "disk_full")
    assert re.fullmatch(re.escape(
        f"CheckpointError: fabric.save({str(disk / 'ckpt')!r}) could not write {str(disk / 'ckpt')!r}: the disk is full "
        f"(No space left on device). The checkpoint at that path (if any) is unchanged and the unfinished folder was "
        f"removed. Fix: free space on the disk of {str(disk)!r} or save elsewhere. [failed on rank ") + r"[01]\]", message)
    assert same_on_both_ranks(ranks, "disk_full_left") == ["ckpt"]  # no .ckpt.partial
    assert same_on_both_ranks(ranks, "disk_full_old_loads") == "ok"
    assert same_on_both_ranks(ranks, "disk_full_old_values") is True
    # state_dict_type="full": rank 0 writes one file; rank 1 learns it failed and raises the same error
    assert ranks[0]["disk_full_full"] == (
        f"CheckpointError: fabric.save({str(disk / 'full.ckpt')!r}) could not write {str(disk / 'full.ckpt')!r}: the disk "
        f"is full (No space left on device). The checkpoint at that path (if any) is unchanged and no partial file was "
        f"left. Fix: free space on the disk of {str(disk)!r} or save elsewhere.")
    assert ranks[1]["disk_full_full"] == ranks[0]["disk_full_full"] + " [failed on rank 0]"
    assert same_on_both_ranks(ranks, "disk_full_full_left") == ["ckpt"]
