"""Start the gateway controller: ``python -m ryu_apps.launch --config FILE``.

Options: ``--ofp-port 6653`` (OpenFlow listen port), ``--rest-port 8080``,
``--host 127.0.0.1`` (both listen there), ``--log FILE`` (default: stderr), ``-v`` (debug).
The config file is JSON::

    {"secret_file": "/run/chainlb/secret",     # MAC key: the file's raw bytes, mode 0600
     "chain_len": 3, "mode": "chain",          # chain | maglev | local | hash
     "heartbeat_timeout": 0.5,                 # optional; also join_timeout, repush_interval
     "edge_ports": {"c1": {"mac": "02:00:00:00:01:01", "port": 1}, ...},   # clients, servers
     "lbs": [{"name": "lb1", "mac": "02:00:00:00:03:01", "port": 7}, ...],
     "nfs": [{"name": "nf1", "mac": "02:00:00:00:04:01", "port": 11}, ...]}

``--state FILE`` keeps the view durable (``ryu_apps.store``): the controller saves it there
before each change takes effect, and a controller started with a state file that exists
resumes from it (at an epoch above the saved one) instead of the config's initial view; the
config still gives the secret and the timings.

Everything is checked before os-ken starts; a bad config, a state file that is not a
snapshot, or a busy port exits with status 2 and a one-line message. Runs in the foreground
until killed (SIGTERM/SIGINT).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import stat
import sys

from ryu_apps import store
from ryu_apps.policy import Policy, PolicyError, tunables_of


class ConfigError(Exception):
    """A user mistake in the config or the command line."""


def load_secret(path: object) -> bytes:
    """The shared MAC key: the raw bytes of a non-empty file readable by its owner only."""
    if not isinstance(path, str) or not path:
        raise ConfigError("config 'secret_file' must be a path to the shared secret")
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            secret = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read secret_file {path}: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"secret_file {path} is readable by others "
                          f"(mode {stat.filemode(st.st_mode)}): chmod 600 {path}")
    if not secret:
        raise ConfigError(f"secret_file {path} is empty")
    return secret


def load_config(path: str) -> tuple[dict, bytes]:
    """Read and check the config file: (config dict, secret). ConfigError says what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"config {path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config {path} must hold a JSON object")
    if "secret_file" not in cfg:
        raise ConfigError(f"config {path} lacks 'secret_file'")
    try:
        Policy.from_config(cfg, now=0.0)
    except PolicyError as e:
        raise ConfigError(f"config {path}: {e}") from None
    return cfg, load_secret(cfg["secret_file"])


def load_state(path: str | None, cfg: dict) -> dict | None:
    """The snapshot to resume from (None: none saved yet, or no ``--state``), checked."""
    if not path:
        return None
    try:
        snap = store.load(path)
        if snap is not None:
            Policy.restore(snap, now=0.0, **tunables_of(cfg))
    except (store.StoreError, PolicyError) as e:
        raise ConfigError(f"state file {path}: {e}") from None
    return snap


def check_port_free(host: str, port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} port {port} is out of range 1-65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen for {what} on {host}:{port}: {e.strerror} "
                              "(is another controller running?)") from None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m ryu_apps.launch",
                                description="Run the chainlb gateway controller (os-ken, OpenFlow 1.3).")
    p.add_argument("--config", required=True, help="JSON config file (see the module docstring)")
    p.add_argument("--ofp-port", type=int, default=6653, help="OpenFlow listen port (default 6653)")
    p.add_argument("--rest-port", type=int, default=8080, help="REST API port (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--log", help="log file (default: standard error)")
    p.add_argument("--state", help="durable view: saved before every change, resumed from "
                                   "at start if it exists")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def setup_logging(path: str | None, verbose: bool) -> None:
    handler = logging.FileHandler(path) if path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("os_ken.controller.controller", "os_ken.lib.hub", "os_ken.base.app_manager"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg, secret = load_config(args.config)
        snapshot = load_state(args.state, cfg)
        check_port_free(args.host, args.ofp_port, "OpenFlow")
        check_port_free(args.host, args.rest_port, "REST")
        if args.log:
            try:
                open(args.log, "a").close()
            except OSError as e:
                raise ConfigError(f"cannot write log file {args.log}: {e.strerror}") from None
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import warnings
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    from os_ken.lib import hub
    hub.patch(thread=True)
    from os_ken import cfg as os_ken_cfg
    from os_ken import log as _os_ken_log  # noqa: F401  (registers logging options)
    from os_ken.base.app_manager import AppManager
    from os_ken.controller import controller as _controller  # noqa: F401  (registers OpenFlow options)
    from ryu_apps import gateway

    os_ken_cfg.CONF(args=["--ofp-listen-host", args.host, "--ofp-tcp-listen-port", str(args.ofp_port)],
                    project="os_ken", default_config_files=[])
    setup_logging(args.log, args.verbose)
    gateway.configure(cfg, secret, rest_host=args.host, rest_port=args.rest_port,
                      state_path=args.state, snapshot=snapshot)
    logging.getLogger("launch").info("controller pid %d: OpenFlow %s:%d, REST %s:%d, config %s%s",
                                     os.getpid(), args.host, args.ofp_port, args.host,
                                     args.rest_port, args.config,
                                     f", resuming from {args.state} (epoch {snapshot['epoch']})"
                                     if snapshot else "")
    try:
        AppManager.run_apps(["ryu_apps.gateway"])
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
