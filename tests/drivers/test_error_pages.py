"""Error replies that are not the service's own: a proxy's or gateway's HTML page."""

from __future__ import annotations

import pytest

from nova import errors
from nova.drivers.openai import OpenAIDriver
from nova.types import ChatRequest
from tests.conftest import arun
from tests.fakeserver import FakeServer, Reply

CHAT = "/v1/chat/completions"
PAGE = (
    "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
    "<title>502: Bad gateway &amp; co</title>"
    "<style>body { font-family: sans-serif; } .cf-error { color: red; }</style>"
    "<script>window.__CF = {ray: '8a1b2c3d'};</script></head>"
    "<body><div class='cf-error'><h1>502: Bad gateway &amp; co</h1>"
    "<p>The web server reported a bad gateway error.</p>"
    + "<p>Please try again in a few minutes.</p>" * 60
    + "</div></body></html>"
)


def _chat_error(server: FakeServer, page: str, status: int = 502) -> errors.NovaError:
    server.add(CHAT, Reply(status=status, body=page, headers={"content-type": "text/html"}))

    async def go() -> None:
        driver = OpenAIDriver(api_key="sk-test-html-error-page", base_url=server.url + "/v1")
        try:
            await driver.chat(ChatRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]))
        finally:
            await driver.aclose()

    with pytest.raises(errors.NovaError) as caught:
        arun(go())
    return caught.value


def test_a_proxys_html_502_page_is_summarised_not_quoted(server: FakeServer) -> None:
    error = _chat_error(server, PAGE)
    assert type(error) is errors.ServerError and error.retryable and error.status_code == 502
    message = error.message
    assert "'502: Bad gateway & co'" in message  # the page's title, unescaped
    assert "The web server reported a bad gateway error." in message  # the start of its text
    assert "<" not in message and "font-family" not in message and "__CF" not in message
    assert len(message) < 400
    assert "(HTTP 502)" in str(error)


def test_a_bare_html_fragment_without_a_title_is_summarised_too(server: FakeServer) -> None:
    error = _chat_error(server, "<html><body><center>nginx</center></body></html>", status=503)
    assert type(error) is errors.ServerError and error.status_code == 503
    assert "HTML page" in error.message and "nginx" in error.message and "<" not in error.message


def test_a_plain_text_error_body_is_kept_as_it_is(server: FakeServer) -> None:
    error = _chat_error(server, "upstream connect error or disconnect/reset before headers", status=503)
    assert error.message == "upstream connect error or disconnect/reset before headers"
