"""`ddit-export serve` input checks (one line, exit 2, before Ray starts) and `--write-config`."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys

import pytest
import yaml

from ddit_export.cli import main
from tests.serve.helpers import VARIANT_BATCH, demo_engine_folders


@pytest.mark.parametrize("args, words", [
    (["/nonexistent/engines"], "does not exist"),
    (["ENGINES", "--port", "70000"], "from 1 to 65535"),
    (["ENGINES", "--autoscale", "3,1"], "MIN <= MAX"),
    (["ENGINES", "--replicas", "2", "--autoscale", "1,2"], "not allowed with"),
    (["ENGINES", "--max-batch", "0"], "max-batch"),
    (["BATCHED"], "serve the batch-1 folder"),
    (["ENGINES", "--backend", "tensorflow"], "unknown backend"),
    (["ENGINES", "--drain-timeout", "0"], "--drain-timeout"),
])
def test_bad_input_is_one_line(args, words, capsys):
    solo, batched = demo_engine_folders()
    args = [str(solo) if a == "ENGINES" else str(batched) if a == "BATCHED" else a for a in args]
    try:
        code = main(["serve", *args])
    except SystemExit as parse_error:  # argparse's own refusals
        code = parse_error.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines


def test_a_missing_folder_is_one_line_from_the_command_line():
    result = subprocess.run([sys.executable, "-m", "ddit_export.cli", "serve", "/nonexistent/engines"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr


def test_port_in_use_is_refused_before_ray_starts(capsys):
    solo, _ = demo_engine_folders()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(solo), "--max-batch", "1", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_write_config_is_a_valid_serve_config(tmp_path, capsys):
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    solo, batched = demo_engine_folders()
    out = tmp_path / "serve.yaml"
    code = main(["serve", str(solo), "--max-batch", str(VARIANT_BATCH), "--autoscale", "1,3", "--port", "8123",
                 "--drain-timeout", "45", "--write-config", str(out)])
    assert code == 0, capsys.readouterr().err
    config = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(config)  # Ray's own schema for `serve deploy`
    app = config["applications"][0]
    assert app["import_path"] == "ddit_export.serve.app:build_app"
    assert app["args"]["batch_dirs"] == [str(batched.resolve())] and app["args"]["max_batch"] == VARIANT_BATCH
    deployment = app["deployments"][0]
    assert deployment["autoscaling_config"]["max_replicas"] == 3 and "num_replicas" not in deployment
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    ingress = app["deployments"][1]  # the HTTP front; both finish their requests before Ray stops them
    assert ingress["name"] == "DDiTIngress" and ingress["num_replicas"] == 1
    assert deployment["graceful_shutdown_timeout_s"] == ingress["graceful_shutdown_timeout_s"] == 45
    # what `serve run` / `serve deploy` do with the import path and args: import the builder, call it with them
    module, attribute = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attribute)
    assert isinstance(builder(app["args"]), Application)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serve.yaml"]  # no temporary file left


def test_write_config_into_a_file_path_fails_cleanly(tmp_path, capsys):
    solo, _ = demo_engine_folders()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["serve", str(solo), "--max-batch", "1", "--write-config", str(blocker / "serve.yaml")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is not a folder" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cache_on_a_folder_that_cannot_cache_is_one_line_before_ray_starts(capsys):
    solo, _ = demo_engine_folders()
    assert main(["serve", str(solo), "--cache", "teacache:0.25", "--max-batch", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs a staged engine folder" in err and "--layout staged" in err and err.count("\n") == 1
