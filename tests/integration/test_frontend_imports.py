"""The frontend, built as gunicorn builds it in a fresh interpreter, imports no engine library.

make lint's import contract checks Berth's own modules; this checks what actually lands in
sys.modules, third-party imports included.
"""

from __future__ import annotations

import subprocess
import sys


def test_building_the_app_imports_no_engine(tmp_path) -> None:
    code = ("import sys, berth_server.http.wsgi; from berth_server.http.app import create_app; "
            "from berth_server.settings import Settings; "
            f"create_app(Settings(runtime_dir={str(tmp_path)!r})); "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'vllm', 'xllamacpp', 'gguf')]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
