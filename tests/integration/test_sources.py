"""Weight sources: local/file://, model.tar.gz (safe extraction), s3:// through a moto server, offline hub cache."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from berth_server.errors import InvalidRequest, WeightsNotFound
from berth_server.models.sources import resolve_source
from berth_server.settings import Settings


def _tar(path: Path, members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tar.addfile(info)
    return path


def test_local_dir_file_uri_and_missing(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    model = tmp_path / "model"
    model.mkdir()
    assert resolve_source(str(model), settings) == model
    assert resolve_source(f"file://{model}", settings) == model
    with pytest.raises(WeightsNotFound, match="/no/such/dir"):
        resolve_source("file:///no/such/dir", settings)
    with pytest.raises(WeightsNotFound, match="sagemaker-model"):
        resolve_source("", settings.replace(sagemaker_model_dir=tmp_path / "sagemaker-model"))
    sagemaker = tmp_path / "opt-ml-model"
    sagemaker.mkdir()
    assert resolve_source("", settings.replace(sagemaker_model_dir=sagemaker)) == sagemaker


def test_local_tar_gz_is_extracted_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    archive = _tar(tmp_path / "model.tar.gz", {"model/config.json": b"{}", "model/weights.bin": b"w"})
    first = resolve_source(str(archive), settings)
    assert (first / "config.json").read_text() == "{}" and first.name == "model"
    assert str(first).startswith(str(settings.home / "cache"))
    assert resolve_source(f"file://{archive}", settings) == first


@pytest.mark.parametrize(("members", "links"), [
    ({"../escape.txt": b"x"}, None),
    ({"/abs.txt": b"x"}, None),
    ({"a/../../escape": b"x"}, None),
    ({"ok.txt": b"x"}, {"link": (tarfile.SYMTYPE, "/etc/passwd")}),
    ({"ok.txt": b"x"}, {"sub/link": (tarfile.SYMTYPE, "../../outside")}),
    ({"ok.txt": b"x"}, {"hard": (tarfile.LNKTYPE, "../outside")}),
    ({"ok.txt": b"x"}, {"dev": (tarfile.CHRTYPE, "")}),
])
def test_malicious_archives_are_rejected(tmp_path: Path, members: dict[str, bytes],
                                         links: dict[str, tuple[bytes, str]] | None) -> None:
    settings = Settings(home=tmp_path / "home")
    archive = _tar(tmp_path / "model.tar.gz", members, links)
    with pytest.raises(InvalidRequest, match="unsafe archive"):
        resolve_source(str(archive), settings)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "outside").exists()
    assert not list((settings.home / "cache" / "archives").glob("*")) if (settings.home / "cache").exists() else True


# -- S3 through a moto server -------------------------------------------------------------------

@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    import boto3

    # boto3 reads credentials from the environment; moto accepts any.
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket="models")
    return client


def test_s3_prefix_parallel_download(s3, moto_endpoint: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = {f"llm/tiny/{name}": os.urandom(1000 + i) for i, name in
             enumerate(["config.json", "model.safetensors", "tokenizer.json", "sub/extra.txt"])}
    files["llm/tiny-other/config.json"] = b"not mine"
    for key, data in files.items():
        s3.put_object(Bucket="models", Key=key, Body=data)
    settings = Settings(home=tmp_path / "home", s3_endpoint_url=moto_endpoint, download_workers=3)
    seen: list[float] = []
    model_dir = resolve_source("s3://models/llm/tiny", settings, progress=lambda f, m: seen.append(f))
    assert (model_dir / "sub" / "extra.txt").read_bytes() == files["llm/tiny/sub/extra.txt"]
    assert (model_dir / "model.safetensors").read_bytes() == files["llm/tiny/model.safetensors"]
    assert not (model_dir.parent / "tiny-other").exists()
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(1.0)
    assert str(model_dir).startswith(str(settings.home / "cache" / "s3" / "models"))
    assert resolve_source("s3://models/llm/tiny/", settings) == model_dir  # cached: same dir


def test_s3_tar_gz_download_and_extract(s3, moto_endpoint: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = _tar(tmp_path / "model.tar.gz", {"config.json": b'{"a": 1}', "tokenizer.json": b"t"})
    s3.put_object(Bucket="models", Key="jobs/out/model.tar.gz", Body=archive.read_bytes())
    bad = _tar(tmp_path / "bad.tar.gz", {"../../evil": b"x"})
    s3.put_object(Bucket="models", Key="jobs/bad/model.tar.gz", Body=bad.read_bytes())
    settings = Settings(home=tmp_path / "home", s3_endpoint_url=moto_endpoint)
    model_dir = resolve_source("s3://models/jobs/out/model.tar.gz", settings)
    assert json.loads((model_dir / "config.json").read_text()) == {"a": 1}
    with pytest.raises(InvalidRequest, match="unsafe archive"):
        resolve_source("s3://models/jobs/bad/model.tar.gz", settings)


def test_s3_keys_cannot_write_outside_the_cache(s3, moto_endpoint: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket="models", Key="llm/evil/config.json", Body=b"{}")
    s3.put_object(Bucket="models", Key="llm/evil/../../../../escape.txt", Body=b"x")
    s3.put_object(Bucket="models", Key="../../up/model.tar.gz", Body=b"x")
    settings = Settings(home=tmp_path / "home", s3_endpoint_url=moto_endpoint)
    for uri in ("s3://models/llm/evil/", "s3://models/../../up/model.tar.gz", "s3://models//abs/model.tar.gz",
                "s3://models/../../up/"):
        with pytest.raises(InvalidRequest, match="outside the model cache"):
            resolve_source(uri, settings)
    for uri in ("s3://../x/", "s3://./x/", "s3://UPPER/x/"):
        with pytest.raises(InvalidRequest, match="not a valid S3 bucket"):
            resolve_source(uri, settings)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(settings.home / "cache" in p.parents for p in written) and not any("escape" in str(p) for p in written)


@pytest.mark.parametrize(("uri", "match"), [
    ("s3://no-such-bucket/x/", "NoSuchBucket"),
    ("s3://models/empty-prefix/", "no objects"),
    ("s3://models/missing/model.tar.gz", "404|NoSuchKey|Not Found"),
])
def test_s3_missing_sources_fail_fast_naming_the_uri(s3, moto_endpoint: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                     uri: str, match: str) -> None:
    settings = Settings(home=tmp_path / "home", s3_endpoint_url=moto_endpoint)
    with pytest.raises(WeightsNotFound, match=match) as info:
        resolve_source(uri, settings)
    assert uri in info.value.message


# -- hub ids from a prepared offline cache ----------------------------------------------------------

_HUB_SCRIPT = """
import sys
from pathlib import Path
from berth_server.errors import WeightsNotFound
from berth_server.models.sources import resolve_source
from berth_server.settings import Settings
settings = Settings.from_env()
try:
    print(resolve_source(sys.argv[1], settings, sys.argv[2] if len(sys.argv) > 2 else None))
except WeightsNotFound as exc:
    print("WeightsNotFound:", exc.message)
"""


def _resolve_offline(home: Path, *args: str) -> str:
    """Run in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE when it is imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "BERTH_"))}
    env.update({"HF_HUB_OFFLINE": "1", "BERTH_HOME": str(home)})
    result = subprocess.run([sys.executable, "-c", _HUB_SCRIPT, *args], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_hub_id_resolves_from_the_offline_cache(tmp_path: Path) -> None:
    home = tmp_path / "home"
    repo = home / "cache" / "huggingface" / "hub" / "models--acme--tiny-chat"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert _resolve_offline(home, "acme/tiny-chat") == str(snapshot)
    assert _resolve_offline(home, "acme/tiny-chat", commit) == str(snapshot)
    missing = _resolve_offline(home, "acme/not-cached")
    assert missing.startswith("WeightsNotFound") and "acme/not-cached" in missing
