"""Reading image manifests and configs straight from a registry (distribution API v2), with Docker's credentials.

A fresh CI runner's engine has none of our images, but the registry it pushes to may: asking the registry for the
config of a tag costs two small requests, where pulling the image costs gigabytes.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import docker.auth
import docker.errors
import requests

from .engine import split_ref

TIMEOUT = 30  # seconds for each request
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
INDEXES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFESTS = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
ACCEPT = ", ".join(INDEXES + MANIFESTS)


class RegistryError(Exception):
    """A registry could not be asked, or would not answer (the message names the registry, the reference and why)."""


@dataclass(frozen=True)
class RemoteRef:
    """Where a reference lives: the registry's API host, the repository there and a tag or digest."""

    registry: str  # as Docker's credentials name it: docker.io, ghcr.io, 127.0.0.1:5000
    repository: str
    reference: str

    @property
    def base_url(self) -> str:
        host = DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry
        return f"{'http' if _loopback(host) else 'https'}://{host}/v2/{self.repository}"


@dataclass(frozen=True)
class Manifest:
    """A manifest exactly as the registry serves it: its digest, media type and bytes."""

    digest: str
    media_type: str
    body: bytes

    def json(self) -> dict[str, Any]:
        return _json(self.body, self.digest)


@dataclass(frozen=True)
class RemoteImage:
    """One platform's image in a registry: the manifest a tag resolves to, and its config's labels and history."""

    manifest: Manifest  # the one the tag points at (its digest is what `docker push` reported)
    labels: dict[str, str]
    newest_step: str  # the created_by of the config's last history entry
    # Each layer by its diff ID (the engine's name for it, `RootFS.Layers`): (blob digest, compressed size).
    layers: dict[str, tuple[str, int]] = field(default_factory=dict)


def parse_ref(ref: str) -> RemoteRef:
    """'nvidia/cuda:12.4.1-base-ubuntu22.04' -> docker.io, nvidia/cuda, 12.4.1-...; a reference without a tag means latest."""
    name, reference = split_ref(ref)
    registry, repository = docker.auth.split_repo_name(name)
    if registry in (docker.auth.INDEX_NAME, "index.docker.io", DOCKER_HUB_API):
        registry = DOCKER_HUB
        repository = repository if "/" in repository else f"library/{repository}"
    return RemoteRef(registry=registry, repository=repository, reference=reference or "latest")


