"""What a failure looks like in the server's log, as operators read it.

Console format: the event line with its key=value fields, then the traceback as Python
prints it. JSON format: one object per line, the exception as structured data. Both come
from a real ``dl-inference serve`` whose python models raise in ``predict()`` and
``load()``.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dl_inference.server.logs import configure_logging
from dl_inference.testing import ServerProcess, write_python_model

RAISES = """
    from dl_inference import PythonModel

    class Raises(PythonModel):
        def predict(self, inputs, **parameters):
            raise ValueError("predict failed on purpose")
"""

BROKEN = """
    from dl_inference import PythonModel

    class Broken(PythonModel):
        def load(self):
            raise RuntimeError("load failed on purpose")

        def predict(self, inputs, **parameters):
            return inputs
"""

# serve's stdout lines (merged into the output by ServerProcess); every other line is a log.
_STDOUT = re.compile(r"^(gRPC|HTTP) listening on \S+$")
# A console log line starts with its ISO timestamp; a traceback's lines do not.
_EVENT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logging") / "models"
    write_python_model(root, "raises", RAISES)
    write_python_model(root, "broken", BROKEN)
    return root


def _served(repo: Path, *flags: str) -> Iterator[ServerProcess]:
    with ServerProcess(["--model-repository", str(repo), *flags]) as server:
        client = httpclient.InferenceServerClient(server.http_address)
        tensor = httpclient.InferInput("x", [1], "FP32")
        tensor.set_data_from_numpy(np.ones(1, np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("raises", [tensor])
        assert caught.value.status() == "500"
        server.wait_for_output("model raised")
        yield server


@pytest.fixture(scope="module")
def console(repo: Path) -> Iterator[ServerProcess]:
    yield from _served(repo)


@pytest.fixture(scope="module")
def json_lines(repo: Path) -> Iterator[ServerProcess]:
    yield from _served(repo, "--log-format", "json")


def _entries(output: str, event: str) -> list[list[str]]:
    """Each console entry whose event line contains ``event``: that line and what follows."""
    entries: list[list[str]] = []
    current: list[str] | None = None
    for line in output.splitlines():
        if _EVENT.match(line) or _STDOUT.match(line):
            current = [line] if event in line else None
            if current is not None:
                entries.append(current)
        elif current is not None:
            current.append(line)
    return entries


@pytest.mark.parametrize(
    ("event", "raising_line", "last_line"),
    [
        (
            "model raised",
            'raise ValueError("predict failed on purpose")',
            "ValueError: predict failed on purpose",
        ),
        (
            "model failed to load",
            'raise RuntimeError("load failed on purpose")',
            "RuntimeError: load failed on purpose",
        ),
    ],
)
def test_console_prints_a_readable_traceback_under_the_event_line(
    console: ServerProcess, event: str, raising_line: str, last_line: str
) -> None:
    entry = _entries(console.output(), event)[0]
    head, traceback = entry[0], entry[1:]
    assert "model=" in head and "version=1" in head, head
    assert "\\n" not in head and "Traceback" not in head, head  # no traceback in a field
    assert "Traceback (most recent call last):" in traceback, entry
    model_frames = [
        i for i, line in enumerate(traceback) if re.match(r'  File ".*model\.py", line 6', line)
    ]
    assert model_frames, entry
    assert traceback[model_frames[-1] + 1].strip() == raising_line
    assert last_line in traceback


def test_json_lines_carry_the_exception_as_structured_data(json_lines: ServerProcess) -> None:
    events = []
    for line in json_lines.output().splitlines():
        if _STDOUT.match(line):
            continue
        events.append(json.loads(line))  # every log line is one JSON object
    failures = {e["event"]: e for e in events if "exception" in e}
    for event, exc_type, exc_value, function in (
        ("model raised", "ValueError", "predict failed on purpose", "predict"),
        ("model failed to load", "RuntimeError", "load failed on purpose", "load"),
    ):
        [exception] = failures[event]["exception"]
        assert (exception["exc_type"], exception["exc_value"]) == (exc_type, exc_value)
        innermost = exception["frames"][-1]
        assert Path(innermost["filename"]).name == "model.py"
        assert (innermost["lineno"], innermost["name"]) == (6, function)
        assert "locals" not in innermost  # frames' locals may hold request data
        assert not any("traceback" in key for key in failures[event])


def test_stdlib_records_render_like_ours(capsys: pytest.CaptureFixture[str]) -> None:
    """Third-party libraries log through the stdlib; their lines and tracebacks match ours."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        configure_logging("console", "info")
        try:
            raise KeyError("lost")
        except KeyError:
            logging.getLogger("grpc._server").exception("Exception calling application")
        console = capsys.readouterr().err.splitlines()
        assert "Exception calling application" in console[0] and "grpc._server" in console[0]
        assert console[1] == "Traceback (most recent call last):"
        assert console[-1] == "KeyError: 'lost'"

        configure_logging("json", "info")
        try:
            raise KeyError("lost")
        except KeyError:
            logging.getLogger("grpc._server").exception("Exception calling application")
        [line] = capsys.readouterr().err.splitlines()
        record = json.loads(line)
        assert record["logger"] == "grpc._server" and record["level"] == "error"
        assert record["exception"][0]["exc_type"] == "KeyError"
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)
        structlog.reset_defaults()


def test_python_warnings_are_log_lines_too() -> None:
    """A framework's warning, printed raw, would be the one line of a JSON log that is not."""
    code = (
        "import warnings\n"
        "from dl_inference.server.logs import configure_logging\n"
        "configure_logging('json', 'info')\n"
        "warnings.warn('this API is going away', FutureWarning)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    [line] = done.stderr.splitlines()
    record = json.loads(line)
    assert record["logger"] == "py.warnings" and record["level"] == "warning"
    assert "FutureWarning: this API is going away" in record["event"]


def test_a_reload_changes_format_and_level_of_loggers_already_used(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A config reload calls configure_logging again; every module's ``log`` has been used."""
    log = structlog.get_logger("dl_inference.test")
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        configure_logging("console", "info")
        log.info("request", model="m")
        log.debug("not shown at info")
        configure_logging("json", "warning")
        log.info("not shown at warning")
        log.warning("slow", model="m")
        configure_logging("console", "debug")
        log.debug("shown at debug")
        lines = capsys.readouterr().err.splitlines()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)
        structlog.reset_defaults()
    assert len(lines) == 3, lines
    assert "[info     ] request" in lines[0] and "model=m" in lines[0]
    assert json.loads(lines[1])["event"] == "slow"
    assert "[debug    ] shown at debug" in lines[2]
