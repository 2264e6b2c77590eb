"""talon.yaml loading and environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from talon.config import env_variables, for_worker, load_settings
from talon.errors import ConfigError

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]


def test_repo_talon_yaml_is_the_local_stack() -> None:
    settings = load_settings(ROOT / "talon.yaml", environ={})
    assert settings.control_plane.message_broker.driver == "postgres"
    assert settings.control_plane.scheduler.backend == "postgres"
    assert settings.worker.mcp_routes == ["/mcp/talon-ops"]
    assert settings.gateway.grpc_addr == "0.0.0.0:50051"


def test_seed_shape_parses(tmp_path: Path) -> None:
    config = tmp_path / "talon.yaml"
    config.write_text(
        "gateway:\n  grpcAddr: 0.0.0.0:50051\n"
        "control_plane:\n  database:\n    driver: postgres\n"
        "  message_broker:\n    driver: gcp_pubsub\n  scheduler:\n    backend: cloud_tasks\n"
        "worker:\n  pullMode: true\n  mcpRoutes:\n    - /mcp/talon-ops\n"
    )
    settings = load_settings(config, environ={})
    assert settings.control_plane.message_broker.driver == "gcp_pubsub"
    assert settings.control_plane.scheduler.backend == "cloud_tasks"
    assert settings.worker.pull_mode is True


def test_environment_overrides_file(tmp_path: Path) -> None:
    config = tmp_path / "talon.yaml"
    config.write_text("control_plane:\n  database:\n    url: postgresql://file/db\n")
    settings = load_settings(
        config,
        environ={
            "TALON_CONTROL_PLANE_DATABASE_URL": "postgresql://env/db",
            "TALON_CONTROL_PLANE_DATABASE_POOL_SIZE": "9",
            "TALON_WORKER_PULL_MODE": "false",
            "TALON_WORKER_MCP_ROUTES": "/mcp/a, /mcp/b",
            "TALON_CONTROL_PLANE_MESSAGE_BROKER_DRIVER": "gcp_pubsub",
        },
    )
    assert settings.control_plane.database.url == "postgresql://env/db"
    assert settings.control_plane.database.pool_size == 9
    assert settings.worker.pull_mode is False
    assert settings.worker.mcp_routes == ["/mcp/a", "/mcp/b"]
    assert settings.control_plane.message_broker.driver == "gcp_pubsub"


def test_a_worker_process_runs_on_its_own_pool_size() -> None:
    """`talon worker` takes worker.poolSize (default 2) for its pool; the other processes keep
    control_plane.database.poolSize, and everything else is the same settings."""
    settings = load_settings(environ={"TALON_CONTROL_PLANE_DATABASE_POOL_SIZE": "9"})
    worker = for_worker(settings)
    assert worker.control_plane.database.pool_size == 2
    assert settings.control_plane.database.pool_size == 9  # not changed in place
    assert worker.control_plane.database.url == settings.control_plane.database.url
    assert worker.worker == settings.worker
    assert worker.gateway == settings.gateway
    tuned = load_settings(environ={"TALON_WORKER_POOL_SIZE": "3"})
    assert for_worker(tuned).control_plane.database.pool_size == 3
    with pytest.raises(ConfigError, match="poolSize"):
        load_settings(environ={"TALON_WORKER_POOL_SIZE": "0"})


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "custom.yaml"
    config.write_text("gateway:\n  maxBodyBytes: 4096\n")
    settings = load_settings(environ={"TALON_CONFIG": str(config)})
    assert settings.gateway.max_body_bytes == 4096


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("control_plane:\n  database:\n    colour: blue\n", {}, "control_plane.database.colour"),
        ("control_plane:\n  message_broker:\n    driver: kafka\n", {}, "message_broker.driver"),
        ("gateway: [1, 2]\n", {}, "gateway"),
        ("gateway: {\n", {}, "not valid YAML"),
        ("", {"TALON_CONTROL_PLANE_DATABASE_POOL_SIZE": "many"}, "poolSize"),
        # A URL where a Host header value belongs, and an empty list (protection off).
        (
            "",
            {"TALON_GATEWAY_OPS_MCP_ALLOWED_HOSTS": "https://ops.example.com"},
            "gateway.opsMcpAllowedHosts",
        ),
        ("gateway:\n  opsMcpAllowedHosts: []\n", {}, "gateway.opsMcpAllowedHosts"),
    ],
)
def test_bad_configuration_names_the_setting(
    tmp_path: Path, text: str, env: dict[str, str], needle: str
) -> None:
    config = tmp_path / "talon.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ=env)
    assert needle in str(exc.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_every_setting_has_an_environment_variable() -> None:
    names = {env: path for env, path, _ in env_variables()}
    assert names["TALON_CONTROL_PLANE_DATABASE_URL"] == "control_plane.database.url"
    assert names["TALON_CONTROL_PLANE_DATABASE_INSTANCE_CONNECTION_NAME"] == (
        "control_plane.database.instanceConnectionName"
    )
    assert names["TALON_GATEWAY_GRPC_ADDR"] == "gateway.grpcAddr"
    assert names["TALON_CONTROL_PLANE_SCHEDULER_BACKEND"] == "control_plane.scheduler.backend"
    assert len(names) == len(set(names))