class RegistryClient:
    """Manifests and configs by HTTP, authenticated as `docker login` left it (basic or bearer-token challenges)."""

    def __init__(self, *, platform: tuple[str, str] = ("linux", "amd64"), session: requests.Session | None = None) -> None:
        self._platform = platform
        self._session = session or requests.Session()
        self._auth = docker.auth.load_config()
        self._tokens: dict[tuple[str, str], str] = {}  # (registry, scope) -> Authorization header
        self._lock = threading.Lock()  # parallel builds (--jobs) share the client
        self._bases: dict[str, str | None] = {}

    def digest(self, ref: str) -> str | None:
        """The digest a reference resolves to (an index's, for a multi-platform tag), or None if the registry lacks it.

        A HEAD request: Docker Hub counts manifest GETs against its pull limit, not HEADs.
        """
        where = parse_ref(ref)
        response = self._request("HEAD", where, f"{where.base_url}/manifests/{where.reference}", headers={"Accept": ACCEPT})
        if response.status_code == 404:
            return None
        self._expect(response, 200, where, "read the digest of")
        digest = response.headers.get("Docker-Content-Digest")
        if digest:
            return str(digest)
        found = self.manifest(ref)  # a registry that does not say: hash what it serves
        return found.digest if found else None

    def base_digest(self, ref: str) -> str | None:
        """digest(), asked once per run for each base (every image of a release shares its two bases)."""
        with self._lock:
            if ref in self._bases:
                return self._bases[ref]
        found = self.digest(ref)
        with self._lock:
            self._bases[ref] = found
        return found

    def manifest(self, ref: str) -> Manifest | None:
        """The manifest a reference resolves to, as served, or None if the registry lacks the tag."""
        where = parse_ref(ref)
        response = self._request("GET", where, f"{where.base_url}/manifests/{where.reference}", headers={"Accept": ACCEPT})
        if response.status_code == 404:
            return None
        self._expect(response, 200, where, "read the manifest of")
        body = response.content
        computed = "sha256:" + hashlib.sha256(body).hexdigest()
        claimed = response.headers.get("Docker-Content-Digest", computed)
        if claimed != computed or (where.reference.startswith("sha256:") and where.reference != computed):
            raise RegistryError(f"{where.registry} served a manifest for {ref} whose bytes hash to {computed}, not {claimed}")
        media_type = str(_json(body, ref).get("mediaType") or response.headers.get("Content-Type", "").split(";")[0])
        return Manifest(digest=computed, media_type=media_type, body=body)

    def image(self, ref: str) -> RemoteImage | None:
        """The labels and newest history step of the image a tag names, for this client's platform; None if absent."""
        top = self.manifest(ref)
        if top is None:
            return None
        where = parse_ref(ref)
        manifest = top
        if top.media_type in INDEXES or "manifests" in top.json():
            wanted = [m for m in top.json().get("manifests", []) if self._matches(m.get("platform") or {}) and m.get("digest")]
            if not wanted:
                return None  # a tag for other platforms only: nothing this engine could use
            manifest = self.manifest(f"{_name(where)}@{wanted[0]['digest']}") or top
        config_digest = manifest.json().get("config", {}).get("digest", "")
        response = self._request("GET", where, f"{where.base_url}/blobs/{config_digest}")
        self._expect(response, 200, where, "read the image config of")
        if "sha256:" + hashlib.sha256(response.content).hexdigest() != config_digest:
            raise RegistryError(f"{where.registry} served a config for {ref} that does not match its digest {config_digest}")
        config = _json(response.content, config_digest)
        history = config.get("history") or [{}]
        blobs = [(str(layer.get("digest")), int(layer.get("size") or 0)) for layer in manifest.json().get("layers") or []]
        diff_ids = [str(diff_id) for diff_id in (config.get("rootfs") or {}).get("diff_ids") or []]
        return RemoteImage(
            manifest=top, labels=dict((config.get("config") or {}).get("Labels") or {}),
            newest_step=str(history[-1].get("created_by", "")), layers=dict(zip(diff_ids, blobs, strict=False)),
        )  # fmt: skip

    def put_manifest(self, ref: str, manifest: Manifest) -> str:
        """Point a tag at a manifest the repository already holds (a retag: no layer moves); return the digest served."""
        where = parse_ref(ref)
        url = f"{where.base_url}/manifests/{where.reference}"
        response = self._request("PUT", where, url, headers={"Content-Type": manifest.media_type}, data=manifest.body, push=True)
        self._expect(response, 201, where, "move the tag")
        return response.headers.get("Docker-Content-Digest", manifest.digest)

    # -- HTTP and authentication ------------------------------------------------------------

    def _matches(self, platform: dict[str, str]) -> bool:
        return (platform.get("os"), platform.get("architecture")) == self._platform

    def _request(self, method: str, where: RemoteRef, url: str, *, push: bool = False, **kwargs: Any) -> requests.Response:
        scope = f"repository:{where.repository}:{'pull,push' if push else 'pull'}"
        headers = dict(kwargs.pop("headers", {}))
        for attempt in range(2):
            with self._lock:
                token = self._tokens.get((where.registry, scope))
            if token:
                headers["Authorization"] = token
            try:
                response = self._session.request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
            except requests.RequestException as exc:
                raise RegistryError(f"cannot reach {where.registry} for {where.repository}: {exc}") from None
            if response.status_code != 401 or attempt:
                return response
            token = self._authorize(where, scope, response.headers.get("WWW-Authenticate", ""))
            with self._lock:
                self._tokens[(where.registry, scope)] = token
        raise AssertionError("unreachable")

    def _authorize(self, where: RemoteRef, scope: str, challenge: str) -> str:
        """Answer a 401's challenge: Basic with the stored password, or Bearer with a token from the realm it names."""
        scheme, _, rest = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        entry = self._credentials(where.registry)
        password = (str(entry["username"]), str(entry["password"])) if entry.get("username") and entry.get("password") else None
        if scheme.lower() == "basic":
            if password is None:
                raise RegistryError(f"{where.registry} wants a password for {where.repository}: run docker login {where.registry}")
            return "Basic " + base64.b64encode(":".join(password).encode()).decode()
        if scheme.lower() != "bearer" or "realm" not in params:
            raise RegistryError(f"{where.registry} answered 401 with a challenge torch-images cannot answer: {challenge!r}")
        query = {"scope": scope, **({"service": params["service"]} if "service" in params else {})}
        try:
            if entry.get("identitytoken"):  # a refresh token (credential helpers, some clouds): OAuth2, as Docker does
                form = {**query, "grant_type": "refresh_token", "refresh_token": entry["identitytoken"], "client_id": "torch-images"}
                response = self._session.post(params["realm"], data=form, timeout=TIMEOUT)
            else:  # a password, or anonymous
                response = self._session.get(params["realm"], params=query, auth=password, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise RegistryError(f"cannot reach {where.registry}'s token service {params['realm']}: {exc}") from None
        if response.status_code != 200:
            login = "" if entry else f" (no credentials stored for it: run docker login {where.registry})"
            raise RegistryError(f"{where.registry}'s token service refused {scope}: HTTP {response.status_code}{login}")
        body = _json(response.content, f"{where.registry}'s token service")
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"{where.registry}'s token service answered without a token")
        return f"Bearer {token}"

    def _credentials(self, registry: str) -> dict[str, Any]:
        """What `docker login` stored for the registry (keys lower-cased: the config file and helpers differ)."""
        try:
            entry = self._auth.resolve_authconfig(registry) or {}
        except docker.errors.DockerException as exc:  # a credential helper that is missing or fails
            raise RegistryError(f"cannot read the credentials for {registry}: {exc}") from None
        return {key.lower(): value for key, value in entry.items()}

    @staticmethod
    def _expect(response: requests.Response, status: int, where: RemoteRef, what: str) -> None:
        if response.status_code != status:
            detail = " ".join(response.text.split())[:200]
            raise RegistryError(
                f"cannot {what} {where.registry}/{where.repository}:{where.reference}: HTTP {response.status_code} {detail}"
            )


def _name(where: RemoteRef) -> str:
    return f"{where.registry}/{where.repository}"


def _loopback(host: str) -> bool:
    """Docker talks plain HTTP to 127.0.0.0/8 registries (its default insecure range) and TLS to every other."""
    name = urlsplit(f"//{host}").hostname or host  # 127.0.0.1:5000, localhost, [::1]:5000
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise RegistryError(f"the registry's answer for {what} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RegistryError(f"the registry's answer for {what} is not a JSON object")
    return document
