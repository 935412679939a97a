"""A local stand-in for the part of the Hugging Face Hub's HTTP API that ``HfApi.create_repo`` and
``HfApi.upload_folder`` use (the network cannot be reached from here): repository creation, README metadata
validation, the preupload query and the NDJSON commit. It keeps what was committed in memory, checks the
bearer token, and answers every file "regular" (sent inline, base64) where the real Hub sends binary files
through LFS/Xet storage, which no local server here can stand in for."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class Repo:
    """One repository: its files at the head, its visibility and its commits' messages."""

    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)


def hub_standin(token: str) -> tuple[FastAPI, dict[str, Repo]]:
    """The app, and the repositories it holds (by ``namespace/name``), for the test to inspect."""
    app = FastAPI()
    repos: dict[str, Repo] = {}

    def refused(request: Request) -> JSONResponse | None:
        if request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"error": "Invalid credentials in Authorization header"}, status_code=401)
        return None

    @app.post("/api/repos/create")
    async def create(request: Request):
        if (answer := refused(request)) is not None:
            return answer
        body = await request.json()
        repo_id = f"{body['organization']}/{body['name']}"
        url = f"{str(request.base_url).rstrip('/')}/{repo_id}"
        if repo_id in repos:  # the Hub's answer names the existing repo's URL, which exist_ok=True reads
            return JSONResponse({"error": "You already created this model repo", "url": url}, status_code=409)
        repos[repo_id] = Repo(private=body.get("visibility") == "private")
        return {"url": url}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request):
        content = (await request.json())["content"]
        front = content.split("---")[1] if content.startswith("---") else ""
        try:
            yaml.safe_load(front)
        except yaml.YAMLError as exc:
            return JSONResponse({"errors": [{"message": str(exc)}]}, status_code=400)
        return {"errors": [], "warnings": []}

    @app.post("/api/models/{namespace}/{name}/preupload/{revision}")
    async def preupload(namespace: str, name: str, revision: str, request: Request):
        if (answer := refused(request)) is not None:
            return answer
        if f"{namespace}/{name}" not in repos:
            return JSONResponse({"error": "Repository not found"}, status_code=404)
        files = (await request.json())["files"]
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

    @app.post("/api/models/{namespace}/{name}/commit/{revision}")
    async def commit(namespace: str, name: str, revision: str, request: Request):
        if (answer := refused(request)) is not None:
            return answer
        repo = repos.get(f"{namespace}/{name}")
        if repo is None:
            return JSONResponse({"error": "Repository not found"}, status_code=404)
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        for line in lines:
            if line["key"] == "header":
                repo.commits.append(line["value"]["summary"])
            elif line["key"] == "file" and line["value"]["encoding"] == "base64":
                repo.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            else:
                return JSONResponse({"error": f"unsupported operation {line['key']}"}, status_code=400)
        oid = hashlib.sha1(json.dumps(sorted(repo.files)).encode() + str(len(repo.commits)).encode()).hexdigest()
        base = str(request.base_url).rstrip("/")
        return {"commitUrl": f"{base}/{namespace}/{name}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    return app, repos
