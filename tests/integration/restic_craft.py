"""Crafting restic repository objects by hand, the way someone holding a repository's password (and write access to
its storage) can: trees restic itself would never write (a name twice, a node whose size lies about its content),
saved as a new pack, index and snapshot of a local repository. The format is restic's documented one
(https://restic.readthedocs.io/en/stable/100_references.html#design): every file is IV || AES-256-CTR || Poly1305-AES
MAC; a pack is its encrypted blobs, an encrypted header and the header's length; an index and a snapshot are JSON
(uncompressed JSON is still read in repository format 2)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import subprocess
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import Restic

Tree = dict[str, Any]
_TYPES = {"data": 0, "tree": 1}


class Crafter:
    """Reads and writes the objects of a local repository with its master key."""

    def __init__(self, restic: Restic) -> None:
        self.restic = restic
        self.root = restic.repo.location
        key = json.loads(self._cat("masterkey"))
        self.enc = base64.b64decode(key["encrypt"])
        self.mac_k = base64.b64decode(key["mac"]["k"])
        self.mac_r = base64.b64decode(key["mac"]["r"])

    def _cat(self, *args: str) -> bytes:
        return subprocess.run(
            ["restic", "cat", "--no-lock", *args], env=self.restic.environment(), check=True, capture_output=True
        ).stdout

    def snapshot(self, snapshot_id: str) -> dict[str, Any]:
        return json.loads(self._cat("snapshot", snapshot_id))

    def tree(self, tree_id: str) -> Tree:
        return json.loads(self._cat("blob", tree_id))

    def encrypt(self, plaintext: bytes) -> bytes:
        iv = os.urandom(16)
        body = Cipher(algorithms.AES(self.enc), modes.CTR(iv)).encryptor().update(plaintext)
        s = Cipher(algorithms.AES(self.mac_k), modes.ECB()).encryptor().update(iv)  # noqa: S305 - one block: Poly1305-AES
        return iv + body + Poly1305.generate_tag(self.mac_r + s, body)

    def save_blobs(self, blobs: list[tuple[str, bytes]]) -> list[str]:
        """Save ``(kind, plaintext)`` blobs as one new pack and index; their ids."""
        body, header, entries, ids = b"", b"", [], []
        for kind, plain in blobs:
            blob_id = hashlib.sha256(plain).hexdigest()
            sealed = self.encrypt(plain)
            entries.append({"id": blob_id, "type": kind, "offset": len(body), "length": len(sealed)})
            header += struct.pack("<BI", _TYPES[kind], len(sealed)) + bytes.fromhex(blob_id)
            body += sealed
            ids.append(blob_id)
        sealed_header = self.encrypt(header)
        pack = body + sealed_header + struct.pack("<I", len(sealed_header))
        pack_id = hashlib.sha256(pack).hexdigest()
        self._write(f"data/{pack_id[:2]}/{pack_id}", pack)
        index = {"packs": [{"id": pack_id, "blobs": entries}]}
        self._save_unpacked("index", json.dumps(index).encode())
        return ids

    def save_tree(self, tree: Tree) -> str:
        return self.save_blobs([("tree", (json.dumps(tree) + "\n").encode())])[0]

    def save_snapshot(self, snapshot: dict[str, Any]) -> str:
        return self._save_unpacked("snapshots", json.dumps(snapshot).encode())

    def _save_unpacked(self, folder: str, plain: bytes) -> str:
        sealed = self.encrypt(plain)
        file_id = hashlib.sha256(sealed).hexdigest()
        self._write(f"{folder}/{file_id}", sealed)
        return file_id

    def _write(self, rel: str, data: bytes) -> None:
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(data)

    def rewrite(self, snapshot_id: str, edit: Callable[[str, Tree], bool], towards: str, **fields: Any) -> str:
        """A new snapshot of the tree of ``snapshot_id`` with ``edit(path, tree)`` applied to every tree on the way to
        the directory ``towards`` (it returns True when it changed it) and ``fields`` set in the snapshot (its time
        one second later by default)."""

        def walk(tree_id: str, path: str) -> str:
            tree = self.tree(tree_id)
            changed = edit(path, tree)
            for node in tree["nodes"]:
                below = path.rstrip("/") + "/" + node["name"]
                if node.get("type") == "dir" and node.get("subtree") and (towards + "/").startswith(below + "/"):
                    new = walk(node["subtree"], below)
                    if new != node["subtree"]:
                        node["subtree"], changed = new, True
            return self.save_tree(tree) if changed else tree_id

        snap = self.snapshot(snapshot_id)
        snap["tree"] = walk(snap["tree"], "/")
        snap["time"] = fields.pop("time", _later(snap["time"]))
        snap.update(fields)
        snap.pop("id", None)
        snap.pop("short_id", None)
        snap.pop("original", None)
        return self.save_snapshot(snap)


def _later(stamp: str) -> str:
    """A restic time one second later (``2026-11-28T15:49:48.123456789Z`` or with an offset)."""
    head, rest = stamp[:19], stamp[19:]
    from datetime import datetime, timedelta

    moved = datetime.fromisoformat(head) + timedelta(seconds=1)
    return moved.strftime("%Y-%m-%dT%H:%M:%S") + rest
