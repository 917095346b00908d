"""``mmgen data download polymnist`` against a loopback HTTP server that honours Range requests."""

from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmgen.errors import DataError
from mmgen_builtin.datasets.download import safe_extract
from mmgen_builtin.datasets.polymnist import read_polymnist

from .test_data_readers import assert_one_line_error, invoke, write_png_dataset


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path; honours ``Range: bytes=N-`` unless told not to."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        data = server.payload
        rng = self.headers.get("Range")
        server.ranges.append(rng)
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and server.honour_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:  # a connection that breaks mid-transfer
            self.wfile.write(body[:server.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.payload, httpd.ranges, httpd.honour_range, httpd.cut_after = b"", [], True, None
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/files/PolyMNIST.zip"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def polymnist_zip(tmp_path, extra: dict[str, bytes] | None = None) -> bytes:
    """A small zip in the official PNG layout, under a top-level ``PolyMNIST/`` like the real one."""
    src = tmp_path / "src"
    write_png_dataset(src, 2, "train")
    write_png_dataset(src, 2, "test")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(src.rglob("*.png")):
            zf.write(p, f"PolyMNIST/{p.relative_to(src)}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def download(server, dest, *extra):
    return invoke("data", "download", "polymnist", "--dest", dest, "--url", server.url, *extra)


def leftovers(dest):
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def test_download_verifies_and_unpacks(tmp_path, server):
    server.payload = polymnist_zip(tmp_path)
    dest = tmp_path / "dest"
    result = download(server, dest, "--sha256", hashlib.sha256(server.payload).hexdigest())
    assert result.exit_code == 0, result.output
    assert leftovers(dest) == ["PolyMNIST"]  # no .part, no archive, no staging folder
    ds = read_polymnist(dest / "PolyMNIST", "train")
    assert ds.num_modalities == 2 and len(ds) == 5
    assert "polymnist:" in result.stdout
    again = download(server, dest)
    assert again.exit_code == 0 and "already present" in again.stdout and len(server.ranges) == 1


def test_checksum_mismatch_fails_cleanly(tmp_path, server):
    server.payload = polymnist_zip(tmp_path)
    dest = tmp_path / "dest"
    result = download(server, dest, "--sha256", "0" * 64)
    assert_one_line_error(result, "checksum mismatch", server.url, hashlib.sha256(server.payload).hexdigest())
    assert leftovers(dest) == []  # nothing unpacked, and the wrong file is gone


def test_resumes_a_truncated_part_file_with_a_range_request(tmp_path, server):
    server.payload = polymnist_zip(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    half = len(server.payload) // 2
    (dest / "PolyMNIST.zip.part").write_bytes(server.payload[:half])
    result = download(server, dest, "--sha256", hashlib.sha256(server.payload).hexdigest())
    assert result.exit_code == 0, result.output
    assert server.ranges == [f"bytes={half}-"]
    assert read_polymnist(dest / "PolyMNIST", "test").num_modalities == 2


def test_broken_connection_keeps_the_part_file_and_the_next_run_resumes(tmp_path, server):
    server.payload = polymnist_zip(tmp_path)
    server.cut_after = 1000
    dest = tmp_path / "dest"
    assert_one_line_error(download(server, dest), server.url, "resume")
    assert (dest / "PolyMNIST.zip.part").read_bytes() == server.payload[:1000]
    assert not (dest / "PolyMNIST").exists()
    server.cut_after = None
    result = download(server, dest, "--sha256", hashlib.sha256(server.payload).hexdigest())
    assert result.exit_code == 0, result.output
    assert server.ranges == [None, "bytes=1000-"]


def test_server_ignoring_range_restarts_from_zero(tmp_path, server):
    server.payload = polymnist_zip(tmp_path)
    server.honour_range = False
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "PolyMNIST.zip.part").write_bytes(b"stale bytes from another file")
    result = download(server, dest, "--sha256", hashlib.sha256(server.payload).hexdigest())
    assert result.exit_code == 0, result.output
    assert leftovers(dest) == ["PolyMNIST"]


def test_unreachable_server_is_one_line(tmp_path, server):
    url = server.url
    server.shutdown()
    server.server_close()
    result = invoke("data", "download", "polymnist", "--dest", tmp_path / "d", "--url", url)
    assert_one_line_error(result, "download of", url)


def test_zip_members_escaping_dest_are_refused(tmp_path, server):
    server.payload = polymnist_zip(tmp_path, {"../escaped.txt": b"owned"})
    dest = tmp_path / "dest"
    assert_one_line_error(download(server, dest), "../escaped.txt", "outside")
    assert not (tmp_path / "escaped.txt").exists() and not (dest / "PolyMNIST").exists()
    archive = tmp_path / "abs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("/etc/evil", b"x")
    with pytest.raises(DataError, match="outside"):
        safe_extract(archive, tmp_path / "x")
