"""The one rule for bf16: autocast / bf16 weights only where the device runs bf16 natively (both branches)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from agents.engines import hardware  # noqa: E402
from agents.engines.models import resolve_dtype  # noqa: E402


@pytest.fixture(params=[True, False], ids=["fast-bf16-cpu", "avx2-only-cpu"])
def cpu_bf16(request, monkeypatch):
    monkeypatch.setattr(hardware, "_cpu_bf16_is_fast", lambda: request.param)
    return request.param


def test_auto_uses_bf16_only_where_it_is_fast(cpu_bf16):
    expected = torch.bfloat16 if cpu_bf16 else None
    assert hardware.autocast_dtype("auto", "cpu") is expected
    assert resolve_dtype("auto", "cpu") is (torch.bfloat16 if cpu_bf16 else torch.float32)


def test_explicit_settings_win_over_the_hardware(cpu_bf16):
    assert hardware.autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert hardware.autocast_dtype("off", "cpu") is None
    assert hardware.autocast_dtype(True, "cpu") is torch.bfloat16  # the old boolean spelling
    assert hardware.autocast_dtype(False, "cpu") is None


def test_cuda_counts_only_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for major, fast in [(7, False), (8, True), (9, True)]:  # V100/T4 emulate bf16; A100/H100 run it
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index, m=major: (m, 0))
        assert hardware.bf16_is_fast("cuda") is fast
        assert hardware.autocast_dtype("auto", "cuda:0") is (torch.bfloat16 if fast else None)
        assert resolve_dtype("auto", "cuda") is (torch.bfloat16 if fast else torch.float16)


def test_unknown_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="autocast must be"):
        hardware.autocast_dtype("fp8", "cpu")


def test_autocast_context_follows_the_device(cpu_bf16):
    with hardware.autocast_context("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") is torch.bfloat16
    with hardware.autocast_context("auto", "cpu"):
        assert torch.is_autocast_enabled("cpu") is cpu_bf16


def test_trainer_autocast_follows_its_config_and_the_policy_device(cpu_bf16):
    from agents.engines import HFEngine
    from agents.engines.testing import tiny_model
    from agents.rl.sft import SFT, SFTConfig

    agent = SFT(HFEngine(*tiny_model(num_layers=1, hidden_size=32)), None, SFTConfig(verbose=0))
    assert agent.config.autocast == "auto"
    with agent.autocast():
        assert torch.is_autocast_enabled("cpu") is cpu_bf16
    agent.config.autocast = "off"
    with agent.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_hardware_info_records_capability_and_dtypes():
    info = hardware.hardware_info(model_dtype=torch.bfloat16, autocast=None)
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["model_dtype"] == "bfloat16" and info["autocast"] is None
    json.dumps(info)  # goes into benchmark JSON as is
