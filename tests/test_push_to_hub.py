"""``pih2t-export --push-to-hub``: the real CLI and huggingface_hub's real client against a local stand-in for the
Hub's HTTP API (tests/hub_standin.py; the network cannot be reached from here): every file of the verified
artifact arrives byte for byte in one commit; a bad repository id or a missing token is refused before the
export, and a refused upload leaves the artifact in place with the command to retry."""

from __future__ import annotations

import pytest

from pih2t_deploy.export.hub import HubError, check_hub_target, push_folder
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


def test_a_refused_upload_keeps_the_artifact_and_the_retry_pushes_it_byte_for_byte(
    hub, digits_artifact, tmp_path, monkeypatch
):
    """A wrong token: exit 2, the artifact in place, the command to retry; the right one with --private: a new
    private repo holding every file of the artifact, byte for byte, in one commit."""
    url, repos = hub
    ckpt, _ = digits_artifact
    out = tmp_path / "export"
    monkeypatch.setenv("HF_TOKEN", "hf_someone_else")
    refused = run_cli("export", "--ckpt", str(ckpt), "--output", str(out), "--push-to-hub", "team/digits")
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pushing to team/digits failed (")
    assert last.endswith(f"the artifact is in {out}; upload it later with: hf upload team/digits {out} .")
    assert (out / "model.onnx").is_file() and (out / "model.json").is_file() and repos == {}

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    done = run_cli("export", "--ckpt", str(ckpt), "--output", str(out), "--force", "--push-to-hub", "team/digits",
                   "--private")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    repo = repos["team/digits"]
    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"model.onnx", "model.json", "README.md"} <= set(written)
    assert repo.private and repo.files == written, "every file of the artifact, byte for byte"
    assert repo.commits == [f"pih2t-export: onnx artifact of {ckpt.name} (digits_net)"]
    assert f"pushed to {url}/team/digits/commit/" in done.stdout


def test_an_existing_repository_gets_a_new_commit(hub, tmp_path, monkeypatch):
    url, repos = hub
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", url)  # read once, when the library loads
    (tmp_path / "labels.txt").write_text("a\nb\n")
    first = push_folder(tmp_path, "team/x", private=False, message="one", log=lambda _m: None)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    second = push_folder(tmp_path, "team/x", private=True, message="two", log=lambda _m: None)
    assert repos["team/x"].commits == ["one", "two"] and first != second
    assert repos["team/x"].files == {"labels.txt": b"a\nb\nc\n"} and not repos["team/x"].private


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
