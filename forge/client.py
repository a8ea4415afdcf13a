"""HTTP client for the Forge API, used by the CLI and the node agent (which never opens the store)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from forge import errors

_BY_REASON: dict[str, type[errors.ForgeError]] = {
    c.reason: c
    for c in (
        errors.NotFound,
        errors.AlreadyExists,
        errors.Conflict,
        errors.Gone,
        errors.Invalid,
        errors.BadRequest,
        errors.PayloadTooLarge,
        errors.Unauthorized,
        errors.Forbidden,
        errors.Unavailable,
        errors.TooManyRequests,
        errors.SubnetTaken,
    )
}
_BY_STATUS: dict[int, type[errors.ForgeError]] = {
    404: errors.NotFound,
    409: errors.Conflict,
    410: errors.Gone,
    400: errors.Invalid,
    413: errors.PayloadTooLarge,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    503: errors.Unavailable,
    429: errors.TooManyRequests,
}


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    cls = _BY_REASON.get(str(body.get("error")), _BY_STATUS.get(resp.status_code, errors.ForgeError))
    msg = body.get("message") or f"HTTP {resp.status_code} from {resp.request.method} {resp.request.url.path}"
    raise cls(str(msg), body.get("details") if isinstance(body.get("details"), list) else None)


class ForgeClient:
    def __init__(
        self,
        url: str,
        token: str,
        timeout: float = 10.0,
        unreachable_hint: str = "",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``transport``: another way to the API than the network (``httpx.WSGITransport`` over
        ``create_app`` in the simulator: the same requests, in process)."""
        self.url = url.rstrip("/")
        self.unreachable_hint = unreachable_hint  # said when nothing answers at the URL at all
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ForgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        try:
            resp = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.HTTPError as exc:
            hint = self.unreachable_hint if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) else ""
            raise errors.Unavailable(
                f"cannot reach the Forge API at {self.url}: {exc.__class__.__name__}: {exc}"
                + (f". {hint}" if hint else "")
            ) from None
        _raise_for(resp)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    # -- collections -------------------------------------------------------
    def list(self, plural: str, selector: str | dict[str, str] | None = None) -> tuple[list[dict], int]:
        params = {}
        if selector:
            params["labelSelector"] = (
                selector if isinstance(selector, str) else ",".join(f"{k}={v}" for k, v in selector.items())
            )
        body = self.request("GET", f"/api/v1/{plural}", params=params)
        return body["items"], int(body["metadata"]["resourceVersion"])

    def get(self, plural: str, name: str) -> dict:
        return self.request("GET", f"/api/v1/{plural}/{name}")

    def create(self, plural: str, body: dict) -> dict:
        return self.request("POST", f"/api/v1/{plural}", json=body)

    def replace(self, plural: str, name: str, body: dict) -> dict:
        return self.request("PUT", f"/api/v1/{plural}/{name}", json=body)

    def patch(self, plural: str, name: str, body: dict) -> dict:
        return self.request(
            "PATCH",
            f"/api/v1/{plural}/{name}",
            json=body,
            headers={"Content-Type": "application/merge-patch+json"},
        )

    def replace_status(self, plural: str, name: str, body: dict) -> dict:
        return self.request("PUT", f"/api/v1/{plural}/{name}/status", json=body)

    def delete(self, plural: str, name: str) -> dict:
        return self.request("DELETE", f"/api/v1/{plural}/{name}")

    def watch(
        self,
        plural: str,
        resource_version: int,
        selector: str | dict[str, str] | None = None,
        timeout_seconds: int = 300,
    ) -> Iterator[tuple[str, dict]]:
        """Yield ``(type, object)`` until the server ends the stream; raises ``Gone`` on 410."""
        params: dict[str, Any] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": timeout_seconds,
        }
        if selector:
            params["labelSelector"] = (
                selector if isinstance(selector, str) else ",".join(f"{k}={v}" for k, v in selector.items())
            )
        yield from self.stream_lines(f"/api/v1/{plural}", params, lambda d: (d["type"], d["object"]))

    def stream_lines(self, path: str, params: dict[str, Any], convert: Any = None) -> Iterator[Any]:
        """Read an NDJSON stream (watch, log follow) line by line."""
        try:
            with self._http.stream(
                "GET",
                path,
                params=params,
                timeout=httpx.Timeout(10.0, read=max(30.0, float(params.get("timeoutSeconds", 0)) + 15)),
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for(resp)
                for line in resp.iter_lines():
                    if not line.strip():
                        continue
                    data = json.loads(line)
                    yield convert(data) if convert else data
        except httpx.HTTPError as exc:
            raise errors.Unavailable(
                f"stream from {self.url}{path} broke: {exc.__class__.__name__}: {exc}"
            ) from None
