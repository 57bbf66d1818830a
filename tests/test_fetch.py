"""Tests of `s3rec-data` (s3rec_jax/data/fetch.py) against local mirrors of small fake files."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import pathlib
import socket
import threading
from typing import Iterator

import pytest

from s3rec_jax.data import fetch

NAMES = ("LastFM", "Beauty", "Toys_and_Games", "Sports_and_Outdoors", "Yelp")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
  """No real cache folder, mirror or proxy leaks into a test."""
  for var in (fetch.DATA_ENV, fetch.MIRROR_ENV, "XDG_CACHE_HOME"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  # A proxy from the environment must not be asked for 127.0.0.1.
  monkeypatch.setenv("no_proxy", "*")
  monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> pathlib.Path:
  """A folder holding small fake files for the five datasets, pinned in place of the real ones."""
  folder = tmp_path / "mirror"
  folder.mkdir()
  table = {}
  for i, dataset in enumerate(NAMES):
    files = [f"{dataset}.txt", f"{dataset}_item2attributes.json"]
    if i < 2:
      files.append(f"{dataset}_sample.txt")
    table[dataset] = {}
    for j, name in enumerate(files):
      content = f"{dataset} {name} {j}\n".encode() * (50 + 7 * j)
      (folder / name).write_bytes(content)
      table[dataset][name] = fetch.FileSpec(len(content), hashlib.sha256(content).hexdigest())
  monkeypatch.setattr(fetch, "PINNED", table)
  return folder


@contextlib.contextmanager
def _serve(handler) -> Iterator[str]:
  """An HTTP server on 127.0.0.1 (a free port) in a thread; yields its base URL."""
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  server.daemon_threads = True
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}/data/"
  finally:
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
  """Serves a folder under /data/, without logging each request."""

  def translate_path(self, path):
    return super().translate_path(path.removeprefix("/data"))

  def log_message(self, *args):
    pass


@pytest.fixture
def http_mirror(mirror) -> Iterator[str]:
  with _serve(functools.partial(_QuietFiles, directory=str(mirror))) as url:
    yield url


@pytest.fixture(params=["file", "http"])
def any_mirror(request, mirror) -> str:
  """The same mirror as a file:// URL and over HTTP."""
  if request.param == "file":
    return mirror.as_uri() + "/"
  return request.getfixturevalue("http_mirror")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
  code = fetch.main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def _listing(folder: pathlib.Path) -> set[str]:
  return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_fetch_one_dataset(capsys, tmp_path, any_mirror):
  data = tmp_path / "data"
  code, out, err = _run(capsys, "fetch", "LastFM", "--mirror", any_mirror, "--data_dir", str(data))
  assert (code, err) == (0, "")
  assert _listing(data) == set(fetch.PINNED["LastFM"])
  for name, spec in fetch.PINNED["LastFM"].items():
    assert fetch.file_status(data / name, spec) == "ok"
  assert out.count("sha256 verified") == 3

  # Present and verified: nothing is downloaded again.
  code, out, err = _run(capsys, "fetch", "LastFM", "--mirror", "file:///nonexistent/",
                        "--data_dir", str(data))
  assert code == 0
  assert out.count("ok, already there") == 3 and "downloading" not in out


def test_fetch_all_from_environment(capsys, tmp_path, monkeypatch, http_mirror):
  data = tmp_path / "data"
  monkeypatch.setenv(fetch.MIRROR_ENV, http_mirror)
  monkeypatch.setenv(fetch.DATA_ENV, str(data))
  assert _run(capsys, "fetch", "--all")[0] == 0
  assert _listing(data) == {name for files in fetch.PINNED.values() for name in files}
  code, out, _ = _run(capsys, "verify", "--all")
  assert code == 0 and out.count("ok, verified") == len(_listing(data))
  code, out, _ = _run(capsys, "list")
  assert code == 0 and "missing" not in out and all(f"{name}:" in out for name in NAMES)


