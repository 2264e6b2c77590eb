"""`talon.yaml` plus environment overrides, read into one typed `Settings` object.

Every leaf value has an environment variable derived from its path, e.g.
`control_plane.database.url` -> `TALON_CONTROL_PLANE_DATABASE_URL` and
`worker.pullMode` -> `TALON_WORKER_PULL_MODE`. Lists are comma-separated, mappings JSON
(`TALON_TENANCY_SECRET_GRANTS='{"acme": {"env": ["ACME_*"]}}'`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from talon.errors import ConfigError, details_from_validation_error

ENV_PREFIX = "TALON_"
CONFIG_FILE_ENV = "TALON_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class GatewaySettings(_Section):
    # Where `talon dev` serves; on Cloud Run the platform sets the port ($PORT) instead.
    http_addr: str = "127.0.0.1:8080"
    # Where the gRPC surface (talon.grpc) listens under `talon dev` and `python -m talon.grpc`;
    # on Cloud Run the platform sets the port ($PORT) instead.
    grpc_addr: str = "0.0.0.0:50051"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # A request body must have arrived this long after the gateway starts reading it (408).
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # A request's line and headers must have arrived this long after its connection became
    # readable (408); enforced by Talon's server (`python -m talon.serve`, what `talon dev`
    # runs), which reads headers without holding a thread.
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Requests served at once per process without a verified bearer token (a 503 beyond);
    # 0: half the server's threads (THREADS), so token holders always keep the other half.
    max_unauthenticated_requests: int = Field(default=0, ge=0)
    # SSE streams open at once per process (a 503 beyond); 0: under talon.serve, whose
    # stream hub holds them without a thread each, 10,000 (bounded by the open-file limit);
    # under another server, where each holds a thread, three quarters of the threads left to
    # token holders (THREADS minus the above), so the rest always serve other requests.
    max_open_streams: int = Field(default=0, ge=0)
    # Streams one token may hold open at once per process (a 429 beyond); 0: a quarter of
    # maxOpenStreams, so one reader never takes every slot.
    max_streams_per_token: int = Field(default=0, ge=0)
    public_url: str = ""
    # Base URL of the ops_mcp function; when set, the gateway forwards /mcp/talon-ops there
    # (how `talon dev` serves both under one base URL; in the cloud each has its own URL).
    ops_mcp_upstream: str = ""
    # In the cloud the ops_mcp function is private: attach a Google ID token for it in
    # X-Serverless-Authorization (Authorization keeps carrying the caller's Talon token).
    ops_mcp_id_token: bool = False
    # Host headers the ops_mcp function accepts (the MCP SDK's DNS-rebinding protection; an
    # Origin header must be http(s):// one of them). `host`, `host:port` or `host:*` (any
    # port). The default suits `talon dev`; in the cloud, the function's own host (which is
    # what the gateway's forwarding sends: the upstream's, never the caller's).
    ops_mcp_allowed_hosts: list[str] = Field(
        default=["127.0.0.1:*", "localhost:*", "[::1]:*"], min_length=1
    )

    @field_validator("ops_mcp_allowed_hosts")
    @classmethod
    def _hosts_not_urls(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not host or "/" in host or any(c.isspace() for c in host):
                raise ValueError(f"{host!r} is not a Host header value (host[:port|:*], no URL)")
        return hosts

    # Browser origins (scheme://host[:port]) allowed to call the API from another origin: a
    # dashboard hosted elsewhere, or another gateway's dashboard that saved this one (CORS).
    # The dashboard this gateway serves at /ui/ is same-origin and needs no entry.
    allowed_origins: list[str] = []

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        return [origin.lower() for origin in value]


class DatabaseSettings(_Section):
    driver: Literal["postgres"] = "postgres"
    url: str = "postgresql://talon@127.0.0.1:5432/talon"
    # When set, connections go through the Cloud SQL Python Connector instead of `url`.
    instance_connection_name: str = ""
    user: str = "talon"
    password: str = ""
    name: str = "talon"
    ip_type: Literal["private", "public", "psc"] = "private"
    iam_auth: bool = False
    pool_size: int = Field(default=5, ge=1, le=100)
    connect_timeout_seconds: float = Field(default=10.0, gt=0)


class MessageBrokerSettings(_Section):
    driver: Literal["postgres", "gcp_pubsub"] = "postgres"
    project: str = ""
    dispatch_topic: str = "talon-session-dispatch"
    lifecycle_topic: str = "talon-lifecycle"
    # How the dispatch function checks that a push request comes from our subscription:
    # `oidc` (Google-signed token for push_service_account_email, audience push_audience),
    # `token` (each message signed with push_token by its publisher, see broker/signing.py;
    # `/sweep` sends it in X-Talon-Push-Token), or `none` (local emulator only).
    push_verification: Literal["oidc", "token", "none"] = "oidc"
    push_audience: str = ""
    push_service_account_email: str = ""
    # Every function that publishes signs with it when set, so set it on all of them.
    push_token: str = ""
    # Pull mode (`talon worker` with worker.pullMode): the subscriptions it consumes by
    # streaming pull. The dead-letter one (empty: not consumed) receives what the others
    # gave up on; the worker then fails the turn a dead dispatch event named.
    dispatch_subscription: str = "talon-session-dispatch-pull"
    lifecycle_subscription: str = "talon-lifecycle-pull"
    dead_letter_subscription: str = "talon-dead-letters-pull"
    # Where the dispatch and lifecycle subscriptions send what they give up on (Terraform's
    # dead-letter policy; `talon dev --broker pubsub` creates it on the emulator).
    dead_letter_topic: str = "talon-dead-letters"
    # The ack deadline the pull worker keeps extending while a turn runs (Pub/Sub's minimum
    # is 10 s): a killed worker's messages come back after at most this long.
    pull_ack_deadline_seconds: int = Field(default=10, ge=10, le=600)
    # How long one message is kept leased at most (a turn's timeout plus some margin).
    pull_max_lease_seconds: int = Field(default=900, ge=10)
    # Deliveries of one event before it is dead-lettered and the turn it names fails. The
    # postgres broker counts its rows' claims; Pub/Sub's dead-letter policy (5 to 100, set
    # by Terraform from the same number) counts deliveries.
    max_delivery_attempts: int = Field(default=10, ge=1, le=100)


class SchedulerSettings(_Section):
    backend: Literal["postgres", "cloud_tasks"] = "postgres"
    project: str = ""
    location: str = ""
    queue: str = "talon-scheduler"
    # The scheduler function's URL; each task POSTs its fire to it.
    callback_url: str = ""
    # Cloud Tasks signs each callback with an OIDC token for this account (`oidc` mode).
    service_account_email: str = ""
    # How the callback checks that a request comes from our queue: `oidc` (Google-signed
    # token for service_account_email, audience callback_audience or callback_url), `token`
    # (a shared secret in the X-Talon-Scheduler-Token header; the local emulator sends no
    # OIDC token) or `none` (tests only).
    callback_verification: Literal["oidc", "token", "none"] = "oidc"
    callback_audience: str = ""
    callback_token: str = ""
    # host:port of a Cloud Tasks emulator (plain gRPC, no credentials); empty in the cloud.
    emulator_host: str = ""


class ControlPlaneSettings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    message_broker: MessageBrokerSettings = Field(
        default=MessageBrokerSettings(), alias="message_broker"
    )
    scheduler: SchedulerSettings = SchedulerSettings()


class WorkerSettings(_Section):
    pull_mode: bool = True
    mcp_routes: list[str] = ["/mcp/talon-ops"]
    # Where `<name>/SKILL.md` skills are loaded from (relative: to the working directory).
    skills_dir: str = "skills"
    # While deliveries are pending, an idle pull worker looks this often for those
    # whose worker died (store/liveness.py): about the longest a crashed turn waits.
    takeover_poll_seconds: float = Field(default=0.5, gt=0)
    # The database pool of a `talon worker` process, instead of control_plane.database's: its
    # handlers' transactions are one round trip each, so two connections keep up with them,
    # and every backend beyond what a process keeps busy costs the database CPU per turn
    # (README, Benchmarks: 5-10% of PostgreSQL's CPU per turn with 16 clients, against 5).
    pool_size: int = Field(default=2, ge=1, le=100)


class SecretGrant(_Section):
    """What one namespace's manifests may reference. Entries are exact names, or prefixes
    ending in `*` (`ACME_*`, `projects/p/secrets/acme-*`)."""

    env: list[str] = []
    secrets: list[str] = []


class EgressSettings(_Section):
    """Where MCP server URLs and model base URLs may point. Link-local addresses (cloud
    metadata) are always refused unless a CIDR below names them."""

    allowed_schemes: list[str] = ["https"]
    allow_loopback: bool = False
    # RFC 1918, unique-local, carrier-grade NAT and other non-public ranges.
    allow_private: bool = False
    # When non-empty, only these hosts (exact, or `*.example.com`) are allowed.
    allowed_hosts: list[str] = []
    # Addresses allowed even inside a denied range (a VPC's MCP servers, say).
    allowed_cidrs: list[str] = []


class PlatformModelKey(_Section):
    """The deployment's own model key (`apiKeyFrom` absent, or naming this variable): every
    namespace may use it, but it is sent only to these base URLs."""

    env: str = "OPENAI_API_KEY"
    base_urls: list[str] = ["https://api.openai.com/v1"]


class TenancySettings(_Section):
    # namespace -> the secrets its manifests may reference; an operator setting, never a
    # tenant's (a namespace with no entry may reference none).
    secret_grants: dict[str, SecretGrant] = {}
    egress: EgressSettings = EgressSettings()
    platform_model_key: PlatformModelKey = PlatformModelKey()


class Settings(_Section):
    gateway: GatewaySettings = GatewaySettings()
    control_plane: ControlPlaneSettings = Field(
        default=ControlPlaneSettings(), alias="control_plane"
    )
    worker: WorkerSettings = WorkerSettings()
    tenancy: TenancySettings = TenancySettings()


def for_worker(settings: Settings) -> Settings:
    """The settings a `talon worker` process runs with: its pool is `worker.poolSize`."""
    database = settings.control_plane.database.model_copy(
        update={"pool_size": settings.worker.pool_size}
    )
    control_plane = settings.control_plane.model_copy(update={"database": database})
    return settings.model_copy(update={"control_plane": control_plane})


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def env_variables(model: type[BaseModel] = Settings) -> Iterator[tuple[str, str, Any]]:
    """Yield (ENV_VAR, yaml.path, default) for every leaf setting."""

    def walk(m: type[BaseModel], path: list[str]) -> Iterator[tuple[str, str, Any]]:
        for name, field in m.model_fields.items():
            alias = field.alias or name
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                yield from walk(annotation, [*path, alias])
            else:
                parts = [*path, alias]
                yield env_name(".".join(parts)), ".".join(parts), field.default

    yield from walk(model, [])


def env_name(path: str) -> str:
    """`control_plane.scheduler.callbackUrl` -> `TALON_CONTROL_PLANE_SCHEDULER_CALLBACK_URL`."""
    return ENV_PREFIX + "_".join(_snake(part) for part in path.split(".")).upper()


def require_settings(purpose: str, values: Mapping[str, Any]) -> None:
    """Refuse to go on (ConfigError) when a setting `purpose` needs is empty; `values` maps
    each setting's path to its value. The message names the path and its variable."""
    missing = [f"{path} ({env_name(path)})" for path, value in values.items() if not value]
    if missing:
        raise ConfigError(f"{purpose} needs " + " and ".join(missing))


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        node = tree.get(key)
        if not isinstance(node, dict):
            node = {}
            tree[key] = node
        tree = node
    tree[path[-1]] = value


def _json_setting(env: str, value: str) -> Any:
    """A mapping setting from the environment, written as JSON."""
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"{env} must be a JSON object: {exc}") from exc


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings from `path` (or $TALON_CONFIG, or ./talon.yaml if present) and the env."""
    environ = os.environ if environ is None else environ
    candidate = path or environ.get(CONFIG_FILE_ENV)
    raw: dict[str, Any] = {}
    if candidate is None and Path("talon.yaml").is_file():
        candidate = "talon.yaml"
    if candidate is not None:
        try:
            loaded = yaml.safe_load(Path(candidate).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {candidate}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {candidate} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {candidate} must be a mapping at the top level")
        raw = loaded
    for env, dotted, default in env_variables():
        if env in environ:
            value: Any = environ[env]
            if isinstance(default, list):
                value = [item.strip() for item in value.split(",") if item.strip()]
            elif isinstance(default, dict):
                value = _json_setting(env, value)
            _set_path(raw, dotted.split("."), value)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        details = details_from_validation_error(exc)
        summary = "; ".join(f"{d['path']}: {d['message']}" for d in details)
        raise ConfigError(f"invalid configuration: {summary}", details) from exc
