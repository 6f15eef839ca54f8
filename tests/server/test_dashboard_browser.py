"""The dashboard and the API docs in a real headless Chromium (the system's, driven by
Playwright) against the live gateway, with every request off this machine refused.

Skipped, saying why, where Chromium or Playwright is missing (.ci/run installs Chromium).
The tests run in file order on one page: keys refused, then data, updates and a flush.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
# docs/dashboard.png (the README's picture) is rewritten only when asked:
# DASHBOARD_SCREENSHOT=docs/dashboard.png pytest tests/server/test_dashboard_browser.py
SCREENSHOT_ENV = "DASHBOARD_SCREENSHOT"
TENANT = {"Authorization": "Bearer sk-tenant-a"}
ADMIN = {"Authorization": "Bearer sk-admin"}
# Tolerance of each display format when a shown number is read back (the page rounds).
TOLERANCE = {"int": 0.0, "pct": 0.051, "num1": 0.051, "num2": 0.0051}
DOCUMENTS = [
    "The lighthouse on Karst Point was built in 1871 from granite quarried on the island. "
    "Its lens, a first-order Fresnel lens, could be seen twenty nautical miles out to sea, and "
    "the keepers logged every passing ship in a ledger that is now kept in the town museum.",
    "Harbour seals haul out on the rocks below the lighthouse at low tide. Volunteers count "
    "them each spring; the colony grew from forty animals in 1990 to more than three hundred "
    "today, after fishing nets were banned inside the bay and the water became cleaner.",
]


def chromium_path() -> str | None:
    """The system Chromium: $RAGKV_CHROMIUM, else the first browser on PATH."""
    if os.environ.get("RAGKV_CHROMIUM"):
        return os.environ["RAGKV_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


@dataclass
class Tab:
    """The one page of the session and what it reported."""

    page: Any
    base_url: str
    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)

    def open(self, path: str) -> None:
        """Navigate to `path` of the gateway with a clean error log."""
        self.console_errors.clear()
        self.page.goto(f"{self.base_url}{path}", wait_until="load")

    def fields(self) -> list[dict[str, str]]:
        """Every number on the dashboard bound to the data: field path, format, shown text."""
        return self.page.evaluate(
            """() => [...document.querySelectorAll('[data-field]')].map((e) => ({
                field: e.dataset.field, fmt: e.dataset.fmt || 'int', text: e.textContent}))"""
        )

    def shown(self, name: str) -> str:
        """The text shown for data field `name`."""
        return self.page.locator(f'[data-field="{name}"]').first.inner_text()


@pytest.fixture(scope="module")
def tab(live_server: LiveServer) -> Iterator[Tab]:
    """One headless Chromium page for the whole module; only 127.0.0.1 is reachable."""
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = Tab(context.new_page(), live_server.url)

        def only_local(route) -> None:
            url = route.request.url
            if url.startswith("data:") or urlparse(url).hostname in ("127.0.0.1", "localhost"):
                route.continue_()
            else:
                tab.external_requests.append(url)
                route.abort()

        context.route("**/*", only_local)
        tab.page.on("console", lambda m: m.type == "error" and tab.console_errors.append(m.text))
        tab.page.on("pageerror", lambda error: tab.console_errors.append(str(error)))
        tab.page.set_default_timeout(30_000)
        yield tab
        browser.close()


def send_traffic(live_server: LiveServer, tag: str, engine: bool = True) -> None:
    """A warmed question answered by the semantic cache and, with `engine`, a RAG request
    (prefix and chunk levels): the cheapest mix that moves every level."""
    url, question = live_server.url, f"Which colour is the browser test's {tag} door?"
    warm = {"entries": [{"query": question, "response": "Green."}]}
    response = httpx.post(f"{url}/v1/cache/entries", json=warm, headers=TENANT, timeout=120)
    assert response.status_code == 200, response.text
    bodies = [{"messages": [{"role": "user", "content": question}]}]
    if engine:
        bodies.append(
            {
                "messages": [{"role": "user", "content": f"When was the lighthouse built? {tag}"}],
                "documents": [{"text": text} for text in DOCUMENTS],
                "ragkv": {"semantic_cache": False},
            }
        )
    for body in bodies:
        body.update(max_tokens=2, temperature=0)
        response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=TENANT, timeout=120)
        assert response.status_code == 200, response.text


def admin_stats(live_server: LiveServer) -> dict[str, Any]:
    return httpx.get(f"{live_server.url}/admin/cache/stats", headers=ADMIN, timeout=60).json()


def pick(data: Any, path: str) -> Any:
    for key in path.split("."):
        data = None if data is None else data.get(key)
    return data


def mismatches(tab: Tab, stats: dict[str, Any]) -> list[str]:
    """Shown numbers bound to `stats.*` that differ from `stats` (bytes are not compared)."""
    wrong = []
    for shown in tab.fields():
        name, fmt, text = shown["field"], shown["fmt"], shown["text"]
        if not name.startswith("stats.") or fmt not in TOLERANCE:
            continue
        value = pick(stats, name.removeprefix("stats."))
        number = float(text.replace(",", "").rstrip("%")) if text not in ("", "—") else None
        expected = None if value is None else value * 100 if fmt == "pct" else float(value)
        if (number is None) != (expected is None) or (
            number is not None and abs(number - expected) > TOLERANCE[fmt]
        ):
            wrong.append(f"{name}: shown {text!r}, stats {value!r}")
    return wrong


def until(condition, what: str, timeout_s: float = 45.0) -> Any:
    """Poll `condition()` until truthy; fail naming `what` (and the last value) on timeout."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def log_in(tab: Tab, key: str) -> None:
    tab.page.fill("#admin-key", key)
    tab.page.click("#key-form button[type=submit]")


