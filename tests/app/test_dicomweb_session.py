"""The session the DICOMweb datastore and proxy talk through (lib/dicomweb.py, _TimeoutSession): a dropped
connection is tried once more; a server that keeps dropping them fails every request at once for a while."""

import socket
import threading

import pytest
import requests


class DroppingServer:
    """HTTP on localhost that closes the first ``drops`` connections without an answer, then answers 200."""

    def __init__(self, drops: int):
        self.drops, self.seen = drops, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/dicom-web/series"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.seen += 1
                if self.seen > self.drops:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                                 b"Connection: close\r\n\r\n[]")

    def close(self):
        self.sock.close()


def test_a_dropped_connection_is_tried_once_more():
    from lib.dicomweb import _TimeoutSession

    server = DroppingServer(drops=1)
    try:
        r = _TimeoutSession().get(server.url)
        assert r.status_code == 200 and r.json() == [] and server.seen == 2
        r = _TimeoutSession().post(server.url, data=b"x" * 100)  # a STOW's body (bytes) is sent again whole
        assert r.status_code == 200 and server.seen == 3
    finally:
        server.close()


def test_a_server_that_keeps_dropping_fails_at_once_for_a_while():
    from lib.dicomweb import _TimeoutSession

    server = DroppingServer(drops=10)
    session = _TimeoutSession()
    try:
        with pytest.raises(requests.exceptions.ConnectionError):
            session.get(server.url)
        assert server.seen == 2
        with pytest.raises(requests.exceptions.ConnectionError, match="did not answer a moment ago"):
            session.get(server.url)  # not sent: the server is not asked again yet
        assert server.seen == 2
        with pytest.raises(requests.exceptions.ConnectionError):  # a body that cannot be sent again: once
            _TimeoutSession().post(server.url, data=iter([b"chunk"]))
        assert server.seen == 3
    finally:
        server.close()
