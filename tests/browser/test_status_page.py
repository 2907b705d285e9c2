"""The status page at ``/`` in a real headless Chromium, against real servers.

Needs Debian's ``chromium`` and ``chromium-driver`` and Selenium from PyPI::

    apt-get install -y chromium chromium-driver
    pip install selenium

Selenium drives ``/usr/bin/chromedriver`` directly (no browser download). The page polls
``/api/status`` every 2 s, so every check waits for the page to catch up.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dl_inference.testing import ServerProcess, free_port, write_python_model

CHROMIUM = os.environ.get("DLI_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DLI_CHROMEDRIVER", "/usr/bin/chromedriver")

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    pytest.skip("selenium is not installed (pip install selenium)", allow_module_level=True)
for _binary, _package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
    if not (shutil.which(_binary) or os.access(_binary, os.X_OK)):
        pytest.skip(
            f"{_binary} not found (apt-get install -y chromium chromium-driver)",
            allow_module_level=True,
        )

# Several refresh periods of the page (2 s each), plus the servers' own probe intervals.
WAIT_S = 30

ADD_ONE = """
    from dl_inference import PythonModel

    class AddOne(PythonModel):
        def predict(self, inputs, **parameters):
            return {"y": inputs["x"] + 1}
"""
CONFIG = """
    max_batch_size: 8
    inputs: [{name: x, datatype: FP32, shape: [3]}]
    outputs: [{name: y, datatype: FP32, shape: [3]}]
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile, told to stay off the network."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",  # small /dev/shm in containers crashes tabs
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("status-page") / "models"
    write_python_model(root, "add_one", ADD_ONE, CONFIG)
    return root


@pytest.fixture(scope="module")
def worker(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(["--model-repository", str(repo)]) as srv:
        yield srv


def wait_for(driver: WebDriver, condition, what: str):
    """The truthy value of ``condition(driver)`` once the page shows it; fails naming ``what``.

    Every refresh replaces the tables' rows, so an element found a moment ago may be gone:
    such reads are retried, not failed.
    """
    wait = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.25, ignored_exceptions=[StaleElementReferenceException]
    )
    try:
        return wait.until(condition)
    except TimeoutException:
        pytest.fail(f"the status page never showed {what}; it shows:\n{page_text(driver)}")


def page_text(driver: WebDriver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def cell(driver: WebDriver, row: str, column: str) -> str:
    """Text of ``td.<column>`` in the row matching CSS ``row``; '' when not there yet."""
    found = driver.find_elements(By.CSS_SELECTOR, f"{row} td.{column}")
    return found[0].text.strip() if found else ""


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # a dash until there is data
        return None


def infer(address: str, n: int) -> None:
    client = grpcclient.InferenceServerClient(address)
    try:
        x = np.arange(3, dtype=np.float32).reshape(1, 3)
        for _ in range(n):
            tensor = grpcclient.InferInput("x", [1, 3], "FP32")
            tensor.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("add_one", [tensor]).as_numpy("y"), x + 1)
    finally:
        client.close()


def test_page_lists_the_servers_models(browser: WebDriver, worker: ServerProcess) -> None:
    browser.get(worker.http_url + "/")
    assert browser.title == "dl-inference status"
    text = wait_for(
        browser,
        lambda d: [
            row.text for row in d.find_elements(By.CSS_SELECTOR, 'tr[data-model="add_one"]')
        ],
        "the add_one model",
    )[0]
    assert "READY" in text
    assert "python" in text  # the backend column
    assert "1:READY" in text.upper()  # version 1 and its state
    wait_for(
        browser,
        lambda d: (
            d.find_element(By.ID, "server-state").text == "READY"
            and "ok" in d.find_element(By.ID, "server-state").get_attribute("class").split()
        ),
        "the server as READY",
    )
    wait_for(browser, lambda d: "no routes" in d.find_element(By.ID, "routes").text, "'no routes'")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_model_row_shows_qps_and_latency_after_requests(
    browser: WebDriver, worker: ServerProcess
) -> None:
    browser.get(worker.http_url + "/")
    row = 'tr[data-model="add_one"]'
    infer(worker.grpc_address, 20)
    qps = wait_for(
        browser, lambda d: (number(cell(d, row, "qps")) or 0) > 0 and cell(d, row, "qps"), "QPS > 0"
    )
    p50_ms, p99_ms = wait_for(
        browser,
        lambda d: (
            (number(cell(d, row, "p50")), number(cell(d, row, "p99")))
            if number(cell(d, row, "p50")) is not None
            else None
        ),
        "a p50 figure",
    )
    assert p50_ms > 0
    assert p99_ms is not None and p99_ms >= p50_ms
    assert float(qps) > 0
    # The sparkline has been drawn from the polled samples.
    wait_for(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{row} svg.spark polyline"), "a chart"
    )


BROKEN = """
    from dl_inference import PythonModel

    class Broken(PythonModel):
        def load(self):
            raise RuntimeError("weights.bin is missing")

        def predict(self, inputs, **parameters):
            return inputs
"""


