"""HosterOptions: one definition behind `python -m hoster` and `mesh-node --hoster`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from hoster.options import HosterOptions, parse_blocks

# Defined by each entry point itself: the process's network identity and its logging.
# process options: `mesh-node` defines them at node level (the node owns its identity, logs and metrics endpoint)
STANDALONE_ONLY = {"--initial-peers", "--host-maddrs", "--node-key", "--log-level", "--help", "--metrics-port",
                   "--metrics-host",
                   # addresses and relays (hoster.options.add_network_arguments): node level in `mesh-node`
                   "--announce-maddrs", "--public-ip", "--relay", "--no-relay", "--use-auto-relay", "--relay-peers"}


def _listed(help_text: str) -> set[str]:
    """The long options an argparse --help lists (one per option line, not mentions in help text)."""
    return set(re.findall(r"^\s{2}(?:-\w, )?(--[\w-]+)", help_text, flags=re.MULTILINE))


def _hoster_group_help() -> str:
    from subnet.node.cli import _build_parser

    parser = _build_parser()
    group = next(g for g in parser._action_groups if g.title == "hoster")
    formatter = parser._get_formatter()
    formatter.start_section(group.title)
    formatter.add_arguments(group._group_actions)
    formatter.end_section()
    return formatter.format_help()


def test_both_entry_points_list_the_same_hoster_options():
    from hoster.__main__ import build_parser
    from subnet.node.cli import _build_parser

    standalone = _listed(build_parser().format_help()) - STANDALONE_ONLY
    node_group = _listed(_hoster_group_help())
    assert standalone == node_group
    assert "--rebalance-interval" in node_group  # what devnet hosters lacked
    assert standalone <= _listed(_build_parser().format_help())


def test_parser_defaults_are_the_dataclass_defaults():
    from hoster.__main__ import build_parser

    opts = HosterOptions.from_args(build_parser().parse_args(["--model", "m"]))
    assert opts == HosterOptions(model="m")


def test_flags_become_hoster_kwargs():
    from hoster.__main__ import build_parser

    args = build_parser().parse_args(["--model", "m", "--blocks", "2:6", "--rebalance-interval", "5", "--compile",
                                      "--no-progress", "--cache-bytes", "1000", "--throughput", "7"])
    kwargs = HosterOptions.from_args(args).hoster_kwargs()
    assert (kwargs["start"], kwargs["end"], kwargs["rebalance_interval"]) == (2, 6, 5.0)
    assert kwargs["compile_decode"] is True and kwargs["progress"] is False
    assert kwargs["cache_bytes"] == 1000 and kwargs["throughput"] == 7.0


def test_hoster_accepts_every_option():
    """`Hoster(model, **opts.hoster_kwargs())`: every option has a constructor parameter of the same name."""
    import inspect

    from hoster.server import Hoster

    params = set(inspect.signature(Hoster.__init__).parameters)
    assert set(HosterOptions(model="m").hoster_kwargs()) <= params


def test_kernel_choices_are_the_kernel_modules_list():
    from hoster.__main__ import build_parser
    from subnet.model.kernels import KERNELS

    action = next(a for a in build_parser()._actions if a.dest == "linear_kernel")
    assert action.choices is KERNELS


@pytest.mark.parametrize("opts,message", [
    (HosterOptions(blocks="4"), "--blocks must look like a:b"),
    (HosterOptions(blocks="3:3"), "need 0 <= a < b"),
    (HosterOptions(cache_tokens=10, cache_bytes=10), "not both"),
    (HosterOptions(cache_tokens=0), "--cache-tokens must be at least 1"),
    (HosterOptions(rebalance_interval=-1), "--rebalance-interval"),
    (HosterOptions(dtype="int8"), "unsupported --dtype"),
    (HosterOptions(linear_kernel="fastest"), "unknown linear kernel 'fastest'"),
    (HosterOptions(compile_decode=True, linear_kernel="blas"), "--compile needs the 'onednn' or 'torch' linear kernel"),
])
def test_validate_names_the_mistake(opts, message, monkeypatch):
    monkeypatch.delenv("MESH_LINEAR_KERNEL", raising=False)
    with pytest.raises(ValueError, match=re.escape(message)):
        opts.validate()


def test_python_m_hoster_reports_a_bad_option_in_one_line():
    r = subprocess.run([sys.executable, "-m", "hoster", "--model", "m", "--cache-tokens", "5", "--cache-bytes", "5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: give --cache-tokens or --cache-bytes, not both"


def test_parse_blocks():
    assert parse_blocks("0:4") == (0, 4)
    assert HosterOptions().block_range() == (None, None)


def test_building_the_mesh_node_parser_does_not_import_torch():
    """The kernel and dtype names live in a torch-free module: `mesh-node keygen` must not pay torch's ~2 s import."""
    code = ("import sys; from subnet.node.cli import _build_parser; "
            "_build_parser().parse_known_args(['--hoster', '--model', 'm', '--rebalance-interval', '3']); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr
    for argv in (["--help"], ["--version"]):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "subnet.node.cli", *argv], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0
        imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line}
        assert "torch" not in imported and "transformers" not in imported, argv