# -- the API docs ------------------------------------------------------------------------


def test_swagger_ui_renders_offline(tab: Tab) -> None:
    tab.open("/docs")
    tab.page.wait_for_selector(".opblock")
    text = tab.page.inner_text("body")
    assert "ragkv" in text and "/v1/chat/completions" in text
    assert tab.external_requests == []


# ReDoc's bundle always asks for its vendor's logo image and hides it when that fails
# (offline): the only outside request allowed, an image, never a script or a stylesheet.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def test_redoc_renders_the_api_offline(tab: Tab) -> None:
    tab.open("/redoc")
    tab.page.wait_for_function("document.querySelector('redoc').innerText.trim().length > 0")
    text = tab.page.inner_text("body")
    assert "ragkv" in text and "/v1/chat/completions" in text
    assert [url for url in tab.external_requests if url != REDOC_LOGO] == []
    tab.external_requests.clear()


# -- the dashboard -----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "status"), [("sk-tenant-a", "403"), ("sk-wrong", "401")])
def test_refused_key_shows_an_error_and_no_data(tab: Tab, key: str, status: str) -> None:
    tab.open("/admin/dashboard")
    log_in(tab, key)
    error = tab.page.locator("#error")
    error.wait_for(state="visible")
    assert error.inner_text().startswith(status)
    assert tab.page.locator("#content").is_hidden()
    assert all(shown["text"] == "" for shown in tab.fields())
    assert tab.page.evaluate("sessionStorage.getItem('ragkv.adminKey')") is None
    assert key not in tab.page.url


def test_dashboard_shows_the_stats(tab: Tab, live_server: LiveServer, tmp_path: Path) -> None:
    send_traffic(live_server, "first")
    tab.open("/admin/dashboard")
    log_in(tab, "sk-admin")
    tab.page.locator("#content").wait_for(state="visible")
    assert "sk-admin" not in tab.page.url
    assert tab.page.evaluate("sessionStorage.getItem('ragkv.adminKey')") == "sk-admin"
    tab.open("/admin/dashboard")  # a reload keeps the key for the tab's session
    tab.page.locator("#content").wait_for(state="visible")
    wrong = ["not compared yet"]

    def same() -> bool:
        wrong[:] = mismatches(tab, admin_stats(live_server))
        return not wrong

    until(same, f"the page to show /admin/cache/stats: {wrong}")
    stats = admin_stats(live_server)
    assert stats["semantic"]["totals"]["hits"] >= 1
    assert stats["chunk"]["chunk_tokens_reused"] + stats["chunk"]["chunks_computed"] >= 1
    bound = [f for f in tab.fields() if f["field"].startswith("stats.")]
    assert len(bound) >= 30
    assert tab.page.locator(".uplot").count() == 7
    assert tab.page.locator("#categories-body tr").count() >= 1
    # exactly one row is tenant-a's (user-scoped caches show as "tenant-a/user:..." rows)
    first_cells = tab.page.locator("#tenants-body tr td:first-child")
    assert first_cells.all_inner_texts().count("tenant-a") == 1
    assert tab.console_errors == [] and tab.external_requests == []
    target = os.environ.get(SCREENSHOT_ENV)
    shot = ROOT / target if target else tmp_path / "dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    tab.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_dashboard_updates_without_a_reload(tab: Tab, live_server: LiveServer) -> None:
    tab.page.evaluate("window.__sameDocument = true")
    shown_hits = "stats.semantic.totals.hits"
    before = int(tab.shown(shown_hits).replace(",", ""))
    send_traffic(live_server, "second", engine=False)
    until(
        lambda: int(tab.shown(shown_hits).replace(",", "")) > before,
        "the semantic hits shown on the page to grow",
    )
    assert tab.page.evaluate("window.__sameDocument") is True
    assert tab.console_errors == []