def test_unavailable_model_shows_why(browser: WebDriver, tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_python_model(root, "add_one", ADD_ONE, CONFIG)
    write_python_model(root, "broken", BROKEN, CONFIG)
    with ServerProcess(["--model-repository", str(root)]) as srv:
        browser.get(srv.http_url + "/")
        broken = 'tr[data-model="broken"]'
        text = wait_for(
            browser,
            lambda d: "weights.bin" in cell(d, broken, "state") and cell(d, broken, "state"),
            "why 'broken' is unavailable",
        )
        assert text.startswith("UNAVAILABLE")
        assert "v1: failed to load" in text and "weights.bin is missing" in text
        assert browser.find_element(By.CSS_SELECTOR, f"{broken} td.state .why").is_displayed()
        # A READY model shows no reason.
        assert cell(browser, 'tr[data-model="add_one"]', "state") == "READY"


def gateway_config(tmp: Path, nodes: list[str]) -> Path:
    listed = "\n".join(f"      - {{address: '{node}', weight: 100}}" for node in nodes)
    path = tmp / "gateway.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            routes:
              - model: add_one
                timeout_ms: 2000
                retries: 1
                health: {interval_s: 0.3, timeout_s: 0.5, unhealthy_threshold: 1}
                ejection: {consecutive_failures: 1, base_s: 30, slow_start_s: 0}
                nodes:
            """
        )
        + listed
        + "\n"
    )
    return path


def test_gateway_node_turns_unhealthy_when_its_worker_is_killed(
    browser: WebDriver, repo: Path, tmp_path: Path
) -> None:
    with (
        ServerProcess(["--model-repository", str(repo)]) as first,
        ServerProcess(["--model-repository", str(repo)]) as second,
    ):
        nodes = [first.grpc_address, second.grpc_address]
        config = gateway_config(tmp_path, nodes)
        with ServerProcess(["-c", str(config)]) as gateway:
            browser.get(gateway.http_url + "/")

            def states(driver: WebDriver) -> dict[str, str]:
                rows = driver.find_elements(By.CSS_SELECTOR, "#routes tr[data-node]")
                return {r.get_attribute("data-node"): r.get_attribute("data-state") for r in rows}

            wait_for(
                browser,
                lambda d: states(d) == dict.fromkeys(nodes, "healthy"),
                "both nodes healthy",
            )
            infer(gateway.grpc_address, 4)  # the gateway answers through its nodes

            second.process.kill()  # as a crashed worker: no draining, no goodbye
            second.process.wait()
            dead = f'#routes tr[data-node="{second.grpc_address}"]'
            wait_for(
                browser,
                lambda d: states(d).get(second.grpc_address) in {"ejected", "unhealthy"},
                f"node {second.grpc_address} ejected or unhealthy",
            )
            pill = f"{dead} td.health .pill"
            text, classes = wait_for(
                browser,
                lambda d: (
                    d.find_element(By.CSS_SELECTOR, pill).text,
                    d.find_element(By.CSS_SELECTOR, pill).get_attribute("class").split(),
                ),
                "the dead node's health badge",
            )
            assert text in {"EJECTED", "UNHEALTHY"}
            assert "bad" in classes
            # ... and why: the failed probe's or call's answer, as /api/status has it.
            why = wait_for(browser, lambda d: cell(d, dead, "health .why"), "why it is out")
            assert "UNAVAILABLE" in why
            assert not browser.find_elements(
                By.CSS_SELECTOR, f'#routes tr[data-node="{first.grpc_address}"] .why'
            )
            assert wait_for(browser, states, "the node table")[first.grpc_address] == "healthy"
            # Requests keep flowing through the surviving node.
            infer(gateway.grpc_address, 4)


def test_split_and_mirror_groups_show_their_weights_nodes_and_calls(
    browser: WebDriver, repo: Path, tmp_path: Path
) -> None:
    """A 3:1 split between two workers and a 50 % shadow that cannot be reached: each
    group's row shows its weight (or percent), version, nodes, calls and errors."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: every copy fails
    with (
        ServerProcess(["--model-repository", str(repo)]) as first,
        ServerProcess(["--model-repository", str(repo)]) as second,
    ):
        config = tmp_path / "gateway.yaml"
        config.write_text(
            textwrap.dedent(
                f"""\
                routes:
                  - model: add_one
                    protocols: [v2]
                    split:
                      - {{name: stable, weight: 3, nodes: [{{address: '{first.grpc_address}'}}]}}
                      - name: canary
                        weight: 1
                        version: "1"
                        nodes: [{{address: '{second.grpc_address}'}}]
                    mirror: {{name: dark, percent: 50, nodes: [{{address: '{dead}'}}]}}
                """
            )
        )
        with ServerProcess(["-c", str(config)]) as gateway:
            infer(gateway.grpc_address, 8)  # 6 to stable, 2 to canary
            client = grpcclient.InferenceServerClient(gateway.grpc_address)
            try:
                for _ in range(4):  # 3 to stable, 1 to canary: refused by the node
                    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
                    tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
                    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
                        client.infer("add_one", [tensor])
            finally:
                client.close()
            browser.get(gateway.http_url + "/")

            def row(group: str) -> tuple[str, ...]:
                found = f'#groups tr[data-model="add_one"][data-group="{group}"]'
                return tuple(
                    cell(browser, found, column)
                    for column in ("kind", "share", "version", "nodes", "calls", "errors")
                )

            none = "\N{EN DASH}"  # what the page shows for no version
            expected = {
                "stable": ("split", "3", none, first.grpc_address, "9", "3"),
                "canary": ("split", "1", "1", second.grpc_address, "3", "1"),
                "dark": ("mirror", "50%", none, dead, "6", "6"),  # copies sent, all failed
            }
            wait_for(
                browser,
                lambda d: {name: row(name) for name in expected} == expected,
                f"the groups {expected}",
            )
            assert cell(browser, '#groups tr[data-group="canary"]', "rate") == "33.3%"
            assert cell(browser, '#groups tr[data-group="dark"]', "dropped") == "0"
            # The node table says which group each node serves.
            groups = {
                r.get_attribute("data-node"): r.get_attribute("data-group")
                for r in browser.find_elements(By.CSS_SELECTOR, "#routes tr[data-node]")
            }
            assert groups == {
                first.grpc_address: "stable",
                second.grpc_address: "canary",
                dead: "dark",
            }
