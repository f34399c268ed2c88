"""The public surface adapter authors rely on: changing it is a breaking change."""

import ast
import gc
from collections.abc import Iterator
from pathlib import Path

import gateway

EXPECTED = {
    "Adapter",
    "AdapterConfig",
    "Channel",
    "ChannelKind",
    "Control",
    "ControlKind",
    "ControllableAdapter",
    "ControlState",
    "SWITCH",
    "Duration",
    "PollingAdapter",
    "PushAdapter",
    "Reading",
    "Unit",
    "Backoff",
    "parse_timestamp",
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


def _gateway_names(tree: ast.Module) -> Iterator[tuple[int, str, str]]:
    """(line, module, name) for each name a module takes from the gateway package."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gateway":
            for alias in node.names:
                yield node.lineno, node.module or "", alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gateway."):
                    yield node.lineno, alias.name, "*"  # a module, not a name
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "gateway"
        ):
            yield node.lineno, "gateway", node.attr  # gateway.X after ``import gateway``


def _parse(source: str) -> ast.Module:
    # CPython 3.11.7 can raise "SystemError: AST constructor recursion depth mismatch" when
    # the garbage collector runs finalizers (earlier tests' sockets) while the AST is built
    # (gh-106905, fixed in 3.11.8): collect first, and not during.
    gc.collect()
    gc.disable()
    try:
        return ast.parse(source)
    finally:
        gc.enable()


def _adapter_modules() -> Iterator[tuple[str, ast.Module]]:
    root = Path(__file__).resolve().parents[1] / "adapters"
    for path in sorted(root.rglob("*.py")):
        yield str(path.relative_to(root.parent)), _parse(path.read_text())


def test_built_in_adapters_use_only_the_public_names() -> None:
    """Every name a built-in adapter takes from the gateway is in ``gateway.__all__``,
    imported from ``gateway`` itself: an adapter is written as a third party would."""
    public = set(gateway.__all__)
    wrong = [
        f"{file}:{line}: {module}.{name}"
        for file, tree in _adapter_modules()
        for line, module, name in _gateway_names(tree)
        if name not in public or module != "gateway"
    ]
    assert wrong == [], "adapters use names outside gateway.__all__ (or not from gateway)"


def test_the_name_guard_sees_each_way_of_reaching_in() -> None:
    tree = _parse(
        "import gateway\n"
        "import gateway.store.database\n"
        "from gateway import Channel, Backoff\n"
        "from gateway.plugin import Reading\n"
        "from gateway.timeutil import format_utc\n"
        "x = gateway.wire\n"
    )
    found = sorted((m, n) for _, m, n in _gateway_names(tree))
    assert found == [
        ("gateway", "Backoff"),
        ("gateway", "Channel"),
        ("gateway", "wire"),
        ("gateway.plugin", "Reading"),
        ("gateway.store.database", "*"),
        ("gateway.timeutil", "format_utc"),
    ]
