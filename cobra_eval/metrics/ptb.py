"""The official PTB tokenizer (Stanford CoreNLP 3.4.1) kept alive in one JVM per process.

pycocoevalcap starts ``java ... PTBTokenizer -preserveLines -lowerCase FILE`` for
every call, and the JVM start dominates small calls. ``PtbServer.java`` (shipped
beside this module, compiled with ``javac`` into the cache on first use) hands
each request to that same unmodified ``PTBTokenizer.main``, so a reply is byte
for byte what the one-JVM-per-call run prints. Whenever the server cannot be
used (no ``javac``, a failed compile or start, a JVM that died mid-request) the
request goes through the one-JVM-per-call path instead; ``COBRA_EVAL_PTB_SERVER=0``
forces that path.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

#: Set to 0 to run one JVM per call (pycocoevalcap's way) instead of the long-lived server.
SERVER_ENV = "COBRA_EVAL_PTB_SERVER"
SERVER_SOURCE = Path(__file__).resolve().parent / "ptb_server" / "PtbServer.java"
#: Seconds the server may take to start (JVM start, class loading) or javac to compile it.
START_TIMEOUT_S = 60.0
COMPILE_TIMEOUT_S = 180.0
_PER_CALL_ARGS = ("edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase")
#: The server's JVM lives as long as a run. By default its heap may grow to a quarter of
#: the machine's memory, and it does: it peaked at 304 MiB in a 100,000-sample run on a
#: 24 GB machine, and at 92 MiB with these. Its work is short requests, on which C2's
#: compilations cost more CPU than they save (with C1 only it used half the CPU on the
#: same requests). A request too large for this heap gets an error reply and goes through
#: the per-call JVM (default flags) instead; a JVM that lacks one of these -XX flags
#: ignores it.
SERVER_JVM_OPTIONS = (
    "-XX:+IgnoreUnrecognizedVMOptions",
    "-Xmx128m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
)

_log = logging.getLogger(__name__)


class TokenizerServerError(RuntimeError):
    """The tokenizer server could not be built or started, died, or answered nonsense."""


class _StartError(TokenizerServerError):
    """The server cannot be built or started here: retrying in this process is pointless."""


def server_enabled() -> bool:
    """Whether requests may use the long-lived server (``COBRA_EVAL_PTB_SERVER`` is not 0)."""
    return os.environ.get(SERVER_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def tokenize_text(text: str, jar: Path, timeout_s: float) -> str:
    """What ``PTBTokenizer -preserveLines -lowerCase`` prints for ``text`` (UTF-8 in and out)."""
    data = text.encode("utf-8")
    if server_enabled():
        server = _server_for(jar)
        if server is not None:
            try:
                return server.tokenize(data, timeout_s)
            except _StartError as exc:
                _disable(jar, str(exc))
            except TokenizerServerError as exc:
                # the per-call run either gives the answer or raises the error it always raised
                _log.warning("%s; tokenizing this request with one JVM instead", exc)
    return tokenize_per_call(data, jar, timeout_s)


def tokenize_per_call(data: bytes, jar: Path, timeout_s: float) -> str:
    """One ``java ... PTBTokenizer`` run over a temp file of ``data``, as pycocoevalcap does."""
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as tmp:
        tmp.write(data)
    try:
        done = subprocess.run(
            ["java", "-cp", str(jar), *_PER_CALL_ARGS, tmp.name],
            capture_output=True, timeout=timeout_s, check=True,
        )  # fmt: skip
    finally:
        os.unlink(tmp.name)
    return done.stdout.decode("utf-8")


def server_pid(jar: Path) -> int | None:
    """The process id of this process's running tokenizer server for ``jar``, if any."""
    server = _servers.get(jar)
    return server.pid if server is not None else None


def shutdown() -> None:
    """Stop every tokenizer server of this process (a later request starts a new one)."""
    with _registry_lock:
        servers = list(_servers.values())
        _servers.clear()
        _disabled.clear()
    for server in servers:
        server.close()


