"""A stand-in for the kernel's uevent socket: datagrams in the kernel's format, sent
through a socketpair to a ``UeventSocket`` that skips the sender check."""

from __future__ import annotations

import socket

from power_device_plugin.uevents import UeventSocket, format_uevent


class UeventFeed:
    def __init__(self) -> None:
        self._ours, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sources: list[UeventSocket] = []
        self.seqnum = 0

    def source(self) -> UeventSocket:
        """The receiving end, as the notifier's uevent source (made once)."""
        if not self.sources:
            self.sources.append(UeventSocket(self._theirs, kernel_only=False))
        return self.sources[0]

    def send_raw(self, data: bytes) -> None:
        self._ours.send(data)

    def send(
        self,
        action: str,
        name: str,
        number: tuple[int, int] | None = None,
        *,
        devpath: str = "",
        subsystem: str = "block",
        devtype: str = "disk",
    ) -> None:
        """One event of the block device ``name`` (``loop3``, ``dm-0``, ``sdb``)."""
        self.seqnum += 1
        extra = {"DEVNAME": name, "DEVTYPE": devtype} if subsystem == "block" else {}
        if subsystem != "block":
            extra["DEVTYPE"] = devtype
        if number is not None:
            extra.update({"MAJOR": str(number[0]), "MINOR": str(number[1])})
        path = devpath or f"/devices/virtual/block/{name}"
        self.send_raw(format_uevent(action, path, subsystem, extra, self.seqnum))

    def close(self) -> None:
        self._ours.close()
        if not self.sources:
            self._theirs.close()