def test_local_folder_as_mirror_and_redownload_of_a_bad_copy(capsys, tmp_path, mirror):
  data = tmp_path / "data"
  data.mkdir()
  spec = fetch.PINNED["Yelp"]["Yelp.txt"]
  (data / "Yelp.txt").write_bytes(b"x" * spec.size)  # right size, wrong content
  code, out, _ = _run(capsys, "fetch", "Yelp", "--mirror", str(mirror), "--data_dir", str(data))
  assert code == 0 and "wrong sha256" in out
  assert fetch.file_status(data / "Yelp.txt", spec) == "ok"


def test_corrupted_file_on_mirror_leaves_nothing(capsys, tmp_path, mirror, any_mirror):
  bad = "LastFM_item2attributes.json"
  content = bytearray((mirror / bad).read_bytes())
  content[10] ^= 1  # same size, different bytes
  (mirror / bad).write_bytes(bytes(content))
  data = tmp_path / "data"
  code, out, err = _run(capsys, "fetch", "LastFM", "--mirror", any_mirror, "--data_dir", str(data))
  assert code == 2
  assert len(err.splitlines()) == 1 and "Traceback" not in err
  assert err.startswith("s3rec-data: ") and bad in err and "checksum mismatch" in err
  assert fetch.PINNED["LastFM"][bad].sha256 in err
  assert hashlib.sha256(bytes(content)).hexdigest() in err
  # The file before it was fetched; the corrupt one is nowhere, not even as a temporary file.
  assert _listing(data) == {"LastFM.txt"}


def test_larger_file_on_mirror_is_refused(capsys, tmp_path, mirror, any_mirror):
  (mirror / "Beauty.txt").write_bytes((mirror / "Beauty.txt").read_bytes() + b"more\n")
  data = tmp_path / "data"
  code, _, err = _run(capsys, "fetch", "Beauty", "--mirror", any_mirror, "--data_dir", str(data))
  assert code == 2 and "Beauty.txt" in err and len(err.splitlines()) == 1
  assert _listing(data) == set()


def _truncating_handler(announce_length: bool):
  class Handler(http.server.BaseHTTPRequestHandler):
    """Sends half of a 4000-byte body, then closes the connection."""

    def do_GET(self):
      self.send_response(200)
      if announce_length:
        self.send_header("Content-Length", "4000")
      self.end_headers()
      self.wfile.write(b"1 2 3\n" * 300)
      self.wfile.flush()
      self.close_connection = True

    def log_message(self, *args):
      pass

  return Handler


@pytest.mark.parametrize("announce_length", [True, False])
def test_interrupted_download_leaves_nothing(capsys, tmp_path, mirror, announce_length):
  data = tmp_path / "data"
  with _serve(_truncating_handler(announce_length)) as url:
    code, _, err = _run(capsys, "fetch", "Toys_and_Games", "--mirror", url,
                        "--data_dir", str(data))
  assert code == 2
  assert len(err.splitlines()) == 1 and "Traceback" not in err
  assert url + "Toys_and_Games.txt" in err
  assert ("cut short" if announce_length else "checksum mismatch") in err
  assert _listing(data) == set()


def test_unreachable_mirror_is_one_line(capsys, tmp_path, mirror):
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}/data/"
  code, _, err = _run(capsys, "fetch", "Yelp", "--mirror", url, "--data_dir", str(tmp_path / "d"))
  assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
  assert f"cannot download {url}Yelp.txt" in err
  assert _listing(tmp_path / "d") == set()


def test_missing_file_on_mirror(capsys, tmp_path, mirror, any_mirror):
  (mirror / "Yelp_item2attributes.json").unlink()
  code, _, err = _run(capsys, "fetch", "Yelp", "--mirror", any_mirror,
                      "--data_dir", str(tmp_path / "d"))
  assert code == 2 and len(err.splitlines()) == 1
  assert "cannot download" in err and "Yelp_item2attributes.json" in err
  assert _listing(tmp_path / "d") == {"Yelp.txt"}