def compiled_server(jar: Path) -> Path:
    """The folder holding ``PtbServer.class``, compiled into the cache on first use.

    The folder is keyed by the source and ``java -version``; it is compiled into a
    temporary folder and renamed into place, so concurrent compilers never see half a build.
    """
    try:
        version = subprocess.run(
            ["java", "-version"], capture_output=True, timeout=START_TIMEOUT_S, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise _StartError(f"`java -version` failed: {exc}") from None
    source = SERVER_SOURCE.read_bytes()
    key = hashlib.sha256(source + b"\0" + version.stdout + version.stderr).hexdigest()[:16]
    target = cache_base() / "ptb-server" / key
    if (target / "PtbServer.class").is_file():
        return target
    javac = shutil.which("javac")
    if javac is None:
        raise _StartError("javac is not installed (a JDK is needed to build the PTB server)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        done = subprocess.run(
            [javac, "-encoding", "UTF-8", "-cp", str(jar), "-d", str(tmp), str(SERVER_SOURCE)],
            capture_output=True, timeout=COMPILE_TIMEOUT_S,
        )  # fmt: skip
        if done.returncode != 0:
            raise _StartError(f"javac failed on {SERVER_SOURCE}: {_tail(done.stderr)}")
        try:
            os.rename(tmp, target)
        except OSError:
            # another process renamed its build into place first: use that one
            if not (target / "PtbServer.class").is_file():
                raise
    except (OSError, subprocess.SubprocessError) as exc:
        raise _StartError(f"could not compile {SERVER_SOURCE}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class _Server:
    """One PtbServer JVM, started on first use and again after it died; one request at a time."""

    def __init__(self, jar: Path, classes: Path):
        self.cmd = ["java", *SERVER_JVM_OPTIONS, "-cp", f"{classes}{os.pathsep}{jar}", "PtbServer"]
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._finalizer: weakref.finalize[Any, _Server] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def tokenize(self, data: bytes, timeout_s: float) -> str:
        with self._lock:
            proc = self._running()
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                proc.kill()

            # a wedged JVM must not hang the caller: kill it at the deadline, which ends any read
            timer = threading.Timer(timeout_s, expire)
            timer.start()
            try:
                assert proc.stdin is not None and proc.stdout is not None
                _write_all(proc.stdin.fileno(), b"%d\n" % len(data) + data)
                status, body = _read_reply(proc.stdout.fileno())
            except (OSError, ValueError, EOFError) as exc:
                why = self._why(exc)
                self._stop()
                if expired.is_set():
                    raise subprocess.TimeoutExpired(self.cmd, timeout_s) from None
                raise TokenizerServerError(f"the PTB tokenizer server stopped: {why}") from None
            finally:
                timer.cancel()
        if status != b"OK":
            raise TokenizerServerError(f"the PTB tokenizer failed in the server: {_tail(body)}")
        return body.decode("utf-8")

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop()
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the JVM)
        try:
            proc = subprocess.Popen(
                self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, bufsize=0
            )
        except OSError as exc:
            stderr.close()
            raise _StartError(f"could not start {' '.join(self.cmd)}: {exc}") from None
        self._proc, self._stderr = proc, stderr
        self._finalizer = weakref.finalize(self, _terminate, proc, stderr, os.getpid())
        timer = threading.Timer(START_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            ready, _ = _read_reply(proc.stdout.fileno())
            why = f"it said {ready[:200]!r} instead of READY"
        except (OSError, ValueError, EOFError) as exc:
            ready, why = b"", self._why(exc)
        finally:
            timer.cancel()
        if ready != b"READY":
            self._stop()
            raise _StartError(
                f"the PTB tokenizer server ({' '.join(self.cmd)}) did not start: {why}"
            )
        return proc

    def _why(self, exc: BaseException) -> str:
        proc, err = self._proc, self._stderr
        code = None
        if proc is not None:
            # its output ended or its pipe broke: it is exiting, so let its status say why
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(timeout=1)
        text = f"{type(exc).__name__}: {exc}"
        if code is not None:
            text = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        if err is not None:
            err.seek(0)
            logged = _tail(err.read())
            text += f"; its stderr: {logged}" if logged else ""
        return text

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = self._stderr = self._finalizer = None

    def close(self) -> None:
        with self._lock:
            self._stop()

    def forget_after_fork(self) -> None:
        """In a forked child: close the inherited pipes, never touch the parent's JVM."""
        if self._finalizer is not None:
            self._finalizer.detach()
        proc = self._proc
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        os.close(pipe.fileno())
            # keep the objects alive: collecting them would close these fd numbers again,
            # after the child may have reused them for its own files
            _abandoned.append(proc)


def _terminate(proc: subprocess.Popen[bytes], stderr: Any, owner: int) -> None:
    if os.getpid() != owner:  # an inherited finalizer in a forked child: not our JVM
        return
    proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout, stderr):
        if stream is not None:
            stream.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_reply(fd: int) -> tuple[bytes, bytes]:
    """(status, body) of one framed reply: ``<status> <n>\\n``, then n bytes."""
    buf = bytearray()
    while b"\n" not in buf:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise EOFError("the server's output ended")
        buf += chunk
    header, _, body = bytes(buf).partition(b"\n")
    status, _, size_text = header.partition(b" ")
    size = int(size_text)
    parts = [body]
    have = len(body)
    while have < size:
        chunk = os.read(fd, min(size - have, 1 << 20))
        if not chunk:
            raise EOFError("the server's output ended inside a reply")
        parts.append(chunk)
        have += len(chunk)
    if have != size:
        raise ValueError(f"the server sent {have} bytes for a {size}-byte reply")
    return status, b"".join(parts)


def _tail(raw: bytes, limit: int = 2000) -> str:
    return raw.decode("utf-8", "replace").strip()[-limit:]


def cache_base() -> Path:
    """The tool's cache folder: COBRA_EVAL_CACHE, or ~/.cache/cobra_eval."""
    base = os.environ.get("COBRA_EVAL_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "cobra_eval"


def _server_for(jar: Path) -> _Server | None:
    with _registry_lock:
        server = _servers.get(jar)
        if server is None and jar not in _disabled:
            try:
                server = _servers[jar] = _Server(jar, compiled_server(jar))
            except _StartError as exc:
                _disabled[jar] = str(exc)
                _log.warning("%s; the PTB tokenizer runs one JVM per call instead", exc)
        return server


def _disable(jar: Path, why: str) -> None:
    with _registry_lock:
        _disabled[jar] = why
        server = _servers.pop(jar, None)
    if server is not None:
        server.close()
    _log.warning("%s; the PTB tokenizer runs one JVM per call instead", why)


def _after_fork_in_child() -> None:
    global _registry_lock
    # another thread may have held these locks at the fork: the child starts afresh
    _registry_lock = threading.Lock()
    for server in _servers.values():
        server.forget_after_fork()
    _servers.clear()


_registry_lock = threading.Lock()
_servers: dict[Path, _Server] = {}
_disabled: dict[Path, str] = {}  # jar -> why this process does not use a server for it
_abandoned: list[subprocess.Popen[bytes]] = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
