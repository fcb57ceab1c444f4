"""The auditor's review page, in headless Chromium (Debian's `chromium` driven by Selenium): a session with
a masked prompt, a denied and an allowed tool call shows every decision, its rule and version, the chain
status and a timing waterfall. The run saves a screenshot to artifacts/review-session.png."""

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from engines.process import free_port
from gateway.http.app import create_app
from gateway.settings import load_settings
from tests.doubles import ScriptedEngine, calls_chunks

from .conftest import MODEL

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "artifacts" / "review-session.png"


@pytest.fixture
def served(redis_server):
    """The real app on a real port (scripted engine, real Redis), for a real browser."""
    redis_server.flush()
    port = free_port()
    settings = load_settings(environ={}, port=port, dev_mode=True, redis_url=redis_server.url,
                             policies_dir=str(ROOT / "policies" / "examples" / "strict-agent"))  # fmt: skip
    engine = ScriptedEngine(calls_chunks(("run_shell", '{"cmd": "rm -rf /"}', "call_sh"),
                                         ("web_fetch", '{"url": "https://example.org"}', "call_web")))  # fmt: skip
    app = create_app(settings, engines={MODEL: [(engine, 8)]})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("Chromium and chromedriver are missing: `make test` installs them (Debian packages)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_the_review_page_shows_a_sessions_decisions(served, browser):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "clean up, then mail bob@example.com"}]}
    response = httpx.post(f"{served}/v1/chat/completions", json=body, headers={"x-session-id": "reviewed"}, timeout=30)
    assert response.status_code == 200
    ran_anyway = [*body["messages"], {"role": "assistant", "tool_calls": [{"id": "call_sh", "type": "function",
                  "function": {"name": "run_shell", "arguments": '{"cmd": "rm -rf /"}'}}]},
                  {"role": "tool", "tool_call_id": "call_sh", "content": "done"}]  # fmt: skip
    second = httpx.post(f"{served}/v1/chat/completions", json={**body, "messages": ran_anyway},
                        headers={"x-session-id": "reviewed"}, timeout=30)  # fmt: skip
    assert second.status_code == 200

    browser.get(f"{served}/review")
    wait = WebDriverWait(browser, 20)
    link = wait.until(expected_conditions.element_to_be_clickable((By.LINK_TEXT, "reviewed")))
    row = link.find_element(By.XPATH, "./ancestor::tr").text
    assert "tool denied" in row and "tool allowed" in row and "1 masked" in row and "1 bypass" in row
    link.click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "chain")))
    page = browser.find_element(By.TAG_NAME, "main").text
    assert "Audit chain: intact" in page
    assert "policy_bypass:denied:call_sh" in page and "label policy_bypass" in page
    decisions = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "tr.decision")]
    assert any("input.pii" in d and "modify" in d and "masked EMAIL" in d for d in decisions), decisions
    assert any("run_shell" in d and "deny" in d and "no-shell" in d for d in decisions), decisions
    assert any("web_fetch" in d and "allow" in d and "web-read" in d for d in decisions), decisions
    assert "mail [EMAIL]" in page and "bob@example.com" not in page  # masked messages only
    assert browser.find_elements(By.CSS_SELECTOR, ".waterfall span")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    print(f"review page screenshot: {SCREENSHOT}")


async def test_the_review_data_needs_an_auditor_key_of_the_tenant(make_client, keys):
    agent, _ = await keys.create("acme")
    auditor, _ = await keys.create("acme", roles=("auditor",))
    async with make_client(dev_mode=False) as client:
        assert (await client.get("/review")).status_code == 200  # the page itself holds no data
        assert (await client.get("/v1/audit/sessions")).status_code == 401
        as_agent = await client.get("/v1/audit/sessions", headers={"authorization": f"Bearer {agent}"})
        assert as_agent.status_code == 403
        own = await client.get("/v1/audit/sessions", headers={"authorization": f"Bearer {auditor}"})
        assert own.status_code == 200 and own.json()["data"] == []
        other = await client.get("/v1/audit/sessions", params={"tenant": "globex"},
                                 headers={"authorization": f"Bearer {auditor}"})  # fmt: skip
        assert other.status_code == 404
