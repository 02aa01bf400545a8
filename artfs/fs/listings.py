"""Pages of version directories' listings, kept for the next pass.

The kernel does not cache readdir for a FUSE mount (pyfuse3 cannot set
``FOPEN_CACHE_DIR``), so a second ``find`` or ``ls -lR`` over a version
asks for every page again, and building a page (a SQLite query, a check of
each untrusted row, an ``EntryAttributes`` per entry) was most of the time
each readdir took (~20 us an entry). A version tree never changes, so a
page once built is good for the mount's life: it is kept here, keyed by
(tree index, directory entry id, offset, limit): the kernel asks for the
same offsets again on each pass, as they are the ids the previous page ended
at. Bounded by entries, least recently used first out.

Not kept: pages whose attributes depend on something that can change (a
version's root, owners and modes under ``allow_other``) — the caller
decides (``VersionDirCursor``).

The attributes in kept pages also answer ``getattr`` of their entries
(``attr``): on a writable mount the kernel asks for a file's attributes
again after each read it sends (the atime it marked stale), one request a
file in a cold ``tar``, and each was a SQLite query and a row check.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import pyfuse3

Page = list[tuple[str, pyfuse3.EntryAttributes, int]]
PageKey = tuple[int, int, int, int]

# Entries kept across all pages (~300 bytes each).
KEPT_ENTRIES = 100_000


class ListingPages:
    """Thread-safe LRU of built listing pages."""

    def __init__(self, max_entries: int = KEPT_ENTRIES) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.attr_hits = 0
        self._pages: OrderedDict[PageKey, Page] = OrderedDict()
        self._attrs: dict[int, pyfuse3.EntryAttributes] = {}  # by inode, from kept pages
        self._entries = 0
        self._lock = threading.Lock()

    def get(self, key: PageKey) -> Page | None:
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
                self.hits += 1
            return page

    def attr(self, inode: int) -> pyfuse3.EntryAttributes | None:
        """The attributes of ``inode`` as a kept page has them, if one does."""
        a = self._attrs.get(inode)  # one dict read: atomic under the GIL
        if a is not None:
            self.attr_hits += 1
        return a

    def put(self, key: PageKey, page: Page) -> None:
        if len(page) > self.max_entries:
            return
        with self._lock:
            old = self._pages.pop(key, None)
            if old is not None:
                self._drop(old)
            self._pages[key] = page
            self._entries += len(page)
            for _name, a, _next in page:
                self._attrs[a.st_ino] = a
            while self._entries > self.max_entries:
                _, dropped = self._pages.popitem(last=False)
                self._drop(dropped)

    def _drop(self, page: Page) -> None:
        self._entries -= len(page)
        for _name, a, _next in page:
            if self._attrs.get(a.st_ino) is a:
                del self._attrs[a.st_ino]
