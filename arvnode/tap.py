"""``twistd arvnode``: options and ``makeService``.

This is the only module that touches the global reactor and process-wide
state (signals, stdout); it hands the reactor to :func:`arvnode.node.build_node`.
"""
from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path
from typing import Any, cast

from twisted.python import usage
from twisted.python.failure import Failure

from arvnode import embedded


class Options(usage.Options):
    synopsis = "[--config PATH [--cluster ID]] [--data DIR]"
    longdesc = (
        "Run an arvnode gateway node: the Arvados API controller, the keepproxy and the "
        "remote-token refresh in one process. Without --config the node runs the embedded "
        "default from --data (created on first start): a fresh cluster with a generated admin "
        "token, a self-signed certificate, SQLite and a directory volume, listening on "
        "127.0.0.1 only; it prints the environment a client needs."
    )
    optParameters = [
        ["config", "c", None,
         "Arvados-style config.yml (Clusters: <id>: ...). Default: the embedded default."],
        ["cluster", None, None,
         "Cluster id to run when the config file holds several clusters."],
        ["data", "d", None,
         f"State directory of the embedded default (default: ./{embedded.DEFAULT_DATA_DIR})."],
    ]

    def postOptions(self) -> None:
        from arvnode.config import ConfigError, load_config, startup_problems

        if self["config"] and self["data"]:
            _refuse(2, "--config and --data are exclusive: --data selects the embedded default")
        self.embedded = not self["config"]
        if self.embedded:
            data = self["data"] or embedded.DEFAULT_DATA_DIR
            try:
                path = embedded.ensure_state_dir(data, random.SystemRandom())
            except OSError as e:
                _refuse(1, f"cannot create state directory {data!r}: {e}")
        else:
            path = Path(self["config"])
        try:
            self.loaded = load_config(str(path), self["cluster"])
        except ConfigError as e:
            _refuse(1, f"invalid configuration in {path}:\n" + "\n".join(e.problems))
        problems = startup_problems(self.loaded)
        if problems:
            _refuse(1, f"cannot start a node from {path}:\n" + "\n".join(problems))


def _refuse(status: int, message: str) -> None:
    """Stop ``twistd`` with a message and a non-zero status.

    Not ``UsageError``: twistd prints the whole usage text for it and then
    exits 0, which systemd and scripts would take for success.
    """
    sys.stderr.write(f"arvnode: {message}\n")
    raise SystemExit(status)


def makeService(options: Options) -> Any:
    from twisted.internet import reactor as global_reactor
    from twisted.internet.interfaces import IReactorCore, IReactorThreads

    from arvnode.node import build_node
    from arvnode.tls import TLSConfigError

    # The module object stands in for the reactor instance, which its stubs
    # cannot express: name the two interfaces this function relies on.
    reactor = cast(IReactorCore, global_reactor)
    call_from_thread = cast(IReactorThreads, global_reactor).callFromThread
    config = options.loaded
    out = sys.__stdout__

    def announce(text: str) -> None:
        # The export lines are for a person to copy, not a log line: they go
        # to the real stdout, unprefixed (twistd redirects sys.stdout to the log).
        if out is not None:
            out.write(text)
            out.flush()

    def on_fatal(failure: Failure) -> None:
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if reactor.running:
            reactor.stop()
        else:
            # twistd starts the services before reactor.run(): a start that
            # fails before its first real wait lands here too early to stop
            # the reactor, which would then run forever with nothing to serve.
            reactor.callWhenRunning(reactor.stop)

    # As Arvados services do, ARVADOS_SERVICE_INTERNAL_URL names which
    # Services.Keepstore entry this process is, when several share one host.
    try:
        node = build_node(config, reactor, embedded_mode=options.embedded,
                          on_fatal=on_fatal, announce=announce,
                          keepstore_url=os.environ.get("ARVADOS_SERVICE_INTERNAL_URL"))
    except TLSConfigError as e:
        # A missing, unreadable or mismatched certificate/key (also a
        # damaged embedded state directory): one line naming the key and
        # the file, not a traceback from inside twistd.
        _refuse(1, f"cannot start a node: {e}")

    def stop_gracefully(signum: int, frame: Any) -> None:
        # twistd's own handler records the signal and re-raises it at exit,
        # so a clean SIGTERM shutdown would end with status -15; systemd and
        # the README promise exit 0 once in-flight requests are done.
        call_from_thread(_stop_reactor, signal.Signals(signum).name)

    def _stop_reactor(name: str) -> None:
        from twisted.internet.error import ReactorNotRunning
        from twisted.logger import Logger

        Logger(namespace="arvnode").info("{signal}: shutting down gracefully", signal=name)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # a second signal while draining: already stopping

    def install_signals() -> None:
        signal.signal(signal.SIGHUP, lambda *_: call_from_thread(node.reload_tls))
        signal.signal(signal.SIGTERM, stop_gracefully)
        signal.signal(signal.SIGINT, stop_gracefully)

    reactor.callWhenRunning(install_signals)
    return node
