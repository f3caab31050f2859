"""HTTP to one repository on a registry, with its authentication: basic, or the token flow
that Docker Hub, GHCR and most hosted registries use."""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator

import httpx

from ember.builder.registry.reference import ImageReference, registry_url
from ember.errors import ExecutionError, InvalidError, NotFoundError

# Reads wait long: a registry may take a while to start sending a large blob from cold storage.
_TIMEOUT = httpx.Timeout(connect=15.0, read=120.0, write=60.0, pool=15.0)
_CHALLENGE_PARAM_RE = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


class RegistryClient:
    """One repository on one registry, with what it takes to be let in."""

    def __init__(
        self,
        ref: ImageReference,
        name: str,
        credentials: tuple[str, str] | None,
        *,
        insecure: bool,
    ) -> None:
        self.ref = ref
        self.name = name  # the reference as the user wrote it, for messages
        self.base = registry_url(ref.registry, insecure=insecure)
        self._credentials = credentials
        self._authorization: str | None = None
        # Redirects: blobs usually live in object storage the registry redirects to. httpx drops
        # the Authorization header when a redirect leaves the registry's origin, as it must.
        self.client = httpx.Client(timeout=_TIMEOUT, follow_redirects=True)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.close()

    @contextlib.contextmanager
    def get(self, path: str, accept: str | None = None) -> Iterator[httpx.Response]:
        """GET `path` under the repository, answering one auth challenge; the body streams."""
        url = f"{self.base}/v2/{self.ref.repository}/{path}"
        response = self._send(url, accept)
        if response.status_code == 401:
            # Also when a token expired during a long pull: a fresh one is fetched the same way.
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            self._authenticate(challenge)
            response = self._send(url, accept)
        try:
            self._check(response, path)
            yield response
        finally:
            response.close()

    def _send(self, url: str, accept: str | None) -> httpx.Response:
        headers = {}
        if accept:
            headers["Accept"] = accept
        if self._authorization:
            headers["Authorization"] = self._authorization
        return self.client.send(self.client.build_request("GET", url, headers=headers), stream=True)

    def _authenticate(self, challenge: str) -> None:
        scheme, params = _parse_challenge(challenge)
        if scheme == "bearer":
            self._authorization = f"Bearer {self._fetch_token(params)}"
        elif scheme == "basic" and self._credentials:
            self._authorization = _basic_authorization(self._credentials)
        else:
            raise self._denied()

    def _fetch_token(self, params: dict[str, str]) -> str:
        """The token flow: the registry names a token server (realm) that vouches for us."""
        realm = params.get("realm")
        if not realm:
            raise ExecutionError(
                f"registry {self.ref.registry} asked for a token without saying where to get one"
            )
        query = {key: params[key] for key in ("service", "scope") if key in params}
        query.setdefault("scope", f"repository:{self.ref.repository}:pull")
        headers = (
            {"Authorization": _basic_authorization(self._credentials)} if self._credentials else {}
        )
        response = self.client.get(realm, params=query, headers=headers)
        if response.status_code in (401, 403):
            raise self._denied()
        if response.is_error:
            raise ExecutionError(
                f"token server {realm} of registry {self.ref.registry} answered HTTP "
                f"{response.status_code} for image {self.name}: {_error_text(response)}"
            )
        try:
            body = response.json()
        except ValueError:
            body = {}
        # Docker's token servers say `token`; OAuth2-style ones say `access_token`.
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ExecutionError(f"token server {realm} returned no token for image {self.name}")
        return token

    def _check(self, response: httpx.Response, path: str) -> None:
        status = response.status_code
        if status in (401, 403):
            raise self._denied()
        if status < 400:
            return
        response.read()
        if status == 404:
            raise NotFoundError(
                f"image {self.name} not found on {self.ref.registry} "
                f"(repository {self.ref.repository}, {path}): {_error_text(response)}"
            )
        raise ExecutionError(
            f"registry {self.ref.registry} answered HTTP {status} for {path} of image "
            f"{self.name}: {_error_text(response)}"
        )

    def _denied(self) -> InvalidError:
        if self._credentials:
            return InvalidError(
                f"registry {self.ref.registry} refused the credentials given for image "
                f"{self.name}: check the username and password, and that the account may pull "
                f"{self.ref.repository}"
            )
        # Docker Hub answers 401 rather than 404 for a repository that does not exist.
        return InvalidError(
            f"registry {self.ref.registry} requires credentials for image {self.name} "
            "(or it does not exist): pass username= and password= to pull it"
        )


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` -> ("bearer", {realm: …, service: …, scope: …})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) or m.group(3) or ""
        for m in _CHALLENGE_PARAM_RE.finditer(rest)
    }
    return scheme.lower(), params


def _basic_authorization(credentials: tuple[str, str]) -> str:
    username, password = credentials
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _error_text(response: httpx.Response) -> str:
    """The registry's own words from its error body ({"errors": [{"code", "message"}]})."""
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors)
    except (ValueError, AttributeError):
        return response.text[:200].strip() or response.reason_phrase