def test_category_edit_is_saved(tab: Tab, live_server: LiveServer) -> None:
    url = f"{live_server.url}/admin/cache/categories"
    original = httpx.get(url, headers=ADMIN, timeout=60).json()
    threshold = round(min(1.0, original["categories"]["general"]["threshold"] + 0.01), 3)
    try:
        row = tab.page.locator("#categories-body tr", has_text="general")
        row.get_by_role("button", name="Edit").click()
        tab.page.fill("#edit-threshold", str(threshold))
        tab.page.fill("#edit-ttl", "1234")
        tab.page.click("#edit-save")
        tab.page.locator("#notice", has_text="'general' saved").wait_for(state="visible")
        saved = httpx.get(url, headers=ADMIN, timeout=60).json()["categories"]["general"]
        assert (saved["threshold"], saved["ttl_s"]) == (threshold, 1234)
        until(lambda: f"/ {threshold}" in row.inner_text(), "the new threshold on the page")
    finally:  # the server is shared: later tests expect the default policies
        restore = httpx.put(url, json=original, headers=ADMIN, timeout=60)
        assert restore.status_code == 200, restore.text
    assert tab.console_errors == []


def test_feedback_drops_the_entry(tab: Tab, live_server: LiveServer) -> None:
    warm = {"entries": [{"query": "Which test reports this entry?", "response": "The browser."}]}
    response = httpx.post(
        f"{live_server.url}/v1/cache/entries", json=warm, headers=TENANT, timeout=120
    )
    entry_id = response.json()["entries"][0]["entry_id"]
    before = admin_stats(live_server)["semantic"]["totals"]["false_hit_reports"]
    tab.page.fill("#feedback-entry", str(entry_id))
    tab.page.click("#feedback-form button[type=submit]")
    tab.page.click("#confirm-ok")
    tab.page.locator("#notice", has_text=f"entry {entry_id} dropped").wait_for(state="visible")
    assert admin_stats(live_server)["semantic"]["totals"]["false_hit_reports"] == before + 1
    reports = "stats.semantic.totals.false_hit_reports"
    until(lambda: tab.shown(reports) == str(before + 1), "the false-hit report on the page")
    assert tab.console_errors == []


def test_flush_button_empties_the_caches(tab: Tab, live_server: LiveServer) -> None:
    assert admin_stats(live_server)["semantic"]["totals"]["entries"] >= 1
    tab.page.click('[data-flush="all"]')
    tab.page.locator("#confirm").wait_for(state="visible")
    tab.page.click("#confirm-ok")
    tab.page.locator("#notice", has_text="flushed").wait_for(state="visible")
    emptied = ("stats.semantic.totals.entries", "stats.prefix.cached_pages")
    until(lambda: all(tab.shown(name) == "0" for name in emptied), "the page to show 0")
    stats = admin_stats(live_server)
    assert stats["semantic"]["totals"]["entries"] == 0
    assert stats["prefix"]["cached_pages"] == 0
    assert all(tier["entries"] == 0 for tier in stats["chunk"]["tiers"].values())
    tiers = tab.page.locator('#tiers-body [data-field$=".entries"]').all_inner_texts()
    assert tiers and set(tiers) == {"0"}
    assert tab.console_errors == []
