"""Both image variants install the same `berth` (same extras, vLLM aside), and the image build files hold together."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def _instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(.*)$", DOCKERFILE, re.MULTILINE)
    assert match, f"ARG {name} has no default"
    return match.group(1).strip('"')


def _pip_calls(run: str, variant: str, tmp_path: Path) -> list[str]:
    """Run a RUN step's shell with `pip` recorded instead of run, as the VARIANT build would."""
    log = tmp_path / f"pip-{variant}.log"
    script = f'pip() {{ printf "%s\\n" "$*" >> "{log}"; }}\n{run.removeprefix("RUN ")}'
    env = {**os.environ, "VARIANT": variant, "WITH_VLLM_CPU": "0", "BERTH_EXTRAS": _arg("BERTH_EXTRAS"),
           "TORCH_VERSION": _arg("TORCH_VERSION"), "VLLM_VERSION": _arg("VLLM_VERSION")}
    work = tmp_path / variant
    work.mkdir()
    subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=work, env=env, check=True, timeout=30)
    return log.read_text().splitlines()


def test_both_variants_install_the_same_berth_extras_but_vllm(tmp_path: Path) -> None:
    section = (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^([a-z0-9_-]+) = \[", section, re.MULTILINE))
    assert {"server", "llamacpp", "vllm"} <= extras
    steps = [i for i in _instructions() if i.startswith("RUN ") and re.search(r'pip install "\.\[', i)]
    assert len(steps) == 1, "one step installs berth's dependencies, for both variants"
    installed = {}
    for variant in ("cpu", "gpu"):
        calls = [c for c in _pip_calls(steps[0], variant, tmp_path) if c.startswith("install .[")]
        assert len(calls) == 1, calls
        installed[variant] = set(re.fullmatch(r"install \.\[(.*)\]", calls[0]).group(1).split(","))  # type: ignore[union-attr]
    assert installed["cpu"] <= extras and installed["gpu"] <= extras
    assert "vllm" not in installed["cpu"]
    assert installed["gpu"] == installed["cpu"] | {"vllm"}
    assert {"server", "llamacpp"} <= installed["cpu"]
    # The source itself goes in with --no-deps, the same for both (no variant switch in that step).
    source = [i for i in _instructions() if i.startswith("RUN pip install --no-deps .")]
    assert len(source) == 1 and "VARIANT" not in source[0]


def test_dependency_layers_come_before_the_source() -> None:
    steps = _instructions()
    index = {name: next(n for n, i in enumerate(steps) if i.startswith(name))
             for name in ("COPY pyproject.toml", 'RUN extras="$BERTH_EXTRAS"', "COPY container", "COPY sdk")}
    assert index["COPY pyproject.toml"] < index['RUN extras="$BERTH_EXTRAS"'] < index["COPY container"]
    assert index["COPY container"] < index["COPY sdk"]
    # Nothing before the dependency layer copies anything but pyproject.toml.
    early = [i for i in steps[:index['RUN extras="$BERTH_EXTRAS"']] if i.startswith(("COPY", "ADD"))]
    assert early == ["COPY pyproject.toml ./"]


def test_no_registry_address_and_the_workflow_builds_what_make_does() -> None:
    workflow = (REPO / "infra" / "github" / "workflows" / "image.yml").read_text()
    assert "BERTH_EXTRAS" not in workflow, "both variants take the Dockerfile's extras"
    assert "make test-image-run" in workflow
    # The only index the repo names is PyTorch's public CPU index (the Dockerfile's default).
    for path in (REPO / "Dockerfile", REPO / "infra" / "build-image.sh", REPO / "Makefile"):
        urls = set(re.findall(r"https?://[^\s\"'$}]+", path.read_text())) - {"http://127.0.0.1:"}
        assert urls <= {"https://download.pytorch.org/whl/cpu"}, (path, urls)


def test_build_script_is_valid_bash_and_executable() -> None:
    script = REPO / "infra" / "build-image.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    conf = (REPO / "infra" / "podman" / "containers.conf").read_text()
    assert "default_ulimits = []" in conf and 'runtime = "runc"' in conf


@pytest.mark.parametrize("name", ["image", "test-image", "test-image-run"])
def test_make_targets_exist(name: str) -> None:
    assert re.search(rf"^{name}:", (REPO / "Makefile").read_text(), re.MULTILINE)
