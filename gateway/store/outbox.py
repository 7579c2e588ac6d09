"""The durable outbox: an at-least-once, on-disk queue of records between producers and the uplink.

Storage
    One SQLite file in WAL mode with ``synchronous=FULL`` under the service's state directory. All
    SQLite work runs in ONE thread owned by the outbox (a single-worker executor; the connection is
    created in that thread), so the asyncio loop never waits for an fsync.

Appending (group commit)
    :meth:`Outbox.append` only adds a tuple to the open batch and returns that batch's future: one
    future shared by every record of the batch. A batch is sealed when it is ``commit_interval``
    old or holds ``commit_records`` records; at most one commit runs at a time and every batch
    sealed meanwhile rides in the next one (one transaction, one fsync), so a slow SD card gets
    fewer, larger commits. A batch's future resolves (on the loop, via ``call_soon_threadsafe``)
    once its transaction is committed and fsynced, or raises :class:`OutboxError` if it was
    rejected. The future is shared: await it through :func:`asyncio.shield` (as :meth:`put` does)
    if you may cancel the wait.

Cost
    The loop side of an append is a tuple added to a list (about 1 us); the database thread inserts
    64 rows per statement, deletes acknowledged ids by ranges and keeps running totals in memory
    (no ``SUM()`` per commit). Only two small indexes exist: the records without ts, and the
    segments. ``benchmarks/outbox_bench.py`` measures it.

Ids and order
    Ids are assigned at append time, strictly increasing; the highest one is also kept in ``meta``
    so they keep increasing across restarts even when the queue was emptied. Order is the id, never
    a timestamp: a wall-clock step cannot reorder, drop or duplicate records.

Delivery
    :meth:`read` returns committed records after an id; :meth:`ack` deletes them (batched into the
    next commit). Nothing is deleted before its ack, except by the bounds below: a crash between a
    publish and the commit of its ack gives duplicates, never losses.

Bounds (drops are counted per reason in :meth:`stats`; each drop event is logged once with its
count, and events of one reason at most once per 10 s, their counts added up)
    * ``size``: the bytes of the queued records (``Record.size``: body + device + 32, a running
      total kept in memory, recomputed only at open) may not exceed ``max_bytes``. Over the bound,
      the oldest records of the kinds in ``DROPPABLE_FIRST`` go first, then the oldest of any kind,
      down to 98 % of the bound (the slack keeps drops to one event per ~2 % of inflow).
    * ``age``: records whose ``ts`` is older than ``max_age_s`` are dropped (checked at each commit
      and once a second when idle, only while the clock is synchronised). There is no index on
      ``ts``: each commit group is a row of the small ``seg`` table with a lower bound of its
      records' ts, and only the groups whose bound is too old are searched. Records without a ``ts``
      are never aged out. (A synchronised clock that steps forward by more than ``max_age_s``
      does age records out: that is the bound doing its job on the new time.)
    * ``disk_full``: the outbox never fills the disk itself. With less than 64 KiB + 3x the batch
      free, a commit first makes sure the database file has enough free pages for its inserts,
      dropping the oldest records of droppable kinds for the missing ones, so the file stops growing
      and the queue keeps about its size; if that is impossible (nothing droppable left) the batch
      is refused, keeping the last free blocks for acks, deletes and checkpoints (with less than
      64 MiB free the WAL is also checkpointed after every commit, so a full disk can still rewrite
      it). If SQLite still reports ``SQLITE_FULL`` (someone else filled the disk), the transaction
      is rolled back, the acks are applied in small transactions, the oldest droppable records
      (about twice the batch plus 64 KiB) are deleted in small transactions, and the commit is
      retried once; if it fails again the batch is rejected: its future raises
      ``OutboxError("outbox: disk full at <path>: N records not accepted")``. Acks that could not
      be applied are kept for the next commit. A read-only file system or an I/O error rejects the
      batch the same way; SQLite rolls the transaction back, so the queue is never half-written.

Timestamps and the clock (see :mod:`gateway.core.clock`)
    ``append(ts_ms=None)`` stamps the record with the wall clock when it is synchronised; before
    that, the record is stored with ``ts`` NULL and (boot, monotonic ms). At every commit (and once a
    second when idle) the outbox checks the clock (cached, cheap); once synchronised, the current
    boot's unstamped records are re-stamped in one UPDATE (a partial index holds just them):
    ``ts = mono + (wall - mono)``, i.e. the wall time at which each record was taken. Unstamped
    records of an earlier boot can never be re-stamped (that boot's offset is unknown).

    ``unsynced="hold"``: :meth:`read` stops before the first record that is still held
    (head-of-line, so the order per device is never broken). A record of the current boot is held
    until it is re-stamped or until it is ``hold_max_s`` old by the monotonic clock; records of an
    earlier boot are held for ``hold_max_s`` measured from when this process opened the outbox (the
    first time it saw them). Released records are returned with ``ts_ms=None`` (the uplink then
    lets the server stamp them). ``unsynced="send_without_ts"``: never held.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import sqlite3
from collections.abc import Iterable
from concurrent.futures import Future as CFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import ClassVar, Literal

from gateway.core.clock import Clock
from gateway.core.records import DROPPABLE_FIRST, Record, RecordKind

__all__ = ["SCHEMA_VERSION", "Outbox", "OutboxError", "OutboxLimits", "OutboxStats"]

#: Version of the on-disk schema written by this code; a file with a higher one is refused.
SCHEMA_VERSION = 1

_RECORD_OVERHEAD = 32  # as Record.size
_PAGE_SIZE = 4096
_WAL_AUTOCHECKPOINT_PAGES = 4000  # ~16 MiB of WAL between checkpoints: few SD-card checkpoints
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # the WAL file is truncated to this after a checkpoint
_CACHE_KIB = 8192
_BUSY_TIMEOUT_MS = 5000
_SIZE_LOW_WATER = 0.98  # size drops go down to 98 % of max_bytes
_DISK_FULL_MARGIN = 64 * 1024
# Free space kept for the WAL and for checkpoints: below it (plus 3x the batch), a commit makes sure
# the database file has enough free pages for its inserts, dropping the oldest droppable records
# for the missing ones ("disk_full"), so that it reuses pages instead of growing the file into the
# last free blocks. The queue then stays about the same size while the disk is full.
_RESERVE_BYTES = 64 * 1024
_DROP_LOG_INTERVAL_S = 10.0  # drop events of one reason are logged at most this often (counts add up)
_CHUNK_BYTES = 32 * 1024  # disk full: records dropped per transaction
_ACK_CHUNK = 64  # disk full (or a failed commit): acks applied per transaction
_HOUSEKEEPING_S = 1.0
# Below this much free space, the WAL is checkpointed after every commit, so that when the disk does
# fill up the WAL holds nothing un-checkpointed: its file can then be rewritten from the start (no
# new space needed) to delete records and reuse their pages. With a WAL full of pages that are not
# yet in the database file, a full disk can neither checkpoint nor delete.
_LOW_SPACE_BYTES = 64 * 1024 * 1024

# SQLite primary result codes (extended codes carry them in the low byte).
_SQLITE_PERM = 3
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

_KINDS: dict[int, RecordKind] = {int(k): k for k in RecordKind}
_DROPPABLE_SQL = ",".join(str(int(k)) for k in sorted(DROPPABLE_FIRST))

# Rows as bound to the INSERTs. Never bind None (or an IntEnum): the sqlite3 module sends those through
# its adaptation protocol, which costs more than the insert itself. Stamped rows leave boot/mono to
# their default NULL, unstamped rows leave ts NULL; n (the accounted size) is last in both.
_Row = tuple[int, int, str, int, str, int]  # (id, kind, device, ts, body, n)
_URow = tuple[int, int, str, int, int, str, int]  # (id, kind, device, boot, mono, body, n)
_row_size = itemgetter(-1)

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
    "CREATE TABLE boots (n INTEGER PRIMARY KEY, boot_id TEXT NOT NULL UNIQUE)",
    # id: assigned by the outbox, strictly increasing; ts: wall ms, NULL when taken before the clock
    # was synchronised, then (boot, mono) say when; n: the accounted size of the record.
    "CREATE TABLE outbox (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, device TEXT NOT NULL,"
    " ts INTEGER, boot INTEGER, mono INTEGER, body TEXT NOT NULL, n INTEGER NOT NULL)",
    # Records without ts only (rare: taken before the clock was synchronised): re-stamping, hold.
    "CREATE INDEX outbox_unstamped ON outbox (id) WHERE ts IS NULL",
    # Commit groups ("segments"): ids first_id..last_id, `count` records when written, min_ts a lower
    # bound of their ts (NULL: none stamped). The age bound and oldest_ts_ms use these few rows
    # instead of an index on every record's ts (which costs ~15 % of the outbox's CPU). A segment
    # is re-measured exactly when the age bound visits it, and deleted once its records are gone.
    "CREATE TABLE seg (last_id INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, count INTEGER NOT NULL, min_ts INTEGER)",
    "CREATE INDEX seg_min_ts ON seg (min_ts)",
)
_SEG_MIN = 256  # a new commit group extends the newest segment while that one has fewer records
# Inserts go _MULTI rows per statement: the sqlite3 module releases the GIL around every step, and
# with one row per step a busy event loop makes the database thread wait for the GIL once per row.
_MULTI = 64
_INSERT = "INSERT INTO outbox (id, kind, device, ts, body, n) VALUES (?,?,?,?,?,?)"
_INSERT_MULTI = "INSERT INTO outbox (id, kind, device, ts, body, n) VALUES " + ",".join(["(?,?,?,?,?,?)"] * _MULTI)
_INSERT_UNSTAMPED = "INSERT INTO outbox (id, kind, device, boot, mono, body, n) VALUES (?,?,?,?,?,?,?)"
_INSERT_UNSTAMPED_MULTI = "INSERT INTO outbox (id, kind, device, boot, mono, body, n) VALUES " + ",".join(
    ["(?,?,?,?,?,?,?)"] * _MULTI
)
_SELECT_AFTER = "SELECT id, kind, device, ts, body, n FROM outbox WHERE id > ? ORDER BY id LIMIT ?"
_SELECT_UNSTAMPED = "SELECT id, boot, mono FROM outbox WHERE ts IS NULL AND id BETWEEN ? AND ? ORDER BY id"
_col_id, _col_ts, _col_n = itemgetter(0), itemgetter(3), itemgetter(5)
# Only in an outbox opened with by_device=True (per-device sessions read each device's records alone).
_DEVICE_INDEX = "CREATE INDEX IF NOT EXISTS outbox_device ON outbox (device, id)"
_SELECT_DEVICE_AFTER = (
    "SELECT id, kind, device, ts, body, n, boot, mono FROM outbox WHERE device = ? AND id > ? ORDER BY id LIMIT ?"
)


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    max_bytes: int = 256 * 1024 * 1024  # approx bytes of queued bodies
    max_age_s: float = 30 * 86400  # records older than this (by ts) are dropped
    unsynced: Literal["hold", "send_without_ts"] = "hold"
    hold_max_s: float = 3600.0  # "hold": after this long unsynced, send without ts

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError("outbox max_bytes must be > 0")
        if self.max_age_s <= 0:
            raise ValueError("outbox max_age_s must be > 0")
        if self.unsynced not in ("hold", "send_without_ts"):
            raise ValueError(f"outbox unsynced must be 'hold' or 'send_without_ts', not {self.unsynced!r}")
        if self.hold_max_s < 0:
            raise ValueError("outbox hold_max_s must be >= 0")


class OutboxError(Exception):
    """The outbox cannot do what was asked; the message is one line and names the file."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    records: int  # queued (committed, not acked, not dropped)
    bytes: int  # their accounted size
    oldest_ts_ms: int | None  # about the oldest ts among them (exact to within one commit group)
    appended: int  # append() calls since open
    acked: int  # records deleted by ack since open
    dropped: dict[str, int]  # reason ("size", "age", "disk_full") -> records dropped since open
    rejected: int  # records whose commit failed (their future raised OutboxError)
    restamped: int  # records given a ts after the clock was synchronised
    commits: int  # write transactions committed (one fsync each)


