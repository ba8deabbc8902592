"""pgjdbc (Debian's libpostgresql-jdbc-java) directly and through pgveil. The
scenarios live in tests/drivers/java/DriverCheck.java; one JVM per target runs
them all, and each scenario is reported as its own test."""

import json
import subprocess

import pytest

SCENARIOS = ["basic", "binary", "transaction", "error", "copy", "notify", "cancel", "batch", "large",
             "params"]

_results = {}


def java_program(classpath, target, argv, scenarios, timeout=300, **env):
    """Runs `java <argv> <scenarios>` (a program of tests/drivers/java) in one JVM. Returns
    ({scenario: (status, detail)}, {name: value of each "DATA <name> <json>" line})."""
    res = subprocess.run(["java", "-Xmx512m", "-cp", classpath] + argv + scenarios,
                         capture_output=True, text=True, timeout=timeout, env=target.env(**env))
    results, data = {}, {}
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            _, name, status, detail = (line.split(" ", 3) + [""])[:4]
            results[name] = (status, detail.replace(" | ", "\n"))
        elif line.startswith("DATA "):
            _, name, value = line.split(" ", 2)
            data[name] = json.loads(value)
    for name in scenarios:
        results.setdefault(name, ("FAIL", f"no result (exit {res.returncode})\nstdout:\n{res.stdout}\n"
                                          f"stderr:\n{res.stderr}"))
    return results, data


def run_java(classpath, target, scenarios, timeout=300, **env):
    """DriverCheck's scenarios: {scenario: (status, detail)}."""
    return java_program(classpath, target, ["DriverCheck"], scenarios, timeout, **env)[0]


@pytest.fixture
def jdbc_results(java_driver, target):
    key = (target.name, target.port)
    if key not in _results:
        _results[key] = run_java(java_driver, target, SCENARIOS)
    return _results[key]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_jdbc(scenario, jdbc_results):
    status, detail = jdbc_results[scenario]
    assert status == "PASS", f"JDBC scenario {scenario} failed:\n{detail}"
