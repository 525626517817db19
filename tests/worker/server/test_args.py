from __future__ import annotations

import dataclasses

import pytest

from minisgl.server.args import ENV_API_KEY, ServerArgs, build_parser, parse_args

ALL_FLAGS = [
    "--model-path", "--dtype", "--tp-size", "--tensor-parallel-size", "--host", "--port",
    "--num-tokenizer", "--attention-backend", "--cache-type", "--max-running-requests",
    "--memory-ratio", "--max-prefill-length", "--page-size", "--num-pages", "--dummy-weight",
    "--device", "--served-model-name", "--api-key", "--shutdown-timeout", "--log-level",
    "--shell-mode", "--tokenizer-path", "--disable-overlap", "--allowed-origins", "--chat-template",
    "--reasoning-parser", "--api-key-file", "--max-queued-requests", "--nnodes", "--node-rank",
    "--dist-init-addr", "--dist-timeout", "--kv-cache-dtype",
]


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ALL_FLAGS:
        assert flag in out, flag


def test_defaults(monkeypatch):
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    a = parse_args(["--model-path", "demo", "--device", "cpu"])
    assert (a.port, a.host, a.num_tokenizer, a.tp_size, a.cache_type) == (1919, "127.0.0.1", 0, 1, "radix")
    assert a.api_key is None and a.model_name == "demo" and not a.shell_mode
    assert a.resolved_attention_backend == "torch"


def test_every_flag_reaches_the_args_and_the_scheduler_config(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    a = parse_args([
        "--model-path", "demo", "--dtype", "float32", "--tensor-parallel-size", "2",
        "--host", "0.0.0.0", "--port", "8000", "--num-tokenizer", "3",
        "--attention-backend", "torch", "--cache-type", "naive", "--max-running-requests", "7",
        "--memory-ratio", "0.5", "--max-prefill-length", "64", "--page-size", "4",
        "--num-pages", "100", "--dummy-weight", "--device", "cpu", "--served-model-name", "tiny",
        "--api-key", "sk-s3cret", "--shutdown-timeout", "3", "--log-level", "debug", "--shell-mode",
        "--max-model-len", "256", "--tokenizer-path", "demo", "--disable-overlap",
        "--kv-cache-dtype", "fp8_e4m3",
    ])
    assert (a.tp_size, a.host, a.port, a.num_tokenizer, a.api_key) == (2, "0.0.0.0", 8000, 3, "sk-s3cret")
    assert a.model_name == "tiny" and a.shell_mode and a.shutdown_timeout == 3.0
    assert "s3cret" not in repr(a)  # secrets stay out of logs
    c = a.to_scheduler_config(1, dist_init_method=f"file://{tmp_path}/dist")
    assert (c.tp_rank, c.tp_size, c.cache_type, c.max_running_requests) == (1, 2, "naive", 7)
    assert (c.page_size, c.num_pages, c.memory_ratio, c.max_prefill_length) == (4, 100, 0.5, 64)
    assert (c.dtype, c.device, c.dummy_weight, c.max_model_len) == ("float32", "cpu", True, 256)
    assert c.kv_cache_dtype == "fp8_e4m3"
    assert c.dist_init_method.startswith("file://")
    assert a.tokenizer_path == "demo" and c.overlap is False and not c.use_overlap
    assert parse_args(["--model-path", "demo", "--device", "cpu"]).to_scheduler_config(0).overlap is None
    assert dataclasses.replace(c, tp_rank=0) == a.to_scheduler_config(0, c.dist_init_method)


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_API_KEY, "secret")
    assert parse_args(["--model-path", "demo", "--device", "cpu"]).api_key == "secret"
    assert parse_args(["--model-path", "demo", "--device", "cpu", "--api-key", "x"]).api_key == "x"