def _min_ts(rows: list[_Row]) -> int | None:
    return min(map(_col_ts, rows)) if rows else None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _errcode(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    msg = str(exc).lower()
    if "disk is full" in msg:
        return _SQLITE_FULL
    if "readonly" in msg or "read-only" in msg:
        return _SQLITE_READONLY
    if "disk i/o error" in msg:
        return _SQLITE_IOERR
    if "malformed" in msg:
        return _SQLITE_CORRUPT
    if "not a database" in msg:
        return _SQLITE_NOTADB
    return None


# --------------------------------------------------------------------------------------------------
# Messages between the loop and the database thread


@dataclass(slots=True)
class _Batch:
    fut: asyncio.Future[None]
    rows: list[_Row] = field(default_factory=list)
    urows: list[_URow] = field(default_factory=list)


@dataclass(slots=True)
class _Job:
    rows: list[_Row]
    urows: list[_URow]
    acks: list[int]
    restamp_offset: int | None  # set when the clock is synced and there may be rows to re-stamp
    age_cutoff_ms: int | None  # set when the clock is synced
    store_boot: bool  # unstamped rows in this job: make sure this boot is in `boots`


@dataclass(slots=True)
class _Result:
    error: str | None
    records: int
    bytes: int
    oldest_ts: int | None
    acked: int
    dropped: dict[str, int]
    rejected: int
    restamped: int
    commits: int
    restamp_done: bool = False
    requeue_acks: list[int] | None = None


@dataclass(slots=True)
class _OpenInfo:
    boot_n: int
    boot_stored: bool
    last_id: int
    cur_unstamped: bool
    result: _Result


@dataclass(frozen=True, slots=True)
class _HoldRule:
    """Which unstamped records :meth:`Outbox.read` must not pass yet ("hold" policy)."""

    cur_boot: int
    now_mono: int
    hold_ms: int
    old_release_mono: int  # records of earlier boots are released at this monotonic ms
    synced: bool  # current-boot records are about to be re-stamped: wait for that

    def held(self, boot: int | None, mono: int | None) -> bool:
        if boot == self.cur_boot and mono is not None:
            return self.synced or self.now_mono - mono < self.hold_ms
        return self.now_mono < self.old_release_mono

    def wait_s(self, boot: int | None, mono: int | None) -> float:
        if boot == self.cur_boot and mono is not None:
            left = _HOUSEKEEPING_S * 1000 if self.synced else mono + self.hold_ms - self.now_mono
        else:
            left = self.old_release_mono - self.now_mono
        return min(max(left / 1000.0, 0.001), _HOUSEKEEPING_S)


# --------------------------------------------------------------------------------------------------
# The database side: every method runs in the outbox's own thread.


class _NoRoomError(sqlite3.OperationalError):
    """The disk is (almost) full and no room can be made for the inserts: handled as SQLITE_FULL."""

    def __init__(self) -> None:
        super().__init__("database or disk is full (free space reserved for deletes and checkpoints)")
        self.sqlite_errorcode = _SQLITE_FULL
        self.sqlite_errorname = "SQLITE_FULL"


class _Db:
    def __init__(
        self,
        path: Path,
        limits: OutboxLimits,
        log: logging.Logger,
        boot_id: str,
        factory: type[sqlite3.Connection],
        by_device: bool = False,
    ) -> None:
        self.path = path
        self.by_device = by_device
        self.limits = limits
        self.log = log
        self.boot_id = boot_id
        self.factory = factory
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self.boot_n = 0
        self.records = 0
        self.bytes = 0
        self.oldest_ts: int | None = None
        self.seg_tail: tuple[int, int, int, int | None] | None = None  # newest (last_id, first_id, count, min_ts)
        self.acked = 0
        self.dropped: dict[str, int] = {}
        self.rejected = 0
        self.restamped = 0
        self.commits = 0

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox: {self.path} is closed")
        return self._conn

    def result(self, error: str | None = None) -> _Result:
        return _Result(
            error=error,
            records=self.records,
            bytes=self.bytes,
            oldest_ts=self.oldest_ts,
            acked=self.acked,
            dropped=dict(self.dropped),
            rejected=self.rejected,
            restamped=self.restamped,
            commits=self.commits,
        )

    # ---------------------------------------------------------------------------------------- open

    def _check_dir(self) -> None:
        path = self.path
        directory = path.parent
        if path.is_dir():
            raise OutboxError(f"outbox: {path} is a directory, not a queue file")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(
                f"outbox: cannot create state directory {directory}: {_one_line(exc.strerror or exc)}"
            ) from None
        if not directory.is_dir():
            raise OutboxError(f"outbox: state directory {directory} is not a directory")
        probe = directory / f".{path.name}.probe-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # Opening an existing queue on a full disk is fine: it can still be read and acked.
                self.log.warning("outbox: state directory %s is full (%s)", directory, exc.strerror)
            else:
                reason = "read-only file system" if exc.errno == errno.EROFS else exc.strerror or exc
                raise OutboxError(f"outbox: state directory {directory} is not writable: {_one_line(reason)}") from None
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise OutboxError(f"outbox: {path} is not writable (permissions)")

    def _open_error(self, exc: sqlite3.Error) -> OutboxError:
        code = _errcode(exc)
        text = _one_line(exc)
        if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
            return OutboxError(
                f"outbox: {self.path} is corrupt or not an outbox database ({text}); "
                "move it aside to start with an empty queue"
            )
        if code in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_CANTOPEN):
            return OutboxError(f"outbox: cannot write {self.path}: {text}")
        if code == _SQLITE_FULL:
            return OutboxError(f"outbox: disk full at {self.path}: cannot open the queue ({text})")
        return OutboxError(f"outbox: cannot open {self.path}: {text}")

    def _lock(self) -> None:
        """One outbox per file: a second process would assign the same ids. An flock on a side file
        (never on the database: closing another descriptor of it would drop SQLite's own locks)."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.log.warning("outbox: cannot create %s (%s): not locked", lock_path, exc.strerror)
                return
            raise OutboxError(f"outbox: cannot create {lock_path}: {_one_line(exc.strerror or exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutboxError(f"outbox: {self.path} is in use by another outbox (locked: {lock_path})") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def open(self) -> _OpenInfo:
        self._check_dir()
        self._lock()
        try:
            try:
                conn = sqlite3.connect(
                    str(self.path), isolation_level=None, factory=self.factory, timeout=_BUSY_TIMEOUT_MS / 1000
                )
            except sqlite3.Error as exc:
                raise self._open_error(exc) from None
            try:
                info = self._setup(conn)
            except OutboxError:
                conn.close()
                raise
            except sqlite3.Error as exc:
                conn.close()
                raise self._open_error(exc) from None
        except BaseException:
            self._unlock()
            raise
        self._conn = conn
        return info

    def _setup(self, conn: sqlite3.Connection) -> _OpenInfo:
        path = self.path
        conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # only effective on a new file
        row = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        mode = str(row[0]).lower() if row else "?"
        if mode != "wal":
            raise OutboxError(f"outbox: {path}: cannot use WAL mode (journal_mode is {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "meta" not in tables:
                if tables:
                    raise OutboxError(
                        f"outbox: {path} is not an outbox database (it has tables {', '.join(sorted(tables))})"
                    )
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("schema_version", SCHEMA_VERSION), ("last_id", 0)],
                )
            else:
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                version = meta.get("schema_version")
                if not isinstance(version, int):
                    raise OutboxError(
                        f"outbox: {path} is corrupt or not an outbox database (no schema version); "
                        "move it aside to start with an empty queue"
                    )
                if version > SCHEMA_VERSION:
                    raise OutboxError(
                        f"outbox: {path} has schema version {version}, newer than this gateway's "
                        f"{SCHEMA_VERSION}; upgrade the gateway or move the file aside"
                    )
                if not {"outbox", "boots", "seg"} <= tables:
                    raise OutboxError(
                        f"outbox: {path} is corrupt (tables missing); move it aside to start with an empty queue"
                    )
            if self.by_device:
                conn.execute(_DEVICE_INDEX)
            meta_last = conn.execute("SELECT value FROM meta WHERE key = 'last_id'").fetchone()
            hit = conn.execute("SELECT n FROM boots WHERE boot_id = ?", (self.boot_id,)).fetchone()
            if hit is not None:
                self.boot_n, boot_stored = int(hit[0]), True
            else:
                top = conn.execute("SELECT max(n) FROM boots").fetchone()[0]
                self.boot_n, boot_stored = (int(top) if top is not None else 0) + 1, False
            # The running totals: computed once here (this also walks the whole table).
            count, total, max_id = conn.execute("SELECT count(*), total(n), max(id) FROM outbox").fetchone()
            self.records, self.bytes = int(count), int(total)
            self.oldest_ts = conn.execute("SELECT min(min_ts) FROM seg").fetchone()[0]
            self.seg_tail = self._load_tail(conn)
            last_id = max(int(meta_last[0]) if meta_last else 0, int(max_id) if max_id is not None else 0)
            cur_unstamped = (
                conn.execute("SELECT 1 FROM outbox WHERE ts IS NULL AND boot = ? LIMIT 1", (self.boot_n,)).fetchone()
                is not None
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        # Forget earlier boots without unstamped records and empty segments (best effort: the disk
        # may be full).
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "DELETE FROM boots WHERE n != ? AND n NOT IN (SELECT boot FROM outbox WHERE ts IS NULL)",
                (self.boot_n,),
            )
            conn.execute(
                "DELETE FROM seg WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE id BETWEEN seg.first_id AND seg.last_id)"
            )
            tail = self._load_tail(conn)
            conn.execute("COMMIT")
            self.seg_tail = tail
        except sqlite3.Error as exc:
            self._rollback_conn(conn)
            self.log.debug("outbox: could not prune old boots and segments: %s", exc)
        return _OpenInfo(
            boot_n=self.boot_n,
            boot_stored=boot_stored,
            last_id=last_id,
            cur_unstamped=cur_unstamped,
            result=self.result(),
        )

    def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self.log.warning("outbox: checkpoint of %s at close failed: %s", self.path, _one_line(exc))
        finally:
            conn.close()
            self._unlock()

    # -------------------------------------------------------------------------------------- commit

    @staticmethod
    def _load_tail(conn: sqlite3.Connection) -> tuple[int, int, int, int | None] | None:
        row = conn.execute("SELECT last_id, first_id, count, min_ts FROM seg ORDER BY last_id DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]), row[3])

    def _rollback_conn(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                self.log.warning("outbox: rollback on %s failed: %s", self.path, _one_line(exc))

    def commit(self, job: _Job) -> _Result:
        idle = not job.rows and not job.urows and not job.acks and job.restamp_offset is None
        if idle and not self._bounds_due(job):
            return self.result()
        free = self._free_bytes()
        batch = sum(map(_row_size, job.rows)) + sum(map(_row_size, job.urows))
        room = 0
        if batch and free is not None and free < _RESERVE_BYTES + 3 * batch:
            # pages the inserts will take: records, b-tree and index overhead (~25 %), some slack
            room = (batch * 5 // 4) // _PAGE_SIZE + 2
        try:
            try:
                restamped = self._transaction(job, room)
            except sqlite3.Error as exc:
                self._rollback()
                if _errcode(exc) != _SQLITE_FULL:
                    raise
                # Disk full. Deliver the acks first, in small transactions that each reuse the
                # checkpointed WAL, then make room for the batch and retry once.
                if job.acks:
                    job.acks = self._ack_in_chunks(job.acks)
                if batch:
                    self._make_room(2 * batch + _DISK_FULL_MARGIN)
                restamped = self._transaction(job, room)  # the one retry
        except sqlite3.Error as exc:
            self._rollback()
            return self._reject(job, exc)
        except BaseException:  # not SQLite's: never leave a transaction open behind
            self._rollback()
            raise
        if free is None or free < _LOW_SPACE_BYTES:
            self._checkpoint()
        res = self.result()
        res.restamp_done = restamped
        return res

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _bounds_due(self, job: _Job) -> bool:
        if self.bytes > self.limits.max_bytes:
            return True
        if job.age_cutoff_ms is None or self.oldest_ts is None:
            return False
        return self.oldest_ts < job.age_cutoff_ms

    def _transaction(self, job: _Job, room: int = 0) -> bool:
        """One write transaction; the running totals change only once it is committed. ``room``:
        free pages the database file should have for the inserts (the disk is almost full)."""
        conn = self.conn
        records, nbytes = self.records, self.bytes
        tail = self.seg_tail
        acked = restamped = 0
        deleted = False
        drops: dict[str, int] = {}
        conn.execute("BEGIN IMMEDIATE")
        if job.acks:  # first: the inserts can reuse the pages
            count, size = self._delete_ids(conn, job.acks)
            acked, records, nbytes = count, records - count, nbytes - size
            deleted = True
        if room > 0:
            # The disk is almost full: the inserts must fit in pages the file already has. Free
            # pages by dropping the oldest droppable records (a dropped record frees its page only
            # once the page is empty: try a few times); if that is not possible, refuse the inserts
            # and keep the last free blocks for acks, deletes and checkpoints.
            dropped = dropped_bytes = 0
            for attempt in range(1, 5):
                short = room - int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                if short <= 0:
                    break
                count, size = self._drop_oldest(conn, short * _PAGE_SIZE * attempt, any_kind=False)
                dropped, dropped_bytes = dropped + count, dropped_bytes + size
                if not count:
                    break
            else:
                short = room - int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            if short > 0:
                raise _NoRoomError()
            if dropped:
                drops["disk_full"] = dropped
                records, nbytes = records - dropped, nbytes - dropped_bytes
                deleted = True
        if job.store_boot:
            conn.execute("INSERT OR IGNORE INTO boots (n, boot_id) VALUES (?, ?)", (self.boot_n, self.boot_id))
        rows, urows = job.rows, job.urows
        if rows or urows:
            last_id = 0
            if rows:
                self._insert(conn, _INSERT, _INSERT_MULTI, rows)
                records += len(rows)
                nbytes += sum(map(_row_size, rows))
                last_id = rows[-1][0]
            if urows:
                self._insert(conn, _INSERT_UNSTAMPED, _INSERT_UNSTAMPED_MULTI, urows)
                records += len(urows)
                nbytes += sum(map(_row_size, urows))
                last_id = max(last_id, urows[-1][0])
            conn.execute("UPDATE meta SET value = ? WHERE key = 'last_id'", (last_id,))
            first_id = min(rows[0][0] if rows else last_id, urows[0][0] if urows else last_id)
            tail = self._add_segment(conn, tail, first_id, last_id, len(rows) + len(urows), _min_ts(rows))
        if job.restamp_offset is not None:
            restamped = self._restamp(conn, job.restamp_offset)
            if restamped:
                tail = self._load_tail(conn)
        if job.age_cutoff_ms is not None:
            count, size, tail_touched = self._age_out(conn, job.age_cutoff_ms, tail)
            if count:
                drops["age"] = count
                records, nbytes = records - count, nbytes - size
                deleted = True
            if tail_touched:
                tail = self._load_tail(conn)
        if nbytes > self.limits.max_bytes:
            need = nbytes - int(self.limits.max_bytes * _SIZE_LOW_WATER)
            count, size = self._drop_oldest(conn, need, any_kind=True)
            if count:
                drops["size"] = count
                records, nbytes = records - count, nbytes - size
                deleted = True
        if deleted:
            tail = self._prune_segments(conn, tail, records)
        oldest = conn.execute("SELECT min(min_ts) FROM seg").fetchone()[0]
        conn.execute("COMMIT")
        # Committed: publish the new totals.
        self.records, self.bytes, self.oldest_ts, self.seg_tail = records, nbytes, oldest, tail
        self.acked += acked
        self.restamped += restamped
        self.commits += 1
        for reason, count in drops.items():
            self._count_drop(reason, count)
        if restamped:
            self.log.info("outbox: clock synchronised, re-stamped %d records", restamped)
        return job.restamp_offset is not None

    @staticmethod
    def _add_segment(
        conn: sqlite3.Connection,
        tail: tuple[int, int, int, int | None] | None,
        first_id: int,
        last_id: int,
        count: int,
        min_ts: int | None,
    ) -> tuple[int, int, int, int | None]:
        """Record a commit group: extend the newest segment while it is small, else start one."""
        if tail is not None and tail[2] < _SEG_MIN and tail[0] < first_id:
            t_last, t_first, t_count, t_min = tail
            merged = t_min if min_ts is None else min_ts if t_min is None else min(t_min, min_ts)
            if conn.execute(
                "UPDATE seg SET last_id = ?, count = ?, min_ts = ? WHERE last_id = ?",
                (last_id, t_count + count, merged, t_last),
            ).rowcount:
                return (last_id, t_first, t_count + count, merged)
        conn.execute(
            "INSERT INTO seg (last_id, first_id, count, min_ts) VALUES (?, ?, ?, ?)", (last_id, first_id, count, min_ts)
        )
        return (last_id, first_id, count, min_ts)

    def _restamp(self, conn: sqlite3.Connection, offset: int) -> int:
        """Give this boot's unstamped records ts = mono + offset; lower the segments' min_ts."""
        lo, hi, mono = conn.execute(
            "SELECT min(id), max(id), min(mono) FROM outbox WHERE ts IS NULL AND boot = ?", (self.boot_n,)
        ).fetchone()
        if lo is None:
            return 0
        count = conn.execute(
            "UPDATE outbox SET ts = mono + ?, boot = NULL, mono = NULL WHERE ts IS NULL AND boot = ?",
            (offset, self.boot_n),
        ).rowcount
        low = int(mono) + offset
        conn.execute(
            "UPDATE seg SET min_ts = ? WHERE last_id >= ? AND first_id <= ? AND (min_ts IS NULL OR min_ts > ?)",
            (low, lo, hi, low),
        )
        return int(count)

    @staticmethod
    def _age_out(
        conn: sqlite3.Connection, cutoff: int, tail: tuple[int, int, int, int | None] | None
    ) -> tuple[int, int, bool]:
        """Drop the records older than ``cutoff`` (found through the segments); re-measure the
        segments visited. Returns (records, bytes, whether the newest segment changed)."""
        count = size = 0
        tail_touched = False
        for last_id, first_id in conn.execute(
            "SELECT last_id, first_id FROM seg WHERE min_ts < ?", (cutoff,)
        ).fetchall():
            n, total = conn.execute(
                "SELECT count(*), total(n) FROM outbox WHERE id BETWEEN ? AND ? AND ts < ?", (first_id, last_id, cutoff)
            ).fetchone()
            if n:
                conn.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ? AND ts < ?", (first_id, last_id, cutoff))
                count += int(n)
                size += int(total)
            left, min_ts = conn.execute(
                "SELECT count(*), min(ts) FROM outbox WHERE id BETWEEN ? AND ?", (first_id, last_id)
            ).fetchone()
            if left:
                conn.execute("UPDATE seg SET min_ts = ? WHERE last_id = ?", (min_ts, last_id))
            else:
                conn.execute("DELETE FROM seg WHERE last_id = ?", (last_id,))
            tail_touched = tail_touched or (tail is not None and last_id == tail[0])
        return count, size, tail_touched

    @staticmethod
    def _prune_segments(
        conn: sqlite3.Connection, tail: tuple[int, int, int, int | None] | None, records: int
    ) -> tuple[int, int, int, int | None] | None:
        """After deletes: forget the segments wholly before the oldest record (all of them when the
        queue is empty). Segments emptied in the middle go when the age bound visits them."""
        if records <= 0:
            conn.execute("DELETE FROM seg")
            return None
        head = conn.execute("SELECT min(id) FROM outbox").fetchone()[0]
        if head is None:
            conn.execute("DELETE FROM seg")
            return None
        conn.execute("DELETE FROM seg WHERE last_id < ?", (head,))
        return None if tail is not None and tail[0] < head else tail

    @staticmethod
    def _insert(conn: sqlite3.Connection, one: str, multi: str, rows: list[_Row] | list[_URow]) -> None:
        full = len(rows) - len(rows) % _MULTI
        if full:
            chain = itertools.chain.from_iterable
            conn.executemany(multi, (tuple(chain(rows[i : i + _MULTI])) for i in range(0, full, _MULTI)))
        if full < len(rows):
            conn.executemany(one, rows[full:])

    @staticmethod
    def _delete_ids(conn: sqlite3.Connection, ids: list[int]) -> tuple[int, int]:
        ordered = sorted(set(ids))
        if ordered[-1] - ordered[0] + 1 == len(ordered):
            ranges = [(ordered[0], ordered[-1])]
        else:
            ranges = []
            start = prev = ordered[0]
            for i in ordered[1:]:
                if i != prev + 1:
                    ranges.append((start, prev))
                    start = i
                prev = i
            ranges.append((start, prev))
        count = size = 0
        for lo, hi in ranges:
            n, total = conn.execute(
                "SELECT count(*), total(n) FROM outbox WHERE id BETWEEN ? AND ?", (lo, hi)
            ).fetchone()
            if n:
                conn.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (lo, hi))
                count += int(n)
                size += int(total)
        return count, size

    @staticmethod
    def _drop_oldest(conn: sqlite3.Connection, need: int, *, any_kind: bool) -> tuple[int, int]:
        """Delete the oldest records (droppable kinds first) until ``need`` bytes are freed."""
        count = freed = 0
        passes = [f" WHERE kind IN ({_DROPPABLE_SQL})"]
        if any_kind:
            passes.append("")
        for where in passes:
            if freed >= need:
                break
            cur = conn.execute(f"SELECT id, n FROM outbox{where} ORDER BY id")
            last: int | None = None
            try:
                while freed < need:
                    chunk = cur.fetchmany(1024)
                    if not chunk:
                        break
                    for rid, n in chunk:
                        freed += n
                        count += 1
                        last = rid
                        if freed >= need:
                            break
            finally:
                cur.close()
            if last is not None:
                conn.execute(f"DELETE FROM outbox{where}{' AND' if where else ' WHERE'} id <= ?", (last,))
        return count, freed

    def _count_drop(self, reason: str, count: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count  # logged by the loop side

    def _make_room(self, need: int) -> None:
        """After SQLITE_FULL: delete about ``need`` bytes of the oldest droppable records, in small
        transactions each followed by a checkpoint (so that each one reuses the WAL file)."""
        conn = self.conn
        self._checkpoint()
        dropped = freed = 0
        while freed < need:
            try:
                conn.execute("BEGIN IMMEDIATE")
                count, size = self._drop_oldest(conn, min(need - freed, _CHUNK_BYTES), any_kind=False)
                tail = self._prune_segments(conn, self.seg_tail, self.records - count)
                oldest = conn.execute("SELECT min(min_ts) FROM seg").fetchone()[0]
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self.log.warning(
                    "outbox: disk full at %s and no more room could be made: %s", self.path, _one_line(exc)
                )
                break
            if not count:
                break
            self.records -= count
            self.bytes -= size
            self.oldest_ts, self.seg_tail = oldest, tail
            self.commits += 1
            self._checkpoint()
            dropped += count
            freed += size
        if dropped:
            self._count_drop("disk_full", dropped)

    def _ack_in_chunks(self, acks: list[int]) -> list[int]:
        """Apply acks in small transactions, each followed by a checkpoint (a full disk can still
        take those); returns the ids that could not be applied."""
        conn = self.conn
        ordered = sorted(set(acks))
        for i in range(0, len(ordered), _ACK_CHUNK):
            try:
                conn.execute("BEGIN IMMEDIATE")
                count, size = self._delete_ids(conn, ordered[i : i + _ACK_CHUNK])
                tail = self._prune_segments(conn, self.seg_tail, self.records - count)
                oldest = conn.execute("SELECT min(min_ts) FROM seg").fetchone()[0]
                conn.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                return ordered[i:]
            self.records -= count
            self.bytes -= size
            self.acked += count
            self.oldest_ts, self.seg_tail = oldest, tail
            self.commits += 1
            self._checkpoint()
        return []

    def _reject(self, job: _Job, exc: sqlite3.Error) -> _Result:
        code = _errcode(exc)
        n = len(job.rows) + len(job.urows)
        text = _one_line(exc)
        if not n:
            msg = f"outbox: commit to {self.path} failed ({text})"
        elif code == _SQLITE_FULL:
            msg = f"outbox: disk full at {self.path}: {n} records not accepted"
        elif code in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_CANTOPEN):
            msg = f"outbox: cannot write {self.path} ({text}): {n} records not accepted"
        elif code == _SQLITE_IOERR:
            msg = f"outbox: I/O error on {self.path} ({text}): {n} records not accepted"
        else:
            msg = f"outbox: commit to {self.path} failed ({text}): {n} records not accepted"
        self.rejected += n
        self.log.error("%s", msg)
        # The acks are not lost with the batch: apply them alone, or hand them back for the next commit.
        requeue = self._ack_in_chunks(job.acks) if job.acks else []
        res = self.result(msg)
        res.requeue_acks = requeue or None
        return res

    # ---------------------------------------------------------------------------------------- read

    def read(self, after_id: int, max_records: int, max_bytes: int, rule: _HoldRule | None) -> list[Record]:
        if max_records <= 0:
            return []
        conn = self.conn
        kinds = _KINDS
        try:
            rows = conn.execute(_SELECT_AFTER, (after_id, max_records)).fetchall()
            if not rows:
                return []
            # the longest prefix within max_bytes, at least one record
            cut = bisect.bisect_right(list(itertools.accumulate(map(_col_n, rows))), max_bytes)
            if cut < len(rows):
                rows = rows[: max(cut, 1)]
            if rule is not None and None in map(_col_ts, rows):
                # stop before the first record still held (head-of-line)
                unstamped = conn.execute(_SELECT_UNSTAMPED, (rows[0][0], rows[-1][0])).fetchall()
                for rid, boot, mono in unstamped:
                    if rule.held(boot, mono):
                        rows = rows[: bisect.bisect_left(list(map(_col_id, rows)), rid)]
                        break
            return [Record(r[0], kinds[r[1]], r[2], r[3], r[4]) for r in rows]
        except KeyError as exc:
            raise OutboxError(f"outbox: {self.path} holds a record of unknown kind {exc}") from None
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox: cannot read {self.path}: {_one_line(exc)}") from None

    def read_devices(
        self, queries: list[tuple[str, int]], max_records: int, max_bytes: int, rule: _HoldRule | None
    ) -> list[tuple[list[Record], bool]]:
        """Per (device, after_id): that device's committed records after the id (as :meth:`read`), and
        whether the read stopped before a held record."""
        if not self.by_device:
            raise OutboxError(f"outbox: {self.path} was not opened by device")
        conn = self.conn
        kinds = _KINDS
        out: list[tuple[list[Record], bool]] = []
        try:
            for device, after_id in queries:
                rows = conn.execute(_SELECT_DEVICE_AFTER, (device, after_id, max_records)).fetchall()
                held = False
                records: list[Record] = []
                size = 0
                for rid, kind, dev, ts, body, n, boot, mono in rows:
                    if ts is None and rule is not None and rule.held(boot, mono):
                        held = True
                        break
                    if records and size + n > max_bytes:
                        break
                    size += n
                    records.append(Record(rid, kinds[kind], dev, ts, body))
                out.append((records, held))
        except KeyError as exc:
            raise OutboxError(f"outbox: {self.path} holds a record of unknown kind {exc}") from None
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox: cannot read {self.path}: {_one_line(exc)}") from None
        return out

    def devices(self) -> list[str]:
        try:
            return [str(r[0]) for r in self.conn.execute("SELECT DISTINCT device FROM outbox")]
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox: cannot read {self.path}: {_one_line(exc)}") from None

    def first_after(self, after_id: int) -> tuple[int, int | None, int | None, int | None] | None:
        try:
            row = self.conn.execute(
                "SELECT id, ts, boot, mono FROM outbox WHERE id > ? ORDER BY id LIMIT 1", (after_id,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox: cannot read {self.path}: {_one_line(exc)}") from None
        return None if row is None else (int(row[0]), row[1], row[2], row[3])


def _record_id(record: Record) -> int:
    return record.id


# --------------------------------------------------------------------------------------------------
# The loop side


class Outbox:
    """The durable queue (see the module docstring). Create it with ``await Outbox.open(path)``."""

    #: Test hook (fault injection): the sqlite3.Connection subclass the database thread connects with.
    connection_factory: ClassVar[type[sqlite3.Connection]] = sqlite3.Connection

    def __init__(
        self,
        *,
        path: Path,
        limits: OutboxLimits,
        clock: Clock,
        commit_interval: float,
        commit_records: int,
        log: logging.Logger,
        loop: asyncio.AbstractEventLoop,
        db: _Db,
        executor: ThreadPoolExecutor,
        info: _OpenInfo,
        tail_bytes: int = 0,
    ) -> None:
        """Internal: use :meth:`open`."""
        self._path = path
        self._limits = limits
        self._clock = clock
        self._interval = commit_interval
        self._commit_records = commit_records
        self._log = log
        self._loop = loop
        self._db = db
        self._exec = executor
        self._boot_n = info.boot_n
        self._boot_stored = info.boot_stored
        self._first_id = self._last_id = info.last_id
        self._restamp_pending = info.cur_unstamped
        self._open_mono = clock.mono_ms()
        self._batch: _Batch | None = None
        self._sealed: list[_Batch] = []
        self._acks: list[int] = []
        self._timer: asyncio.Handle | None = None
        self._due = False
        self._inflight = False
        self._closing = False
        self._closed = False
        self._changed: asyncio.Future[None] = loop.create_future()
        self._res = info.result
        self._commits_seen = info.result.commits
        self._drops_logged: dict[str, int] = {}
        self._drops_logged_at: dict[str, float] = {}
        self._housekeeping: asyncio.TimerHandle | None = loop.call_later(_HOUSEKEEPING_S, self._on_housekeeping)
        # The committed tail, in memory: a reader that keeps up (the uplink, almost always) reads the
        # records it just saw committed without a trip to the database thread, where it would wait
        # behind the next group commit's fsync. It holds every committed record with id >= _tail_lo
        # (stamped ones only: a commit with unstamped rows, a rejected commit or a drop restarts it).
        self._tail_max = tail_bytes
        self._tail: list[Record] = []
        self._tail_head = 0  # index of the first live entry (the list is compacted now and then)
        self._tail_sizes: list[int] = []
        self._tail_bytes = 0
        self._tail_lo = self._last_id + 1
        self._tail_acked: set[int] = set()
        self._tail_dropped = sum(info.result.dropped.values())
        self.tail_reads = 0  # reads served from memory
        self.db_reads = 0  # reads that went to the database thread

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        limits: OutboxLimits = OutboxLimits(),  # frozen: sharing the default is safe
        clock: Clock | None = None,
        commit_interval: float = 0.05,
        commit_records: int = 20000,
        log: logging.Logger | None = None,
        by_device: bool = False,
        tail_bytes: int = 4 * 1024 * 1024,
    ) -> Outbox:
        """Open (or create) the queue at ``path``; raises :class:`OutboxError` with a one-line reason.

        ``by_device``: keep an index on (device, id) for :meth:`read_devices` (the per-device
        sessions' outbox; the gateway's own outbox does without it, its inserts stay cheaper).
        ``tail_bytes``: how much of the newest committed records :meth:`read` serves from memory
        (0: every read goes to the database; not used with ``by_device``)."""
        if commit_interval < 0:
            raise ValueError("outbox commit_interval must be >= 0")
        if commit_records < 1:
            raise ValueError("outbox commit_records must be >= 1")
        path = Path(path)
        clock = clock if clock is not None else Clock()
        log = log if log is not None else logging.getLogger(__name__)
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-db")
        db = _Db(path, limits, log, clock.boot_id, cls.connection_factory, by_device)
        try:
            info = await loop.run_in_executor(executor, db.open)
        except BaseException:
            executor.submit(db.close)  # if cancelled while the thread was still opening it
            executor.shutdown(wait=False)
            raise
        ob = cls(
            path=path,
            limits=limits,
            clock=clock,
            commit_interval=commit_interval,
            commit_records=commit_records,
            log=log,
            loop=loop,
            db=db,
            executor=executor,
            info=info,
            tail_bytes=0 if by_device else tail_bytes,
        )
        # Apply the bounds (limits may have been lowered) and re-stamp right away if possible.
        ob._due = True
        ob._maybe_submit()
        return ob

    @property
    def path(self) -> Path:
        return self._path

    @property
    def last_id(self) -> int:
        """The id of the record appended last (0: none yet)."""
        return self._last_id

    @property
    def limits(self) -> OutboxLimits:
        return self._limits

    # ------------------------------------------------------------------------------------ producing

    def _new_batch(self) -> _Batch:
        if self._closing:
            raise OutboxError(f"outbox: {self._path} is closed")
        b = _Batch(self._loop.create_future())
        self._batch = b
        self._arm_timer()
        return b

    def append(self, kind: RecordKind, device: str, body: str, ts_ms: int | None = None) -> asyncio.Future[None]:
        """Buffer a record; returns the future of the group commit that will carry it (shared by the
        whole batch): None once durable, or OutboxError if the batch was rejected."""
        b = self._batch
        if b is None:
            b = self._new_batch()
        self._last_id = rid = self._last_id + 1
        n = len(body) + len(device) + _RECORD_OVERHEAD
        if ts_ms is None:
            ts_ms = self._clock.now_ms()
            if ts_ms is None:
                urows = b.urows
                urows.append((rid, int(kind), device, self._boot_n, self._clock.mono_ms(), body, n))
                if len(urows) + len(b.rows) >= self._commit_records:
                    self._seal()
                return b.fut
        rows = b.rows
        rows.append((rid, int(kind), device, ts_ms, body, n))
        if len(rows) >= self._commit_records:
            self._seal()
        return b.fut

    async def put(self, kind: RecordKind, device: str, body: str, ts_ms: int | None = None) -> None:
        """Append and wait until the record is durable (raises OutboxError if it was rejected)."""
        await asyncio.shield(self.append(kind, device, body, ts_ms))

    async def flush(self) -> None:
        """Wait until everything appended so far (and every ack so far) is committed; raises
        OutboxError if that commit failed."""
        if self._closed:
            raise OutboxError(f"outbox: {self._path} is closed")
        marker = _Batch(self._loop.create_future())
        if self._batch is not None:
            self._sealed.append(self._batch)
            self._batch = None
        self._sealed.append(marker)
        self._due = True
        self._maybe_submit()
        await marker.fut

    def ack(self, ids: Iterable[int]) -> None:
        """The records were delivered: delete them with the next commit. Ignored once closed (the
        records are then delivered again after the restart: at-least-once)."""
        if self._closed:
            self._log.debug("outbox: ack after close ignored")
            return
        acks = self._acks
        before = len(acks)
        acks.extend(ids)
        if len(acks) > before:
            if self._tail_bytes:
                lo = self._tail_lo
                self._tail_acked.update(i for i in acks[before:] if i >= lo)
            self._arm_timer()

    # --------------------------------------------------------------------------------- commit cycle

    def _arm_timer(self) -> None:
        if self._timer is None:
            if self._interval > 0:
                self._timer = self._loop.call_later(self._interval, self._on_timer)
            else:
                self._timer = self._loop.call_soon(self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._batch is not None:
            self._sealed.append(self._batch)
            self._batch = None
        self._due = True
        self._maybe_submit()

    def _seal(self) -> None:
        b = self._batch
        if b is not None:
            self._batch = None
            self._sealed.append(b)
            self._due = True
            self._maybe_submit()

    def _on_housekeeping(self) -> None:
        self._housekeeping = self._loop.call_later(_HOUSEKEEPING_S, self._on_housekeeping)
        if self._res.dropped:
            self._log_drops()
        if self._inflight or self._closing:
            return
        idle = self._res.commits == self._commits_seen
        self._commits_seen = self._res.commits
        synced = self._clock.synced()
        if synced and (self._restamp_pending or (idle and self._res.records > 0)):
            # re-stamp, and apply the age bound while no commit does it
            self._due = True
            self._maybe_submit()

    def _maybe_submit(self) -> None:
        if self._inflight or not self._due:
            return
        self._due = False
        batches, self._sealed = self._sealed, []
        acks, self._acks = self._acks, []
        if len(batches) == 1:
            rows, urows = batches[0].rows, batches[0].urows
        else:
            rows, urows = [], []
            for b in batches:
                rows.extend(b.rows)
                urows.extend(b.urows)
        unstamped = bool(urows)
        clock = self._clock
        now = clock.now_ms()
        restamp = clock.offset_ms() if now is not None and (self._restamp_pending or unstamped) else None
        age_cutoff = now - int(self._limits.max_age_s * 1000) if now is not None else None
        job = _Job(
            rows=rows,
            urows=urows,
            acks=acks,
            restamp_offset=restamp,
            age_cutoff_ms=age_cutoff,
            store_boot=unstamped and not self._boot_stored,
        )
        self._inflight = True
        try:
            cf = self._exec.submit(self._db.commit, job)
        except RuntimeError as exc:  # executor shut down
            self._inflight = False
            self._finish(batches, job, None, exc)
            return
        loop = self._loop

        def done(f: CFuture[_Result]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(self._on_commit_done, batches, job, f)

        cf.add_done_callback(done)

    def _on_commit_done(self, batches: list[_Batch], job: _Job, f: CFuture[_Result]) -> None:
        self._inflight = False
        try:
            res = f.result()
        except BaseException as exc:  # a bug in the database thread: report it, do not hang producers
            self._log.exception("outbox: commit failed unexpectedly")
            self._finish(batches, job, None, exc)
        else:
            self._finish(batches, job, res, None)
        self._maybe_submit()

    def _finish(self, batches: list[_Batch], job: _Job, res: _Result | None, exc: BaseException | None) -> None:
        error: OutboxError | None = None
        if res is None:
            error = OutboxError(f"outbox: commit to {self._path} failed: {_one_line(exc)}")
            if job.acks:
                self._acks[:0] = job.acks
        else:
            self._res = res
            if res.error is not None:
                error = OutboxError(res.error)
                if res.requeue_acks:
                    self._acks[:0] = res.requeue_acks
            else:
                if job.store_boot:
                    self._boot_stored = True
                if res.restamp_done:
                    self._restamp_pending = False
                elif job.urows:
                    self._restamp_pending = True
        if self._tail_max:
            self._extend_tail(job, res if error is None else None)
        for b in batches:
            fut = b.fut
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)
                fut.exception()  # reported (logged once); do not warn again per unawaited future
        if self._acks and not self._closing:
            self._arm_timer()
        if res is not None and res.dropped:
            self._log_drops()
        self._notify()

    def _log_drops(self, force: bool = False) -> None:
        """Log drop events with their counts: at once, then at most once per ``_DROP_LOG_INTERVAL_S``
        per reason (the counts of the events in between add up; never one line per record)."""
        now = self._loop.time()
        for reason, total in self._res.dropped.items():
            count = total - self._drops_logged.get(reason, 0)
            if not count:
                continue
            last = self._drops_logged_at.get(reason)
            if not force and last is not None and now - last < _DROP_LOG_INTERVAL_S:
                continue
            self._drops_logged[reason] = total
            self._drops_logged_at[reason] = now
            if reason == "age":
                why = f"older than {self._limits.max_age_s:g} s (age bound)"
            elif reason == "size":
                why = f"the oldest, over the size bound of {self._limits.max_bytes} bytes"
            else:
                why = f"the oldest droppable ones, disk full at {self._path}"
            self._log.warning("outbox: dropped %d records: %s", count, why)

    def _notify(self) -> None:
        changed = self._changed
        self._changed = self._loop.create_future()
        if not changed.done():
            changed.set_result(None)

    # ------------------------------------------------------------------------------------ consuming

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox: {self._path} is closed")

    def _hold_rule(self) -> _HoldRule | None:
        if self._limits.unsynced != "hold":
            return None
        hold_ms = int(self._limits.hold_max_s * 1000)
        return _HoldRule(
            cur_boot=self._boot_n,
            now_mono=self._clock.mono_ms(),
            hold_ms=hold_ms,
            old_release_mono=self._open_mono + hold_ms,
            synced=self._clock.synced(),
        )

    async def _restamp_first(self) -> None:
        """Re-stamp before reading when the clock has become synchronised since the last commit."""
        if self._restamp_pending and not self._closing and self._clock.synced():
            try:
                await self.flush()
            except OutboxError as exc:  # e.g. disk full: the records stay held, retried later
                self._log.warning("outbox: re-stamping failed: %s", exc)

    async def read(self, after_id: int, max_records: int, max_bytes: int) -> list[Record]:
        """Committed records with id > after_id in id order: at most ``max_records`` and about
        ``max_bytes`` (at least one if any is readable). With "hold", stops before the first
        record still held."""
        self._check_open()
        await self._restamp_first()
        self._check_open()
        if after_id + 1 >= self._tail_lo and self._tail_max:
            self.tail_reads += 1
            return self._read_tail(after_id, max_records, max_bytes)
        self.db_reads += 1
        return await self._loop.run_in_executor(
            self._exec, self._db.read, after_id, max_records, max_bytes, self._hold_rule()
        )

    # -- the committed tail in memory ------------------------------------------------------------------

    def _extend_tail(self, job: _Job, res: _Result | None) -> None:
        """After a commit: append its rows to the tail, or restart the tail after it."""
        dropped = sum(res.dropped.values()) if res is not None else self._tail_dropped
        if res is None or job.urows or dropped != self._tail_dropped or job.restamp_offset is not None:
            # rejected, unstamped rows (held, re-stamped later), or records dropped by a bound:
            # whatever the database now holds up to here is read from there
            self._tail_dropped = dropped
            last = max(job.rows[-1][0] if job.rows else 0, job.urows[-1][0] if job.urows else 0)
            self._reset_tail(max(self._tail_lo, last + 1))
            return
        rows = job.rows
        if not rows:
            return
        if rows[0][0] < self._tail_lo:  # cannot happen (commits are in id order); stay correct anyway
            self._reset_tail(max(self._tail_lo, rows[-1][0] + 1))
            return
        kinds = _KINDS
        tail = self._tail
        sizes = self._tail_sizes
        total = self._tail_bytes
        for rid, kind, device, ts, body, n in rows:
            tail.append(Record(rid, kinds[kind], device, ts, body))
            sizes.append(n)
            total += n
        head = self._tail_head
        limit = self._tail_max
        while total > limit and head < len(tail):
            total -= sizes[head]
            head += 1
        if head:
            self._tail_lo = tail[head - 1].id + 1 if head < len(tail) else tail[-1].id + 1
            if head == len(tail):
                tail.clear()
                sizes.clear()
                head = 0
            elif head > 4096 and head * 2 > len(tail):
                del tail[:head]
                del sizes[:head]
                head = 0
            acked = self._tail_acked
            if acked:
                lo = self._tail_lo
                self._tail_acked = {i for i in acked if i >= lo}
        self._tail_head = head
        self._tail_bytes = total

    def _reset_tail(self, lo: int) -> None:
        self._tail.clear()
        self._tail_sizes.clear()
        self._tail_head = 0
        self._tail_bytes = 0
        self._tail_acked.clear()
        self._tail_lo = lo

    def _read_tail(self, after_id: int, max_records: int, max_bytes: int) -> list[Record]:
        """:meth:`read` from memory (``after_id + 1 >= _tail_lo``: every committed record after it
        is in the tail)."""
        tail = self._tail
        start = bisect.bisect_right(tail, after_id, lo=self._tail_head, key=_record_id)
        if start >= len(tail) or max_records <= 0:
            return []
        sizes = self._tail_sizes
        acked = self._tail_acked
        out: list[Record] = []
        used = 0
        for i in range(start, len(tail)):
            record = tail[i]
            if acked and record.id in acked:  # delivered before a rewind: deleted in the database
                continue
            n = sizes[i]
            if out and used + n > max_bytes:
                break
            out.append(record)
            used += n
            if len(out) >= max_records:
                break
        return out

    async def wait_readable(self, after_id: int) -> None:
        """Return once :meth:`read` with this ``after_id`` would return something."""
        while True:
            self._check_open()
            changed = self._changed
            await self._restamp_first()
            self._check_open()
            if after_id + 1 >= self._tail_lo and self._tail_max:
                if self._read_tail(after_id, 1, 1):
                    return
                await changed  # every committed record after after_id would be in the tail
                continue
            head = await self._loop.run_in_executor(self._exec, self._db.first_after, after_id)
            timeout: float | None = None
            if head is not None:
                _rid, ts, boot, mono = head
                if ts is not None:
                    return
                rule = self._hold_rule()
                if rule is None or not rule.held(boot, mono):
                    return
                timeout = rule.wait_s(boot, mono)
            await asyncio.wait((changed,), timeout=timeout)

    async def read_devices(
        self, queries: list[tuple[str, int]], max_records: int, max_bytes: int
    ) -> list[tuple[list[Record], bool]]:
        """For each (device, after_id), in one trip to the database thread: the device's committed
        records with id > after_id in id order (at most ``max_records``, about ``max_bytes``, at
        least one if any is readable), and True if the read stopped before a record still held
        ("hold"). Only for an outbox opened with ``by_device=True``."""
        self._check_open()
        await self._restamp_first()
        self._check_open()
        return await self._loop.run_in_executor(
            self._exec, self._db.read_devices, queries, max_records, max_bytes, self._hold_rule()
        )

    async def pending_devices(self) -> list[str]:
        """The devices that have queued records (reads the whole index: for start-up, not hot paths)."""
        self._check_open()
        return await self._loop.run_in_executor(self._exec, self._db.devices)

    # ---------------------------------------------------------------------------------------- admin

    def stats(self) -> OutboxStats:
        r = self._res
        return OutboxStats(
            records=r.records,
            bytes=r.bytes,
            oldest_ts_ms=r.oldest_ts,
            appended=self._last_id - self._first_id,
            acked=r.acked,
            dropped=dict(r.dropped),
            rejected=r.rejected,
            restamped=r.restamped,
            commits=r.commits,
        )

    async def close(self) -> None:
        """Commit pending appends and acks, checkpoint, close. Appends after this raise OutboxError."""
        if self._closing:
            while not self._closed:
                await asyncio.wait((self._changed,))
            return
        self._closing = True
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        try:
            await self.flush()
        except OutboxError as exc:
            self._log.warning("outbox: final commit at close failed: %s", exc)
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._closed = True
            self._log_drops(force=True)
            try:
                await self._loop.run_in_executor(self._exec, self._db.close)
            finally:
                self._exec.shutdown(wait=False)
                self._notify()

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
