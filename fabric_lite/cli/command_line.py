"""The command line of ``fabric-run`` / ``fabric run`` as one namespace, every value checked before anything starts.

Each flag that cannot work (a choice that is not known, a node count, a port, a rendezvous setting that the chosen
rendezvous does not read) raises ConfigurationError naming the flag and its fix.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from fabric_lite.cli.options import (
    _CHOICES,
    DEFAULT_MULTI_NODE_PORT,
    _check_choice,
    _refuse_unknown_options,
    build_parser,
    split_command_line,
)
from fabric_lite.cli.torchrun import parse_tail
from fabric_lite.errors import ConfigurationError


def parse(argv: Sequence[str], prog: str) -> argparse.Namespace:
    """The command line as one namespace; flags that cannot work raise ConfigurationError naming the flag."""
    ours, tail, script, script_args = split_command_line(argv)
    _refuse_unknown_options(ours, prog)
    parser = build_parser(prog)
    args = parser.parse_args(ours)  # --help, or an option without its value: argparse's message, exit 2
    args.torchrun_options = []
    if tail is not None:
        parsed = parse_tail(tail, prog)
        script, script_args, args.torchrun_options = parsed.script, parsed.script_args, parsed.options
        for name, value in parsed.shared.items():
            if getattr(args, name) not in (None, False):
                flag = "--" + name.replace("_", "-")
                raise ConfigurationError(
                    f"{flag} is given both before and after `--`. Fix: give it once (before the `--`)."
                )
            setattr(args, name, value)
    if script is None:
        parser.error("the following arguments are required: script")
    args.script, args.script_args = script, list(script_args)
    _validate(args)
    return args


def _positive_int(flag: str, value: str, *, allow_zero: bool = False, fix: str) -> int:
    text = str(value).strip()
    number = int(text) if re.fullmatch(r"-?\d+", text) else None
    if number is None or number < (0 if allow_zero else 1):
        raise ConfigurationError(f"{flag} {value} is not a {'non-negative' if allow_zero else 'positive'} "
                                 f"whole number. Fix: {fix}")
    return number


def _validate(args: argparse.Namespace) -> None:
    for kind in _CHOICES:
        _check_choice(kind, getattr(args, kind))
    match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", str(args.num_nodes))
    low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (0, 0)
    if low < 1 or high < low:
        raise ConfigurationError(
            f"--num-nodes {args.num_nodes} is not a number of machines. Choose one of: a positive count such as 2, or "
            f"MIN:MAX such as 1:4 for an elastic job (with --rdzv-backend c10d). Fix: --num-nodes 1 for one machine."
        )
    args.min_nodes, args.max_nodes = low, high
    args.elastic = low != high
    text = str(args.max_restarts).strip()
    if not re.fullmatch(r"-?\d+", text):
        raise ConfigurationError(f"--max-restarts {args.max_restarts} is not a whole number; it counts how often the "
                                 f"workers are restarted after a failure. Fix: --max-restarts 0 (never, the default) "
                                 f"or a positive count.")
    args.max_restarts = int(text)
    if args.max_restarts < 0:
        raise ConfigurationError(f"--max-restarts {args.max_restarts} is negative; it counts how often the workers are "
                                 f"restarted after a failure. Fix: --max-restarts 0 (never, the default) or a positive "
                                 f"count.")
    if args.collective_timeout is not None:
        try:
            seconds = float(args.collective_timeout)
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise ConfigurationError(
                f"--collective-timeout {args.collective_timeout} is not a positive number of seconds. "
                f"Fix: --collective-timeout 300, or leave it out for the strategy's default (30 minutes)."
            )
    backend = (args.rdzv_backend or "static").strip().lower()
    args.rdzv_backend = backend
    if backend == "static":
        _validate_static(args)
    else:
        _validate_rendezvous(args)


def _validate_static(args: argparse.Namespace) -> None:
    if args.elastic:
        raise ConfigurationError(
            f"--num-nodes {args.num_nodes} is an elastic range, but the static rendezvous (the default) needs a fixed "
            f"number of machines. Fix: add --rdzv-backend c10d --rdzv-endpoint HOST:PORT (the same on every node), "
            f"or give one number such as --num-nodes {args.max_nodes}."
        )
    for name in ("rdzv_endpoint", "rdzv_id"):
        if getattr(args, name) is not None:
            raise ConfigurationError(
                f"--{name.replace('_', '-')} {getattr(args, name)} is only read by a rendezvous backend such as c10d; "
                f"the static rendezvous (the default) meets at --main-address/--main-port. Fix: add --rdzv-backend "
                f"c10d, or leave --{name.replace('_', '-')} out."
            )
    nodes = args.max_nodes
    args.node_rank = _positive_int("--node-rank", args.node_rank or "0", allow_zero=True,
                                   fix=f"give each machine a distinct rank from 0 to {nodes - 1}.")
    if args.node_rank >= nodes:
        raise ConfigurationError(
            f"--node-rank {args.node_rank} does not exist with --num-nodes {nodes} (node ranks are 0 to {nodes - 1}). "
            f"Fix: give each machine a distinct rank below {nodes}."
        )
    if args.main_port is not None:
        text = str(args.main_port).strip()
        if not re.fullmatch(r"-?\d+", text) or not 1 <= int(text) <= 65535:
            raise ConfigurationError(
                f"--main-port {args.main_port} is not a TCP port (ports run from 1 to 65535). Fix: give a free port "
                f"such as --main-port {DEFAULT_MULTI_NODE_PORT}, or leave --main-port out on one machine."
            )
        args.main_port = int(text)
    args.main_address = args.main_address or "127.0.0.1"


def _validate_rendezvous(args: argparse.Namespace) -> None:
    backend = args.rdzv_backend
    for name in ("node_rank", "main_address", "main_port"):
        if getattr(args, name) is not None:
            raise ConfigurationError(
                f"--{name.replace('_', '-')} {getattr(args, name)} is not used with --rdzv-backend {backend}: the "
                f"rendezvous numbers the nodes and picks the address of rank 0. Fix: leave --{name.replace('_', '-')} "
                f"out and give every node the same --rdzv-endpoint HOST:PORT."
            )
    endpoint = args.rdzv_endpoint
    if not endpoint:
        raise ConfigurationError(
            f"--rdzv-backend {backend} needs --rdzv-endpoint HOST:PORT, where the nodes meet (the same on every node; "
            f"one of them must be HOST). Fix: e.g. --rdzv-endpoint 127.0.0.1:{DEFAULT_MULTI_NODE_PORT} on one machine."
        )
    host, _, port = str(endpoint).rpartition(":")
    if host and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ConfigurationError(
            f"--rdzv-endpoint {endpoint} does not end in a TCP port (ports run from 1 to 65535; 0 would give every "
            f"node a different one). Fix: --rdzv-endpoint {host}:{DEFAULT_MULTI_NODE_PORT}."
        )