def test_timeout(capsys, tmp_path, mirror):
  release = threading.Event()

  class Silent(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      release.wait(5)

    def log_message(self, *args):
      pass

  with _serve(Silent) as url:
    try:
      code, _, err = _run(capsys, "fetch", "Yelp", "--mirror", url, "--timeout", "0.2",
                          "--data_dir", str(tmp_path / "d"))
    finally:
      release.set()
  assert code == 2 and "timed out" in err and url in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, expected", [
    (["fetch", "lastfm"], "did you mean LastFM?"),
    (["fetch", "Beuty"], "did you mean Beauty?"),
    (["verify", "Toys"], "did you mean Toys_and_Games?"),
    (["fetch", "MovieLens"], "known: LastFM, Beauty"),
    (["fetch"], "--all"),
    (["fetch", "Yelp", "--all"], "not both"),
])
def test_user_errors(capsys, tmp_path, mirror, argv, expected):
  code, _, err = _run(capsys, *argv, "--data_dir", str(tmp_path / "d"))
  assert code == 2 and expected in err and err.startswith("s3rec-data: ")
  assert len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, expected", [
    (["download"], "unknown command 'download'"),
    ([], "name a command"),
    (["path", "--mirror", "x"], "--mirror: not used with `s3rec-data path`"),
    (["list", "--data_dri", "x"], "did you mean --data_dir?"),
    (["path", "extra"], "unexpected argument 'extra'"),
])
def test_bad_usage_is_one_line_and_returns_2(capsys, argv, expected):
  assert fetch.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("s3rec-data: error: ")
  assert expected in err and err.endswith("(see s3rec-data --help)\n") and len(err.splitlines()) == 1


def test_help_lists_commands_and_flags(capsys):
  assert fetch.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert all(name in out for name in fetch.COMMANDS) and "--mirror" in out and "--data_dir" in out


def test_verify_and_list_report_missing_and_bad(capsys, tmp_path, mirror):
  data = tmp_path / "data"
  code, _, err = _run(capsys, "verify", "--data_dir", str(data))
  assert code == 2 and "no dataset in" in err
  assert _run(capsys, "fetch", "LastFM", "--mirror", str(mirror), "--data_dir", str(data))[0] == 0
  assert _run(capsys, "verify", "--data_dir", str(data))[0] == 0  # only what is there
  (data / "LastFM.txt").write_bytes(b"0")
  code, out, err = _run(capsys, "verify", "LastFM", "--data_dir", str(data))
  assert code == 2 and "wrong size" in out and "s3rec-data fetch" in err
  code, out, _ = _run(capsys, "list", "--data_dir", str(data))
  assert code == 0 and "wrong size" in out and "missing" in out


def test_default_data_dir(monkeypatch, tmp_path, capsys):
  assert fetch.default_data_dir() == str(tmp_path / "home" / ".cache" / "s3rec_jax" / "data")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert fetch.default_data_dir() == str(tmp_path / "xdg" / "s3rec_jax" / "data")
  monkeypatch.setenv(fetch.DATA_ENV, str(tmp_path / "mine"))
  assert fetch.default_data_dir() == str(tmp_path / "mine")
  assert _run(capsys, "path")[1].strip() == str(tmp_path / "mine")
  assert _run(capsys, "path", "--data_dir", str(tmp_path / "x"))[1].strip() == str(tmp_path / "x")


def test_missing_hint(monkeypatch, tmp_path):
  monkeypatch.setenv(fetch.DATA_ENV, str(tmp_path / "data"))
  hint = fetch.missing_hint("Beauty", str(tmp_path / "data"))
  assert hint is not None and "\n" not in hint
  assert "has no Beauty.txt" in hint and "`s3rec-data fetch Beauty`" in hint
  assert "S3REC_DATA" in hint
  other = fetch.missing_hint("Yelp", str(tmp_path / "elsewhere"))
  assert f"s3rec-data fetch Yelp --data_dir {tmp_path / 'elsewhere'}" in other
  assert fetch.missing_hint("Synthetic", str(tmp_path)) is None


def test_mirror_url():
  assert fetch.mirror_url() == fetch.DEFAULT_MIRROR
  assert fetch.mirror_url("http://127.0.0.1:1/x").endswith("/x/")
  assert fetch.mirror_url("/tmp").startswith("file:///")


def test_pins_match_real_files():
  folder = os.environ.get("S3REC_SHARED_DATA")
  if not folder or not os.path.isdir(folder):
    pytest.skip("set S3REC_SHARED_DATA to a folder holding the real dataset files")
  for files in fetch.PINNED.values():
    for name, spec in files.items():
      assert fetch.file_status(os.path.join(folder, name), spec) == "ok", name