@pytest.mark.parametrize("argv, reason", [
    (["--model-path", "/nonexistent/model"], "--model-path"),
    (["--tp-size", "3"], "--tp-size"),
    (["--attention-backend", "fa3"], "needs --device cuda"),
    (["--page-size", "0"], "--page-size"),
    (["--memory-ratio", "1.5"], "--memory-ratio"),
    (["--num-tokenizer", "-1"], "--num-tokenizer"),
    (["--port", "70000"], "--port"),
    (["--max-running-requests", "0"], "--max-running-requests"),
    (["--cache-type", "lru"], "--cache-type"),
    (["--attention-backend", "bogus"], "--attention-backend"),
    (["--max-prefill-length", "4"], "--max-prefill-length"),
    (["--tokenizer-path", "/nonexistent/tok"], "--tokenizer-path"),
    (["--chat-template", "/nonexistent/template.jinja"], "--chat-template"),
])
def test_invalid_values_fail_with_a_one_line_reason(argv, reason, capsys):
    base = ["--model-path", "demo", "--device", "cpu"]
    with pytest.raises(SystemExit) as info:
        parse_args(base + argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert reason in err[-1]
    assert len([line for line in err if "error:" in line]) == 1


def test_server_args_validate_on_construction():
    with pytest.raises(ValueError, match="--shutdown-timeout"):
        ServerArgs(model_path="demo", device="cpu", shutdown_timeout=-1)


def test_abbreviated_flags_are_rejected():
    """extraArgs like `--po 9999` must not silently override the operator's --port."""
    import pytest as _pytest

    from minisgl.server.args import build_parser

    with _pytest.raises(SystemExit):
        build_parser().parse_args(["--model-path", "demo", "--po", "9999"])


def test_tokenizer_path_takes_a_tokenizer_only_directory(tmp_path):
    import shutil

    from minisgl.models import BUILTIN_MODELS

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BUILTIN_MODELS["demo"] / name, tmp_path / name)
    a = parse_args(["--model-path", "demo", "--device", "cpu", "--tokenizer-path", str(tmp_path)])
    from minisgl.tokenizer.tokenize import load_tokenizer

    assert load_tokenizer(a.tokenizer_path).encode("hello") == load_tokenizer("demo").encode("hello")


@pytest.mark.parametrize("flags, message", [
    (["--nnodes", "2", "--tp-size", "2"], "--dist-init-addr HOST:PORT (node 0's address) is required"),
    (["--nnodes", "2", "--tp-size", "1", "--dist-init-addr", "h:1"], "must be divisible by --nnodes 2"),
    (["--nnodes", "2", "--tp-size", "2", "--node-rank", "2", "--dist-init-addr", "h:1"],
     "--node-rank must be in [0, --nnodes 2)"),
    (["--nnodes", "2", "--tp-size", "2", "--node-rank", "-1", "--dist-init-addr", "h:1"],
     "--node-rank must be in [0, --nnodes 2)"),
    (["--nnodes", "2", "--tp-size", "2", "--dist-init-addr", "h"], "must be HOST:PORT"),
    (["--nnodes", "2", "--tp-size", "2", "--dist-init-addr", "h:65535"], "port must be <= 65534"),
    (["--nnodes", "0"], "--nnodes must be >= 1"),
    (["--nnodes", "2", "--tp-size", "2", "--dist-init-addr", "h:1", "--dist-timeout", "0"],
     "--dist-timeout must be > 0"),
])
def test_multinode_flags_are_validated_with_one_line_reasons(flags, message, capsys, monkeypatch):
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    with pytest.raises(SystemExit) as info:
        parse_args(["--model-path", "demo", "--device", "cpu", *flags])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_multinode_flags_place_ranks_and_the_rendezvous(monkeypatch):
    from minisgl.server.launch import make_endpoints

    monkeypatch.delenv(ENV_API_KEY, raising=False)
    a = parse_args(["--model-path", "demo", "--device", "cpu", "--tp-size", "4", "--nnodes", "2",
                    "--node-rank", "1", "--dist-init-addr", "leader.svc:5000"])
    assert list(a.local_ranks) == [2, 3] and a.ranks_per_node == 2
    ep = make_endpoints(a, "/tmp/x")
    assert ep.dist_init_method == "tcp://leader.svc:5001"
    configs = [a.to_scheduler_config(r, ep.dist_init_method) for r in a.local_ranks]
    assert [c.local_rank for c in configs] == [0, 1] and all(c.nnodes == 2 for c in configs)
    one = parse_args(["--model-path", "demo", "--device", "cpu", "--tp-size", "2"])
    assert list(one.local_ranks) == [0, 1]
    assert make_endpoints(one, "/tmp/x").dist_init_method == "file:///tmp/x/dist"
