"""The web page in a real browser: headless Chromium (Debian's), driven by Playwright.

A whole cluster runs in this process; the browser runs in a worker thread
(Playwright's synchronous API) and reaches back into the cluster through
``trio.from_thread`` to stop and restart a storage node. Each page is saved as
a screenshot under ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from playwright.sync_api import Page, sync_playwright

from .conftest import ROOT
from .webcluster import WebCluster, start_web_cluster

SHOTS = ROOT / "test-artifacts" / "screenshots"
#: A title that would become an element if the page put it in as HTML.
TITLE = 'from the <b id="inj">browser</b>'

#: What this machine's Chromium needs to run headless in a sandbox with no network.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the browser tests need Chromium: tools/test.sh installs it (apt chromium)"
    return path


def browse(c: WebCluster, clip: Path, victim: str, stop: Callable[[], Any],
           restart: Callable[[], Any]) -> dict[str, Any]:
    """Everything the browser does (in a worker thread); returns what it saw."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    seen: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(c.url + "/")
            page.wait_for_selector("#ws-status:text-is('live')", timeout=10_000)
            # Upload through the page, see it listed.
            page.fill("#title-input", TITLE)
            page.set_input_files("#upload-input", str(clip))
            page.click("#upload-button")
            page.wait_for_selector("#video-list li[data-video-id]", timeout=90_000)
            seen["video_id"] = page.get_attribute("#video-list li[data-video-id]",
                                                  "data-video-id")
            seen["upload_progress"] = page.eval_on_selector("#upload-progress", "e => e.value")
            # The title is shown as text, never run as markup.
            seen["injected"] = page.query_selector("#inj") is not None
            seen["title_shown"] = page.inner_text("#video-list li[data-video-id]")
            # Play it in the page: its clock advances.
            page.click("#video-list li[data-video-id] button.play")
            wait_until(page, "() => document.querySelector('#player').currentTime > 1.0", 30)
            page.screenshot(path=str(SHOTS / "index.png"), full_page=True)
            # A storage node stopped: marked down within 5 s; restarted: up again.
            card = f"#nodes [data-node-url='{victim}']"
            page.wait_for_selector(card + ".node-up", timeout=10_000)
            trio.from_thread.run(stop)
            page.wait_for_selector(card + ".node-down", timeout=5_000)
            page.screenshot(path=str(SHOTS / "index-node-down.png"), full_page=True)
            trio.from_thread.run(restart)
            page.wait_for_selector(card + ".node-up", timeout=5_000)
            # The web service restarts: the page notices, and reconnects by itself.
            assert c.stop_web is not None
            assert c.start_web is not None
            trio.from_thread.run(c.stop_web)
            page.wait_for_selector("#ws-status:not(:text-is('live'))", timeout=10_000)
            trio.from_thread.run(c.start_web)
            page.wait_for_selector("#ws-status:text-is('live')", timeout=15_000)
            page.wait_for_selector(card + ".node-up", timeout=5_000)
            consensus(page, c, str(seen["video_id"]))
            efficiency(page, c)
            seen["errors"] = errors
        finally:
            browser.close()
    return seen


def wait_until(page: Page, predicate: str, seconds: float) -> None:
    """Poll ``predicate`` (a JS function) until it is true. Not Playwright's
    ``wait_for_function``: it compiles its predicate with ``eval``, which the page's
    Content-Security-Policy rightly forbids."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"not true within {seconds} s: {predicate}"
        page.wait_for_timeout(100)


def consensus(page: Page, c: WebCluster, video_id: str) -> None:
    page.goto(c.url + "/consensus")
    page.wait_for_selector(f"#consensus-body tr[data-chunk-id^='{video_id}'][data-phase]",
                           timeout=10_000)
    page.screenshot(path=str(SHOTS / "consensus.png"), full_page=True)


def efficiency(page: Page, c: WebCluster) -> None:
    page.goto(c.url + "/storage-efficiency")
    page.wait_for_selector("#eff-logical", timeout=10_000)
    wait_until(page, "() => /[1-9]/.test(document.querySelector('#eff-logical').innerText)", 10)
    page.screenshot(path=str(SHOTS / "storage-efficiency.png"), full_page=True)


async def test_upload_watch_and_see_the_cluster_live_in_a_real_browser(
        media: dict[str, Path], nursery: trio.Nursery, start_node: Callable[..., Any],
        start_metadata: Callable[..., Any], start_uploader: Callable[..., Any],
        tmp_path: Path) -> None:
    c = await start_web_cluster(nursery, start_node, start_metadata, start_uploader, tmp_path)
    victim = c.nodes[2]

    async def restart() -> None:
        await start_node(data_dir=tmp_path / "n2", port=c.node_ports[2], node_id="n2",
                         node_url=victim, metadata_urls=(c.meta,))

    seen = await trio.to_thread.run_sync(browse, c, media["clip.mp4"], victim, c.stops[victim],
                                         restart)
    assert seen["errors"] == []
    assert not seen["injected"]
    assert TITLE in seen["title_shown"]
    assert seen["upload_progress"] == 100
    for name in ("index.png", "index-node-down.png", "consensus.png", "storage-efficiency.png"):
        assert (SHOTS / name).stat().st_size > 10_000, name
