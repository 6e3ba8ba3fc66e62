"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) on a local mesh of
two droplets: `/_mesh/` on the entry address asks for the password, refuses a wrong one, and
with the one `meshctl dashboard --new-password` printed lists the droplets and services; a
chaos kill of a droplet shows on the page without a reload (live updates), and a screenshot of
it is kept (`.artifacts/dashboard.png`, or under $TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import support
from tests.support.mesh import WEB_ONLY, local_mesh, write_project

ROOT = Path(__file__).resolve().parents[2]
# A failure's progress (FailureState), or silence before it is confirmed.
STATES_AFTER_A_KILL = {"confirmed", "fenced", "displaced", "recovering", "recovered", "failed"}
SHOWN_S = 15.0  # generous: a confirmed failure takes under 3 s, the page's push up to 1 s more


def chromium_binary() -> str:
    found = shutil.which("chromium")
    if found is None:
        support.unavailable(
            "chromium not installed (Debian: apt-get install --no-install-recommends chromium "
            "fonts-dejavu-core)"
        )
    return found


@pytest.fixture
def browser() -> Iterator[Any]:
    binary = chromium_binary()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=binary, headless=True, args=["--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            launched.close()


def artifacts() -> Path:
    directory = Path(os.environ.get("TEST_ARTIFACTS", ROOT / ".artifacts"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_the_dashboard_signs_in_lists_the_mesh_and_shows_a_kill_live(
    tmp_path: Path, browser: Any
) -> None:
    csv, config = write_project(tmp_path, ["shop,2,s-1vcpu-2gb,s-1vcpu-1gb"], WEB_ONLY)
    with local_mesh(tmp_path / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=240)
        shown = json.loads(mesh.ok("dashboard", "--new-password", "--json"))
        assert shown["password_set"] and len(shown["password"]) >= 32
        assert json.loads(mesh.ok("dashboard", "--json"))["password"] is None  # shown once
        page = browser.new_page()

        first = page.goto(shown["url"])
        assert first.status == 401
        page.fill("#password", "not the password")
        page.click("button[type=submit]")
        assert page.inner_text("#message") == "Wrong password."

        page.fill("#password", shown["password"])
        page.click("button[type=submit]")
        page.wait_for_selector('[data-droplet="shop-web1"]')
        for droplet in ("master", "shop-web1"):
            assert page.inner_text(f'[data-droplet="{droplet}"] td:nth-child(2)') == "up"
        for service in ("backend", "frontend"):
            row = f'[data-service="shop.prod.{service}"]'
            assert page.inner_text(f"{row} td:nth-child(4)") == "1/1"
            assert page.inner_text(f"{row} td:nth-child(5)") == "shop-web1"
        page.wait_for_function("document.getElementById('live').textContent === 'live updates: on'")
        page.evaluate("window.notReloaded = true")

        killed = time.monotonic()
        mesh.ok("chaos", "kill", "shop-web1")
        page.wait_for_function(
            """() => {
                const row = document.querySelector('[data-droplet="shop-web1"] td:nth-child(2)');
                return row && row.textContent.trim() !== 'up';
            }""",
            timeout=SHOWN_S * 1000,
        )
        seconds = time.monotonic() - killed
        assert page.evaluate("window.notReloaded") is True  # changed in place, not reloaded
        page.screenshot(path=str(artifacts() / "dashboard.png"), full_page=True)
        print(json.dumps({"kill_shown_s": round(seconds, 2)}))  # the figure, for the notes
        state = page.inner_text('[data-droplet="shop-web1"] td:nth-child(2)')
        assert state in STATES_AFTER_A_KILL or state.startswith("silent"), state
