"""``fabric-run consolidate`` / ``fabric consolidate``: merge a sharded checkpoint folder into one file.

The folder is one that ``fabric.save`` wrote with ``strategy="fsdp"`` (read through torch.distributed.checkpoint) or
with a DeepSpeed strategy (through DeepSpeed's own zero_to_fp32). The file is read by ``torch.load`` and loads into a
model on any strategy or none. Lightning's spelling ``--output_file`` is accepted, and as in Lightning the file
defaults to the folder's name with ``.consolidated`` appended.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fabric_lite.errors import FabricLiteError


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Merge a sharded checkpoint folder (strategy='fsdp' or a DeepSpeed strategy) into one file that "
                    "torch.load reads.",
    )
    parser.add_argument("checkpoint_folder", metavar="CHECKPOINT_FOLDER",
                        help="the folder fabric.save wrote with strategy='fsdp' or a DeepSpeed strategy")
    parser.add_argument("--output_file", "--output-file", "--output", "-o", dest="output_file", default=None,
                        metavar="FILE",
                        help="the file to write (default: CHECKPOINT_FOLDER.consolidated, next to the folder)")
    return parser


def default_output(folder: str) -> str:
    """Lightning's default: the folder's path with ``.consolidated`` appended (``step-100`` -> ``step-100.consolidated``)."""
    return folder.rstrip("/\\") + ".consolidated"


def main(argv: Sequence[str], prog: str = "fabric-run consolidate") -> int:
    args = build_parser(prog).parse_args(list(argv))
    from fabric_lite.checkpoint.sharded import consolidate
    from fabric_lite.strategies.deepspeed import consolidate_deepspeed_checkpoint, is_deepspeed_checkpoint

    output = args.output_file or default_output(args.checkpoint_folder)
    merge = consolidate_deepspeed_checkpoint if is_deepspeed_checkpoint(args.checkpoint_folder) else consolidate
    name = prog.split()[0]
    try:
        written = merge(args.checkpoint_folder, output)
    except FabricLiteError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 2
    print(f"{name}: wrote {written}")
    return 0
