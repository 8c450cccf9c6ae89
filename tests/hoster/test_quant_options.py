"""`--quant` is one hoster option: flag, TOML key and HosterOptions field, validated before anything loads."""

from __future__ import annotations

import argparse

import pytest

from hoster.options import HosterOptions


def parse(argv):
    p = argparse.ArgumentParser()
    HosterOptions.add_arguments(p)
    return HosterOptions.from_args(p.parse_args(argv))


def test_flag_default_and_choices():
    assert parse([]).quant == "none"
    assert parse(["--quant", "int8"]).quant == "int8"
    with pytest.raises(SystemExit):
        parse(["--quant", "int3"])


def test_toml_key_reaches_node_options(tmp_path):
    from subnet.node.assembly import NodeOptions
    from subnet.node.cli import _build_parser, apply_node_config

    cfg = tmp_path / "mesh.toml"
    cfg.write_text('[node]\nhoster = true\nmodel = "m"\nquant = "nf4"\n')
    argv = ["--config", str(cfg)]
    args = apply_node_config(_build_parser(), _build_parser().parse_known_args(argv)[0], argv)
    assert NodeOptions.from_args(args).quant == "nf4"


def test_validate_runs_the_mode_on_the_device():
    HosterOptions(model="m", quant="int8").validate()
    with pytest.raises(ValueError, match="--quant int8 cannot run"):
        HosterOptions(model="m", quant="int8", device="cuda:3").validate()
