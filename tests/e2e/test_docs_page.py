"""Swagger UI at /docs in headless Chromium, against a real API process with API keys required,
and with no way out: every request to an origin other than the API's own is aborted, and
recorded. The page must render the API's operations from the API's files alone, call the API
with "Try it out" and a key given in its Authorize dialog, and meet no Content-Security-Policy
violation.

The screenshot is kept with the run's logs, test-output/run-<pid>/docs.png."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
from playwright.async_api import Page, Route

from acme_orders.ops.api_keys import Scope, create_key
from tests.support.browser import PAGE_DEADLINE_MS, chromium, kept_if_it_fails
from tests.support.environment import TestEnvironment
from tests.support.processes import OUTPUT_DIR, free_port
from tests.support.system import start_service

pytestmark = pytest.mark.e2e

# Runs before any script of the page: every violation of its policy is kept, whether or not the
# browser also logs it to the console.
LISTEN_FOR_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(
    `${event.effectiveDirective} blocked ${event.blockedURI || "(inline)"}`
      + ` at ${event.sourceFile}:${event.lineNumber}`
  );
});
"""
# The element Swagger UI renders for each operation: #operations-<tag>-<operationId>.
PLACE_ORDER = "#operations-orders-place_order_orders_post"
LIST_PRODUCTS = "#operations-products-list_products_products_get"


@pytest.fixture(scope="module")
async def api_url(session_env: TestEnvironment) -> AsyncIterator[str]:
    """A real API process, with keys required, as anywhere but on a developer's machine: /docs
    and /openapi.json must not need one."""
    port = free_port()
    environ = session_env.environ(API_PORT=str(port), AUTH_DISABLED="0")
    process = await start_service("api", environ, "api-docs")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await process.stop()


async def read_the_docs(page: Page, api_url: str, api_key: str) -> None:
    """Open /docs, see POST /orders listed, give the page a key and try GET /products."""
    await page.goto(f"{api_url}/docs")
    place_order = page.locator(f"{PLACE_ORDER} .opblock-summary")
    await place_order.wait_for(state="visible")
    assert await place_order.locator(".opblock-summary-method").inner_text() == "POST"
    assert await place_order.locator(".opblock-summary-path").inner_text() == "/orders"
    assert await place_order.locator(".opblock-summary-description").inner_text() == "Place Order"

    # The Authorize dialog is a form: form-action 'none' must not stop it.
    await page.locator(".auth-wrapper button.authorize").click()
    dialog = page.locator(".modal-ux")
    await dialog.locator("input").fill(api_key)
    await dialog.locator("button.authorize").click()
    await dialog.locator("button.btn-done").click()
    # "Try it out" calls the API from the page (connect-src 'self'), with the key.
    products = page.locator(LIST_PRODUCTS)
    await products.locator(".opblock-summary").click()
    await products.locator("button.try-out__btn").click()
    await products.locator("button.execute").click()
    status = products.locator(".live-responses-table tr.response .response-col_status")
    await status.wait_for(state="visible")
    assert (await status.inner_text()).strip() == "200"
    assert "TSHIRT-BLK-M" in await products.locator(".live-responses-table").inner_text()


async def test_swagger_ui_renders_the_api_from_the_api_alone(
    api_url: str, pool: asyncpg.Pool
) -> None:
    api_key = await create_key(pool, f"docs-{secrets.token_hex(4)}", Scope.ORDERS_WRITE)
    elsewhere: list[str] = []
    problems: list[str] = []
    console: list[str] = []

    async def keep_to_the_api(route: Route) -> None:
        if route.request.url.startswith(f"{api_url}/"):
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    screenshot = OUTPUT_DIR / "docs.png"
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        await context.route("**/*", keep_to_the_api)
        await context.add_init_script(LISTEN_FOR_VIOLATIONS)
        page = await context.new_page()
        page.set_default_timeout(PAGE_DEADLINE_MS)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        async with kept_if_it_fails(page, "docs", console, problems):
            await read_the_docs(page, api_url, api_key)
        await page.screenshot(path=str(screenshot), full_page=True)
        violations = await page.evaluate("window.cspViolations")
        logged = list(console)
        # The policy is enforced, and a violation would have been seen: an inline script is
        # refused, and reported.
        ran = await page.evaluate(
            """() => {
                const script = document.createElement("script");
                script.textContent = "window.inlineScriptRan = true";
                document.body.append(script);
                return window.inlineScriptRan === true;
            }"""
        )
        await page.wait_for_function("n => window.cspViolations.length > n", arg=len(violations))
        probe = await page.evaluate("n => window.cspViolations.slice(n)", len(violations))

    assert not elsewhere, f"the docs page reached out of the API: {elsewhere}"
    assert violations == [], violations
    assert not problems, problems
    assert not [line for line in logged if line.startswith("error")], logged
    assert screenshot.stat().st_size > 10_000
    assert not ran
    assert [line.split(" blocked ")[0] for line in probe] == ["script-src-elem"]
