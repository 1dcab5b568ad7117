# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup sets: make, verify and list them.

Standard library only. A backup set is one archive file and up to four small
files beside it::

    tenement-web1-20261122T035100Z-hot.tar.zst                 the archive
    tenement-web1-20261122T035100Z-hot.tar.zst.sha256          sha256sum -c format
    tenement-web1-20261122T035100Z-hot.tar.zst.manifest.json   a copy of the manifest
    tenement-web1-20261122T035100Z-hot.tar.zst.verified.json   written by verify()
    tenement-web1-20261122T035100Z-hot.tar.zst.schedules.json  the schedules it was made for (``tags``)
    tenement-web1-20261122T035100Z-hot.tar.zst.drilled.json    its last DR drill (``verify.record_drill``)

The archive is a plain POSIX (pax) tar stream compressed by the ``zstd``
command (``gzip`` where zstd is missing), so ``zstd -d < set.tar.zst | tar -x``
restores it by hand. Members are the backed-up paths without their leading
``/``. Every SQLite database found in the paths (by its header, not its name)
is stored as a consistent snapshot instead of the live file, and its ``-wal``,
``-shm`` and ``-journal`` files are left out.

The archive is written in one pass: each file is read once, hashed as it goes
into the tar stream, and the compressed stream is hashed as it goes to disk.
So the manifest, which lists every member's sha256, is the *last* member of the
archive (``selfhost-dr-manifest.json``); the sidecar copy lets the catalog read
it without decompressing anything.

Everything is written under hidden temporary names, fsynced, and renamed into
place, archive last: a failure leaves no file that looks like a backup.

The format, one job per file: ``names`` (set and sidecar names), ``manifest`` (the manifest and its checks),
``scan`` (what to archive), ``members`` (reading files and snapshots), ``tar_stream`` (tar headers, read and
written), ``codec`` (zstd/gzip), ``create``, ``verify``, ``databases`` (verify's integrity checks), ``catalog``
(listing, leftovers, deletion), ``tags`` (its schedules), ``retention`` (which sets to keep) and ``restore``
(plan, and unpack into staging). Nothing here knows an application: ``apps/`` and ``engine/`` build on it.
"""
