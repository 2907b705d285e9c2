"""Importing a model's own files: helpers beside them resolve for that load only.

Models load in parallel threads next to framework imports (a SavedModel's first
``import tensorflow``), so the load must not touch what other threads import through.
"""

from __future__ import annotations

import sys
import textwrap
import threading
from pathlib import Path

import pytest

from dl_inference import import_user_file, isolated_imports


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_helpers_import_without_the_folder_on_sys_path(tmp_path: Path) -> None:
    # Editing sys.path while another thread walks it makes that thread skip an entry
    # and fail its import (seen in CI as "No module named 'tensorflow'").
    write(tmp_path, "probe_helper.py", "VALUE = 7\n")
    path = write(
        tmp_path,
        "model.py",
        """
        import sys
        import probe_helper

        PATH_DURING_LOAD = list(sys.path)
        """,
    )
    paths_before = sys.path
    module = import_user_file(path, "dl_inference_test_model.probe")
    assert module.probe_helper.VALUE == 7
    assert str(tmp_path) not in module.PATH_DURING_LOAD
    assert sys.path is paths_before, "sys.path was rebound or edited by a model load"
    assert "probe_helper" not in sys.modules, "a model's helper leaked into the process"


def test_helpers_are_invisible_to_other_threads_during_the_load(tmp_path: Path) -> None:
    write(tmp_path, "probe_private.py", "VALUE = 1\n")
    path = write(
        tmp_path,
        "model.py",
        """
        import threading

        SEEN_ELSEWHERE = []

        def other_thread():
            try:
                import probe_private  # noqa: F401
                SEEN_ELSEWHERE.append("imported")
            except ImportError:
                SEEN_ELSEWHERE.append("not found")

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()

        import probe_private
        """,
    )
    module = import_user_file(path, "dl_inference_test_model.private")
    assert module.probe_private.VALUE == 1
    assert module.SEEN_ELSEWHERE == ["not found"]


def test_same_named_helpers_are_hidden_then_restored(tmp_path: Path) -> None:
    write(tmp_path / "a", "probe_shared.py", "VALUE = 'a'\n")
    write(tmp_path / "b", "probe_shared.py", "VALUE = 'b'\n")
    with isolated_imports(tmp_path / "a", keep=True):
        import probe_shared  # type: ignore[import-not-found]

        assert probe_shared.VALUE == "a"
    try:
        with isolated_imports(tmp_path / "b"):
            import probe_shared as inner  # type: ignore[import-not-found]

            assert inner.VALUE == "b"
        assert sys.modules["probe_shared"].VALUE == "a", "the other model's module is back"
    finally:
        sys.modules.pop("probe_shared", None)


def test_a_missing_helper_still_fails_clearly(tmp_path: Path) -> None:
    path = write(tmp_path, "model.py", "import probe_absent_helper\n")
    with pytest.raises(ModuleNotFoundError, match="probe_absent_helper"):
        import_user_file(path, "dl_inference_test_model.absent")
    assert sys.meta_path[0].__class__.__name__ != "_FolderFinder", "the finder was left behind"


def test_parallel_loads_leave_other_imports_alone(tmp_path: Path) -> None:
    # Bounded stress: one thread loads model files over and over while another resolves
    # a module that sits at the end of sys.path.
    write(tmp_path / "far", "probe_far_module.py", "")
    write(tmp_path / "model", "probe_near.py", "")
    path = write(tmp_path / "model", "model.py", "import probe_near\n")
    sys.path.append(str(tmp_path / "far"))
    misses: list[int] = []
    done = threading.Event()

    def load_models() -> None:
        for i in range(300):
            import_user_file(path, f"dl_inference_test_model.stress{i}")
        done.set()

    def resolve() -> None:
        import importlib.machinery

        while not done.is_set():
            if importlib.machinery.PathFinder.find_spec("probe_far_module") is None:
                misses.append(1)

    try:
        threads = [threading.Thread(target=load_models), threading.Thread(target=resolve)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.path.remove(str(tmp_path / "far"))
    assert done.is_set()
    assert not misses, f"{len(misses)} lookups missed a module on sys.path during model loads"
