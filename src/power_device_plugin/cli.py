"""The `power-device-plugin` command: flags (each with a `PDP_…` twin) → parts.

`serve` runs the plugin, `scan` prints what would be advertised and why,
`--version` prints the version. A bad flag or environment value exits 2 with a
message that names it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from power_device_plugin import __version__, cdi
from power_device_plugin.config import (
    DEFAULT_RESOURCE,
    ConfigError,
    PluginConfig,
    ResourceConfig,
    load_resources,
    resource_name,
)
from power_device_plugin.devices import DeviceSnapshot, DeviceState, GrantNaming
from power_device_plugin.discovery import ScanResult
from power_device_plugin.host_use import read_host_use
from power_device_plugin.metrics import PluginMetrics
from power_device_plugin.resources import (
    ResourcesScan,
    ResourceStates,
    capacity_of,
    naming_for,
    scan_resources,
    socket_name_for,
)

if TYPE_CHECKING:
    from power_device_plugin.health import Heartbeat
    from power_device_plugin.lifecycle import PluginLifecycle
    from power_device_plugin.notify import WakingEvent
    from power_device_plugin.watch import ConfigWatcher, DeviceWatcher

log = logging.getLogger("power_device_plugin")

DEFAULT_SOCKET_NAME = "power-dev.csi.ibm.com-reg.sock"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
OUTPUTS = ("table", "json")
# How often the device trees and the config file are stat()ed. A change must
# reach the kubelet within 1 s (poll + a rescan of ~1000 nodes fits easily);
# polling faster costs idle CPU for nothing.
DEVICE_POLL_SECONDS = 0.4
# How often a CDI spec that could not be written (or a stale one removed) is tried again.
CDI_RETRY_SECONDS = 1.0


def socket_name(text: str) -> str:
    """A plain file name inside the plugin directory (the kubelet takes it relative)."""
    if not text or "/" in text or text in (".", ".."):
        raise ValueError(f"{text!r} must be a file name, without '/'")
    if text == "kubelet.sock":
        raise ValueError("'kubelet.sock' is the kubelet's own socket; choose another name")
    return text


def listen_address(text: str) -> str:
    from power_device_plugin.health import parse_listen

    parse_listen(text)
    return text


def choice_of(choices: Sequence[str]) -> Callable[[str], str]:
    def check(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return value

    check.__name__ = "choice"
    return check


def directory_path(text: str) -> Path:
    if not text:
        raise ValueError("is empty; give a directory path")
    return Path(text)


def file_path(text: str) -> Path:
    if not text:
        raise ValueError("is empty; give a file path")
    return Path(text)


@dataclass(frozen=True)
class Option:
    """One flag and its environment twin."""

    flag: str
    env: str
    default: str
    convert: Callable[[str], Any]
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("--config", "PDP_CONFIG", "/etc/power-device-plugin/config.json", file_path,
           "config.json (IBM format); nothing is advertised until it exists and is valid"),
    Option("--plugin-dir", "PDP_PLUGIN_DIR", "/var/lib/kubelet/device-plugins", directory_path,
           "the kubelet's device plugin directory (holds kubelet.sock)"),
    Option("--dev-root", "PDP_DEV_ROOT", "/dev", directory_path,
           "where the host's /dev is visible"),
    Option("--sys-root", "PDP_SYS_ROOT", "/sys", directory_path,
           "where the host's /sys is visible"),
    Option("--host-proc", "PDP_HOST_PROC", "/proc", directory_path,
           "where the host's /proc is visible: its 1/mountinfo and swaps say which disks "
           "the host uses (never granted)"),
    Option("--cdi-dir", "PDP_CDI_DIR", cdi.DEFAULT_CDI_DIR, directory_path,
           "where the runtime reads CDI specs; the plugin keeps its own spec file there"),
    Option("--resource", "PDP_RESOURCE", DEFAULT_RESOURCE, resource_name,
           "extended resource name advertised to the kubelet"),
    Option("--socket-name", "PDP_SOCKET_NAME", DEFAULT_SOCKET_NAME, socket_name,
           "the plugin's socket file name inside --plugin-dir"),
    Option("--listen", "PDP_LISTEN", ":8080", listen_address,
           "[host]:port of /healthz, /readyz and /metrics"),
    Option("--log-level", "PDP_LOG_LEVEL", "info", choice_of(LOG_LEVELS),
           "one of " + ", ".join(LOG_LEVELS)),
    Option("--log-format", "PDP_LOG_FORMAT", "text", choice_of(LOG_FORMATS),
           "text, or json (one object per line)"),
)  # fmt: skip


def options_table() -> str:
    """The flag table of docs/plugin.md (a test keeps the two identical)."""
    lines = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{o.flag}` | `{o.env}` | `{o.default}` | {o.help} |" for o in OPTIONS]
    return "\n".join(lines) + "\n"


def _for_argparse(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse shows an ArgumentTypeError's own words after the flag's name."""

    def wrapped(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    wrapped.__name__ = getattr(convert, "__name__", "value")
    return wrapped


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    for option in OPTIONS:
        common.add_argument(
            option.flag,
            type=_for_argparse(option.convert),
            default=None,
            metavar=option.env[len("PDP_") :],
            help=f"{option.help} (env {option.env}, default {option.default})",
        )
    parser = argparse.ArgumentParser(
        prog="power-device-plugin",
        description="Kubernetes device plugin that grants protected host devices to pods.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    commands.add_parser(
        "serve", parents=[common], help="run the plugin", description="Run the device plugin."
    )
    scan = commands.add_parser(
        "scan",
        parents=[common],
        help="print what would be advertised and why",
        description="Print every candidate device, its verdict and the rule behind it.",
    )
    scan.add_argument(
        "--output", "-o", type=_for_argparse(choice_of(OUTPUTS)), default="table",
        help="table (default) or json",
    )  # fmt: skip
    return parser


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    """Flags first, then the `PDP_…` twins, then the defaults. Exits 2 naming a bad value."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    for option in OPTIONS:
        dest = option.flag.lstrip("-").replace("-", "_")
        if getattr(args, dest) is not None:
            continue
        if option.env in environ:
            text = environ[option.env]
            try:
                value = option.convert(text)
            except ValueError as error:
                parser.exit(2, f"{parser.prog}: error: {option.env}={text!r}: {error}\n")
        else:
            value = option.convert(option.default)
        setattr(args, dest, value)
    return args


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc's own logger is chatty at debug; it follows ours but never below info.
    logging.getLogger("grpc").setLevel(max(logging.INFO, root.level))


def scan_report(resource: str, snapshot: DeviceSnapshot, result: ScanResult) -> dict[str, Any]:
    """The `scan --output json` document (format fixed in docs/architecture.md)."""
    return {
        "resource": resource,
        "devices": [
            {"id": d.id, "health": d.health, "numa_nodes": list(d.numa_nodes)}
            for d in snapshot.devices
        ],
        "candidates": [
            {
                "path": c.path,
                "host_path": c.host_path,
                "verdict": c.verdict,
                "rule": c.rule,
                "reason": c.reason,
                "kind": c.kind,
                "rdev": f"{c.rdev[0]}:{c.rdev[1]}" if c.rdev is not None else "",
                "identity": c.identity,
                "problem": c.problem,
                "numa_nodes": list(c.numa_nodes),
            }
            for c in result.candidates
        ],
    }


def scan_table(report: Mapping[str, Any]) -> str:
    """The same report for people: candidates, then the IDs that would be advertised."""
    header = ("VERDICT", "HOST PATH", "RULE", "REASON")
    rows = [header] + [
        (
            c["verdict"],
            c["host_path"],
            c["rule"],
            c["reason"] + (f"; unhealthy: {c['problem']}" if c.get("problem") else ""),
        )
        for c in report["candidates"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1]
        for row in rows
    ]
    lines.append("")
    lines.append(f"{report['resource']}: {len(report['devices'])} device IDs would be advertised")
    lines.extend(f"  {d['id']}  {d['health']}" for d in report["devices"])
    return "\n".join(line.rstrip() for line in lines) + "\n"


def run_scan(args: argparse.Namespace, out: TextIO) -> int:
    try:
        config, warnings = load_resources(args.config, args.resource)
    except ConfigError as error:
        log.error("cannot scan without a valid config: %s", error)
        return 2
    for warning in warnings:
        log.warning("%s", warning)
    host_use = read_host_use(args.host_proc, args.sys_root)
    if host_use.error:
        log.warning("every block device is refused: %s", host_use.error)
    result = scan_resources(config, args.dev_root, args.sys_root, host_use)
    reports = []
    for resource in config.resources:
        part = result.part(resource.name) if isinstance(result, ResourcesScan) else result
        state = DeviceState(naming=naming_for(resource))
        state.update(part, resource.config)
        reports.append(scan_report(resource.name, state.current(), part))
    single = len(config.resources) == 1 and config.resources[0].single
    if args.output == "json":
        # IBM's one-resource file keeps its document; a resources list is grouped.
        document: dict[str, Any] = reports[0] if single else {"resources": reports}
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write("\n".join(scan_table(report) for report in reports))
    return 0


@dataclass(frozen=True)
class Watching:
    """The running watchers, for the probes and for shutdown."""

    configs: ConfigWatcher
    devices: DeviceWatcher
    threads: tuple[threading.Thread, ...]

    def not_ready(self) -> str | None:
        """Why nothing can be advertised yet: no valid config has been read."""
        if self.configs.current() is not None:
            return None
        error = self.configs.last_error
        why = f"{error}" if error is not None else f"{self.configs.path} not read yet"
        return f"no valid config yet, nothing is advertised ({why})"


def start_watchers(
    args: argparse.Namespace, state: DeviceState, metrics: PluginMetrics, stopping: threading.Event
) -> Watching:
    """``state`` is usually a ResourceStates: the one discovery pass feeds every resource."""
    """First scan now (so the first ListAndWatch is complete), then watch in a thread."""
    from power_device_plugin.watch import ConfigWatcher, DeviceWatcher

    def on_scan(result: ScanResult, seconds: float) -> None:
        metrics.scan_duration.observe(seconds)
        metrics.record_snapshot(state.current())
        if isinstance(state, ResourceStates):
            for name, one in state.states().items():
                metrics.record_resource_snapshot(name, one.current())

    metrics.config_loaded.set(0)
    configs = ConfigWatcher(
        args.config,
        on_error=lambda error: metrics.config_errors.inc(),
        on_change=lambda config, warnings: metrics.config_loaded.set(1),
        load=lambda path: load_resources(path, args.resource),
    )
    watcher = DeviceWatcher(
        state,
        configs,
        args.dev_root,
        args.sys_root,
        args.host_proc,
        poll_interval=DEVICE_POLL_SECONDS,
        on_scan=on_scan,
        on_config_refused=lambda error: metrics.config_errors.inc(),
        scanner=scan_resources,
        capacity=capacity_of,
    )
    try:
        watcher.check()
    except Exception:
        # Fail closed: nothing is advertised, and the watcher tries again next round.
        log.exception("first device scan failed; trying again in %.2fs", DEVICE_POLL_SECONDS)
    thread = threading.Thread(
        target=watcher.run, args=(stopping,), name="device-watch", daemon=True
    )
    thread.start()
    return Watching(configs, watcher, (thread,))


def run_serve(args: argparse.Namespace) -> int:
    from power_device_plugin.health import HealthServer, Probes, parse_listen, stalled
    from power_device_plugin.notify import WakingEvent

    # Setting it also wakes the watchers blocked waiting for kernel notifications.
    stopping = WakingEvent()
    install_stop_handlers(stopping)
    log.info("power-device-plugin %s starting", __version__)
    metrics = PluginMetrics()
    plugins = ResourcePlugins(args, metrics)
    # Until a valid config says otherwise, the flag's one resource is served with no
    # units (fail closed): the kubelet shows it with capacity 0.
    placeholder = ResourceConfig(args.resource, PluginConfig(), single=True)
    states = ResourceStates(
        plugins.make_state, plugins.added, plugins.removed, initial=(placeholder,)
    )
    watching = start_watchers(args, states, metrics, stopping)
    # grpc and the stubs are imported after the first scan (by start_all): the memory
    # the scan freed is then reused by their modules instead of staying behind as
    # holes in the heap (~0.5 MiB of RSS at 1000 devices). Nothing is served before
    # the first scan anyway.
    plugins.start_all()

    def not_ready() -> str | None:
        problems = [p for p in (watching.not_ready(), plugins.not_ready()) if p]
        return "; ".join(problems) if problems else None

    def not_live() -> str | None:
        return stalled((*plugins.heartbeats(), watching.devices.heartbeat))

    probes = Probes(not_ready=not_ready, not_live=not_live)
    try:
        health = HealthServer(parse_listen(args.listen), probes, metrics)
    except OSError as error:
        log.error("cannot listen on %s for /healthz, /readyz, /metrics: %s", args.listen, error)
        stopping.set()
        plugins.stop_all()
        return 1
    health.start()
    log.info("health and metrics on %s", args.listen)
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        stopping.set()
        plugins.stop_all()
        health.stop()
        for thread in watching.threads:
            thread.join(timeout=1.0)
    return 0


@dataclass
class ResourcePlugin:
    """One configured resource as the kubelet sees it: a plugin of its own."""

    name: str
    socket_name: str
    state: RepublishingState
    keeper: CdiSpecKeeper
    stopping: WakingEvent
    metrics: PluginMetrics
    lifecycle: PluginLifecycle | None = None
    threads: tuple[threading.Thread, ...] = ()


class ResourcePlugins:
    """The plugins of every configured resource: each has its own state, CDI spec keeper,
    socket, gRPC server, registration and lifecycle thread.

    ``make_state``, ``added`` and ``removed`` are ResourceStates' hooks: a resource
    added to the config is served as soon as its first list is built; a removed one
    has its server stopped, its socket and its CDI spec removed (the kubelet sees its
    socket go). Nothing is served before :meth:`start_all` (after the first scan).
    """

    def __init__(self, args: argparse.Namespace, metrics: PluginMetrics) -> None:
        self._args = args
        self._metrics = metrics
        self._lock = threading.Lock()
        self._plugins: dict[str, ResourcePlugin] = {}
        self._started = False

    def make_state(self, resource: ResourceConfig) -> DeviceState:
        from power_device_plugin.notify import WakingEvent

        naming = naming_for(resource)
        metrics = self._metrics.for_resource(resource.name)
        keeper = CdiSpecKeeper(self._args.cdi_dir, naming.cdi_kind, metrics)
        state = RepublishingState(naming=naming, before_publish=keeper.write)
        keeper.republish = state.publish_again
        socket = self._args.socket_name if resource.single else socket_name_for(resource.name)
        plugin = ResourcePlugin(resource.name, socket, state, keeper, WakingEvent(), metrics)
        with self._lock:
            self._plugins[resource.name] = plugin
        return state

    def added(self, name: str, state: DeviceState) -> None:
        with self._lock:
            plugin = self._plugins.get(name)
            start = self._started and plugin is not None and not plugin.threads
        if start and plugin is not None:
            self._start(plugin)

    def removed(self, name: str, state: DeviceState) -> None:
        with self._lock:
            plugin = self._plugins.pop(name, None)
        if plugin is not None:
            self._stop(plugin)

    def start_all(self) -> None:
        with self._lock:
            self._started = True
            waiting = [p for p in self._plugins.values() if not p.threads]
        for plugin in waiting:
            self._start(plugin)

    def _start(self, plugin: ResourcePlugin) -> None:
        from power_device_plugin.lifecycle import Endpoint, PluginLifecycle
        from power_device_plugin.server import DevicePluginServicer

        # Before registration: no spec of an earlier run outlives this start.
        plugin.keeper.clear_stale()
        servicer = DevicePluginServicer(plugin.state, plugin.metrics, plugin.stopping)
        endpoint = Endpoint(self._args.plugin_dir, plugin.socket_name, plugin.name)
        plugin.lifecycle = PluginLifecycle(endpoint, servicer, plugin.metrics, plugin.stopping)
        plugin.threads = (
            threading.Thread(
                target=plugin.keeper.run,
                args=(plugin.stopping,),
                name=f"cdi-spec-retry {plugin.name}",
                daemon=True,
            ),
            threading.Thread(
                target=plugin.lifecycle.run, name=f"kubelet {plugin.name}", daemon=True
            ),
        )
        for thread in plugin.threads:
            thread.start()

    def _stop(self, plugin: ResourcePlugin) -> None:
        plugin.stopping.set()
        plugin.state.close_subscriptions()
        plugin.keeper.stop()
        for thread in plugin.threads:
            thread.join(timeout=2.0)
        if plugin.threads:
            # Only a resource that was served: the placeholder a first config replaces
            # never kept a spec, and the file of its kind may be another plugin's.
            remove_cdi_spec(self._args.cdi_dir, plugin.keeper.kind)
        self._metrics.forget_resource(plugin.name)

    def stop_all(self) -> None:
        with self._lock:
            plugins = list(self._plugins.values())
            self._plugins.clear()
        for plugin in plugins:
            plugin.stopping.set()
        for plugin in plugins:
            self._stop(plugin)

    def plugins(self) -> list[ResourcePlugin]:
        with self._lock:
            return list(self._plugins.values())

    def not_ready(self) -> str | None:
        """Which resources are not registered and streamed, or whose spec is failing."""
        problems = []
        for plugin in self.plugins():
            if plugin.lifecycle is None or not plugin.lifecycle.ready():
                problems.append(
                    f"{plugin.name}: not registered with the kubelet or no ListAndWatch stream"
                )
            if plugin.keeper.problem:
                problems.append(f"{plugin.name}: {plugin.keeper.problem}")
        return "; ".join(problems) if problems else None

    def heartbeats(self) -> list[Heartbeat]:
        return [p.lifecycle.heartbeat for p in self.plugins() if p.lifecycle is not None]


class RepublishingState(DeviceState):
    """A DeviceState that can publish its last scan again, for the CDI spec keeper: after
    a spec could not be written the snapshot names no CDI device, and once the spec can
    be written the same scan is published again, with them. The last scan is kept only
    while the spec is failing (a scan of 1000 devices is not worth its memory otherwise)."""

    def __init__(
        self, naming: GrantNaming, before_publish: Callable[[DeviceSnapshot], None]
    ) -> None:
        super().__init__(naming=naming, before_publish=before_publish)
        # Re-entrant: publish_again() calls update() with it held, so no newer scan can
        # be published between reading the last one and publishing it again.
        self._last_lock = threading.RLock()
        self._last: tuple[ScanResult, PluginConfig] | None = None

    def update(self, result: ScanResult, config: PluginConfig) -> bool:
        with self._last_lock:
            changed = super().update(result, config)
            self._last = (result, config) if self.cdi_problem else None
            return changed

    def publish_again(self) -> None:
        """Publish the last scan again if its CDI spec could not be written."""
        with self._last_lock:
            if self._last is not None:
                self.update(*self._last)


class CdiSpecKeeper:
    """Keeps the plugin's CDI spec file true to what grants name, and says when it cannot.

    - :meth:`write` is the DeviceState's ``before_publish``: it writes the spec of each
      snapshot (or removes it when the snapshot names no CDI device).
    - :meth:`clear_stale` runs at start, after the first scan and before registration:
      a spec an earlier run left (``kill -9``, a config made invalid while it was down)
      is removed unless the first scan already rewrote or removed it.
    - ``problem`` is "" while the file is what grants need, else why not: ``/readyz``
      answers 503 with it and ``pdp_cdi_spec_failing`` is 1.
    - :meth:`run` (a thread) retries every ``CDI_RETRY_SECONDS`` while there is a
      problem, so a spec comes back within seconds of space or permission returning.
    """

    def __init__(self, directory: Path, kind: str, metrics: PluginMetrics) -> None:
        self.directory = directory
        self.kind = kind
        self.republish: Callable[[], None] = lambda: None
        self._metrics = metrics
        self._lock = threading.Lock()  # one file operation at a time
        self._touched = False  # a snapshot's write (or removal) has run
        self._stale_left = False  # clear_stale failed and no write has run since
        self._failing_since: float | None = None
        self._wake = threading.Event()  # set while there is a problem, and to stop
        self.problem = ""

    def write(self, snapshot: DeviceSnapshot) -> None:
        devices = snapshot.cdi_spec_devices()
        with self._lock:
            self._touched = True
            self._stale_left = False
            try:
                written = cdi.keep_spec(self.directory, self.kind, devices, snapshot.device_owner)
            except Exception as error:
                # The grants of this snapshot name no CDI device: a spec left in place
                # would only describe an older list (unlinking needs no free space).
                with contextlib.suppress(OSError):
                    cdi.remove_spec(self.directory, self.kind)
                self._failed(error)
                raise
            self._fine()
        if written is not None:
            log.debug("CDI spec %s holds %d devices", written, len(devices))

    def clear_stale(self) -> None:
        """Remove a spec left from an earlier run, unless this run has kept it already."""
        with self._lock:
            if self._touched:
                return
            try:
                removed = cdi.remove_spec(self.directory, self.kind)
            except OSError as error:
                if not self._stale_left:
                    log.error("cannot remove a CDI spec left from an earlier run: %s", error)
                self._stale_left = True
                self._failed(error)
                return
            self._stale_left = False
            self._fine()
        if removed:
            log.info(
                "removed the CDI spec %s left from an earlier run: no grant names it now",
                self.directory / cdi.spec_file_name(self.kind),
            )

    def _failed(self, error: BaseException) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self.problem = (
            f"CDI spec not kept: {error}; grants name no CDI device until it is "
            f"(retrying every {CDI_RETRY_SECONDS:g}s)"
        )
        self._metrics.cdi_spec_failing.set(1)
        self._wake.set()

    def _fine(self) -> None:
        if self._failing_since is not None:
            log.info(
                "CDI spec kept again in %s after %.1fs of failures",
                self.directory,
                time.monotonic() - self._failing_since,
            )
        self._failing_since = None
        self.problem = ""
        self._metrics.cdi_spec_failing.set(0)
        self._wake.clear()

    def retry(self) -> None:
        """Try once more what failed: the stale spec's removal, or the last scan's spec."""
        if self._stale_left:
            self.clear_stale()
        else:
            self.republish()

    def run(self, stopping: threading.Event) -> None:
        """Retry while there is a problem, until ``stopping`` is set (then call :meth:`stop`)."""
        while not stopping.is_set():
            self._wake.wait()
            if stopping.wait(CDI_RETRY_SECONDS):
                return
            try:
                self.retry()
            except Exception as error:  # the problem says why; the next retry comes anyway
                log.debug("CDI spec retry failed: %s", error)

    def stop(self) -> None:
        """Wake :meth:`run` so it sees ``stopping``."""
        self._wake.set()


def remove_cdi_spec(directory: Path, kind: str) -> None:
    """A clean stop leaves no spec behind: its names would outlive the plugin."""
    try:
        if cdi.remove_spec(directory, kind):
            log.info("removed the CDI spec from %s", directory)
    except OSError as error:
        log.error("cannot remove the CDI spec from %s: %s", directory, error)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parse_args(
        sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ
    )
    configure_logging(args.log_level, args.log_format)
    if args.command == "scan":
        return run_scan(args, sys.stdout)
    return run_serve(args)


def install_stop_handlers(stopping: threading.Event) -> None:
    """SIGTERM and SIGINT set `stopping`; the loops notice and wind down."""

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
