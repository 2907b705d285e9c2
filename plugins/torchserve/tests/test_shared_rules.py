"""Rules the plugin's modules share live once, public, in the module that owns them: no
module imports another's private names; the gRPC refusal rule and the archive stamp's
reader behave as documented."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc
import pytest
from dl_inference_torchserve import archive
from dl_inference_torchserve.grpc_api import grpc_refusal

from dl_inference import grpc_code

PACKAGE = Path(archive.__file__).parent


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "dl_inference_torchserve."
            ):
                if node.module == "dl_inference_torchserve._proto":
                    continue  # the generated messages: the package's own, not a module's
                found += [f"{path.name}: {node.module}.{a.name}" for a in node.names]
    assert [name for name in found if name.rsplit(".", 1)[-1].startswith("_")] == []


@pytest.mark.parametrize(
    ("status", "kind", "code", "java"),
    [
        (400, "BadRequestException", "INVALID_ARGUMENT", "org.pytorch.serve.http."),
        (404, "ModelNotFoundException", "NOT_FOUND", "org.pytorch.serve.archive.model."),
        (409, "ConflictStatusException", "FAILED_PRECONDITION", "org.pytorch.serve.http."),
        (400, "DownloadArchiveException", "INVALID_ARGUMENT", "org.pytorch.serve.archive."),
        (503, "ServiceUnavailableException", "UNAVAILABLE", "org.pytorch.serve.http."),
        (507, "InternalServerException", "INTERNAL", "org.pytorch.serve.http."),
    ],
)
def test_grpc_refusal(status: int, kind: str, code: str, java: str) -> None:
    error = grpc_refusal(status, "what went wrong", kind)
    assert grpc_code(error) == getattr(grpc.StatusCode, code)
    assert str(error) == f"what went wrong\n{java}{kind}"


def test_stamped_archive_reads_the_name_back(tmp_path: Path) -> None:
    store, unpacked = tmp_path / "store", tmp_path / "cache"
    (store / "folder model").mkdir(parents=True)
    (store / "folder model" / "h.py").write_text("x")
    (store / "my model.mar").write_bytes(b"zip")
    unpacked.mkdir()
    assert archive.stamped_archive(unpacked) is None  # nothing unpacked here
    for name, kind in (("my model.mar", "default"), ("folder model", "folder")):
        (unpacked / ".dli-archive-stamp").write_text(archive.stamp(store / name, kind))
        assert archive.stamped_archive(unpacked) == name


def test_a_registration_refusal_names_no_server_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dl_inference_torchserve import management
    from dl_inference_torchserve.rest import TorchServeError

    (tmp_path / "m.mar").write_bytes(b"zip")
    hidden = str(tmp_path / "m.mar")

    def unreadable(path: Path, kind: str) -> dict:
        raise PermissionError(13, "Permission denied", hidden)

    monkeypatch.setattr(management, "read_archive_manifest", unreadable)
    with pytest.raises(TorchServeError) as refused:
        management._archive_manifest(tmp_path / "m.mar", "m.mar")
    assert (refused.value.status, refused.value.message) == (
        400,
        "m.mar is not a model archive (Permission denied); make it with torch-model-archiver",
    )
