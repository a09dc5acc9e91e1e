"""One spelling of a web origin (scheme://host[:port]) for the settings, the public endpoints
and click tracking, so a site configured one way and sent another still compares equal."""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str, *, exact: bool = False) -> str | None:
    """The origin of an http(s) URL: scheme and host lower-case, the default port left out.

    None for anything else, and for an address browsers may read otherwise (a backslash, a
    user name before `@`, a port that is not one). With `exact`, `url` must be the origin
    alone (a `/` path at most, no query or fragment), as in `Origin` or NURTURE_SITE_ORIGINS;
    otherwise the path, query and fragment are dropped.
    """
    parts = urlsplit(url)
    if "\\" in url or "@" in parts.netloc:
        return None
    if exact and (parts.path not in ("", "/") or "?" in url or "#" in url):
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    host = f"[{host}]" if ":" in host else host
    shown = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{shown}"
