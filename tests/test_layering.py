"""The dependency direction: service -> search_spaces <- worker. The API image has no torch."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def modules_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return {m.split(".")[0] for m in out.split()}


def test_the_service_never_imports_torch() -> None:
    loaded = modules_after("import service.app, service.cli\nservice.app.create_app")
    assert "fastapi" in loaded and "torch" not in loaded


def test_the_worker_never_imports_fastapi() -> None:
    loaded = modules_after("import worker.trial_loop, worker.train, worker.losses")
    assert "torch" in loaded and "fastapi" not in loaded and "service" not in loaded


def test_search_spaces_import_neither() -> None:
    loaded = modules_after("import search_spaces")
    assert not {"torch", "fastapi", "service", "worker"} & loaded
