"""The dashboard at /ui in real headless Chromium, against `hybrid-router serve` and the
Modal emulator: what a person sees while the README's first job runs, without reloading.

Chromium is Debian's (`/usr/bin/chromium`, or HYBRID_ROUTER_CHROMIUM); .ci/run installs it,
so in CI a missing browser fails the test instead of skipping it. Playwright drives it; no
browser of Playwright's own is downloaded. The screenshot goes to test-artifacts/ (or
HYBRID_ROUTER_TEST_ARTIFACTS).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import MODELS, Procs, write_config
from tests.unavailable import unavailable

pytestmark = pytest.mark.e2e

LIMITS = {"US": 3, "EU": 3, "ASIA": 3}
TIME_SCALE = 0.005  # a 7B call takes 0.75 s, a container stays warm 0.65 s after its last call
ROOT_KEY = "dashboard-root-key-4d1f"  # not secrets: the test's own users
ALICE_KEY = "dashboard-alice-key-93ab"
ARTIFACTS = Path(
    os.environ.get("HYBRID_ROUTER_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)
# The flags that work on a CI machine without a sandbox, a GPU or a network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = os.environ.get("HYBRID_ROUTER_CHROMIUM") or shutil.which("chromium")
    if path is None:
        unavailable("Chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium with a profile of its own, closed after the test."""
    executable = _chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _sign_in(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/ui")
    expect(page.get_by_role("heading", name="API key")).to_be_visible()
    page.get_by_label("Key").fill(key)
    page.get_by_role("button", name="Open").click()
    expect(page.locator("#main")).to_be_visible()


def test_the_dashboard_follows_the_first_job_live(procs: Procs, browser: Browser) -> None:
    emulator = procs.emulator(gpu_limit=10, time_scale=TIME_SCALE)
    config = write_config(
        procs.tmp_path / "router.toml",
        store=procs.tmp_path / "router.db",
        gpu_limit=10,
        regions=LIMITS,
        urls={r: emulator.region_url(r) for r in LIMITS},
        time_scale=TIME_SCALE,
    )
    with config.open("a", encoding="utf-8") as users:
        users.write(
            f'\n[users.root]\napi_key_sha256 = "{_sha(ROOT_KEY)}"\nrole = "admin"\n'
            f'\n[users.alice]\napi_key_sha256 = "{_sha(ALICE_KEY)}"\n'
        )
    router = procs.serve(config)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    _sign_in(page, router.url, ROOT_KEY)
    assert ROOT_KEY not in page.url

    regions = page.locator(".region h3")
    expect(regions).to_have_text(["US", "EU", "ASIA"])
    account = page.locator("#account-text")
    expect(account).to_contain_text("10 free of 10 GPUs (account limit)")
    expect(page.locator("#live")).to_have_text("live")

    # The README's first job, submitted from elsewhere while the page is open.
    submitted = router.http.post(
        "/jobs",
        headers={"Authorization": f"Bearer {ROOT_KEY}"},
        json={
            "job_id": "first-job",
            "models": list(MODELS),
            "regions": ["us-east", "EU"],
            "questions": ["Who was the greatest leader of the 20th century?"],
        },
    )
    assert submitted.status_code == 202, submitted.text
    row = page.locator('tr[data-job="first-job"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text("root")  # an admin sees whose job it is
    # The account bar moves and the regions' containers appear.
    expect(account).not_to_contain_text("10 free of 10")
    us = page.locator('.region[data-region="US"]')
    expect(us.locator(".containers")).to_contain_text("mistral-7b")

    row.get_by_role("button", name="first-job").click()
    job = page.locator("#job")
    expect(job.locator("#job-title .badge")).to_have_text("succeeded", timeout=20_000)
    expect(row.locator(".badge")).to_have_text("succeeded")
    executions = job.locator("#executions tr")
    expect(executions).to_have_count(6)
    expect(executions.locator(".badge")).to_have_text(["succeeded"] * 6)
    expect(job.locator("#executions")).to_contain_text(
        "Who was the greatest leader of the 20th century?"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    # Every container scales down once its window ends: the GPUs free again.
    expect(account).to_contain_text("10 free of 10 GPUs", timeout=10_000)
    expect(us).to_contain_text("No containers up.")

    # A user sees their own jobs only, and neither the owners nor the region controls; what
    # a job says is shown as text, never run as markup.
    other = browser.new_page()
    other.on("pageerror", lambda error: errors.append(str(error)))
    _sign_in(other, router.url, ALICE_KEY)
    expect(other.locator("#who")).to_have_text(re.compile(r"alice \(user\)"))
    expect(other.locator(".region h3")).to_have_count(3)
    expect(other.locator("#jobs-empty")).to_be_visible()
    expect(other.get_by_role("button", name="Pause")).to_have_count(0)
    markup = '<img src="x" onerror="document.title=1"><b>bold?</b>'
    root = {"Authorization": f"Bearer {ROOT_KEY}"}
    # ASIA paused first: the job waits there, and its page says why.
    assert router.http.post("/regions/ASIA/pause", headers=root).status_code == 200
    mine = router.http.post(
        "/jobs",
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        json={"job_id": "markup", "models": ["llama3.2-1b"], "regions": ["ASIA"], "prompt": markup},
    )
    assert mine.status_code == 202, mine.text
    expect(other.locator("#jobs-body tr")).to_have_count(1)  # not root's first-job
    expect(other.get_by_role("columnheader", name="Owner")).to_have_count(0)
    other.get_by_role("button", name="markup").click()
    expect(other.locator("#executions")).to_contain_text("ASIA is paused or draining")
    assert router.http.post("/regions/ASIA/resume", headers=root).status_code == 200
    result = other.locator("#executions td.result")
    expect(result).to_contain_text(markup, timeout=10_000)
    assert result.locator("img, b").count() == 0
    assert other.title() == "hybrid-router"
    assert errors == []


def test_where_only_the_account_binds_it_says_where_free_gpus_go(
    procs: Procs, browser: Browser
) -> None:
    emulator = procs.emulator(gpu_limit=5, time_scale=TIME_SCALE)
    config = write_config(
        procs.tmp_path / "router.toml",
        store=procs.tmp_path / "router.db",
        gpu_limit=5,  # under the regions' 9: the account's limit binds
        regions=LIMITS,
        urls={r: emulator.region_url(r) for r in LIMITS},
        time_scale=TIME_SCALE,
    )
    with config.open("a", encoding="utf-8") as users:
        users.write(f'\n[users.root]\napi_key_sha256 = "{_sha(ROOT_KEY)}"\nrole = "admin"\n')
    router = procs.serve(config)
    page = browser.new_page()
    _sign_in(page, router.url, ROOT_KEY)
    account = page.locator("#account-text")
    # Nothing planned yet: the rule before the planner.
    expect(account).to_contain_text("of 5 GPUs (account limit); free GPUs go to the oldest")
