"""Hub model IDs (``org/name[@REV]``) against a local stand-in for the Hugging Face Hub.

The fixture serves tiny checkpoints over HTTP on 127.0.0.1 the way the Hub answers the requests
``huggingface_hub`` makes (model info, HEAD/GET/range GET on ``resolve`` URLs, and the error headers it
maps to its exceptions), with ``HF_ENDPOINT`` pointed at it and ``HF_HOME`` in a temp folder, so
huggingface_hub itself does every request. Requests are logged, so the tests can count the downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from surgeon.testing import load_weights, run_cli

REPO = "org/tiny"
MAX_REQUESTS = 2000  # a runaway client fails the test instead of hanging it


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class FakeHub:
    """Repos of files served like the Hub: ``add`` a folder, ``start``, then read ``log``."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.log: list[tuple[str, str, str, str | None]] = []  # (method, repo, filename or "", Range)
        self.server: ThreadingHTTPServer | None = None
        self.ranges = True  # False: answer range requests with the whole file (200), as some servers do

    def add(self, repo_id: str, files: dict[str, bytes] | Path, *, gated: bool = False,
            refs: tuple[str, ...] = ("main",)) -> str:
        if isinstance(files, Path):
            files = {p.name: p.read_bytes() for p in sorted(files.iterdir()) if p.is_file()}
        commit = _sha(repo_id + "".join(sorted(files)))
        self.repos[repo_id] = {"files": files, "commit": commit, "refs": set(refs), "gated": gated}
        return commit

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.hub = self
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def downloads(self, filename: str | None = None) -> dict[str, int] | int:
        """Whole-file GETs per file (range reads of headers are not downloads)."""
        counts: dict[str, int] = {}
        for method, _, name, rng in self.log:
            if method == "GET" and name and rng is None:
                counts[name] = counts.get(name, 0) + 1
        return counts if filename is None else counts.get(filename, 0)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, head: bool, extra: dict | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, b"" if head else body, {"X-Error-Code": code, "X-Error-Message": message,
                                                    "Content-Type": "application/json", **(extra or {})}, head)

    def _serve(self, head: bool) -> None:
        hub: FakeHub = self.server.hub
        parts = urlsplit(self.path).path.split("/")
        if parts[1:3] == ["api", "models"] and len(parts) >= 7 and parts[5] == "revision":
            repo_id, rev, name = f"{unquote(parts[3])}/{unquote(parts[4])}", unquote("/".join(parts[6:])), ""
        elif len(parts) >= 6 and parts[3] == "resolve":
            repo_id, rev, name = f"{unquote(parts[1])}/{unquote(parts[2])}", unquote(parts[4]), unquote("/".join(parts[5:]))
        else:
            return self._send(404, b"not found", head=head)
        hub.log.append((self.command, repo_id, name, self.headers.get("Range")))
        if len(hub.log) > MAX_REQUESTS:
            return self._send(429, b"too many requests", head=head)
        repo = hub.repos.get(repo_id)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found", head)
        if rev not in repo["refs"] and rev != repo["commit"]:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        commit = repo["commit"]
        if not name:  # model info
            body = json.dumps({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                               "gated": "manual" if repo["gated"] else False,
                               "siblings": [{"rfilename": f} for f in sorted(repo["files"])]}).encode()
            return self._send(200, body, {"Content-Type": "application/json"}, head)
        if repo["gated"] and "authorization" not in {k.lower() for k in self.headers}:
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                               "to it and be authenticated to access it. Please log in.", head)
        data = repo["files"].get(name)
        if data is None:
            return self._error(404, "EntryNotFound", f"{name} does not exist on \"{rev}\"", head,
                               {"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and not head and hub.ranges:
            a = int(m[1])
            b = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {a}-{b}/{len(data)}"
            return self._send(206, data[a:b + 1], headers)
        headers["Content-Length"] = str(len(data))
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)


def _point_hub_at(monkeypatch, url: str, home: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


def _offline(monkeypatch) -> None:
    from huggingface_hub import constants

    from surgeon import hub as surgeon_hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    surgeon_hub.clear_cache()  # a new process: nothing resolved yet


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    from surgeon import hub as surgeon_hub

    hub = FakeHub()
    hub.start()
    hub.home = tmp_path / "hf-home"
    _point_hub_at(monkeypatch, hub.url, hub.home)
    surgeon_hub.clear_cache()
    yield hub
    hub.stop()
    surgeon_hub.clear_cache()


def _weights_equal(a: Path, b: Path) -> None:
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape and bool((wa[k] == wb[k]).all()), k


def _files_for(folder: Path, wanted) -> set[str]:
    """The weight files of ``folder`` holding a tensor for which ``wanted(name)`` is true."""
    wm = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    return {f for t, f in wm.items() if wanted(t)}


def _layer(name: str) -> int | None:
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return int(m[1]) if m else None


# ---------------------------------------------------------------------------------------------- reading
def test_inspect_reads_headers_only_and_matches_the_local_folder(fake_hub, tiny_sharded):
    from surgeon.commands.inspect import inspect_checkpoint

    commit = fake_hub.add(REPO, tiny_sharded)
    remote, local = inspect_checkpoint(REPO), inspect_checkpoint(tiny_sharded)
    assert remote.path == f"{REPO}@{commit}"
    assert {**remote.to_dict(), "path": None} == {**local.to_dict(), "path": None}
    shards = [f for f in fake_hub.repos[REPO]["files"] if f.endswith(".safetensors")]
    assert len(shards) >= 3 and not any(fake_hub.downloads(f) for f in shards)  # range reads of the headers only
    assert fake_hub.downloads("config.json") == 1 and fake_hub.downloads("model.safetensors.index.json") == 1
    r = run_cli("inspect", REPO, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["num_parameters"] == local.num_parameters


def test_without_range_requests_inspect_downloads_the_shards_and_says_so(fake_hub, tiny_sharded, caplog):
    from surgeon.commands.inspect import inspect_checkpoint

    fake_hub.ranges = False
    fake_hub.add(REPO, tiny_sharded)
    with caplog.at_level("WARNING", logger="surgeon.hub"):
        remote = inspect_checkpoint(REPO)
    assert {**remote.to_dict(), "path": None} == {**inspect_checkpoint(tiny_sharded).to_dict(), "path": None}
    shards = [f for f in fake_hub.repos[REPO]["files"] if f.endswith(".safetensors")]
    assert all(fake_hub.downloads(f) == 1 for f in shards)
    assert "does not serve range requests" in caplog.text


def test_prune_downloads_only_the_shards_it_reads_and_records_the_hub_source(fake_hub, tiny_sharded, tmp_path,
                                                                             monkeypatch):
    commit = fake_hub.add(REPO, tiny_sharded)
    args = ["--start", "1", "--n", "2"]
    r = run_cli("prune", REPO, *args, "-o", tmp_path / "hub")
    assert r.exit_code == 0, r.output
    assert run_cli("prune", tiny_sharded, *args, "-o", tmp_path / "local").exit_code == 0
    _weights_equal(tmp_path / "hub", tmp_path / "local")
    assert json.loads((tmp_path / "hub" / "config.json").read_text()) == json.loads(
        (tmp_path / "local" / "config.json").read_text())

    read = _files_for(tiny_sharded, lambda t: _layer(t) not in (1, 2))
    skipped = _files_for(tiny_sharded, lambda t: True) - read
    assert skipped, "the tiny model's shards should hold some dropped layers alone"
    got = fake_hub.downloads()
    assert {f for f in got if f.endswith(".safetensors")} == read and all(got[f] == 1 for f in read)
    assert not any(name.endswith((".bin", ".pt", ".pth")) for _, _, name, _ in fake_hub.log)

    source = f"{REPO}@{commit}"
    prov = json.loads((tmp_path / "hub" / "surgeon_provenance.json").read_text())["operations"]
    assert prov[-1]["source"] == source and prov[-1]["operation"] == "prune"
    manifest = json.loads((tmp_path / "hub" / "sorted_manifest.json").read_text())
    assert manifest["provenance"]["operations"][-1]["source"] == source
    assert str(fake_hub.home) not in json.dumps(prov) + json.dumps(manifest)  # never a cache path

    # a second run with HF_HUB_OFFLINE=1 uses the cache: no request, the shards it never read included
    n = len(fake_hub.log)
    fake_hub.stop()
    _offline(monkeypatch)
    r = run_cli("prune", REPO, *args, "-o", tmp_path / "offline")
    assert r.exit_code == 0, r.output
    assert len(fake_hub.log) == n
    _weights_equal(tmp_path / "offline", tmp_path / "local")
    assert run_cli("inspect", REPO, "--json").exit_code == 0
    # the recorded source reruns the same revision (offline too: the same shards)
    assert run_cli("prune", source, *args, "-o", tmp_path / "again").exit_code == 0
    _weights_equal(tmp_path / "again", tmp_path / "local")
    # a shard no run has read is not in the cache: offline, reading it is a one-line error
    r = run_cli("extract", REPO, "--depth", "3", "-o", tmp_path / "needs-more")  # layers 1, 2 never read
    assert r.exit_code != 0 and "HF_HUB_OFFLINE" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_extract_and_surgeon_load_read_only_their_exit(fake_hub, tiny_sharded, tmp_path):
    import surgeon

    fake_hub.add(REPO, tiny_sharded)
    r = run_cli("extract", REPO, "--depth", "2", "-o", tmp_path / "hub")
    assert r.exit_code == 0, r.output
    assert run_cli("extract", tiny_sharded, "--depth", "2", "-o", tmp_path / "local").exit_code == 0
    _weights_equal(tmp_path / "hub", tmp_path / "local")
    read = _files_for(tiny_sharded, lambda t: _layer(t) is None or _layer(t) < 2)
    assert {f for f in fake_hub.downloads() if f.endswith(".safetensors")} == read

    m_hub, m_local = surgeon.load(REPO, 2), surgeon.load(tiny_sharded, 2)
    a, b = m_hub.state_dict(), m_local.state_dict()
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert {f for f in fake_hub.downloads() if f.endswith(".safetensors")} == read  # nothing more fetched


def test_view_links_only_the_exits_shards(fake_hub, tiny_models, tmp_path):
    sorted_dir = tmp_path / "sorted"  # exit-aligned shards: depth-2 ends at a file boundary
    assert run_cli("manifest", tiny_models["llama"], "--exits", "2,4", "-o", sorted_dir).exit_code == 0
    commit = fake_hub.add("org/sorted", sorted_dir)
    r = run_cli("view", "org/sorted", "--exit", "depth-2", "-o", tmp_path / "view", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["mode"] == "link", out
    linked = set(out["linked"])
    assert linked and {f for f in fake_hub.downloads() if f.endswith(".safetensors")} == linked
    assert len(linked) < len([f for f in fake_hub.repos["org/sorted"]["files"] if f.endswith(".safetensors")])
    manifest = json.loads((tmp_path / "view" / "sorted_manifest.json").read_text())
    assert manifest["view"]["source"] == f"org/sorted@{commit}"
    assert run_cli("view", sorted_dir, "--exit", "depth-2", "-o", tmp_path / "local-view").exit_code == 0
    _weights_equal(tmp_path / "view", tmp_path / "local-view")
    # manifest show / validate read the sidecar and headers; only --verify (file hashes) downloads the rest
    r = run_cli("manifest", "show", "org/sorted")
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)["exits"]) == set(json.loads(run_cli("manifest", "show", sorted_dir).stdout)["exits"])
    assert run_cli("manifest", "validate", "org/sorted").exit_code == 0
    assert {f for f in fake_hub.downloads() if f.endswith(".safetensors")} == linked
    r = run_cli("manifest", "validate", "org/sorted", "--verify")
    assert r.exit_code == 0, r.output
    assert all(fake_hub.downloads(f) == 1 for f in fake_hub.repos["org/sorted"]["files"])
    r = run_cli("manifest", "org/sorted", "--exits", "2", "--in-place")
    assert r.exit_code == 2 and "does not write into the Hugging Face cache" in r.stderr


def test_analyze_and_eval_match_the_local_folder(fake_hub, tiny_models, tmp_path):
    from surgeon.analyze.compute import compute_analysis

    model = tiny_models["llama"]  # one model.safetensors: the whole snapshot is downloaded for transformers
    commit = fake_hub.add(REPO, model)
    kw = dict(samples=3, seq_len=16, batch_size=2)
    a, b = compute_analysis(REPO, "builtin:sotu", **kw), compute_analysis(model, "builtin:sotu", **kw)
    assert a.to_dict()["angular_distance"] == b.to_dict()["angular_distance"]
    assert a.to_dict()["model"] == f"{REPO}@{commit}"
    common = ["--data", "builtin:sotu", "--samples", "3", "--seq-len", "16", "--json"]
    r_hub, r_local = run_cli("eval", REPO, "--exit", "2,6", *common), run_cli("eval", model, "--exit", "2,6", *common)
    assert r_hub.exit_code == 0, r_hub.output
    assert [q["loss"] for q in json.loads(r_hub.stdout)["exits"]] == [q["loss"] for q in json.loads(r_local.stdout)["exits"]]
    assert fake_hub.downloads("model.safetensors") == 1

    from surgeon.runtime import SortedModel

    sm = SortedModel.from_pretrained(REPO)  # the runtime takes a hub ID too (from the cache now)
    ids = sm.encode("the river")
    assert sm.generate(ids, 4).tokens == SortedModel.from_pretrained(model).generate(ids, 4).tokens
    assert fake_hub.downloads("model.safetensors") == 1


def test_revision_option_and_at_syntax(fake_hub, tiny_models, tmp_path, monkeypatch):
    commit = fake_hub.add(REPO, tiny_models["llama"], refs=("main", "v1"))
    for args in (["--revision", "v1"], []):
        target = REPO if args else f"{REPO}@v1"
        r = run_cli("inspect", target, *args, "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["path"] == f"{REPO}@{commit}"
    r = run_cli("inspect", f"{REPO}@v1", "--revision", "v1")
    assert r.exit_code == 2 and "either --revision REV or org/name@REV" in r.stderr
    r = run_cli("inspect", tiny_models["llama"], "--revision", "v1")
    assert r.exit_code == 2 and "is a local folder" in r.stderr


def test_a_local_folder_of_that_name_wins(fake_hub, tiny_models, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(tiny_models["llama"], tmp_path / "org" / "tiny")
    monkeypatch.chdir(tmp_path)
    r = run_cli("inspect", REPO, "--json")
    assert r.exit_code == 0, r.output
    assert fake_hub.log == []


# ---------------------------------------------------------------------------------------------- errors
def _one_line_error(r, *needles: str) -> None:
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_errors_are_one_line_with_the_fix(fake_hub, tiny_models, tmp_path, monkeypatch):
    llama = tiny_models["llama"]
    fake_hub.add(REPO, llama)
    fake_hub.add("org/pickled", {"config.json": (llama / "config.json").read_bytes(), "pytorch_model.bin": b"\x80\x04"})
    fake_hub.add("org/gated", llama, gated=True)
    _one_line_error(run_cli("inspect", "org/missing"), "org/missing is neither a local folder nor a model", "HF_TOKEN")
    _one_line_error(run_cli("prune", "org/pickled", "--start", "1", "--n", "2", "-o", tmp_path / "o"),
                    "pickle", "does not unpickle")
    assert not any(name == "pytorch_model.bin" for _, _, name, _ in fake_hub.log)
    _one_line_error(run_cli("inspect", f"{REPO}@nope"), "no revision 'nope'", "--revision")
    _one_line_error(run_cli("inspect", "org/gated"), "gated", "HF_TOKEN", "huggingface-cli login")
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_with_access")  # sent with every request, range reads too
    assert run_cli("inspect", "org/gated", "--json").exit_code == 0
    monkeypatch.delenv("HF_TOKEN")
    _offline(monkeypatch)
    _one_line_error(run_cli("inspect", "org/never-fetched"), "HF_HUB_OFFLINE", "not in the cache", "local folder")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    fake_hub.stop()  # nothing listens on the port any more: no network
    _one_line_error(run_cli("inspect", REPO), "cannot reach", "HF_HUB_OFFLINE=1", "local folder")


def test_the_cli_reads_hf_endpoint_and_hf_home_from_the_environment(fake_hub, tiny_models, tmp_path):
    """A fresh process configured only by the variables users set (huggingface_hub reads them at import)."""
    fake_hub.add(REPO, tiny_models["llama"])
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_HOME": str(tmp_path / "env-home"), "HF_HUB_OFFLINE": "0"}
    env.pop("HF_TOKEN", None)
    env.pop("HF_HUB_CACHE", None)
    code = "from surgeon.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", code, "inspect", REPO, "--json"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["num_layers"] == 6
    assert (tmp_path / "env-home" / "hub" / "models--org--tiny").is_dir()
