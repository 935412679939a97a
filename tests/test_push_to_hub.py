"""``pih2t-export --push-to-hub``: the real CLI and huggingface_hub's real client against a local stand-in for the
Hub's HTTP API (tests/hub_standin.py; the network cannot be reached from here): every file of the verified
artifact arrives byte for byte in one commit; a bad repository id or a missing token is refused before the
export, and a refused upload leaves the artifact in place with the command to retry."""

from __future__ import annotations

import pytest

from pih2t_deploy.export.hub import HubError, check_hub_target
from tests.helpers import run_cli
from tests.hub_standin import hub_standin
from tests.servers import running_server

TOKEN = "hf_standin_token"


@pytest.fixture
def hub(monkeypatch):
    """The stand-in Hub, its repositories, and the environment that points huggingface_hub at it."""
    app, repos = hub_standin(TOKEN)
    with running_server(app, wait_ready=False) as (url, _server):
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield url, repos


def test_the_verified_artifact_is_pushed_to_a_new_private_repo_byte_for_byte(hub, digits_artifact, tmp_path):
    url, repos = hub
    ckpt, _ = digits_artifact
    out = tmp_path / "export"

    def written() -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    done = run_cli("export", "--ckpt", str(ckpt), "--output", str(out), "--push-to-hub", "team/digits", "--private")
    assert done.returncode == 0, done.stderr[-2000:]
    repo = repos["team/digits"]
    assert repo.private
    assert {"model.onnx", "model.json", "README.md"} <= set(written())
    assert repo.files == written(), "every file of the artifact, byte for byte"
    assert repo.commits == [f"pih2t-export: onnx artifact of {ckpt.name} (digits_net)"]
    assert f"pushed to {url}/team/digits/commit/" in done.stdout

    again = run_cli("export", "--ckpt", str(ckpt), "--output", str(out), "--force", "--push-to-hub", "team/digits")
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(repo.commits) == 2 and repo.files == written(), "an existing repo gets a new commit"


@pytest.mark.parametrize(
    ("repo_id", "message"),
    [
        ("team/bad name", "--push-to-hub 'team/bad name' is not a repository id: "),
        ("digits", "--push-to-hub 'digits': name the owner too, as in your-name/digits"),
    ],
)
def test_a_repository_id_the_hub_would_refuse_is_refused_here(repo_id, message, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(HubError) as raised:
        check_hub_target(repo_id)
    assert str(raised.value).startswith(message)


def test_without_a_token_nothing_is_exported(hub, digits_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved login either
    out = tmp_path / "export"
    done = run_cli("export", "--ckpt", str(digits_artifact[0]), "--output", str(out), "--push-to-hub", "team/digits")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == "error: --push-to-hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login`"
    assert not out.exists(), "checked before exporting"
    assert hub[1] == {}


def test_a_refused_upload_keeps_the_artifact_and_says_how_to_retry(hub, digits_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_someone_else")
    out = tmp_path / "export"
    done = run_cli("export", "--ckpt", str(digits_artifact[0]), "--output", str(out), "--push-to-hub", "team/digits")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pushing to team/digits failed (")
    assert last.endswith(f"the artifact is in {out}; upload it later with: hf upload team/digits {out} .")
    assert (out / "model.onnx").is_file() and (out / "model.json").is_file()
