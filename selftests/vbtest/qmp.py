# SPDX-License-Identifier: GPL-2.0
"""QMP client (stdlib socket + json).

A reader thread splits the stream into replies (matched by "id") and
asynchronous events (kept in a list), so events arriving between a command and
its reply never confuse the caller.
"""
import json
import socket
import threading
import time

BALLOON_QOM = "/machine/peripheral/balloon0"


class QMPError(Exception):
    """QEMU answered a command with an error."""


class QMP:
    def __init__(self, path):
        self.path = str(path)
        self.sock = None
        self.events = []
        self.greeting = None
        self._replies = {}
        self._cond = threading.Condition()
        self._next_id = 0
        self._closed = False
        self.virtio_path = BALLOON_QOM + "/virtio-backend"
        self._send_lock = threading.Lock()

    # -- connection -------------------------------------------------------
    def connect(self, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock = s
        threading.Thread(target=self._reader, daemon=True,
                         name=f"qmp:{self.path}").start()
        with self._cond:
            if not self._cond.wait_for(lambda: self.greeting or self._closed, timeout):
                raise TimeoutError("no QMP greeting")
        self.cmd("qmp_capabilities")

    def close(self):
        if self.sock:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def _reader(self):
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._dispatch(json.loads(line))
        except (OSError, ValueError):
            pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _dispatch(self, msg):
        with self._cond:
            if "QMP" in msg:
                self.greeting = msg
            elif "event" in msg:
                self.events.append(msg)
            elif "id" in msg:
                self._replies[msg["id"]] = msg
            self._cond.notify_all()

    # -- commands ---------------------------------------------------------
    def cmd(self, name, args=None, timeout=60, **kwargs):
        """Execute name; kwargs become arguments with '_' spelled '-'.

        Returns the "return" value; raises QMPError on an error reply.
        """
        arguments = dict(args or {})
        arguments.update({k.replace("_", "-"): v for k, v in kwargs.items()})
        with self._cond:
            self._next_id += 1
            rid = self._next_id
        msg = {"execute": name, "id": rid}
        if arguments:
            msg["arguments"] = arguments
        with self._send_lock:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        with self._cond:
            ok = self._cond.wait_for(lambda: rid in self._replies or self._closed, timeout)
            reply = self._replies.pop(rid, None)
        if reply is None:
            raise TimeoutError(f"QMP {name}: " + ("connection closed" if ok else "no reply"))
        if "error" in reply:
            e = reply["error"]
            raise QMPError(f"{name}: {e.get('class')}: {e.get('desc')}")
        return reply.get("return")

    def wait_event(self, name, timeout=30, since=0):
        """First event called name at index >= since; None on timeout."""
        def find():
            for ev in self.events[since:]:
                if ev["event"] == name:
                    return ev
            return None
        with self._cond:
            self._cond.wait_for(lambda: find() or self._closed, timeout)
            return find()

    # -- balloon and QOM helpers --------------------------------------------
    def balloon(self, target):
        """Ask the guest to balloon down to target bytes of RAM."""
        self.cmd("balloon", value=int(target))

    def query_balloon(self):
        """The guest's RAM in bytes as the device reports it (actual)."""
        return self.cmd("query-balloon")["actual"]

    def wait_actual(self, target, timeout=60, settle=None, poll=0.2):
        """Poll query-balloon until actual == target; returns actual.

        With settle=S, also return when actual has not moved for S seconds
        (for targets the guest cannot or may refuse to reach).  Raises
        TimeoutError (with the last value) otherwise.
        """
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while True:
            actual = self.query_balloon()
            now = time.monotonic()
            if actual == target:
                return actual
            if actual != last:
                last, since = actual, now
            elif settle is not None and now - since >= settle:
                return actual
            if now > deadline:
                raise TimeoutError(f"balloon actual {actual >> 20} MiB "
                                   f"({actual} B), target {target >> 20} MiB "
                                   f"not reached in {timeout} s")
            time.sleep(poll)

    def qom_get(self, path, prop):
        return self.cmd("qom-get", path=path, property=prop)

    def qom_set(self, path, prop, value):
        return self.cmd("qom-set", path=path, property=prop, value=value)

    def virtio_status(self, path=None):
        """x-query-virtio-status: the host's view (offered/negotiated features)."""
        return self.cmd("x-query-virtio-status", path=path or self.virtio_path)
