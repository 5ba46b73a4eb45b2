"""`sotto dashboard`: the command it runs, and a real headless Streamlit server answering."""

import httpx
import pytest
from browser import dashboard_server

from coordinator import db
from dashboard import launch
from dashboard import queries as q
from sotto import cli


def test_cli_runs_streamlit_headless_on_loopback_with_the_url_in_the_env(monkeypatch):
    calls = []
    monkeypatch.setattr(launch.subprocess, "call", lambda argv, env: calls.append((argv, env)) or 0)
    cli.main(["dashboard", "--db-url", "sqlite:////tmp/x.sqlite3", "--port", "8599"])
    ((argv, env),) = calls
    assert argv[1:5] == ["-m", "streamlit", "run", str(launch.APP)]
    opts = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert opts == {
        "--server.headless": "true",
        "--server.address": "127.0.0.1",
        "--server.port": "8599",
        "--browser.gatherUsageStats": "false",
    }
    assert env[q.ENV_URL] == "sqlite:////tmp/x.sqlite3"
    assert "sqlite" not in " ".join(argv)  # the URL (maybe with a password) is not on argv


def test_cli_defaults_and_exit_code(monkeypatch):
    calls = []
    monkeypatch.setenv(q.ENV_URL, "sqlite:////tmp/from-env.sqlite3")
    monkeypatch.setattr(launch.subprocess, "call", lambda argv, env: calls.append((argv, env)) or 3)
    with pytest.raises(SystemExit) as e:
        cli.main(["dashboard"])
    assert e.value.code == 3
    argv, env = calls[0]
    assert argv[argv.index("--server.port") + 1] == "8501"
    assert env[q.ENV_URL] == "sqlite:////tmp/from-env.sqlite3"  # the env var passes through


def test_the_launched_server_answers_on_loopback(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    db.Database(url).close()
    with dashboard_server(url, start_timeout=30) as served:  # `sotto dashboard`'s own command
        assert httpx.get(f"{served}/_stcore/health", timeout=5).text == "ok"
