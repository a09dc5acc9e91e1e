"""NURTURE_SITE_ORIGINS and `engine.origins.origin`: one spelling of an origin, so a site
configured with its default port or in capitals is the site browsers and emails name."""

from __future__ import annotations

import pytest

from engine.errors import ConfigurationError
from engine.origins import origin
from engine.settings import Settings


def _sites(text: str) -> tuple[str, ...]:
    return Settings.from_env({"NURTURE_SITE_ORIGINS": text}).site_origins


def test_site_origins_are_stored_lower_case_without_their_default_port() -> None:
    configured = "HTTPS://WWW.Example.com:443, http://localhost:80/, http://localhost:3000,"
    assert _sites(configured) == (
        "https://www.example.com",
        "http://localhost",
        "http://localhost:3000",
    )
    assert _sites("https://example.com:80, http://example.com:443, http://[::1]:8080") == (
        "https://example.com:80",  # 80 is not https's default: another origin
        "http://example.com:443",
        "http://[::1]:8080",
    )


@pytest.mark.parametrize(
    "site",
    [
        "www.example.com",
        "ftp://www.example.com",
        "https://",
        "https://www.example.com/shop",
        "https://www.example.com/?ref=1",
        "https://www.example.com#top",
        "https://user@www.example.com",
        "https://evil.test\\@www.example.com",
        "https://www.example.com:notaport",
        "https://www.example.com:70000",
    ],
)
def test_a_site_origin_that_is_not_just_scheme_host_and_port_is_refused(site: str) -> None:
    with pytest.raises(ConfigurationError, match="NURTURE_SITE_ORIGINS"):
        _sites(f"https://ok.example.com,{site}")


def test_an_origin_of_a_url_drops_its_path_only_when_not_asked_for_the_origin_alone() -> None:
    url = "HTTPS://Shop.Example.com:443/p?q=1#top"
    assert origin(url) == "https://shop.example.com"
    assert origin(url, exact=True) is None
    assert origin("https://shop.example.com:8443", exact=True) == "https://shop.example.com:8443"
    for unsafe in ("https://a.test\\@shop.example.com/", "https://a.test@shop.example.com/"):
        assert origin(unsafe) is None
    for other in ("null", "", "mailto:ana@example.com", "/relative", "javascript:alert(1)"):
        assert origin(other) is None
