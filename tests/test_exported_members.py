"""The public surface adapter authors rely on: changing it is a breaking change."""

import gateway

EXPECTED = {
    "Adapter",
    "AdapterConfig",
    "Channel",
    "ChannelKind",
    "Duration",
    "PollingAdapter",
    "PushAdapter",
    "Reading",
    "Unit",
    "Backoff",
    "AdapterError",
    "AdapterLoadError",
    "AdapterReadError",
    "ConfigError",
    "GatewayError",
}


def test_public_names_are_exactly_these() -> None:
    assert set(gateway.__all__) == EXPECTED
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None


def test_built_in_adapters_use_only_the_public_api() -> None:
    import ast
    from pathlib import Path

    allowed = {
        "gateway",
        "gateway.backoff",
        "gateway.plugin",
        "gateway.errors",
        "gateway.timeutil",
    }
    root = Path(__file__).resolve().parents[1] / "adapters"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] == "gateway"
            ):
                assert node.module in allowed, f"{path.name} imports {node.module}"
