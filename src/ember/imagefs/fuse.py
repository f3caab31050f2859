"""The FUSE file system for content a host does not have yet: overlay's last data-only layer.

It shows the same layout as the object directory (`/<d[:2]>/<d>`) for every file of every image
the cache has loaded. Overlay looks here only when a file is opened and its object is not on
local disk, so this server sees lookups and opens of missing objects and the reads that follow,
never stat or readdir of the image tree. Opening a small file fetches its chunk (and with it its
neighbours) into the object directory and serves reads from there; a large file is read chunk by
chunk, fetched as its pages are touched.

Objects never change, so the kernel may cache entries, attributes and pages for as long as it
likes (long timeouts, keep_cache): a second read of anything never reaches this process.

Once a container has a large file open, every piece of it placed on the host (by the prefetch,
or fetched for a read) is also stored in the kernel's page cache for that file (FUSE's
notify_store), so the container's reads of it find their pages there instead of each asking
this process: a cold start of torch otherwise makes some 1,300 reads of 128 KiB here, each
waiting on this process's loop while the prefetch keeps the CPUs busy. Not while a start records
its reads: then every page it reads must come here to be noted.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyfuse3
import trio

from ember.errors import NotFoundError
from ember.imagefs.cache import ImageCache
from ember.imagefs.content import CorruptChunkError

# Content-addressed: an entry never changes meaning, so cache it for a day.
CACHE_SECONDS = 86_400.0

log = logging.getLogger(__name__)

_PREFIXES = [f"{i:02x}" for i in range(256)]
_FIRST_PREFIX_INODE = pyfuse3.ROOT_INODE + 1
_FIRST_FILE_INODE = _FIRST_PREFIX_INODE + len(_PREFIXES)


@dataclass
class _Handle:
    digest: str
    fd: int | None  # a local object opened whole; None: a large file read chunk by chunk


class ObjectFS(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, cache: ImageCache) -> None:
        super().__init__()
        self._cache = cache
        self._inodes: dict[str, int] = {}
        self._digests: dict[int, str] = {}
        self._handles: dict[int, _Handle] = {}
        self._next_handle = 1
        self._in_kernel: dict[str, int] = {}  # large files a container opened: digest -> inode
        # One thread stores pages in the kernel, off the placing threads and this loop: a store
        # waits for pages the kernel has locked for a read, which this loop must answer first,
        # and that read may wait for a chunk a placing thread holds.
        self._storer = ThreadPoolExecutor(1, thread_name_prefix="ember-store-pages")
        cache.on_extent_placed = self._extent_placed

    # -- names ---------------------------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        text = os.fsdecode(name)
        if parent_inode == pyfuse3.ROOT_INODE:
            if text in _PREFIXES:
                return self._dir_attributes(_FIRST_PREFIX_INODE + _PREFIXES.index(text))
            raise pyfuse3.FUSEError(errno.ENOENT)
        prefix = self._prefix_of(parent_inode)
        if prefix is None or not text.startswith(prefix) or self._cache.file(text) is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._file_attributes(self._inode_of(text))

    async def getattr(self, inode, ctx=None):
        if inode == pyfuse3.ROOT_INODE or self._prefix_of(inode) is not None:
            return self._dir_attributes(inode)
        if inode in self._digests:
            return self._file_attributes(inode)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode, ctx):
        return []

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        return  # never listed: overlay looks objects up by name

    async def releasedir(self, fh):
        return

    async def statfs(self, ctx):
        result = pyfuse3.StatvfsData()
        result.f_bsize = result.f_frsize = 4096
        result.f_namemax = 255
        return result

    # -- content -------------------------------------------------------------------------------

    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        digest = self._digests.get(inode)
        if digest is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        entry = self._cache.file(digest)
        fd = None
        if entry is not None and len(entry.extents) == 1:
            self._cache.reads.note_open(digest)
            # On this host already (a container that opened it before it was keeps coming here
            # for it): no thread, which would cost more than the open.
            path = self._cache.local_object(digest)
            if path is None:
                path = await _in_thread(self._cache.ensure_object, digest)
            fd = os.open(path, os.O_RDONLY)
        elif entry is not None and digest not in self._in_kernel and not self._cache.reads.active:
            # What is placed of it goes to the kernel (unless a start records its reads).
            self._in_kernel[digest] = inode
            self._storer.submit(self._store_placed, digest, inode)
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = _Handle(digest, fd)
        return pyfuse3.FileInfo(fh=handle, keep_cache=True)

    async def read(self, fh, off, size):
        handle = self._handles[fh]
        if handle.fd is not None:
            return os.pread(handle.fd, size, off)
        self._cache.reads.note_read(handle.digest, off, size)
        # Pages of a large file already on this host are read here and now: a thread for each
        # would cost more than the read (a cold start reads ~100 MB of libtorch this way).
        data = self._cache.read_local(handle.digest, off, size)
        if data is None:
            data = await _in_thread(self._cache.read, handle.digest, off, size)
        return data

    async def release(self, fh):
        handle = self._handles.pop(fh)
        if handle.fd is not None:
            os.close(handle.fd)

    # -- pages ahead of reads --------------------------------------------------------------------

    def _extent_placed(self, digest: str, offset: int, data: memoryview) -> None:
        inode = self._in_kernel.get(digest)
        if inode is not None and not self._cache.reads.active:
            self._storer.submit(self._store, inode, offset, data)

    def _store_placed(self, digest: str, inode: int) -> None:
        """What the host has of a large file just opened (placed before anyone asked for it)."""
        for offset, length in self._cache.placed_ranges(digest):
            data = self._cache.read_local(digest, offset, length)
            if data is not None:
                self._store(inode, offset, data)

    def _store(self, inode: int, offset: int, data: bytes | memoryview) -> None:
        try:
            pyfuse3.notify_store(inode, offset, data)
        except OSError as error:  # the kernel forgot the file: its reads come here instead
            log.debug("storing pages of inode %d failed: %s", inode, error)

    # -- helpers -------------------------------------------------------------------------------

    def _prefix_of(self, inode: int) -> str | None:
        index = inode - _FIRST_PREFIX_INODE
        return _PREFIXES[index] if 0 <= index < len(_PREFIXES) else None

    def _inode_of(self, digest: str) -> int:
        inode = self._inodes.get(digest)
        if inode is None:
            inode = self._inodes[digest] = _FIRST_FILE_INODE + len(self._inodes)
            self._digests[inode] = digest
        return inode

    def _dir_attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        attributes = _attributes(inode)
        attributes.st_mode = stat.S_IFDIR | 0o555
        attributes.st_nlink = 2
        return attributes

    def _file_attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = self._cache.file(self._digests[inode])
        attributes = _attributes(inode)
        attributes.st_mode = stat.S_IFREG | 0o444
        attributes.st_nlink = 1
        attributes.st_size = entry.size if entry else 0
        attributes.st_blocks = (attributes.st_size + 511) // 512
        return attributes


def _attributes(inode: int) -> pyfuse3.EntryAttributes:
    attributes = pyfuse3.EntryAttributes()
    attributes.st_ino = inode
    attributes.st_blksize = 1 << 20
    attributes.entry_timeout = CACHE_SECONDS
    attributes.attr_timeout = CACHE_SECONDS
    return attributes


async def _in_thread(function, *args):
    """Run a blocking cache call off the FUSE loop; its errors become what the reader sees."""
    try:
        return await trio.to_thread.run_sync(function, *args)
    except CorruptChunkError:
        raise pyfuse3.FUSEError(errno.EIO) from None
    except NotFoundError as error:  # the reader sees ENOENT; the daemon's log says why
        log.warning("content not found: %s", error)
        raise pyfuse3.FUSEError(errno.ENOENT) from None
    except OSError as error:
        raise pyfuse3.FUSEError(error.errno or errno.EIO) from None
    except Exception:  # the chunk store failed (network, credentials): the read fails, we don't
        log.exception("fetching content failed")
        raise pyfuse3.FUSEError(errno.EIO) from None
